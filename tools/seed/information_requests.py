"""The information_requests purpose (include/sql/information_requests/): questions received
through the chat or the contact form, the rule that removes them once handled, and the questions
of customers and prospects.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.prospects import Customer, Prospect, activity_since, activity_until
from tools.seed.rows import Row, id_of

REQUESTS_PER_CUSTOMER_YEAR = 1.0
INFORMATION_QUESTIONS = (
    ("Franchise", "Quelle est la franchise de la formule confort ?"),
    ("Délai de carence", "Quel est le délai de carence pour une maladie ?"),
    ("Races couvertes", "Assurez-vous les chiens de catégorie 2 ?"),
    ("Espace client", "Je n'arrive pas à me connecter à mon espace personnel."),
    ("Résiliation", "Comment résilier mon contrat à l'échéance ?"),
)


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
        return (self.id, id_of(self.customer), id_of(self.prospect), self.channel, self.email,
                self.subject, self.message, self.received_at, self.status, self.handled_at,
                self.handled_by)  # fmt: skip


RULE_CLOCKS: dict[str, RuleClock] = {
    "handled_requests": RuleClock("information_requests", lambda r: r.handled_at),
}


def information_request(
    gen: Builder,
    received_at: dt.datetime,
    handled_at: dt.datetime | None,
    *,
    customer: Customer | None = None,
    prospect: Prospect | None = None,
) -> InformationRequest:
    subject, message = gen.pick(INFORMATION_QUESTIONS)
    owner = customer or prospect
    return gen.new(
        InformationRequest,
        customer=customer,
        prospect=prospect,
        channel="chat" if customer and gen.rng.random() < 0.7 else "contact_form",
        email=owner.email if owner else gen.email(*gen.person()[1:]),
        subject=subject,
        message=message,
        received_at=received_at,
        handled_at=handled_at,
        handled_by=gen.pick(gen.pools.agents) if handled_at else None,
    )


def customer_activity(gen: Builder, customer: Customer) -> None:
    """Questions through the chat or the contact form, handled within days."""
    until = activity_until(gen, customer)
    if since := activity_since(gen, "handled_requests", 10, customer):
        for _ in range(gen.poisson(REQUESTS_PER_CUSTOMER_YEAR * (until - since).days / 365)):
            received = gen.between(since, until)
            handled = received + gen.days(0.01, 10)
            information_request(gen, received, handled if handled < gen.snapshot else None, customer=customer)


def prospect_activity(gen: Builder, prospect: Prospect) -> None:
    since = max(prospect.created_at, gen.retention.kept_since("handled_requests") - dt.timedelta(days=10))
    if gen.rng.random() < 0.2 and since < prospect.last_contact_at:
        received = gen.between(since, prospect.last_contact_at)
        handled = received + gen.days(0.01, 10)
        information_request(gen, received, handled if handled < gen.snapshot else None, prospect=prospect)
