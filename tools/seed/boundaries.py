"""Records with a chosen clock: for each rule of the policy, how to make a record whose clock
under the rule is a given instant (BOUNDARY_BUILDERS; the generator makes them at the clocks first
due around R and on leap days), and the records no rule may ever select (special_cases).

Each builds the smallest family that carries the clock: a customer with one running contract and
no random claims, calls or alerts, so that the record's shape stays fixed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from tools.seed.builder import Builder
from tools.seed.call_recordings import call, call_analysis
from tools.seed.contracts import Contract, claim
from tools.seed.cookie_consents import cookie_consent
from tools.seed.fraud import alert, new_fraud_case
from tools.seed.information_requests import information_request
from tools.seed.job_applications import job_application
from tools.seed.marketing import marketing_contact
from tools.seed.prospects import PROSPECT_SOURCES, Customer, Prospect, customer_prospect_row, new_customer, new_pet
from tools.seed.quotes import unconverted_quote
from tools.seed.rights_requests import identity_document, objection
from tools.seed.subscriber_services import chat_message, consultation
from tools.seed.subscription import subscribe


def active_customer(gen: Builder, contract_started_at: dt.datetime) -> tuple[Customer, Contract]:
    """A customer with one running contract, and no random claims, calls or alerts."""
    customer = new_customer(gen, contract_started_at - gen.days(0.05, 3))
    pet = new_pet(gen, customer, contract_started_at)
    contract = subscribe(gen, customer, pet, contract_started_at, None, typical=False)
    return customer, contract


def prospect_quote_issued_at(gen: Builder, clock: dt.datetime) -> None:
    prospect = prospect_last_contacted_at(gen, clock)
    unconverted_quote(gen, clock, prospect=prospect)


def prospect_last_contacted_at(gen: Builder, clock: dt.datetime) -> Prospect:
    _, first_name, last_name = gen.person()
    return gen.new(
        Prospect,
        first_name=first_name,
        last_name=last_name,
        email=gen.email(first_name, last_name),
        phone=gen.phone(),
        postal_code=gen.pick(gen.pools.places)[0],
        source=gen.pick(PROSPECT_SOURCES),
        marketing_opt_in=False,
        created_at=clock - gen.days(1, 60),
        last_contact_at=clock,
    )


def contract_ended_at(gen: Builder, clock: dt.datetime) -> None:
    """A customer whose only contract ended at the clock: a paid claim (with its
    reimbursement), an unpaid one (nothing under it: it does not wait), payment method,
    AML check, converted quote."""
    started_at = clock - gen.days(400, 1500)
    customer = new_customer(gen, started_at - gen.days(0.05, 3))
    pet = new_pet(gen, customer, started_at)
    contract = subscribe(gen, customer, pet, started_at, clock, typical=False)
    claim(gen, contract, clock - gen.days(60, 90), paid=True)
    claim(gen, contract, clock - gen.days(20, 50), paid=False)
    customer.relationship_ended_at = clock


def relationship_ended_at(gen: Builder, clock: dt.datetime) -> None:
    """A former customer (with the prospect record it came from) whose last contract
    ended at the clock; the contract itself is long gone if the clock is old."""
    started_at = clock - gen.days(300, 1500)
    customer = new_customer(gen, started_at - gen.days(0.05, 3))
    prospect = customer_prospect_row(gen, customer)
    pet = new_pet(gen, customer, started_at)
    subscribe(gen, customer, pet, started_at, clock, prospect=prospect, typical=False)
    customer.relationship_ended_at = clock


def call_analysis_created_at(gen: Builder, clock: dt.datetime) -> None:
    customer, _ = active_customer(gen, clock - gen.days(200, 2000))
    recording = call(gen, customer, "quality", clock - gen.days(1, 10), analysed=False)
    call_analysis(gen, recording, clock)


def contracting_call_at(gen: Builder, clock: dt.datetime) -> None:
    customer, _ = active_customer(gen, clock + dt.timedelta(minutes=20))
    call(gen, customer, "contracting", clock, analysed=False)


def support_call_at(gen: Builder, clock: dt.datetime) -> None:
    customer, _ = active_customer(gen, clock - gen.days(30, 1500))
    call(gen, customer, gen.pick(("quality", "claims")), clock, analysed=False)


def pending_alert_raised_at(gen: Builder, clock: dt.datetime) -> None:
    _, contract = active_customer(gen, clock - gen.days(30, 1500))
    alert(gen, contract, clock, "pending")


def alert_dismissed_at(gen: Builder, clock: dt.datetime) -> None:
    _, contract = active_customer(gen, clock - gen.days(30, 1500))
    alert(gen, contract, clock - gen.days(1, 20), "not_relevant", qualified_at=clock)


def fraud_case_closed_at(gen: Builder, clock: dt.datetime) -> None:
    _, contract = active_customer(gen, clock - gen.days(400, 1500))
    opened_at = clock - gen.days(60, 300)
    case = new_fraud_case(gen, opened_at, clock)
    alert(gen, contract, opened_at - gen.days(1, 30), "relevant", opened_at, case)


def candidate_last_contacted_at(gen: Builder, clock: dt.datetime) -> None:
    job_application(gen, hired=False, last_contact_at=clock)


def chat_transmitted_at(gen: Builder, clock: dt.datetime) -> None:
    customer, _ = active_customer(gen, clock - gen.days(30, 1500))
    chat_message(gen, customer, clock - gen.days(0.01, 2), clock, gen.token("conv_", 12))


def consultation_transmitted_at(gen: Builder, clock: dt.datetime) -> None:
    customer, contract = active_customer(gen, clock - gen.days(30, 1500))
    consultation(gen, customer, contract.pet, clock - gen.days(0.02, 2), clock)


def marketing_contacted_at(gen: Builder, channel: str, clock: dt.datetime) -> None:
    customer, _ = active_customer(gen, clock - gen.days(30, 1500))
    marketing_contact(gen, channel, clock, customer=customer, since=customer.created_at)


def request_handled_at(gen: Builder, clock: dt.datetime) -> None:
    information_request(gen, clock - gen.days(0.01, 10), clock)


def identity_checked_at(gen: Builder, clock: dt.datetime) -> None:
    customer, _ = active_customer(gen, clock - gen.days(30, 1500))
    identity_document(gen, clock - gen.days(0.5, 15), clock, customer=customer)


def objection_received_at(gen: Builder, clock: dt.datetime) -> None:
    _, first_name, last_name = gen.person()
    objection(gen, clock, email=gen.email(first_name, last_name), phone=gen.phone())


def cookie_choice_at(gen: Builder, clock: dt.datetime) -> None:
    cookie_consent(gen, clock)


# How to make a record whose clock under the rule is a given instant.
BOUNDARY_BUILDERS: dict[str, Callable[[Builder, dt.datetime], object]] = {
    "unconverted_quotes": prospect_quote_issued_at,
    "converted_quotes": contract_ended_at,
    "reimbursements": contract_ended_at,
    "claims": contract_ended_at,
    "payment_references": contract_ended_at,
    "ended_contracts": contract_ended_at,
    "aml_records": contract_ended_at,
    "prospects": prospect_last_contacted_at,
    "former_customer_prospects": relationship_ended_at,
    "former_customer_pets": relationship_ended_at,
    "former_customers": relationship_ended_at,
    "call_analyses": call_analysis_created_at,
    "contracting_recordings": contracting_call_at,
    "quality_and_claims_recordings": support_call_at,
    "unqualified_alerts": pending_alert_raised_at,
    "not_relevant_alerts": alert_dismissed_at,
    "relevant_alerts": fraud_case_closed_at,
    "closed_fraud_cases": fraud_case_closed_at,
    "candidates_not_recruited": candidate_last_contacted_at,
    "chat_messages": chat_transmitted_at,
    "vet_consultations": consultation_transmitted_at,
    "email_history": lambda gen, clock: marketing_contacted_at(gen, "email", clock),
    "phone_history": lambda gen, clock: marketing_contacted_at(gen, "phone", clock),
    "email_contacts": lambda gen, clock: marketing_contacted_at(gen, "email", clock),
    "phone_contacts": lambda gen, clock: marketing_contacted_at(gen, "phone", clock),
    "handled_requests": request_handled_at,
    "checked_identity_documents": identity_checked_at,
    "marketing_objections": objection_received_at,
    "cookie_choices": cookie_choice_at,
}


def special_cases(gen: Builder) -> None:
    """Records no rule may ever select, whatever their age."""
    # A ten-year-old running contract: NULL end, its claims stay.
    _, contract = active_customer(gen, gen.history_start + dt.timedelta(days=10))
    claim(gen, contract, gen.history_start + dt.timedelta(days=400), paid=True)
    # A fraud case open for two years (NULL closed_at) and a fresh pending alert.
    opened_at = gen.snapshot - dt.timedelta(days=730)
    case = new_fraud_case(gen, opened_at, None)
    alert(gen, contract, opened_at - dt.timedelta(days=3), "relevant", opened_at, case)
    alert(gen, contract, gen.snapshot - dt.timedelta(days=10), "pending")
    # Hired candidates, last contacted long ago.
    for years_ago in (8, 3):
        job_application(gen, hired=True, last_contact_at=gen.snapshot - dt.timedelta(days=365 * years_ago))
    gen.flush(on_purpose=True)
