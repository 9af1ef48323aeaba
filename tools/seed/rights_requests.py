"""The rights_requests purpose (include/sql/rights_requests/): the identity documents sent with a
request to exercise a right, the objections to marketing (kept as hashes, for the suppression
list), the two rules that remove them, and the requests and objections of customers and prospects.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from retention.rights.suppression import email_hash, phone_hash

from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.prospects import Customer, Prospect, activity_since, activity_until
from tools.seed.rows import Row, id_of, kept_id

RIGHTS_REQUEST_SHARE = 0.05
OBJECTION_SHARE = 0.08
RIGHTS = ("access", "erasure", "rectification", "restriction", "portability", "objection")


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
        return (self.id, id_of(self.customer), id_of(self.prospect), self.right_exercised,
                self.document_type, self.received_at, self.status, self.checked_at,
                self.document_key)  # fmt: skip


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
        return (self.id, kept_id(self.customer), kept_id(self.prospect), self.channel,
                self.email_sha256, self.phone_sha256, self.source, self.received_at)  # fmt: skip


RULE_CLOCKS: dict[str, RuleClock] = {
    "checked_identity_documents": RuleClock(
        "identity_documents", lambda d: d.checked_at if d.status in ("verified", "rejected") else None
    ),
    "marketing_objections": RuleClock("marketing_objections", lambda o: o.received_at),
}


def identity_document(
    gen: Builder, received_at: dt.datetime, checked_at: dt.datetime | None, *, customer: Customer | None = None
) -> IdentityDocument:
    doc_id = gen.take_id(IdentityDocument)
    status = ("verified" if gen.rng.random() < 0.9 else "rejected") if checked_at else "pending"
    return gen.add(
        IdentityDocument(
            id=doc_id,
            customer=customer,
            prospect=None,
            right_exercised=gen.weighted(RIGHTS, (40, 15, 25, 5, 5, 10)),
            document_type=gen.weighted(("id_card", "passport", "residence_permit"), (75, 20, 5)),
            received_at=received_at,
            status=status,
            checked_at=checked_at,
            document_key=f"identity/{doc_id}.pdf",
        )
    )


def objection(
    gen: Builder,
    received_at: dt.datetime,
    *,
    email: str | None,
    phone: str | None,
    customer: Customer | None = None,
    prospect: Prospect | None = None,
) -> MarketingObjection:
    channel = "all" if email and phone else ("email" if email else "phone")
    return gen.new(
        MarketingObjection,
        customer=customer,
        prospect=prospect,
        channel=channel,
        email_sha256=email_hash(email) if email else None,
        phone_sha256=phone_hash(phone) if phone else None,
        source=gen.weighted(("rights_request", "unsubscribe_link", "phone_call"), (20, 60, 20)),
        received_at=received_at,
    )


def customer_activity(gen: Builder, customer: Customer) -> None:
    """A request to exercise a right (its identity document checked within days), an objection."""
    until = activity_until(gen, customer)
    if gen.rng.random() < RIGHTS_REQUEST_SHARE and (
        since := activity_since(gen, "checked_identity_documents", 15, customer)
    ):
        received = gen.between(since, until)
        checked = received + gen.days(0.5, 15)
        identity_document(gen, received, checked if checked < gen.snapshot else None, customer=customer)
    if gen.rng.random() < OBJECTION_SHARE and (since := activity_since(gen, "marketing_objections", 0, customer)):
        objection(gen, gen.between(since, until), email=customer.email, phone=customer.phone, customer=customer)


def prospect_activity(gen: Builder, prospect: Prospect) -> None:
    since = max(prospect.created_at, gen.retention.kept_since("marketing_objections"))
    if gen.rng.random() < OBJECTION_SHARE and since < prospect.last_contact_at:
        received = gen.between(since, prospect.last_contact_at)
        objection(gen, received, email=prospect.email, phone=prospect.phone, prospect=prospect)
