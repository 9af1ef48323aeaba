"""The random families: a customer with everything under it, a prospect with its quotes, a site
visitor. Each family is built, then goes through the retention model (Builder.flush) before the
next one starts. What a family leaves in each purpose's tables is drawn by that purpose's module.
"""

from __future__ import annotations

import datetime as dt

from tools.seed import (
    call_recordings,
    cookie_consents,
    information_requests,
    marketing,
    rights_requests,
    subscriber_services,
)
from tools.seed.builder import Builder
from tools.seed.contracts import Contract
from tools.seed.cookie_consents import cookie_consent
from tools.seed.information_requests import information_request
from tools.seed.prospects import (
    PROSPECT_SOURCES,
    Customer,
    Pet,
    Prospect,
    customer_prospect_row,
    new_customer,
    new_pet,
    touch,
)
from tools.seed.quotes import unconverted_quote
from tools.seed.subscription import subscribe

FORMER_CUSTOMER_SHARE = 0.30  # customers whose last contract ended (within the kept window)
SECOND_PET_SHARE = 0.30
CUSTOMER_PROSPECT_SHARE = 0.5  # customers who were a prospect first
CUSTOMER_QUOTE_SHARE = 0.3  # customers with an unconverted quote (another pet, a formula)


def customer_family(gen: Builder) -> None:
    """A customer with 1-2 pets, each insured by a contract; a former customer's contracts
    have all ended, the last one at relationship_ended_at."""
    former = gen.rng.random() < FORMER_CUSTOMER_SHARE
    if former:
        relationship_end = gen.between(gen.retention.kept_since("former_customers"), gen.snapshot)
        first_start = gen.between(gen.history_start, relationship_end - dt.timedelta(days=30))
    else:
        relationship_end = None
        first_start = gen.recent_biased(gen.history_start, gen.snapshot - dt.timedelta(days=1))
    customer = new_customer(gen, first_start - gen.days(0.05, 3))
    prospect = customer_prospect_row(gen, customer) if gen.rng.random() < CUSTOMER_PROSPECT_SHARE else None
    until = relationship_end or gen.snapshot
    starts = [first_start]
    if gen.rng.random() < SECOND_PET_SHARE:
        starts.append(gen.between(first_start, until))
    last = gen.integer(0, len(starts))  # the contract that ends the relationship
    for index, started_at in enumerate(starts):
        if former:
            ended_at = relationship_end if index == last else gen.between(started_at, relationship_end)
        elif index == 0 or gen.rng.random() < 0.75:
            ended_at = None
        else:
            ended_at = gen.between(started_at, gen.snapshot)
        pet = new_pet(gen, customer, started_at)
        subscribe(gen, customer, pet, started_at, ended_at, prospect=prospect if index == 0 else None)
    customer.relationship_ended_at = relationship_end
    if gen.rng.random() < CUSTOMER_QUOTE_SHARE:
        since = max(customer.created_at, gen.retention.kept_since("unconverted_quotes"))
        if since < gen.snapshot:
            quote = unconverted_quote(gen, gen.between(since, gen.snapshot), customer=customer)
            touch(customer, quote.issued_at)
    call_recordings.support_calls(gen, customer)
    customer_services(gen, customer, [contract.pet for contract in gen.family if isinstance(contract, Contract)])


def customer_services(gen: Builder, customer: Customer, pets: list[Pet]) -> None:
    """What a customer leaves in the tables of the later purposes, only where it can still
    be in the database at R (each table's own clock; no activity after the relationship)."""
    subscriber_services.customer_activity(gen, customer, pets)
    marketing.customer_activity(gen, customer)
    information_requests.customer_activity(gen, customer)
    rights_requests.customer_activity(gen, customer)
    cookie_consents.customer_activity(gen, customer)


def prospect_family(gen: Builder) -> None:
    """Someone who asked for quotes and never subscribed."""
    last_contact = gen.between(gen.retention.kept_since("prospects"), gen.snapshot)
    created_at = max(gen.history_start, last_contact - gen.days(0, 400))
    _, first_name, last_name = gen.person()
    postal_code, _ = gen.pick(gen.pools.places)
    anonymous = gen.rng.random() < 0.2  # left only an e-mail address
    prospect = gen.new(
        Prospect,
        first_name=None if anonymous else first_name,
        last_name=None if anonymous else last_name,
        email=gen.email(first_name, last_name),
        phone=None if anonymous else gen.phone(),
        postal_code=postal_code,
        source=gen.pick(PROSPECT_SOURCES),
        marketing_opt_in=gen.rng.random() < 0.3,
        created_at=created_at,
        last_contact_at=last_contact,
    )
    for _ in range(gen.weighted((0, 1, 2), (30, 50, 20))):
        unconverted_quote(gen, gen.between(created_at, last_contact), prospect=prospect)
    prospect_extras(gen, prospect)


def prospect_extras(gen: Builder, prospect: Prospect) -> None:
    """Promotional calls, a question, an objection: a prospect's rows in the later purposes."""
    marketing.prospect_activity(gen, prospect)
    information_requests.prospect_activity(gen, prospect)
    rights_requests.prospect_activity(gen, prospect)


def visitors(gen: Builder, count: int) -> None:
    """Site visitors who are neither customers nor prospects: cookie choices, a question."""
    for _ in range(count):
        since = gen.retention.kept_since("cookie_choices")
        cookie_consent(gen, gen.between(since, gen.snapshot))
        if gen.rng.random() < 0.1:
            received = gen.between(gen.retention.kept_since("handled_requests") - dt.timedelta(days=10), gen.snapshot)
            handled = received + gen.days(0.01, 10)
            information_request(gen, received, handled if handled < gen.snapshot else None)
        gen.flush()
