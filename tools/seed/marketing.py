"""The marketing purpose (include/sql/marketing/): promotional contacts by e-mail and phone with
their history of messages, the four rules that remove them from the last contact, and the
promotional e-mails and calls of customers and prospects.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.prospects import Customer, Prospect, activity_since, activity_until, touch
from tools.seed.rows import Row, id_of

EMAIL_MARKETING_SHARE = 0.6  # account holders who accepted promotional e-mails
PHONE_MARKETING_SHARE = 0.25
CAMPAIGNS = ("parrainage-2024", "printemps-chiots", "rentree-chats", "formule-premium", "black-friday", "newsletter")
EMAIL_OUTCOMES = ("sent", "opened", "clicked", "bounced")
CALL_OUTCOMES = ("answered", "no_answer", "declined")


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
        return (self.id, id_of(self.customer), id_of(self.prospect), self.channel, self.address,
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


RULE_CLOCKS: dict[str, RuleClock] = {
    "email_history": RuleClock(
        "marketing_messages", lambda m: m.contact.last_contact_at if m.contact.channel == "email" else None
    ),
    "phone_history": RuleClock(
        "marketing_messages", lambda m: m.contact.last_contact_at if m.contact.channel == "phone" else None
    ),
    "email_contacts": RuleClock("marketing_contacts", lambda c: c.last_contact_at if c.channel == "email" else None),
    "phone_contacts": RuleClock("marketing_contacts", lambda c: c.last_contact_at if c.channel == "phone" else None),
}


def marketing_contact(
    gen: Builder,
    channel: str,
    last_contact_at: dt.datetime,
    *,
    customer: Customer | None = None,
    prospect: Prospect | None = None,
    since: dt.datetime | None = None,
) -> MarketingContact:
    """A contact record with its history: 1-4 messages, the last one at the last contact."""
    owner = customer or prospect
    created_at = min(since or last_contact_at - gen.days(30, 900), last_contact_at)
    contact = gen.new(
        MarketingContact,
        customer=customer,
        prospect=prospect,
        channel=channel,
        address=owner.email if channel == "email" else (owner.phone or gen.phone()),
        opted_in_at=created_at if channel == "email" else None,
        opted_out_at=None,
        created_at=created_at,
        last_contact_at=last_contact_at,
    )
    sent = [last_contact_at] + [gen.between(created_at, last_contact_at) for _ in range(gen.integer(0, 4))]
    outcomes = EMAIL_OUTCOMES if channel == "email" else CALL_OUTCOMES
    for sent_at in sorted(sent):
        gen.new(
            MarketingMessage,
            contact=contact,
            campaign=gen.pick(CAMPAIGNS),
            sent_at=sent_at,
            outcome=gen.pick(outcomes),
        )
    return contact


def customer_activity(gen: Builder, customer: Customer) -> None:
    """Promotional e-mails (account holders) and calls, each channel on its own clock."""
    until = activity_until(gen, customer)
    for channel, share in (("email", EMAIL_MARKETING_SHARE), ("phone", PHONE_MARKETING_SHARE)):
        if gen.rng.random() < share and (since := activity_since(gen, f"{channel}_contacts", 0, customer)):
            last = gen.between(since, until)
            marketing_contact(gen, channel, last, customer=customer, since=customer.created_at)
            touch(customer, last)


def prospect_activity(gen: Builder, prospect: Prospect) -> None:
    if prospect.phone and gen.rng.random() < PHONE_MARKETING_SHARE:
        # A promotional call is a contact: the prospect's last contact is the last call.
        marketing_contact(gen, "phone", prospect.last_contact_at, prospect=prospect, since=prospect.created_at)
