"""The quotes purpose (include/sql/quotes/): quotes, and the rule that removes one never turned
into a contract. A converted quote is made with its contract (``subscription``) and removed under
the contracts purpose's rule.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tools.seed.builder import Builder
from tools.seed.contracts import FORMULA_NAMES, Contract, premium
from tools.seed.dates import RuleClock
from tools.seed.prospects import BREEDS, PET_NAMES, Customer, Prospect
from tools.seed.rows import Row


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


RULE_CLOCKS: dict[str, RuleClock] = {
    "unconverted_quotes": RuleClock("quotes", lambda q: q.issued_at if q.contract is None else None),
}


def converted_quote(gen: Builder, contract: Contract, prospect: Prospect | None) -> Quote:
    pet = contract.pet
    return gen.new(
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
        issued_at=contract.started_at - gen.days(0.02, 20),
        contract=contract,
    )


def unconverted_quote(
    gen: Builder, issued_at: dt.datetime, *, customer: Customer | None = None, prospect: Prospect | None = None
) -> Quote:
    species = "dog" if gen.rng.random() < 0.6 else "cat"
    formula = gen.pick(FORMULA_NAMES)
    owner = customer or prospect
    return gen.new(
        Quote,
        customer=customer,
        prospect=prospect,
        email=owner.email if owner else gen.email(*gen.person()[1:]),
        pet_name=gen.pick(PET_NAMES),
        species=species,
        breed=gen.pick(BREEDS[species]),
        pet_birth_date=issued_at.date() - dt.timedelta(days=gen.integer(60, 8 * 365)),
        postal_code=owner.postal_code if owner else None,
        formula=formula,
        monthly_premium=premium(gen, formula, species),
        issued_at=issued_at,
    )
