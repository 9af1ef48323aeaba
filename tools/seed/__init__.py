"""Deterministic synthetic data for the operational schema (DESIGN.md §5), any scale.

    PYTHONPATH=plugins:. python -m tools.seed --dsn postgresql://postgres@127.0.0.1:5432/insurer \\
        --customers 100000 --seed 42 --reference-date 2026-11-25 \\
        [--s3-endpoint http://127.0.0.1:9000 --documents-bucket insurer-documents] [--reset]

What the data looks like: a French pet insurer after ten years of business, seen on the
reference date R, in a database where the retention DAGs already ran every day until
E = R - 45 days:

- long-lived records (customers, running contracts and their claims, hired candidates)
  go back ten years;
- a record that was due at E under include/retention_policy.yaml is gone, unless a record
  that still exists references it (it then waits, as the engine would have left it);
- so the first run at R has about 45 days of backlog for every rule;
- for every rule of the policy there are records first due at R - 1 day, R and R + 1 day
  (the first and last second of each day's window, and 30 minutes in), plus leap-day
  clocks, NULL clocks, converted quotes, hired candidates, and legal holds on a few due
  records of several tables.

Which rows a rule selects and from which clock is mirrored from include/sql in one place
(RULE_CLOCKS); the periods always come from the policy file.

No card security code (CVV/CVC) is ever generated: payment methods hold processor
references only. The same seed and arguments give the same rows, ids and documents.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import itertools
import math
import os
import random
import sys
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, NamedTuple, TypeVar

from retention.policy import Policy, Rule, default_policy
from retention.policy.periods import cutoff, local_midnight
from retention.rights.suppression import email_hash, phone_hash

T = TypeVar("T")
R = TypeVar("R", bound="Row")

# The retention DAGs are modelled as having run daily until this many days before R.
ENFORCED_UNTIL_DAYS_BEFORE = 45
HISTORY_DAYS = 3652  # ten years of business before the reference date
UPLOAD_THREADS = 8


class SeedError(RuntimeError):
    """The generator cannot model the policy or the database as asked."""


# --------------------------------------------------------------------------------------
# Generated rows, one class per table of schema `app`. Foreign keys are object references
# so the retention model can follow them; values() gives the COPY row, in COLUMNS order.
# --------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True, eq=False)
class Row:
    TABLE: ClassVar[str]
    COLUMNS: ClassVar[tuple[str, ...]]

    id: int
    # False once the modelled daily runs up to E removed the row.
    kept: bool = True
    # A kept row references this one: it stays, as the engine leaves a waiting parent.
    waited_on: bool = False

    def parents(self) -> tuple[Row, ...]:
        """Rows this one references through a foreign key that blocks their deletion."""
        return ()

    def values(self) -> tuple[Any, ...]:
        raise NotImplementedError


@dataclass(slots=True, kw_only=True, eq=False)
class Customer(Row):
    TABLE = "customers"
    COLUMNS = ("id", "civility", "first_name", "last_name", "email", "phone", "birth_date",
               "birth_place", "address_line", "postal_code", "city", "country", "created_at",
               "last_contact_at", "relationship_ended_at")  # fmt: skip

    civility: str
    first_name: str
    last_name: str
    email: str
    phone: str
    birth_date: dt.date
    birth_place: str
    address_line: str
    postal_code: str
    city: str
    created_at: dt.datetime
    last_contact_at: dt.datetime
    relationship_ended_at: dt.datetime | None = None
    # Not columns: what the payment processor and the bank know this customer by.
    processor_customer_ref: str = ""
    iban_last4: str = ""

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.civility, self.first_name, self.last_name, self.email, self.phone,
                self.birth_date, self.birth_place, self.address_line, self.postal_code, self.city,
                "FR", self.created_at, self.last_contact_at, self.relationship_ended_at)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class Prospect(Row):
    TABLE = "prospects"
    COLUMNS = ("id", "first_name", "last_name", "email", "phone", "postal_code", "source",
               "marketing_opt_in", "created_at", "last_contact_at", "customer_id")  # fmt: skip

    first_name: str | None
    last_name: str | None
    email: str
    phone: str | None
    postal_code: str | None
    source: str
    marketing_opt_in: bool
    created_at: dt.datetime
    last_contact_at: dt.datetime
    customer: Customer | None = None

    def parents(self) -> tuple[Row, ...]:
        return (self.customer,) if self.customer else ()

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.first_name, self.last_name, self.email, self.phone, self.postal_code,
                self.source, self.marketing_opt_in, self.created_at, self.last_contact_at,
                self.customer.id if self.customer else None)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class Pet(Row):
    TABLE = "pets"
    COLUMNS = ("id", "customer_id", "name", "species", "breed", "sex", "birth_date", "microchip")

    customer: Customer
    name: str
    species: str
    breed: str
    sex: str
    birth_date: dt.date
    microchip: str | None

    def parents(self) -> tuple[Row, ...]:
        return (self.customer,)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.customer.id, self.name, self.species, self.breed, self.sex,
                self.birth_date, self.microchip)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class Contract(Row):
    TABLE = "contracts"
    COLUMNS = ("id", "customer_id", "pet_id", "policy_number", "formula", "monthly_premium",
               "status", "started_at", "ended_at", "end_reason")  # fmt: skip

    customer: Customer
    pet: Pet
    policy_number: str
    formula: str
    monthly_premium: Decimal
    started_at: dt.datetime
    ended_at: dt.datetime | None = None
    end_reason: str | None = None

    def parents(self) -> tuple[Row, ...]:
        return (self.customer, self.pet)

    def values(self) -> tuple[Any, ...]:
        status = "active" if self.ended_at is None else "ended"
        return (self.id, self.customer.id, self.pet.id, self.policy_number, self.formula,
                self.monthly_premium, status, self.started_at, self.ended_at, self.end_reason)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class Quote(Row):
    TABLE = "quotes"
    COLUMNS = ("id", "customer_id", "prospect_id", "email", "pet_name", "species", "breed",
               "pet_birth_date", "postal_code", "formula", "monthly_premium", "issued_at",
               "contract_id")  # fmt: skip

    customer: Customer | None
    prospect: Prospect | None
    email: str
    pet_name: str
    species: str
    breed: str
    pet_birth_date: dt.date
    postal_code: str | None
    formula: str
    monthly_premium: Decimal
    issued_at: dt.datetime
    contract: Contract | None = None

    def parents(self) -> tuple[Row, ...]:
        return tuple(p for p in (self.customer, self.prospect, self.contract) if p is not None)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.customer.id if self.customer else None,
                self.prospect.id if self.prospect else None, self.email, self.pet_name,
                self.species, self.breed, self.pet_birth_date, self.postal_code, self.formula,
                self.monthly_premium, self.issued_at,
                self.contract.id if self.contract else None)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class Claim(Row):
    TABLE = "claims"
    COLUMNS = ("id", "contract_id", "submitted_at", "treatment_date", "vet_clinic", "diagnosis",
               "amount_claimed", "status", "vet_invoice_key")  # fmt: skip

    contract: Contract
    submitted_at: dt.datetime
    treatment_date: dt.date
    vet_clinic: str
    diagnosis: str
    amount_claimed: Decimal
    status: str
    vet_invoice_key: str | None

    def parents(self) -> tuple[Row, ...]:
        return (self.contract,)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.contract.id, self.submitted_at, self.treatment_date, self.vet_clinic,
                self.diagnosis, self.amount_claimed, self.status, self.vet_invoice_key)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class Reimbursement(Row):
    TABLE = "reimbursements"
    COLUMNS = ("id", "claim_id", "paid_at", "amount", "payee_iban_masked")

    claim: Claim
    paid_at: dt.datetime
    amount: Decimal
    payee_iban_masked: str

    def parents(self) -> tuple[Row, ...]:
        return (self.claim,)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.claim.id, self.paid_at, self.amount, self.payee_iban_masked)


@dataclass(slots=True, kw_only=True, eq=False)
class PaymentMethod(Row):
    TABLE = "payment_methods"
    COLUMNS = ("id", "contract_id", "kind", "processor_customer_ref", "processor_method_ref",
               "card_brand", "card_last4", "card_expiry", "iban_last4", "created_at")  # fmt: skip

    contract: Contract
    kind: str
    processor_customer_ref: str
    processor_method_ref: str
    card_brand: str | None
    card_last4: str | None
    card_expiry: str | None
    iban_last4: str | None
    created_at: dt.datetime

    def parents(self) -> tuple[Row, ...]:
        return (self.contract,)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.contract.id, self.kind, self.processor_customer_ref,
                self.processor_method_ref, self.card_brand, self.card_last4, self.card_expiry,
                self.iban_last4, self.created_at)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class CallRecording(Row):
    TABLE = "call_recordings"
    COLUMNS = ("id", "customer_id", "phone_number", "reason", "started_at", "duration_s",
               "agent_name", "audio_key")  # fmt: skip

    customer: Customer | None
    phone_number: str
    reason: str
    started_at: dt.datetime
    duration_s: int
    agent_name: str
    audio_key: str | None

    def parents(self) -> tuple[Row, ...]:
        return (self.customer,) if self.customer else ()

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.customer.id if self.customer else None, self.phone_number,
                self.reason, self.started_at, self.duration_s, self.agent_name, self.audio_key)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class CallAnalysis(Row):
    TABLE = "call_analyses"
    COLUMNS = ("id", "call_recording_id", "created_at", "analyst", "score", "summary", "document_key")

    call_recording: CallRecording
    created_at: dt.datetime
    analyst: str
    score: int
    summary: str
    document_key: str | None

    # No parents(): the foreign key is ON DELETE SET NULL, an analysis outlives its recording.
    def values(self) -> tuple[Any, ...]:
        recording_id = self.call_recording.id if self.call_recording.kept else None
        return (self.id, recording_id, self.created_at, self.analyst, self.score, self.summary,
                self.document_key)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class AmlRecord(Row):
    TABLE = "aml_records"
    COLUMNS = ("id", "customer_id", "contract_id", "checked_at", "risk_level", "pep",
               "sanctions_hit", "id_document_no", "document_key")  # fmt: skip

    customer: Customer
    contract: Contract
    checked_at: dt.datetime
    risk_level: str
    pep: bool
    sanctions_hit: bool
    id_document_no: str
    document_key: str | None

    def parents(self) -> tuple[Row, ...]:
        return (self.customer, self.contract)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.customer.id, self.contract.id, self.checked_at, self.risk_level,
                self.pep, self.sanctions_hit, self.id_document_no, self.document_key)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class FraudCase(Row):
    TABLE = "fraud_cases"
    COLUMNS = ("id", "status", "opened_at", "closed_at", "outcome", "summary")

    opened_at: dt.datetime
    closed_at: dt.datetime | None
    outcome: str | None
    summary: str

    def values(self) -> tuple[Any, ...]:
        status = "open" if self.closed_at is None else "closed"
        return (self.id, status, self.opened_at, self.closed_at, self.outcome, self.summary)


@dataclass(slots=True, kw_only=True, eq=False)
class FraudAlert(Row):
    TABLE = "fraud_alerts"
    COLUMNS = ("id", "contract_id", "raised_at", "rule_code", "details", "status", "qualified_at",
               "fraud_case_id")  # fmt: skip

    contract: Contract
    raised_at: dt.datetime
    rule_code: str
    details: str
    status: str
    qualified_at: dt.datetime | None = None
    fraud_case: FraudCase | None = None

    def parents(self) -> tuple[Row, ...]:
        return (self.contract, self.fraud_case) if self.fraud_case else (self.contract,)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.contract.id, self.raised_at, self.rule_code, self.details,
                self.status, self.qualified_at, self.fraud_case.id if self.fraud_case else None)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class JobApplication(Row):
    TABLE = "job_applications"
    COLUMNS = ("id", "first_name", "last_name", "email", "phone", "city", "position", "applied_at",
               "last_contact_at", "hired", "cv_key")  # fmt: skip

    first_name: str
    last_name: str
    email: str
    phone: str
    city: str
    position: str
    applied_at: dt.datetime
    last_contact_at: dt.datetime
    hired: bool
    cv_key: str | None

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.first_name, self.last_name, self.email, self.phone, self.city,
                self.position, self.applied_at, self.last_contact_at, self.hired, self.cv_key)  # fmt: skip


# -- the rest of the policy's schedule (issue 9) ------------------------------------------


def _id_of(row: Row | None) -> int | None:
    return row.id if row is not None else None


@dataclass(slots=True, kw_only=True, eq=False)
class VetConsultation(Row):
    TABLE = "vet_consultations"
    COLUMNS = ("id", "customer_id", "pet_id", "service", "channel", "requested_at", "scheduled_at",
               "video_link", "vet_name", "reason", "transmitted_at")  # fmt: skip

    customer: Customer
    pet: Pet | None
    service: str
    channel: str
    requested_at: dt.datetime
    scheduled_at: dt.datetime | None
    video_link: str | None
    vet_name: str
    reason: str
    transmitted_at: dt.datetime | None

    def parents(self) -> tuple[Row, ...]:
        return (self.customer, self.pet) if self.pet else (self.customer,)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.customer.id, _id_of(self.pet), self.service, self.channel,
                self.requested_at, self.scheduled_at, self.video_link, self.vet_name, self.reason,
                self.transmitted_at)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class ChatMessage(Row):
    TABLE = "chat_messages"
    COLUMNS = ("id", "customer_id", "conversation_ref", "sender", "sent_at", "body", "transmitted_at")

    customer: Customer
    conversation_ref: str
    sender: str
    sent_at: dt.datetime
    body: str
    transmitted_at: dt.datetime | None

    def parents(self) -> tuple[Row, ...]:
        return (self.customer,)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.customer.id, self.conversation_ref, self.sender, self.sent_at, self.body,
                self.transmitted_at)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class MarketingContact(Row):
    TABLE = "marketing_contacts"
    COLUMNS = ("id", "customer_id", "prospect_id", "channel", "address", "opted_in_at", "opted_out_at",
               "created_at", "last_contact_at")  # fmt: skip

    customer: Customer | None
    prospect: Prospect | None
    channel: str
    address: str
    opted_in_at: dt.datetime | None
    opted_out_at: dt.datetime | None
    created_at: dt.datetime
    last_contact_at: dt.datetime

    def parents(self) -> tuple[Row, ...]:
        return tuple(p for p in (self.customer, self.prospect) if p is not None)

    def values(self) -> tuple[Any, ...]:
        return (self.id, _id_of(self.customer), _id_of(self.prospect), self.channel, self.address,
                self.opted_in_at, self.opted_out_at, self.created_at, self.last_contact_at)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class MarketingMessage(Row):
    TABLE = "marketing_messages"
    COLUMNS = ("id", "marketing_contact_id", "campaign", "sent_at", "outcome")

    contact: MarketingContact
    campaign: str
    sent_at: dt.datetime
    outcome: str

    def parents(self) -> tuple[Row, ...]:
        return (self.contact,)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.contact.id, self.campaign, self.sent_at, self.outcome)


@dataclass(slots=True, kw_only=True, eq=False)
class InformationRequest(Row):
    TABLE = "information_requests"
    COLUMNS = ("id", "customer_id", "prospect_id", "channel", "email", "subject", "message",
               "received_at", "status", "handled_at", "handled_by")  # fmt: skip

    customer: Customer | None
    prospect: Prospect | None
    channel: str
    email: str | None
    subject: str
    message: str
    received_at: dt.datetime
    handled_at: dt.datetime | None
    handled_by: str | None

    @property
    def status(self) -> str:
        return "handled" if self.handled_at else "open"

    def parents(self) -> tuple[Row, ...]:
        return tuple(p for p in (self.customer, self.prospect) if p is not None)

    def values(self) -> tuple[Any, ...]:
        return (self.id, _id_of(self.customer), _id_of(self.prospect), self.channel, self.email,
                self.subject, self.message, self.received_at, self.status, self.handled_at,
                self.handled_by)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class IdentityDocument(Row):
    TABLE = "identity_documents"
    COLUMNS = ("id", "customer_id", "prospect_id", "right_exercised", "document_type", "received_at",
               "status", "checked_at", "document_key")  # fmt: skip

    customer: Customer | None
    prospect: Prospect | None
    right_exercised: str
    document_type: str
    received_at: dt.datetime
    status: str
    checked_at: dt.datetime | None
    document_key: str | None

    def parents(self) -> tuple[Row, ...]:
        return tuple(p for p in (self.customer, self.prospect) if p is not None)

    def values(self) -> tuple[Any, ...]:
        return (self.id, _id_of(self.customer), _id_of(self.prospect), self.right_exercised,
                self.document_type, self.received_at, self.status, self.checked_at,
                self.document_key)  # fmt: skip


def _kept_id(row: Row | None) -> int | None:
    """A SET NULL link: the id while the parent is still there."""
    return row.id if row is not None and row.kept else None


@dataclass(slots=True, kw_only=True, eq=False)
class MarketingObjection(Row):
    TABLE = "marketing_objections"
    COLUMNS = ("id", "customer_id", "prospect_id", "channel", "email_sha256", "phone_sha256", "source",
               "received_at")  # fmt: skip

    customer: Customer | None
    prospect: Prospect | None
    channel: str
    email_sha256: str | None
    phone_sha256: str | None
    source: str
    received_at: dt.datetime

    # No parents(): ON DELETE SET NULL, the objection outlives the person it concerns.
    def values(self) -> tuple[Any, ...]:
        return (self.id, _kept_id(self.customer), _kept_id(self.prospect), self.channel,
                self.email_sha256, self.phone_sha256, self.source, self.received_at)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class CookieConsent(Row):
    TABLE = "cookie_consents"
    COLUMNS = ("id", "visitor_id", "customer_id", "choice", "analytics", "advertising", "social_networks",
               "personalisation", "recorded_at", "ip_truncated", "user_agent")  # fmt: skip

    visitor_id: str
    customer: Customer | None
    choice: str
    analytics: bool
    advertising: bool
    social_networks: bool
    personalisation: bool
    recorded_at: dt.datetime
    ip_truncated: str
    user_agent: str

    # No parents(): ON DELETE SET NULL, the proof of a choice is about a browser.
    def values(self) -> tuple[Any, ...]:
        return (self.id, self.visitor_id, _kept_id(self.customer), self.choice, self.analytics,
                self.advertising, self.social_networks, self.personalisation, self.recorded_at,
                self.ip_truncated, self.user_agent)  # fmt: skip


# Children before parents (the order the engine deletes in); loading goes the other way.
ROW_TYPES: tuple[type[Row], ...] = (
    Reimbursement, Claim, PaymentMethod, AmlRecord, FraudAlert, FraudCase, CallAnalysis,
    CallRecording, Quote, Contract, MarketingMessage, MarketingContact, VetConsultation, ChatMessage,
    InformationRequest, IdentityDocument, MarketingObjection, CookieConsent, Pet, Prospect, Customer,
    JobApplication,
)  # fmt: skip
DELETE_ORDER = {row_type.TABLE: index for index, row_type in enumerate(ROW_TYPES)}
TABLES = tuple(row_type.TABLE for row_type in reversed(ROW_TYPES))  # load order


# --------------------------------------------------------------------------------------
# What the generator knows about each rule of the policy: the one place that mirrors
# include/sql/<purpose>/<rule>.sql. The periods always come from the policy file.
# --------------------------------------------------------------------------------------


class RuleClock(NamedTuple):
    table: str
    # The row's clock under this rule, or None when the rule does not select the row or the
    # clock is NULL (a running contract, an open case...).
    clock_of: Callable[[Any], dt.datetime | None]


RULE_CLOCKS: dict[str, RuleClock] = {
    "unconverted_quotes": RuleClock("quotes", lambda q: q.issued_at if q.contract is None else None),
    "converted_quotes": RuleClock("quotes", lambda q: q.contract.ended_at if q.contract else None),
    "reimbursements": RuleClock("reimbursements", lambda r: r.claim.contract.ended_at),
    "claims": RuleClock("claims", lambda c: c.contract.ended_at),
    "payment_references": RuleClock("payment_methods", lambda p: p.contract.ended_at),
    "ended_contracts": RuleClock("contracts", lambda c: c.ended_at),
    "prospects": RuleClock("prospects", lambda p: p.last_contact_at if p.customer is None else None),
    "former_customer_prospects": RuleClock(
        "prospects", lambda p: p.customer.relationship_ended_at if p.customer else None
    ),
    "former_customer_pets": RuleClock("pets", lambda p: p.customer.relationship_ended_at),
    "former_customers": RuleClock("customers", lambda c: c.relationship_ended_at),
    "call_analyses": RuleClock("call_analyses", lambda a: a.created_at),
    "contracting_recordings": RuleClock(
        "call_recordings", lambda r: r.started_at if r.reason == "contracting" else None
    ),
    "quality_and_claims_recordings": RuleClock(
        "call_recordings", lambda r: r.started_at if r.reason in ("quality", "claims") else None
    ),
    "aml_records": RuleClock("aml_records", lambda a: a.contract.ended_at),
    "unqualified_alerts": RuleClock("fraud_alerts", lambda a: a.raised_at if a.status == "pending" else None),
    "not_relevant_alerts": RuleClock("fraud_alerts", lambda a: a.qualified_at if a.status == "not_relevant" else None),
    "relevant_alerts": RuleClock("fraud_alerts", lambda a: a.fraud_case.closed_at if a.status == "relevant" else None),
    "closed_fraud_cases": RuleClock("fraud_cases", lambda c: c.closed_at),
    "candidates_not_recruited": RuleClock("job_applications", lambda j: None if j.hired else j.last_contact_at),
    "chat_messages": RuleClock("chat_messages", lambda m: m.transmitted_at),
    "vet_consultations": RuleClock("vet_consultations", lambda c: c.transmitted_at),
    "email_history": RuleClock(
        "marketing_messages", lambda m: m.contact.last_contact_at if m.contact.channel == "email" else None
    ),
    "phone_history": RuleClock(
        "marketing_messages", lambda m: m.contact.last_contact_at if m.contact.channel == "phone" else None
    ),
    "email_contacts": RuleClock("marketing_contacts", lambda c: c.last_contact_at if c.channel == "email" else None),
    "phone_contacts": RuleClock("marketing_contacts", lambda c: c.last_contact_at if c.channel == "phone" else None),
    "handled_requests": RuleClock("information_requests", lambda r: r.handled_at),
    "checked_identity_documents": RuleClock(
        "identity_documents", lambda d: d.checked_at if d.status in ("verified", "rejected") else None
    ),
    "marketing_objections": RuleClock("marketing_objections", lambda o: o.received_at),
    "cookie_choices": RuleClock("cookie_consents", lambda c: c.recorded_at),
}

# How to make a record whose clock under the rule is a given instant (see Generator).
BOUNDARY_BUILDERS: dict[str, Callable[[Generator, dt.datetime], None]] = {
    "unconverted_quotes": lambda gen, clock: gen.prospect_quote_issued_at(clock),
    "converted_quotes": lambda gen, clock: gen.contract_ended_at(clock),
    "reimbursements": lambda gen, clock: gen.contract_ended_at(clock),
    "claims": lambda gen, clock: gen.contract_ended_at(clock),
    "payment_references": lambda gen, clock: gen.contract_ended_at(clock),
    "ended_contracts": lambda gen, clock: gen.contract_ended_at(clock),
    "aml_records": lambda gen, clock: gen.contract_ended_at(clock),
    "prospects": lambda gen, clock: gen.prospect_last_contacted_at(clock),
    "former_customer_prospects": lambda gen, clock: gen.relationship_ended_at(clock),
    "former_customer_pets": lambda gen, clock: gen.relationship_ended_at(clock),
    "former_customers": lambda gen, clock: gen.relationship_ended_at(clock),
    "call_analyses": lambda gen, clock: gen.call_analysis_created_at(clock),
    "contracting_recordings": lambda gen, clock: gen.contracting_call_at(clock),
    "quality_and_claims_recordings": lambda gen, clock: gen.support_call_at(clock),
    "unqualified_alerts": lambda gen, clock: gen.pending_alert_raised_at(clock),
    "not_relevant_alerts": lambda gen, clock: gen.alert_dismissed_at(clock),
    "relevant_alerts": lambda gen, clock: gen.fraud_case_closed_at(clock),
    "closed_fraud_cases": lambda gen, clock: gen.fraud_case_closed_at(clock),
    "candidates_not_recruited": lambda gen, clock: gen.candidate_last_contacted_at(clock),
    "chat_messages": lambda gen, clock: gen.chat_transmitted_at(clock),
    "vet_consultations": lambda gen, clock: gen.consultation_transmitted_at(clock),
    "email_history": lambda gen, clock: gen.marketing_contacted_at("email", clock),
    "phone_history": lambda gen, clock: gen.marketing_contacted_at("phone", clock),
    "email_contacts": lambda gen, clock: gen.marketing_contacted_at("email", clock),
    "phone_contacts": lambda gen, clock: gen.marketing_contacted_at("phone", clock),
    "handled_requests": lambda gen, clock: gen.request_handled_at(clock),
    "checked_identity_documents": lambda gen, clock: gen.identity_checked_at(clock),
    "marketing_objections": lambda gen, clock: gen.objection_received_at(clock),
    "cookie_choices": lambda gen, clock: gen.cookie_choice_at(clock),
}


def _ceil_to_second(instant: dt.datetime) -> dt.datetime:
    if not instant.microsecond:
        return instant
    return instant.replace(microsecond=0) + dt.timedelta(seconds=1)


class RetentionModel:
    """The policy's rules applied to generated rows at two logical dates (Paris midnights):
    the reference date R (the first run to come) and E, until which runs already happened."""

    def __init__(self, policy: Policy, reference_date: dt.date):
        self.tz = policy.tz
        self.run_date = local_midnight(reference_date, self.tz)
        self.enforced_date = local_midnight(reference_date - dt.timedelta(days=ENFORCED_UNTIL_DAYS_BEFORE), self.tz)
        # The rules written in the policy. Those generated from `dependents` take what a person
        # past their period still has and never reaches its own clock (a chat message never
        # transmitted, a request never handled); the generated data has none of that for them:
        # their messages are transmitted and their requests handled days after the last activity.
        self.rules: list[Rule] = [rule for purpose in policy.purposes.values() for rule in purpose.schedule_rules]
        # table -> [(clock_of, cutoff at E, cutoff at R)]
        self._checks: dict[str, list[tuple[Callable, dt.datetime, dt.datetime]]] = defaultdict(list)
        self._cutoff_at_enforcement: dict[str, dt.datetime] = {}
        for rule in self.rules:
            known = RULE_CLOCKS.get(rule.name)
            if known is None or rule.name not in BOUNDARY_BUILDERS:
                raise SeedError(
                    f"tools/seed.py does not know rule {rule.name!r} of the policy: add it to "
                    "RULE_CLOCKS and BOUNDARY_BUILDERS"
                )
            if known.table != rule.table:
                raise SeedError(
                    f"rule {rule.name!r}: the policy says table {rule.table!r}, tools/seed.py {known.table!r}"
                )
            at_enforcement = self.cutoff(rule, self.enforced_date)
            self._cutoff_at_enforcement[rule.name] = at_enforcement
            self._checks[rule.table].append((known.clock_of, at_enforcement, self.cutoff(rule, self.run_date)))

    def cutoff(self, rule: Rule, logical_date: dt.datetime) -> dt.datetime:
        return cutoff(logical_date, rule.live, self.tz)

    def rule(self, name: str) -> Rule:
        return next(rule for rule in self.rules if rule.name == name)

    def kept_since(self, rule_name: str) -> dt.datetime:
        """The oldest clock a record of this rule can have and still be in the database."""
        return self._cutoff_at_enforcement[rule_name]

    def due_at_enforcement(self, row: Row) -> bool:
        return any(
            (clock := clock_of(row)) is not None and clock < at_e for clock_of, at_e, _ in self._checks[row.TABLE]
        )

    def due_at_run(self, row: Row) -> bool:
        return any(
            (clock := clock_of(row)) is not None and clock < at_r for clock_of, _, at_r in self._checks[row.TABLE]
        )

    def boundary_clocks(self, rule: Rule) -> Iterator[dt.datetime]:
        """Clocks first due at R - 1 day, R and R + 1 day: the first and the last whole second
        of each window [cutoff(day - 1), cutoff(day)), and 30 minutes after the first (00:30
        Paris time is the previous day in UTC, which catches UTC date arithmetic)."""
        for offset in (-1, 0, 1):
            due_day = self.run_date.date() + dt.timedelta(days=offset)
            since = self.cutoff(rule, local_midnight(due_day - dt.timedelta(days=1), self.tz))
            until = self.cutoff(rule, local_midnight(due_day, self.tz))
            first = _ceil_to_second(since)
            last = _ceil_to_second(until) - dt.timedelta(seconds=1)
            if last < first:
                continue  # no clock becomes due that day (e.g. 31 March for a 1-month rule)
            yield from sorted({first, min(first + dt.timedelta(minutes=30), last), last})

    def leap_day_clocks(self, rule: Rule, history_start: dt.datetime) -> Iterator[dt.datetime]:
        """29 February clocks of a rule counted in whole years, when such a record would still be
        in the database (2024-02-29 + 12 months = 2025-02-28)."""
        if rule.live.days or not rule.live.months or rule.live.months % 12:
            return
        for year in range(history_start.year, self.run_date.year + 1):
            if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
                clock = dt.datetime(year, 2, 29, 12, 0, tzinfo=self.tz)
                if self.kept_since(rule.name) <= clock < self.run_date:
                    yield clock


# --------------------------------------------------------------------------------------
# Vocabulary. Faker gives names and addresses (pre-generated pools: Faker is slow per call);
# the insurance-specific words are listed here.
# --------------------------------------------------------------------------------------

PET_NAMES = (
    "Rex", "Médor", "Filou", "Minou", "Caramel", "Nala", "Simba", "Oscar", "Luna", "Milo", "Rocky",
    "Tigrou", "Pupuce", "Loulou", "Biscotte", "Noisette", "Vanille", "Praline", "Gribouille",
    "Pacha", "Félix", "Chaussette", "Mistigri", "Ulysse", "Ficelle", "Câline", "Réglisse",
    "Cannelle", "Moka", "Pistache", "Roxy", "Max", "Bella", "Lucky", "Ruby", "Sultan", "Naïa",
    "Olaf", "Pepito", "Plume", "Sushi", "Tofu", "Gaïa", "Hercule", "Idéfix", "Jazz", "Kiwi",
    "Lola", "Mango", "Nougat", "Opale", "Patou", "Quenotte", "Rouky", "Sacha", "Taïga", "Uno",
    "Vénus", "Whisky", "Xéna", "Yoda", "Zazou", "Étoile", "Brioche", "Cookie", "Domino",
)  # fmt: skip
BREEDS = {
    "dog": (
        "Berger australien", "Labrador retriever", "Golden retriever", "Bouledogue français",
        "Berger allemand", "Staffordshire bull terrier", "Jack Russell terrier", "Chihuahua",
        "Cavalier King Charles", "Border collie", "Yorkshire terrier", "Beagle", "Shih tzu",
        "Cocker anglais", "Épagneul breton", "Berger belge malinois", "Teckel", "Bichon frisé",
        "Caniche", "Setter anglais", "Husky sibérien", "Carlin", "Croisé",
    ),
    "cat": (
        "Européen", "Maine coon", "Sacré de Birmanie", "Persan", "Ragdoll", "British shorthair",
        "Chartreux", "Bengal", "Siamois", "Norvégien", "Sphynx", "Abyssin", "Croisé",
    ),
}  # fmt: skip
DIAGNOSES = (
    "Gastro-entérite", "Otite externe", "Fracture du radius", "Boiterie", "Dermatite allergique",
    "Ingestion de corps étranger", "Conjonctivite", "Cystite", "Insuffisance rénale chronique",
    "Luxation de la rotule", "Rupture du ligament croisé", "Détartrage sous anesthésie",
    "Plaie par morsure", "Piroplasmose", "Diabète", "Hyperthyroïdie", "Torsion d'estomac",
)  # fmt: skip
FORMULAS = {"essentielle": 1200, "confort": 2400, "premium": 4200}  # monthly premium base, cents
FORMULA_NAMES = tuple(FORMULAS)
END_REASONS = ("customer_cancellation", "pet_deceased", "non_payment", "switched_insurer")
PROSPECT_SOURCES = ("site_web", "comparateur", "parrainage", "reseaux_sociaux", "partenaire_veterinaire")
FRAUD_RULES = {
    "FRD-DUP-INVOICE": "Facture vétérinaire déjà présentée sur un autre dossier",
    "FRD-EARLY-CLAIM": "Sinistre déclaré moins de 30 jours après la souscription",
    "FRD-AMOUNT-OUTLIER": "Montant très supérieur au tarif habituel de la clinique",
    "FRD-IBAN-CHANGE": "Changement d'IBAN juste avant un remboursement important",
    "FRD-CLINIC-LINK": "Clinique liée à plusieurs dossiers signalés",
}
FRAUD_RULE_CODES = tuple(FRAUD_RULES)
CASE_SUMMARIES = (
    "Factures falsifiées, remboursements indus récupérés",
    "Doublon de facture confirmé avec un autre assureur",
    "Soupçon non confirmé après contrôle de la clinique",
    "Sinistre antérieur à la souscription, contrat résilié",
)
CASE_OUTCOMES = ("fraud_confirmed", "unfounded", "settled")
ANALYSIS_SUMMARIES = (
    "Discours conforme, informations précontractuelles données",
    "Délai d'attente trop long, client mécontent",
    "Conseiller courtois, réponse complète sur les garanties",
    "Rappel nécessaire : pièces justificatives manquantes",
    "Réclamation sur le montant du remboursement",
)
POSITIONS = (
    "Chargé(e) de clientèle", "Gestionnaire sinistres", "Vétérinaire conseil", "Data engineer",
    "Développeur backend", "Product manager", "Juriste", "Chargé(e) de conformité", "Commercial(e)",
)  # fmt: skip
EMAIL_DOMAINS = (
    "gmail.com", "orange.fr", "free.fr", "laposte.net", "sfr.fr", "hotmail.fr", "yahoo.fr",
    "outlook.fr", "wanadoo.fr", "icloud.com",
)  # fmt: skip
CHAT_LINES = {
    "customer": (
        "Bonjour, mon chien tousse depuis deux jours, dois-je consulter ?",
        "Ma chatte ne mange plus depuis hier soir.",
        "Je n'arrive pas à téléverser ma facture sur le site.",
        "Est-ce que la téléconsultation est comprise dans ma formule ?",
    ),
    "support": (
        "Bonjour, je vous mets en relation avec un vétérinaire partenaire.",
        "Pouvez-vous préciser l'âge et le poids de votre animal ?",
        "Votre facture a bien été reçue, merci.",
    ),
    "vet": (
        "Surveillez la température et revenez vers nous si elle dépasse 39,5 °C.",
        "Je vous conseille de consulter votre vétérinaire sous 24 heures.",
    ),
}
CONSULTATION_REASONS = ("vomissements", "boiterie", "démangeaisons", "diarrhée", "toux", "perte d'appétit", "plaie")
CAMPAIGNS = ("parrainage-2024", "printemps-chiots", "rentree-chats", "formule-premium", "black-friday", "newsletter")
EMAIL_OUTCOMES = ("sent", "opened", "clicked", "bounced")
CALL_OUTCOMES = ("answered", "no_answer", "declined")
INFORMATION_QUESTIONS = (
    ("Franchise", "Quelle est la franchise de la formule confort ?"),
    ("Délai de carence", "Quel est le délai de carence pour une maladie ?"),
    ("Races couvertes", "Assurez-vous les chiens de catégorie 2 ?"),
    ("Espace client", "Je n'arrive pas à me connecter à mon espace personnel."),
    ("Résiliation", "Comment résilier mon contrat à l'échéance ?"),
)
RIGHTS = ("access", "erasure", "rectification", "restriction", "portability", "objection")
USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Firefox/125.0",
    "Mozilla/5.0 (Linux; Android 14) Chrome/124.0 Mobile Safari/537.36",
)
ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
LEGAL_HOLD_REASONS = {  # table -> reasons; a few due records of each get a hold
    "customers": ("litigation", "regulator request"),
    "contracts": ("litigation", "open fraud investigation"),
    "claims": ("litigation",),
    "quotes": ("regulator request",),
    "prospects": ("regulator request",),
    "call_recordings": ("litigation", "regulator request"),
    "fraud_cases": ("open fraud investigation",),
    "job_applications": ("litigation",),
    "vet_consultations": ("litigation",),
    "marketing_contacts": ("regulator request",),
    "information_requests": ("regulator request",),
}
ACTIVE_HOLDS_PER_TABLE = 3
RELEASED_HOLD_TABLES = ("contracts", "quotes")  # one released hold each: it no longer protects


@functools.cache
def ascii_slug(text: str) -> str:
    """'Hélène-Marie' -> 'helene-marie': the e-mail form of a name."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum() or ch == "-")


@dataclass(frozen=True)
class Pools:
    """Faker output drawn once, then sampled with the seeded Random."""

    female_first_names: tuple[str, ...]
    male_first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    streets: tuple[str, ...]
    places: tuple[tuple[str, str], ...]  # (postal code, city)
    vet_clinics: tuple[str, ...]
    agents: tuple[str, ...]

    @classmethod
    def build(cls, seed: int, size: int = 2000) -> Pools:
        try:
            from faker import Faker
        except ImportError as exc:  # a dev dependency (requirements-dev.txt)
            raise SeedError("tools.seed needs Faker: pip install -r requirements-dev.txt") from exc
        fake = Faker("fr_FR")
        fake.seed_instance(seed)
        last_names = tuple(fake.last_name() for _ in range(size))
        places = tuple((fake.postcode(), fake.city()) for _ in range(size))
        clinic_patterns = (
            lambda: f"Clinique vétérinaire {fake.last_name()}",
            lambda: f"Cabinet vétérinaire de {fake.city()}",
            lambda: f"Centre hospitalier vétérinaire {fake.city()}",
            lambda: f"Clinique vétérinaire des {fake.last_name()}",
        )
        return cls(
            female_first_names=tuple(fake.first_name_female() for _ in range(size // 2)),
            male_first_names=tuple(fake.first_name_male() for _ in range(size // 2)),
            last_names=last_names,
            streets=tuple(fake.street_address() for _ in range(size)),
            places=places,
            vet_clinics=tuple(clinic_patterns[i % len(clinic_patterns)]() for i in range(size // 4)),
            agents=tuple(f"{fake.first_name()} {fake.last_name()[0]}." for _ in range(60)),
        )


# --------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------


class Generator:
    """Builds the rows one family at a time (a customer with everything under it, a prospect
    with its quotes, a candidate); each family then goes through the retention model."""

    FORMER_CUSTOMER_SHARE = 0.30  # customers whose last contract ended (within the kept window)
    SECOND_PET_SHARE = 0.30
    CUSTOMER_PROSPECT_SHARE = 0.5  # customers who were a prospect first
    CUSTOMER_QUOTE_SHARE = 0.3  # customers with an unconverted quote (another pet, a formula)
    SUPPORT_CALLS_PER_CUSTOMER_YEAR = 0.5
    PHONE_SALE_SHARE = 0.6  # contracts signed on a recorded call
    ANALYSED_CALL_SHARE = 0.25
    ALERTS_PER_CONTRACT_YEAR = 0.08
    ALERT_HISTORY_DAYS = 3 * 365  # older alerts are long gone (their cases too)
    CHATS_PER_CUSTOMER_YEAR = 1.5
    CONSULTATIONS_PER_CUSTOMER_YEAR = 0.6
    EMAIL_MARKETING_SHARE = 0.6  # account holders who accepted promotional e-mails
    PHONE_MARKETING_SHARE = 0.25
    REQUESTS_PER_CUSTOMER_YEAR = 1.0
    RIGHTS_REQUEST_SHARE = 0.05
    OBJECTION_SHARE = 0.08
    COOKIE_CONSENT_SHARE = 0.6

    def __init__(self, *, seed: int, reference_date: dt.date, policy: Policy):
        self.rng = random.Random(seed)
        self.pools = Pools.build(seed)
        self.retention = RetentionModel(policy, reference_date)
        self.tz = self.retention.tz
        # Random data stops at R 00:00 Paris (the snapshot the first run sees); boundary records
        # may fall on day R itself.
        self.snapshot = self.retention.run_date
        self.history_start = self.snapshot - dt.timedelta(days=HISTORY_DAYS)
        self._next_id = {row_type.TABLE: itertools.count(1) for row_type in ROW_TYPES}
        self._family: list[Row] = []
        self.tables: dict[str, list[Row]] = {table: [] for table in TABLES}
        self.hold_candidates: dict[str, list[Row]] = defaultdict(list)
        self.customers_made = 0

    # -- the whole data set ------------------------------------------------------------

    def generate(self, customers: int) -> None:
        for rule in self.retention.rules:
            for clock in self.retention.boundary_clocks(rule):
                self._family_for(rule, clock)
            for clock in self.retention.leap_day_clocks(rule, self.history_start):
                self._family_for(rule, clock)
        self.special_cases()
        while self.customers_made < customers:
            self.customer_family()
            self.flush()
        for _ in range(customers):
            self.prospect_family()
            self.flush()
        for _ in range(max(1, customers // 20)):
            self.job_application()
            self.flush()
        self.visitors(customers // 2)

    def _family_for(self, rule: Rule, clock: dt.datetime) -> None:
        BOUNDARY_BUILDERS[rule.name](self, clock)
        self.flush(on_purpose=True)

    def flush(self, *, on_purpose: bool = False) -> None:
        """Apply the retention model to the family just built, children first: drop what the
        runs until E removed, keep what is referenced by a kept row (it waits)."""
        family = sorted(self._family, key=lambda row: DELETE_ORDER[row.TABLE])
        self._family.clear()
        for row in family:
            if not row.waited_on and self.retention.due_at_enforcement(row):
                row.kept = False
                continue
            for parent in row.parents():
                parent.waited_on = True
            self.tables[row.TABLE].append(row)
            # Holds go on random due records, never on the boundary records made on purpose.
            if not on_purpose and row.TABLE in LEGAL_HOLD_REASONS and self.retention.due_at_run(row):
                self.hold_candidates[row.TABLE].append(row)

    def _take_id(self, row_type: type[Row]) -> int:
        return next(self._next_id[row_type.TABLE])

    def _add(self, row: R) -> R:
        self._family.append(row)
        return row

    def _new(self, row_type: type[R], **fields: Any) -> R:
        return self._add(row_type(id=self._take_id(row_type), **fields))

    # -- random values -----------------------------------------------------------------

    # random.choice/randrange draw integers by rejection sampling in Python; one float draw
    # is several times faster and just as deterministic (most of the run is spent here).
    def pick(self, options: Sequence[T]) -> T:
        return options[int(self.rng.random() * len(options))]

    def integer(self, low: int, high: int) -> int:
        """An int in [low, high)."""
        return low + int(self.rng.random() * (high - low))

    def weighted(self, options: Sequence[T], weights: Sequence[int]) -> T:
        draw = self.rng.random() * sum(weights)
        for option, weight in zip(options, weights, strict=True):
            draw -= weight
            if draw < 0:
                return option
        return options[-1]

    def between(self, start: dt.datetime, end: dt.datetime) -> dt.datetime:
        """A random instant in [start, end), to the second, in Paris time."""
        low, high = math.ceil(start.timestamp()), math.floor(end.timestamp())
        if high <= low:
            return start
        return dt.datetime.fromtimestamp(self.integer(low, high), self.tz)

    def recent_biased(self, start: dt.datetime, end: dt.datetime) -> dt.datetime:
        """An instant in [start, end), more likely recent (a growing business)."""
        span = (end - start).total_seconds()
        age = span * (1 - math.sqrt(1 - self.rng.random()))
        return dt.datetime.fromtimestamp(int(end.timestamp() - age), self.tz)

    def days(self, low: float, high: float) -> dt.timedelta:
        return dt.timedelta(seconds=self.integer(int(low * 86400), int(high * 86400) + 1))

    def poisson(self, mean: float) -> int:
        threshold, count, product = math.exp(-mean), 0, self.rng.random()
        while product > threshold:
            count += 1
            product *= self.rng.random()
        return count

    def cents(self, low: int, high: int) -> Decimal:
        return Decimal(self.integer(low, high)).scaleb(-2)

    def digits(self, n: int) -> str:
        return f"{self.integer(0, 10**n):0{n}d}"

    def token(self, prefix: str, n: int) -> str:
        return prefix + "".join(self.rng.choices(ALPHANUMERIC, k=n))

    def phone(self) -> str:
        prefix = self.pick("67") if self.rng.random() < 0.8 else self.pick("12345")
        return f"+33{prefix}{self.digits(8)}"

    def person(self) -> tuple[str, str, str]:
        """(civility, first name, last name)"""
        if self.rng.random() < 0.5:
            return "Mme", self.pick(self.pools.female_first_names), self.pick(self.pools.last_names)
        return "M.", self.pick(self.pools.male_first_names), self.pick(self.pools.last_names)

    def email(self, first_name: str, last_name: str) -> str:
        suffix = str(self.integer(0, 100)) if self.rng.random() < 0.6 else ""
        return f"{ascii_slug(first_name)}.{ascii_slug(last_name)}{suffix}@{self.pick(EMAIL_DOMAINS)}"

    # -- building blocks -----------------------------------------------------------------

    def new_customer(self, created_at: dt.datetime) -> Customer:
        self.customers_made += 1
        civility, first_name, last_name = self.person()
        postal_code, city = self.pick(self.pools.places)
        age_days = self.integer(20 * 365, 80 * 365)
        return self._new(
            Customer,
            civility=civility,
            first_name=first_name,
            last_name=last_name,
            email=self.email(first_name, last_name),
            phone=self.phone(),
            birth_date=self.snapshot.date() - dt.timedelta(days=age_days),
            birth_place=self.pick(self.pools.places)[1],
            address_line=self.pick(self.pools.streets),
            postal_code=postal_code,
            city=city,
            created_at=created_at,
            last_contact_at=created_at,
            processor_customer_ref=self.token("cus_", 14),
            iban_last4=self.digits(4),
        )

    def touch(self, customer: Customer, at: dt.datetime) -> None:
        """Record a contact with the customer (calls, claims, contract events)."""
        if at > customer.last_contact_at:
            customer.last_contact_at = at

    def customer_prospect_row(self, customer: Customer) -> Prospect:
        """The prospect record a customer had before subscribing."""
        return self._new(
            Prospect,
            first_name=customer.first_name,
            last_name=customer.last_name,
            email=customer.email,
            phone=customer.phone,
            postal_code=customer.postal_code,
            source=self.pick(PROSPECT_SOURCES),
            marketing_opt_in=self.rng.random() < 0.4,
            created_at=customer.created_at - self.days(1, 90),
            last_contact_at=customer.created_at,
            customer=customer,
        )

    def new_pet(self, customer: Customer, insured_from: dt.datetime) -> Pet:
        species = "dog" if self.rng.random() < 0.6 else "cat"
        birth = insured_from.date() - dt.timedelta(days=self.integer(60, 10 * 365))
        return self._new(
            Pet,
            customer=customer,
            name=self.pick(PET_NAMES),
            species=species,
            breed=self.pick(BREEDS[species]),
            sex=self.pick(("male", "female")),
            birth_date=birth,
            microchip=f"250269{self.digits(9)}" if self.rng.random() < 0.9 else None,
        )

    def premium(self, formula: str, species: str) -> Decimal:
        base = FORMULAS[formula] * (13 if species == "dog" else 10) // 10
        return self.cents(base, base + 900)

    def new_contract(
        self,
        customer: Customer,
        pet: Pet,
        started_at: dt.datetime,
        ended_at: dt.datetime | None = None,
        *,
        prospect: Prospect | None = None,
        typical: bool = True,
    ) -> Contract:
        """A contract with its converted quote, payment method and AML check; a typical one
        also gets random claims, the recorded sales call of a phone sale and fraud alerts
        (the records made around a boundary leave them out, to keep their shape fixed)."""
        formula = self.pick(FORMULA_NAMES)
        contract_id = self._take_id(Contract)
        contract = self._add(
            Contract(
                id=contract_id,
                customer=customer,
                pet=pet,
                policy_number=f"DLM-{started_at.year}-{contract_id:08d}",
                formula=formula,
                monthly_premium=self.premium(formula, pet.species),
                started_at=started_at,
                ended_at=ended_at,
                end_reason=self.pick(END_REASONS) if ended_at else None,
            )
        )
        self.touch(customer, min(ended_at or started_at, self.snapshot))
        self.converted_quote(contract, prospect)
        self.payment_method(contract)
        self.aml_check(contract)
        if not typical:
            return contract
        if self.rng.random() < self.PHONE_SALE_SHARE:
            self.call(customer, "contracting", started_at - self.days(0.003, 0.04))
        claims_from = started_at + dt.timedelta(days=1)
        claims_until = min(ended_at or self.snapshot, self.snapshot)
        if claims_from < claims_until:
            for _ in range(self.weighted((0, 1, 2, 3, 4), (35, 30, 20, 10, 5))):
                self.claim(contract, self.between(claims_from, claims_until))
        self.random_alerts(contract)
        return contract

    def converted_quote(self, contract: Contract, prospect: Prospect | None) -> Quote:
        pet = contract.pet
        return self._new(
            Quote,
            customer=contract.customer,
            prospect=prospect,
            email=contract.customer.email,
            pet_name=pet.name,
            species=pet.species,
            breed=pet.breed,
            pet_birth_date=pet.birth_date,
            postal_code=contract.customer.postal_code,
            formula=contract.formula,
            monthly_premium=contract.monthly_premium,
            issued_at=contract.started_at - self.days(0.02, 20),
            contract=contract,
        )

    def unconverted_quote(
        self, issued_at: dt.datetime, *, customer: Customer | None = None, prospect: Prospect | None = None
    ) -> Quote:
        species = "dog" if self.rng.random() < 0.6 else "cat"
        formula = self.pick(FORMULA_NAMES)
        owner = customer or prospect
        return self._new(
            Quote,
            customer=customer,
            prospect=prospect,
            email=owner.email if owner else self.email(*self.person()[1:]),
            pet_name=self.pick(PET_NAMES),
            species=species,
            breed=self.pick(BREEDS[species]),
            pet_birth_date=issued_at.date() - dt.timedelta(days=self.integer(60, 8 * 365)),
            postal_code=owner.postal_code if owner else None,
            formula=formula,
            monthly_premium=self.premium(formula, species),
            issued_at=issued_at,
        )

    def payment_method(self, contract: Contract) -> PaymentMethod:
        """Processor references only: never a card number nor a security code."""
        customer = contract.customer
        by_card = self.rng.random() < 0.55
        expiry_year = (contract.started_at.year + self.integer(1, 5)) % 100
        return self._new(
            PaymentMethod,
            contract=contract,
            kind="card" if by_card else "sepa_debit",
            processor_customer_ref=customer.processor_customer_ref,
            processor_method_ref=self.token("pm_", 24),
            card_brand=self.pick(("visa", "mastercard", "cb")) if by_card else None,
            card_last4=self.digits(4) if by_card else None,
            card_expiry=f"{self.integer(1, 13):02d}/{expiry_year:02d}" if by_card else None,
            iban_last4=None if by_card else customer.iban_last4,
            created_at=contract.started_at,
        )

    def aml_check(self, contract: Contract) -> AmlRecord:
        aml_id = self._take_id(AmlRecord)
        record = AmlRecord(
            id=aml_id,
            customer=contract.customer,
            contract=contract,
            checked_at=contract.started_at + self.days(0, 0.1),
            risk_level=self.weighted(("low", "medium", "high"), (85, 12, 3)),
            pep=self.rng.random() < 0.01,
            sanctions_hit=self.rng.random() < 0.002,
            id_document_no=f"{self.digits(2)}{self.token('', 2).upper()}{self.digits(5)}",
            document_key=f"aml/{aml_id}.pdf" if self.rng.random() < 0.4 else None,
        )
        self._add(record)
        return record

    def claim(self, contract: Contract, submitted_at: dt.datetime, *, paid: bool | None = None) -> Claim:
        """A claim, reimbursed 2-25 days later when paid (the payment must be in the past)."""
        claim_id = self._take_id(Claim)
        amount = self.cents(3000, 250000)
        paid_at = submitted_at + self.days(2, 25) if (self.rng.random() < 0.8 if paid is None else paid) else None
        if paid_at is not None and paid_at >= self.snapshot:
            paid_at = None  # not paid yet
        age = self.snapshot - submitted_at
        if paid_at is not None:
            status = "paid"
        elif age < dt.timedelta(days=10):
            status = "submitted"
        else:
            status = "in_review" if age < dt.timedelta(days=60) else "rejected"
        claim = Claim(
            id=claim_id,
            contract=contract,
            submitted_at=submitted_at,
            treatment_date=submitted_at.date() - dt.timedelta(days=self.integer(0, 20)),
            vet_clinic=self.pick(self.pools.vet_clinics),
            diagnosis=self.pick(DIAGNOSES),
            amount_claimed=amount,
            status=status,
            vet_invoice_key=f"invoices/{claim_id}.pdf" if self.rng.random() < 0.97 else None,
        )
        self._add(claim)
        self.touch(contract.customer, min(submitted_at, self.snapshot))
        if paid_at is not None:
            last4 = contract.customer.iban_last4
            self._new(
                Reimbursement,
                claim=claim,
                paid_at=paid_at,
                amount=(amount * Decimal(self.pick((50, 70, 80, 90))) / 100).quantize(Decimal("0.01")),
                payee_iban_masked=f"FR76 **** **** **** **** ***{last4[0]} {last4[1:]}",
            )
        return claim

    def call(
        self, customer: Customer, reason: str, started_at: dt.datetime, *, analysed: bool | None = None
    ) -> CallRecording:
        call_id = self._take_id(CallRecording)
        recording = CallRecording(
            id=call_id,
            customer=customer,
            phone_number=customer.phone,
            reason=reason,
            started_at=started_at,
            duration_s=self.integer(45, 1800),
            agent_name=self.pick(self.pools.agents),
            audio_key=f"calls/{call_id}.mp3" if self.rng.random() < 0.98 else None,
        )
        self._add(recording)
        self.touch(customer, min(started_at, self.snapshot))
        if analysed is None:
            analysed = self.rng.random() < self.ANALYSED_CALL_SHARE
        created_at = started_at + self.days(1, 14)
        if analysed and created_at < self.snapshot:
            self.call_analysis(recording, created_at)
        return recording

    def call_analysis(self, recording: CallRecording, created_at: dt.datetime) -> CallAnalysis:
        analysis_id = self._take_id(CallAnalysis)
        analysis = CallAnalysis(
            id=analysis_id,
            call_recording=recording,
            created_at=created_at,
            analyst=self.pick(self.pools.agents),
            score=self.integer(1, 11),
            summary=self.pick(ANALYSIS_SUMMARIES),
            document_key=f"call-analyses/{analysis_id}.pdf",
        )
        self._add(analysis)
        return analysis

    def alert(
        self,
        contract: Contract,
        raised_at: dt.datetime,
        status: str,
        qualified_at: dt.datetime | None = None,
        fraud_case: FraudCase | None = None,
    ) -> FraudAlert:
        rule_code = self.pick(FRAUD_RULE_CODES)
        return self._new(
            FraudAlert,
            contract=contract,
            raised_at=raised_at,
            rule_code=rule_code,
            details=FRAUD_RULES[rule_code],
            status=status,
            qualified_at=qualified_at,
            fraud_case=fraud_case,
        )

    def fraud_case(self, opened_at: dt.datetime, closed_at: dt.datetime | None) -> FraudCase:
        return self._new(
            FraudCase,
            opened_at=opened_at,
            closed_at=closed_at,
            outcome=self.pick(CASE_OUTCOMES) if closed_at else None,
            summary=self.pick(CASE_SUMMARIES),
        )

    def random_alerts(self, contract: Contract) -> None:
        """Alerts raised while the contract ran: qualified within weeks (a few never are),
        mostly not relevant; a relevant one opens a case that stays open for months."""
        since = max(contract.started_at, self.snapshot - dt.timedelta(days=self.ALERT_HISTORY_DAYS))
        until = min(contract.ended_at or self.snapshot, self.snapshot)
        if until <= since:
            return
        years = (until - since).days / 365
        for _ in range(self.poisson(self.ALERTS_PER_CONTRACT_YEAR * years)):
            raised_at = self.between(since, until)
            qualified_at = raised_at + self.days(1, 60)
            roll = self.rng.random()
            if roll < 0.08 or qualified_at >= self.snapshot:
                self.alert(contract, raised_at, "pending")
            elif roll < 0.80:
                self.alert(contract, raised_at, "not_relevant", qualified_at)
            else:
                closed_at = qualified_at + self.days(90, 900)
                case = self.fraud_case(qualified_at, closed_at if closed_at < self.snapshot else None)
                self.alert(contract, raised_at, "relevant", qualified_at, case)

    # -- random families -----------------------------------------------------------------

    def customer_family(self) -> None:
        """A customer with 1-2 pets, each insured by a contract; a former customer's contracts
        have all ended, the last one at relationship_ended_at."""
        former = self.rng.random() < self.FORMER_CUSTOMER_SHARE
        if former:
            relationship_end = self.between(self.retention.kept_since("former_customers"), self.snapshot)
            first_start = self.between(self.history_start, relationship_end - dt.timedelta(days=30))
        else:
            relationship_end = None
            first_start = self.recent_biased(self.history_start, self.snapshot - dt.timedelta(days=1))
        customer = self.new_customer(first_start - self.days(0.05, 3))
        prospect = self.customer_prospect_row(customer) if self.rng.random() < self.CUSTOMER_PROSPECT_SHARE else None
        until = relationship_end or self.snapshot
        starts = [first_start]
        if self.rng.random() < self.SECOND_PET_SHARE:
            starts.append(self.between(first_start, until))
        last = self.integer(0, len(starts))  # the contract that ends the relationship
        for index, started_at in enumerate(starts):
            if former:
                ended_at = relationship_end if index == last else self.between(started_at, relationship_end)
            elif index == 0 or self.rng.random() < 0.75:
                ended_at = None
            else:
                ended_at = self.between(started_at, self.snapshot)
            pet = self.new_pet(customer, started_at)
            self.new_contract(customer, pet, started_at, ended_at, prospect=prospect if index == 0 else None)
        customer.relationship_ended_at = relationship_end
        if self.rng.random() < self.CUSTOMER_QUOTE_SHARE:
            since = max(customer.created_at, self.retention.kept_since("unconverted_quotes"))
            if since < self.snapshot:
                quote = self.unconverted_quote(self.between(since, self.snapshot), customer=customer)
                self.touch(customer, quote.issued_at)
        self.support_calls(customer)
        self.customer_services(customer, [contract.pet for contract in self._family if isinstance(contract, Contract)])

    def support_calls(self, customer: Customer) -> None:
        # Calls old enough for both the recording and its analysis to be gone are not made up.
        since = max(customer.created_at, self.retention.kept_since("call_analyses") - dt.timedelta(days=14))
        if since >= self.snapshot:
            return
        years = (self.snapshot - since).days / 365
        for _ in range(self.poisson(self.SUPPORT_CALLS_PER_CUSTOMER_YEAR * years)):
            reason = "claims" if self.rng.random() < 0.6 else "quality"
            self.call(customer, reason, self.between(since, self.snapshot))

    def prospect_family(self) -> None:
        """Someone who asked for quotes and never subscribed."""
        last_contact = self.between(self.retention.kept_since("prospects"), self.snapshot)
        created_at = max(self.history_start, last_contact - self.days(0, 400))
        _, first_name, last_name = self.person()
        postal_code, _ = self.pick(self.pools.places)
        anonymous = self.rng.random() < 0.2  # left only an e-mail address
        prospect = self._new(
            Prospect,
            first_name=None if anonymous else first_name,
            last_name=None if anonymous else last_name,
            email=self.email(first_name, last_name),
            phone=None if anonymous else self.phone(),
            postal_code=postal_code,
            source=self.pick(PROSPECT_SOURCES),
            marketing_opt_in=self.rng.random() < 0.3,
            created_at=created_at,
            last_contact_at=last_contact,
        )
        for _ in range(self.weighted((0, 1, 2), (30, 50, 20))):
            self.unconverted_quote(self.between(created_at, last_contact), prospect=prospect)
        self.prospect_extras(prospect)

    def job_application(
        self, *, hired: bool | None = None, last_contact_at: dt.datetime | None = None
    ) -> JobApplication:
        if hired is None:
            hired = self.rng.random() < 0.10
        if last_contact_at is None:
            if hired:  # hired candidates are kept whatever their age
                last_contact_at = self.between(self.history_start, self.snapshot - dt.timedelta(days=30))
            else:
                last_contact_at = self.between(self.retention.kept_since("candidates_not_recruited"), self.snapshot)
        _, first_name, last_name = self.person()
        application_id = self._take_id(JobApplication)
        application = JobApplication(
            id=application_id,
            first_name=first_name,
            last_name=last_name,
            email=self.email(first_name, last_name),
            phone=self.phone(),
            city=self.pick(self.pools.places)[1],
            position=self.pick(POSITIONS),
            applied_at=last_contact_at - self.days(0, 90),
            last_contact_at=last_contact_at,
            hired=hired,
            cv_key=f"cvs/{application_id}.pdf" if self.rng.random() < 0.95 else None,
        )
        self._add(application)
        return application

    # -- records with a chosen clock (boundaries, leap days, NULL clocks) ----------------

    def active_customer(self, contract_started_at: dt.datetime) -> tuple[Customer, Contract]:
        """A customer with one running contract, and no random claims, calls or alerts."""
        customer = self.new_customer(contract_started_at - self.days(0.05, 3))
        pet = self.new_pet(customer, contract_started_at)
        contract = self.new_contract(customer, pet, contract_started_at, None, typical=False)
        return customer, contract

    def prospect_quote_issued_at(self, clock: dt.datetime) -> None:
        prospect = self.prospect_last_contacted_at(clock)
        self.unconverted_quote(clock, prospect=prospect)

    def prospect_last_contacted_at(self, clock: dt.datetime) -> Prospect:
        _, first_name, last_name = self.person()
        return self._new(
            Prospect,
            first_name=first_name,
            last_name=last_name,
            email=self.email(first_name, last_name),
            phone=self.phone(),
            postal_code=self.pick(self.pools.places)[0],
            source=self.pick(PROSPECT_SOURCES),
            marketing_opt_in=False,
            created_at=clock - self.days(1, 60),
            last_contact_at=clock,
        )

    def contract_ended_at(self, clock: dt.datetime) -> None:
        """A customer whose only contract ended at the clock: a paid claim (with its
        reimbursement), an unpaid one (nothing under it: it does not wait), payment method,
        AML check, converted quote."""
        started_at = clock - self.days(400, 1500)
        customer = self.new_customer(started_at - self.days(0.05, 3))
        pet = self.new_pet(customer, started_at)
        contract = self.new_contract(customer, pet, started_at, clock, typical=False)
        self.claim(contract, clock - self.days(60, 90), paid=True)
        self.claim(contract, clock - self.days(20, 50), paid=False)
        customer.relationship_ended_at = clock

    def relationship_ended_at(self, clock: dt.datetime) -> None:
        """A former customer (with the prospect record it came from) whose last contract
        ended at the clock; the contract itself is long gone if the clock is old."""
        started_at = clock - self.days(300, 1500)
        customer = self.new_customer(started_at - self.days(0.05, 3))
        prospect = self.customer_prospect_row(customer)
        pet = self.new_pet(customer, started_at)
        self.new_contract(customer, pet, started_at, clock, prospect=prospect, typical=False)
        customer.relationship_ended_at = clock

    def call_analysis_created_at(self, clock: dt.datetime) -> None:
        customer, _ = self.active_customer(clock - self.days(200, 2000))
        recording = self.call(customer, "quality", clock - self.days(1, 10), analysed=False)
        self.call_analysis(recording, clock)

    def contracting_call_at(self, clock: dt.datetime) -> None:
        customer, _ = self.active_customer(clock + dt.timedelta(minutes=20))
        self.call(customer, "contracting", clock, analysed=False)

    def support_call_at(self, clock: dt.datetime) -> None:
        customer, _ = self.active_customer(clock - self.days(30, 1500))
        self.call(customer, self.pick(("quality", "claims")), clock, analysed=False)

    def pending_alert_raised_at(self, clock: dt.datetime) -> None:
        _, contract = self.active_customer(clock - self.days(30, 1500))
        self.alert(contract, clock, "pending")

    def alert_dismissed_at(self, clock: dt.datetime) -> None:
        _, contract = self.active_customer(clock - self.days(30, 1500))
        self.alert(contract, clock - self.days(1, 20), "not_relevant", qualified_at=clock)

    def fraud_case_closed_at(self, clock: dt.datetime) -> None:
        _, contract = self.active_customer(clock - self.days(400, 1500))
        opened_at = clock - self.days(60, 300)
        case = self.fraud_case(opened_at, clock)
        self.alert(contract, opened_at - self.days(1, 30), "relevant", opened_at, case)

    def candidate_last_contacted_at(self, clock: dt.datetime) -> None:
        self.job_application(hired=False, last_contact_at=clock)

    def special_cases(self) -> None:
        """Records no rule may ever select, whatever their age."""
        # A ten-year-old running contract: NULL end, its claims stay.
        _, contract = self.active_customer(self.history_start + dt.timedelta(days=10))
        self.claim(contract, self.history_start + dt.timedelta(days=400), paid=True)
        # A fraud case open for two years (NULL closed_at) and a fresh pending alert.
        opened_at = self.snapshot - dt.timedelta(days=730)
        case = self.fraud_case(opened_at, None)
        self.alert(contract, opened_at - dt.timedelta(days=3), "relevant", opened_at, case)
        self.alert(contract, self.snapshot - dt.timedelta(days=10), "pending")
        # Hired candidates, last contacted long ago.
        for years_ago in (8, 3):
            self.job_application(hired=True, last_contact_at=self.snapshot - dt.timedelta(days=365 * years_ago))
        self.flush(on_purpose=True)

    # -- the rest of the policy's schedule (issue 9) -------------------------------------

    def _activity_since(self, rule_name: str, slack_days: float, customer: Customer) -> dt.datetime | None:
        """The first instant worth generating activity for under a rule (older rows are gone
        by E anyway), or None when the customer has no such window."""
        since = max(customer.created_at, self.retention.kept_since(rule_name) - dt.timedelta(days=slack_days))
        until = min(customer.relationship_ended_at or self.snapshot, self.snapshot)
        return since if since < until else None

    def chat_message(
        self, customer: Customer, sent_at: dt.datetime, transmitted_at: dt.datetime | None, conversation: str
    ) -> ChatMessage:
        sender = self.weighted(("customer", "support", "vet"), (50, 35, 15))
        return self._new(
            ChatMessage,
            customer=customer,
            conversation_ref=conversation,
            sender=sender,
            sent_at=sent_at,
            body=self.pick(CHAT_LINES[sender]),
            transmitted_at=transmitted_at,
        )

    def consultation(
        self, customer: Customer, pet: Pet | None, requested_at: dt.datetime, transmitted_at: dt.datetime | None
    ) -> VetConsultation:
        channel = self.weighted(("chat", "phone", "video"), (40, 35, 25))
        scheduled = requested_at + self.days(0.01, 1)
        return self._new(
            VetConsultation,
            customer=customer,
            pet=pet,
            service=self.pick(("tele_advice", "tele_triage")),
            channel=channel,
            requested_at=requested_at,
            scheduled_at=scheduled if channel == "video" else None,
            video_link=f"https://visio.vetophonie.example/{self.token('', 10)}" if channel == "video" else None,
            vet_name=f"Dr {self.pick(self.pools.last_names)}",
            reason=self.pick(CONSULTATION_REASONS),
            transmitted_at=transmitted_at,
        )

    def marketing_contact(
        self,
        channel: str,
        last_contact_at: dt.datetime,
        *,
        customer: Customer | None = None,
        prospect: Prospect | None = None,
        since: dt.datetime | None = None,
    ) -> MarketingContact:
        """A contact record with its history: 1-4 messages, the last one at the last contact."""
        owner = customer or prospect
        created_at = min(since or last_contact_at - self.days(30, 900), last_contact_at)
        contact = self._new(
            MarketingContact,
            customer=customer,
            prospect=prospect,
            channel=channel,
            address=owner.email if channel == "email" else (owner.phone or self.phone()),
            opted_in_at=created_at if channel == "email" else None,
            opted_out_at=None,
            created_at=created_at,
            last_contact_at=last_contact_at,
        )
        sent = [last_contact_at] + [self.between(created_at, last_contact_at) for _ in range(self.integer(0, 4))]
        outcomes = EMAIL_OUTCOMES if channel == "email" else CALL_OUTCOMES
        for sent_at in sorted(sent):
            self._new(
                MarketingMessage,
                contact=contact,
                campaign=self.pick(CAMPAIGNS),
                sent_at=sent_at,
                outcome=self.pick(outcomes),
            )
        return contact

    def information_request(
        self,
        received_at: dt.datetime,
        handled_at: dt.datetime | None,
        *,
        customer: Customer | None = None,
        prospect: Prospect | None = None,
    ) -> InformationRequest:
        subject, message = self.pick(INFORMATION_QUESTIONS)
        owner = customer or prospect
        return self._new(
            InformationRequest,
            customer=customer,
            prospect=prospect,
            channel="chat" if customer and self.rng.random() < 0.7 else "contact_form",
            email=owner.email if owner else self.email(*self.person()[1:]),
            subject=subject,
            message=message,
            received_at=received_at,
            handled_at=handled_at,
            handled_by=self.pick(self.pools.agents) if handled_at else None,
        )

    def identity_document(
        self, received_at: dt.datetime, checked_at: dt.datetime | None, *, customer: Customer | None = None
    ) -> IdentityDocument:
        doc_id = self._take_id(IdentityDocument)
        status = ("verified" if self.rng.random() < 0.9 else "rejected") if checked_at else "pending"
        return self._add(
            IdentityDocument(
                id=doc_id,
                customer=customer,
                prospect=None,
                right_exercised=self.weighted(RIGHTS, (40, 15, 25, 5, 5, 10)),
                document_type=self.weighted(("id_card", "passport", "residence_permit"), (75, 20, 5)),
                received_at=received_at,
                status=status,
                checked_at=checked_at,
                document_key=f"identity/{doc_id}.pdf",
            )
        )

    def objection(
        self,
        received_at: dt.datetime,
        *,
        email: str | None,
        phone: str | None,
        customer: Customer | None = None,
        prospect: Prospect | None = None,
    ) -> MarketingObjection:
        channel = "all" if email and phone else ("email" if email else "phone")
        return self._new(
            MarketingObjection,
            customer=customer,
            prospect=prospect,
            channel=channel,
            email_sha256=email_hash(email) if email else None,
            phone_sha256=phone_hash(phone) if phone else None,
            source=self.weighted(("rights_request", "unsubscribe_link", "phone_call"), (20, 60, 20)),
            received_at=received_at,
        )

    def cookie_consent(self, recorded_at: dt.datetime, customer: Customer | None = None) -> CookieConsent:
        choice = self.weighted(("accepted_all", "refused_all", "customised"), (55, 30, 15))
        picks = [choice == "accepted_all" or (choice == "customised" and self.rng.random() < 0.5) for _ in range(4)]
        return self._new(
            CookieConsent,
            visitor_id=self.token("ax_", 20),
            customer=customer,
            choice=choice,
            analytics=picks[0],
            advertising=picks[1],
            social_networks=picks[2],
            personalisation=picks[3],
            recorded_at=recorded_at,
            ip_truncated=f"{self.integer(2, 223)}.{self.integer(0, 256)}.{self.integer(0, 256)}.0",
            user_agent=self.pick(USER_AGENTS),
        )

    def customer_services(self, customer: Customer, pets: list[Pet]) -> None:
        """What a customer leaves in the tables of the later purposes, only where it can still
        be in the database at R (each table's own clock; no activity after the relationship)."""
        until = min(customer.relationship_ended_at or self.snapshot, self.snapshot)
        # Chat conversations and tele-consultations, transmitted to VETOPHONIE within days.
        if since := self._activity_since("chat_messages", 5, customer):
            for _ in range(self.poisson(self.CHATS_PER_CUSTOMER_YEAR * (until - since).days / 365)):
                started = self.between(since, until)
                conversation = self.token("conv_", 12)
                for index in range(self.integer(1, 5)):
                    sent_at = started + dt.timedelta(minutes=3 * index)
                    transmitted = sent_at + self.days(0.01, 3)
                    self.chat_message(
                        customer, sent_at, transmitted if transmitted < self.snapshot else None, conversation
                    )
        if since := self._activity_since("vet_consultations", 3, customer):
            for _ in range(self.poisson(self.CONSULTATIONS_PER_CUSTOMER_YEAR * (until - since).days / 365)):
                requested = self.between(since, until)
                transmitted = requested + self.days(0.02, 2)
                pet = self.pick(pets) if pets else None
                self.consultation(customer, pet, requested, transmitted if transmitted < self.snapshot else None)
        # Promotional e-mails (account holders) and calls, each channel on its own clock.
        for channel, share in (("email", self.EMAIL_MARKETING_SHARE), ("phone", self.PHONE_MARKETING_SHARE)):
            if self.rng.random() < share and (since := self._activity_since(f"{channel}_contacts", 0, customer)):
                last = self.between(since, until)
                self.marketing_contact(channel, last, customer=customer, since=customer.created_at)
                self.touch(customer, last)
        # Questions through the chat or the contact form, handled within days.
        if since := self._activity_since("handled_requests", 10, customer):
            for _ in range(self.poisson(self.REQUESTS_PER_CUSTOMER_YEAR * (until - since).days / 365)):
                received = self.between(since, until)
                handled = received + self.days(0.01, 10)
                self.information_request(received, handled if handled < self.snapshot else None, customer=customer)
        if self.rng.random() < self.RIGHTS_REQUEST_SHARE and (
            since := self._activity_since("checked_identity_documents", 15, customer)
        ):
            received = self.between(since, until)
            checked = received + self.days(0.5, 15)
            self.identity_document(received, checked if checked < self.snapshot else None, customer=customer)
        if self.rng.random() < self.OBJECTION_SHARE and (
            since := self._activity_since("marketing_objections", 0, customer)
        ):
            self.objection(self.between(since, until), email=customer.email, phone=customer.phone, customer=customer)
        if self.rng.random() < self.COOKIE_CONSENT_SHARE and (
            since := self._activity_since("cookie_choices", 0, customer)
        ):
            self.cookie_consent(self.between(since, until), customer)

    def prospect_extras(self, prospect: Prospect) -> None:
        """Promotional calls, a question, an objection: a prospect's rows in the later purposes."""
        if prospect.phone and self.rng.random() < self.PHONE_MARKETING_SHARE:
            # A promotional call is a contact: the prospect's last contact is the last call.
            self.marketing_contact("phone", prospect.last_contact_at, prospect=prospect, since=prospect.created_at)
        since = max(prospect.created_at, self.retention.kept_since("handled_requests") - dt.timedelta(days=10))
        if self.rng.random() < 0.2 and since < prospect.last_contact_at:
            received = self.between(since, prospect.last_contact_at)
            handled = received + self.days(0.01, 10)
            self.information_request(received, handled if handled < self.snapshot else None, prospect=prospect)
        since = max(prospect.created_at, self.retention.kept_since("marketing_objections"))
        if self.rng.random() < self.OBJECTION_SHARE and since < prospect.last_contact_at:
            received = self.between(since, prospect.last_contact_at)
            self.objection(received, email=prospect.email, phone=prospect.phone, prospect=prospect)

    def visitors(self, count: int) -> None:
        """Site visitors who are neither customers nor prospects: cookie choices, a question."""
        for _ in range(count):
            since = self.retention.kept_since("cookie_choices")
            self.cookie_consent(self.between(since, self.snapshot))
            if self.rng.random() < 0.1:
                received = self.between(
                    self.retention.kept_since("handled_requests") - dt.timedelta(days=10), self.snapshot
                )
                handled = received + self.days(0.01, 10)
                self.information_request(received, handled if handled < self.snapshot else None)
            self.flush()

    # Boundary records: the rule's clock at a chosen instant.

    def chat_transmitted_at(self, clock: dt.datetime) -> None:
        customer, _ = self.active_customer(clock - self.days(30, 1500))
        self.chat_message(customer, clock - self.days(0.01, 2), clock, self.token("conv_", 12))

    def consultation_transmitted_at(self, clock: dt.datetime) -> None:
        customer, contract = self.active_customer(clock - self.days(30, 1500))
        self.consultation(customer, contract.pet, clock - self.days(0.02, 2), clock)

    def marketing_contacted_at(self, channel: str, clock: dt.datetime) -> None:
        customer, _ = self.active_customer(clock - self.days(30, 1500))
        self.marketing_contact(channel, clock, customer=customer, since=customer.created_at)

    def request_handled_at(self, clock: dt.datetime) -> None:
        self.information_request(clock - self.days(0.01, 10), clock)

    def identity_checked_at(self, clock: dt.datetime) -> None:
        customer, _ = self.active_customer(clock - self.days(30, 1500))
        self.identity_document(clock - self.days(0.5, 15), clock, customer=customer)

    def objection_received_at(self, clock: dt.datetime) -> None:
        _, first_name, last_name = self.person()
        self.objection(clock, email=self.email(first_name, last_name), phone=self.phone())

    def cookie_choice_at(self, clock: dt.datetime) -> None:
        self.cookie_consent(clock)

    # -- legal holds -------------------------------------------------------------------

    def legal_holds(self) -> list[tuple[Any, ...]]:
        """A few due records of several tables under hold; one released hold on a couple."""
        holds: list[tuple[Any, ...]] = []
        for table, reasons in LEGAL_HOLD_REASONS.items():
            wanted = ACTIVE_HOLDS_PER_TABLE + (1 if table in RELEASED_HOLD_TABLES else 0)
            candidates = self.hold_candidates.get(table, [])
            for index, row in enumerate(self.rng.sample(candidates, min(wanted, len(candidates)))):
                placed_at = self.snapshot - self.days(5, 400)
                released_at = placed_at + self.days(1, 4) if index >= ACTIVE_HOLDS_PER_TABLE else None
                holds.append((len(holds) + 1, table, row.id, reasons[index % len(reasons)], placed_at, released_at))
        return holds


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _table_counts(cur: Any) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        counts[table] = cur.execute(f"SELECT count(*) FROM app.{table}").fetchone()[0]
    counts["legal_holds"] = cur.execute("SELECT count(*) FROM retention.legal_holds").fetchone()[0]
    return counts


def _truncate_all(cur: Any) -> None:
    tables = [
        f"{schema}.{name}"
        for schema, name in cur.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('app', 'retention') "
            "ORDER BY schemaname, tablename"
        ).fetchall()
    ]
    if tables:
        cur.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def _copy_rows(cur: Any, table: str, columns: tuple[str, ...], rows: Any) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _reset_sequence(cur: Any, table: str) -> None:
    # Later inserts (tests, the application) must not collide with the explicit ids.
    cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 0) + 1, false) FROM {table}")


def document_keys(generator: Generator) -> list[str]:
    """Every non-NULL *_key value of the kept rows."""
    keys = []
    for row_type in ROW_TYPES:
        positions = [i for i, column in enumerate(row_type.COLUMNS) if column.endswith("_key")]
        for row in generator.tables[row_type.TABLE] if positions else ():
            values = row.values()
            keys.extend(values[i] for i in positions if values[i] is not None)
    return keys


def synthetic_document(key: str) -> tuple[bytes, str]:
    """A few hundred bytes that look like the file type; no personal data."""
    if key.endswith(".mp3"):
        header, content_type = b"ID3\x03\x00\x00\x00\x00\x00\x00", "audio/mpeg"
    else:
        header, content_type = b"%PDF-1.4\n", "application/pdf"
    body = header + f"% synthetic test document {key}; generated by tools/seed.py, not personal data\n".encode()
    return body.ljust(320, b"%"), content_type


def ensure_bucket(s3_client: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        s3_client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    region = s3_client.meta.region_name
    options = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3_client.create_bucket(Bucket=bucket, **options)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise


def upload_documents(s3_client: Any, bucket: str, keys: list[str], *, threads: int = UPLOAD_THREADS) -> int:
    """Upload one synthetic file per key, SHA-256 checksummed and encrypted at rest."""
    ensure_bucket(s3_client, bucket)

    def upload(share: list[str]) -> int:
        for key in share:
            body, content_type = synthetic_document(key)
            s3_client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                ServerSideEncryption="AES256",
            )
        return len(share)

    # One interleaved share per thread: thousands of keys without thousands of futures.
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed-upload") as pool:
        return sum(pool.map(upload, [keys[i::threads] for i in range(threads)]))


def seed_database(
    dsn: str,
    *,
    customers: int,
    seed: int = 42,
    reference_date: dt.date,
    s3_client: Any = None,
    documents_bucket: str | None = None,
    reset: bool = False,
) -> dict[str, int]:
    """Fill schema `app` (and retention.legal_holds) with synthetic data; return row counts.

    Without ``reset``, a database whose app.customers has rows is left alone. With ``reset``,
    every table of schemas `app` and `retention` is emptied first (WARNING: all of it).
    Documents (when ``s3_client`` and ``documents_bucket`` are given) are uploaded before the
    rows are loaded, and the load is one transaction: a failure leaves the database as it
    was (at worst with objects nobody references, overwritten by the next seed).
    """
    import psycopg

    if customers < 0:
        raise ValueError("customers must be >= 0")
    if (s3_client is None) != (documents_bucket is None):
        raise ValueError("give both s3_client and documents_bucket, or neither")
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        # Two seeders at once (make demo twice) would interleave their COPYs.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('retention:seed'))")
        if not reset and cur.execute("SELECT EXISTS (SELECT 1 FROM app.customers)").fetchone()[0]:
            print("the database is already seeded (app.customers has rows): nothing done; use --reset to reseed")
            return _table_counts(cur)

        generator = Generator(seed=seed, reference_date=reference_date, policy=default_policy())
        generator.generate(customers)
        if s3_client is not None:
            upload_documents(s3_client, documents_bucket, document_keys(generator))
        # Table locks from here to the commit only: not while generating or uploading.
        if reset:
            _truncate_all(cur)
        for table in TABLES:
            row_type = ROW_TYPES[DELETE_ORDER[table]]
            _copy_rows(cur, f"app.{table}", row_type.COLUMNS, (row.values() for row in generator.tables[table]))
            _reset_sequence(cur, f"app.{table}")
        holds = generator.legal_holds()
        _copy_rows(
            cur, "retention.legal_holds", ("id", "table_name", "record_id", "reason", "placed_at", "released_at"), holds
        )
        _reset_sequence(cur, "retention.legal_holds")
        counts = {table: len(generator.tables[table]) for table in TABLES}
        counts["legal_holds"] = len(holds)
    # Fresh statistics: the retention queries run right after a seed.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE " + ", ".join(f"app.{table}" for table in TABLES) + ", retention.legal_holds")
    return counts


def _s3_client(endpoint_url: str | None, region: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("SOURCE_DSN"), help="libpq URI of the source database (default: $SOURCE_DSN)"
    )
    parser.add_argument(
        "--customers", type=int, required=True, help="number of customers; everything else scales from it"
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="random seed (default 42): same seed and arguments, same data"
    )
    parser.add_argument(
        "--reference-date",
        type=dt.date.fromisoformat,
        default=None,
        help="YYYY-MM-DD: the date the data is seen from (default: today in Europe/Paris)",
    )
    parser.add_argument(
        "--s3-endpoint",
        help="S3 endpoint URL for the documents (a local S3 server); AWS when omitted with --documents-bucket",
    )
    parser.add_argument("--s3-region", default=os.environ.get("AWS_DEFAULT_REGION", "eu-west-3"))
    parser.add_argument(
        "--documents-bucket",
        help="bucket for the files named by *_key columns (default: the policy's, with --s3-endpoint)",
    )
    parser.add_argument(
        "--reset", action="store_true", help="WARNING: empties every table of schemas app and retention first"
    )
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or SOURCE_DSN) is required")
    policy = default_policy()
    reference_date = args.reference_date or dt.datetime.now(policy.tz).date()
    bucket = args.documents_bucket
    if bucket is None and args.s3_endpoint:
        bucket = policy.storage_settings().documents_bucket
    s3_client = _s3_client(args.s3_endpoint, args.s3_region) if bucket else None

    started = time.monotonic()
    counts = seed_database(
        args.dsn,
        customers=args.customers,
        seed=args.seed,
        reference_date=reference_date,
        s3_client=s3_client,
        documents_bucket=bucket,
        reset=args.reset,
    )
    width = max(map(len, counts))
    for table, count in counts.items():
        print(f"{table:<{width}}  {count:>10,}")
    print(f"reference date {reference_date}, seed {args.seed}: {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
