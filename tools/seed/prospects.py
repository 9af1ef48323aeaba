"""The prospects purpose (include/sql/prospects/): the people the other records are about
(customers, their pets, prospects) and the four rules that remove them once the relationship is
over. Every other purpose's rows reference a customer or a prospect.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.rows import Row

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
PROSPECT_SOURCES = ("site_web", "comparateur", "parrainage", "reseaux_sociaux", "partenaire_veterinaire")


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


RULE_CLOCKS: dict[str, RuleClock] = {
    "prospects": RuleClock("prospects", lambda p: p.last_contact_at if p.customer is None else None),
    "former_customer_prospects": RuleClock(
        "prospects", lambda p: p.customer.relationship_ended_at if p.customer else None
    ),
    "former_customer_pets": RuleClock("pets", lambda p: p.customer.relationship_ended_at),
    "former_customers": RuleClock("customers", lambda c: c.relationship_ended_at),
}


def new_customer(gen: Builder, created_at: dt.datetime) -> Customer:
    gen.customers_made += 1
    civility, first_name, last_name = gen.person()
    postal_code, city = gen.pick(gen.pools.places)
    age_days = gen.integer(20 * 365, 80 * 365)
    return gen.new(
        Customer,
        civility=civility,
        first_name=first_name,
        last_name=last_name,
        email=gen.email(first_name, last_name),
        phone=gen.phone(),
        birth_date=gen.snapshot.date() - dt.timedelta(days=age_days),
        birth_place=gen.pick(gen.pools.places)[1],
        address_line=gen.pick(gen.pools.streets),
        postal_code=postal_code,
        city=city,
        created_at=created_at,
        last_contact_at=created_at,
        processor_customer_ref=gen.token("cus_", 14),
        iban_last4=gen.digits(4),
    )


def touch(customer: Customer, at: dt.datetime) -> None:
    """Record a contact with the customer (calls, claims, contract events)."""
    if at > customer.last_contact_at:
        customer.last_contact_at = at


def activity_until(gen: Builder, customer: Customer) -> dt.datetime:
    """The end of a customer's activity: no activity after the relationship, nor after R."""
    return min(customer.relationship_ended_at or gen.snapshot, gen.snapshot)


def activity_since(gen: Builder, rule_name: str, slack_days: float, customer: Customer) -> dt.datetime | None:
    """The first instant worth generating activity for under a rule (older rows are gone by E
    anyway), or None when the customer has no such window."""
    since = max(customer.created_at, gen.retention.kept_since(rule_name) - dt.timedelta(days=slack_days))
    until = activity_until(gen, customer)
    return since if since < until else None


def customer_prospect_row(gen: Builder, customer: Customer) -> Prospect:
    """The prospect record a customer had before subscribing."""
    return gen.new(
        Prospect,
        first_name=customer.first_name,
        last_name=customer.last_name,
        email=customer.email,
        phone=customer.phone,
        postal_code=customer.postal_code,
        source=gen.pick(PROSPECT_SOURCES),
        marketing_opt_in=gen.rng.random() < 0.4,
        created_at=customer.created_at - gen.days(1, 90),
        last_contact_at=customer.created_at,
        customer=customer,
    )


def new_pet(gen: Builder, customer: Customer, insured_from: dt.datetime) -> Pet:
    species = "dog" if gen.rng.random() < 0.6 else "cat"
    birth = insured_from.date() - dt.timedelta(days=gen.integer(60, 10 * 365))
    return gen.new(
        Pet,
        customer=customer,
        name=gen.pick(PET_NAMES),
        species=species,
        breed=gen.pick(BREEDS[species]),
        sex=gen.pick(("male", "female")),
        birth_date=birth,
        microchip=f"250269{gen.digits(9)}" if gen.rng.random() < 0.9 else None,
    )
