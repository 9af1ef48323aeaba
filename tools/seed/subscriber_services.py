"""The subscriber_services purpose (include/sql/subscriber_services/): chat messages and
tele-consultations, transmitted to the veterinary partner (VETOPHONIE) within days, the two rules
that remove them once transmitted, and a customer's conversations and consultations.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.prospects import Customer, Pet, activity_since, activity_until
from tools.seed.rows import Row, id_of

CHATS_PER_CUSTOMER_YEAR = 1.5
CONSULTATIONS_PER_CUSTOMER_YEAR = 0.6
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
        return (self.id, self.customer.id, id_of(self.pet), self.service, self.channel,
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


RULE_CLOCKS: dict[str, RuleClock] = {
    "chat_messages": RuleClock("chat_messages", lambda m: m.transmitted_at),
    "vet_consultations": RuleClock("vet_consultations", lambda c: c.transmitted_at),
}


def chat_message(
    gen: Builder, customer: Customer, sent_at: dt.datetime, transmitted_at: dt.datetime | None, conversation: str
) -> ChatMessage:
    sender = gen.weighted(("customer", "support", "vet"), (50, 35, 15))
    return gen.new(
        ChatMessage,
        customer=customer,
        conversation_ref=conversation,
        sender=sender,
        sent_at=sent_at,
        body=gen.pick(CHAT_LINES[sender]),
        transmitted_at=transmitted_at,
    )


def consultation(
    gen: Builder, customer: Customer, pet: Pet | None, requested_at: dt.datetime, transmitted_at: dt.datetime | None
) -> VetConsultation:
    channel = gen.weighted(("chat", "phone", "video"), (40, 35, 25))
    scheduled = requested_at + gen.days(0.01, 1)
    return gen.new(
        VetConsultation,
        customer=customer,
        pet=pet,
        service=gen.pick(("tele_advice", "tele_triage")),
        channel=channel,
        requested_at=requested_at,
        scheduled_at=scheduled if channel == "video" else None,
        video_link=f"https://visio.vetophonie.example/{gen.token('', 10)}" if channel == "video" else None,
        vet_name=f"Dr {gen.pick(gen.pools.last_names)}",
        reason=gen.pick(CONSULTATION_REASONS),
        transmitted_at=transmitted_at,
    )


def customer_activity(gen: Builder, customer: Customer, pets: list[Pet]) -> None:
    """Chat conversations and tele-consultations, transmitted to VETOPHONIE within days."""
    until = activity_until(gen, customer)
    if since := activity_since(gen, "chat_messages", 5, customer):
        for _ in range(gen.poisson(CHATS_PER_CUSTOMER_YEAR * (until - since).days / 365)):
            started = gen.between(since, until)
            conversation = gen.token("conv_", 12)
            for index in range(gen.integer(1, 5)):
                sent_at = started + dt.timedelta(minutes=3 * index)
                transmitted = sent_at + gen.days(0.01, 3)
                chat_message(gen, customer, sent_at, transmitted if transmitted < gen.snapshot else None, conversation)
    if since := activity_since(gen, "vet_consultations", 3, customer):
        for _ in range(gen.poisson(CONSULTATIONS_PER_CUSTOMER_YEAR * (until - since).days / 365)):
            requested = gen.between(since, until)
            transmitted = requested + gen.days(0.02, 2)
            pet = gen.pick(pets) if pets else None
            consultation(gen, customer, pet, requested, transmitted if transmitted < gen.snapshot else None)
