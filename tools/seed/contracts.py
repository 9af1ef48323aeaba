"""The contracts purpose (include/sql/contracts/): contracts, claims, reimbursements, payment
references, and the five rules that remove them (the converted quote's among them) once the
contract has ended. What comes with a contract from the other purposes (its converted quote,
AML check, sales call, fraud alerts) is put together in ``subscription``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.prospects import Customer, Pet, touch
from tools.seed.rows import Row

FORMULAS = {"essentielle": 1200, "confort": 2400, "premium": 4200}  # monthly premium base, cents
FORMULA_NAMES = tuple(FORMULAS)
END_REASONS = ("customer_cancellation", "pet_deceased", "non_payment", "switched_insurer")
DIAGNOSES = (
    "Gastro-entérite", "Otite externe", "Fracture du radius", "Boiterie", "Dermatite allergique",
    "Ingestion de corps étranger", "Conjonctivite", "Cystite", "Insuffisance rénale chronique",
    "Luxation de la rotule", "Rupture du ligament croisé", "Détartrage sous anesthésie",
    "Plaie par morsure", "Piroplasmose", "Diabète", "Hyperthyroïdie", "Torsion d'estomac",
)  # fmt: skip


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


RULE_CLOCKS: dict[str, RuleClock] = {
    "converted_quotes": RuleClock("quotes", lambda q: q.contract.ended_at if q.contract else None),
    "reimbursements": RuleClock("reimbursements", lambda r: r.claim.contract.ended_at),
    "claims": RuleClock("claims", lambda c: c.contract.ended_at),
    "payment_references": RuleClock("payment_methods", lambda p: p.contract.ended_at),
    "ended_contracts": RuleClock("contracts", lambda c: c.ended_at),
}


def premium(gen: Builder, formula: str, species: str) -> Decimal:
    base = FORMULAS[formula] * (13 if species == "dog" else 10) // 10
    return gen.cents(base, base + 900)


def new_contract(
    gen: Builder, customer: Customer, pet: Pet, started_at: dt.datetime, ended_at: dt.datetime | None
) -> Contract:
    """The contract alone (subscription.subscribe adds what comes with it)."""
    formula = gen.pick(FORMULA_NAMES)
    contract_id = gen.take_id(Contract)
    contract = gen.add(
        Contract(
            id=contract_id,
            customer=customer,
            pet=pet,
            policy_number=f"DLM-{started_at.year}-{contract_id:08d}",
            formula=formula,
            monthly_premium=premium(gen, formula, pet.species),
            started_at=started_at,
            ended_at=ended_at,
            end_reason=gen.pick(END_REASONS) if ended_at else None,
        )
    )
    touch(customer, min(ended_at or started_at, gen.snapshot))
    return contract


def payment_method(gen: Builder, contract: Contract) -> PaymentMethod:
    """Processor references only: never a card number nor a security code."""
    customer = contract.customer
    by_card = gen.rng.random() < 0.55
    expiry_year = (contract.started_at.year + gen.integer(1, 5)) % 100
    return gen.new(
        PaymentMethod,
        contract=contract,
        kind="card" if by_card else "sepa_debit",
        processor_customer_ref=customer.processor_customer_ref,
        processor_method_ref=gen.token("pm_", 24),
        card_brand=gen.pick(("visa", "mastercard", "cb")) if by_card else None,
        card_last4=gen.digits(4) if by_card else None,
        card_expiry=f"{gen.integer(1, 13):02d}/{expiry_year:02d}" if by_card else None,
        iban_last4=None if by_card else customer.iban_last4,
        created_at=contract.started_at,
    )


def claim(gen: Builder, contract: Contract, submitted_at: dt.datetime, *, paid: bool | None = None) -> Claim:
    """A claim, reimbursed 2-25 days later when paid (the payment must be in the past)."""
    claim_id = gen.take_id(Claim)
    amount = gen.cents(3000, 250000)
    paid_at = submitted_at + gen.days(2, 25) if (gen.rng.random() < 0.8 if paid is None else paid) else None
    if paid_at is not None and paid_at >= gen.snapshot:
        paid_at = None  # not paid yet
    age = gen.snapshot - submitted_at
    if paid_at is not None:
        status = "paid"
    elif age < dt.timedelta(days=10):
        status = "submitted"
    else:
        status = "in_review" if age < dt.timedelta(days=60) else "rejected"
    row = Claim(
        id=claim_id,
        contract=contract,
        submitted_at=submitted_at,
        treatment_date=submitted_at.date() - dt.timedelta(days=gen.integer(0, 20)),
        vet_clinic=gen.pick(gen.pools.vet_clinics),
        diagnosis=gen.pick(DIAGNOSES),
        amount_claimed=amount,
        status=status,
        vet_invoice_key=f"invoices/{claim_id}.pdf" if gen.rng.random() < 0.97 else None,
    )
    gen.add(row)
    touch(contract.customer, min(submitted_at, gen.snapshot))
    if paid_at is not None:
        last4 = contract.customer.iban_last4
        gen.new(
            Reimbursement,
            claim=row,
            paid_at=paid_at,
            amount=(amount * Decimal(gen.pick((50, 70, 80, 90))) / 100).quantize(Decimal("0.01")),
            payee_iban_masked=f"FR76 **** **** **** **** ***{last4[0]} {last4[1:]}",
        )
    return row
