"""A contract as it is signed, with the records of other purposes that come with it: its
converted quote (``quotes``), payment method (``contracts``) and AML check (``aml``); a typical
one also lives: the recorded sales call of a phone sale (``call_recordings``), claims, and
the fraud alerts it raises (``fraud``).
"""

from __future__ import annotations

import datetime as dt

from tools.seed.aml import aml_check
from tools.seed.builder import Builder
from tools.seed.call_recordings import call
from tools.seed.contracts import Contract, claim, new_contract, payment_method
from tools.seed.fraud import random_alerts
from tools.seed.prospects import Customer, Pet, Prospect
from tools.seed.quotes import converted_quote

PHONE_SALE_SHARE = 0.6  # contracts signed on a recorded call


def subscribe(
    gen: Builder,
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
    contract = new_contract(gen, customer, pet, started_at, ended_at)
    converted_quote(gen, contract, prospect)
    payment_method(gen, contract)
    aml_check(gen, contract)
    if not typical:
        return contract
    if gen.rng.random() < PHONE_SALE_SHARE:
        call(gen, customer, "contracting", started_at - gen.days(0.003, 0.04))
    claims_from = started_at + dt.timedelta(days=1)
    claims_until = min(ended_at or gen.snapshot, gen.snapshot)
    if claims_from < claims_until:
        for _ in range(gen.weighted((0, 1, 2, 3, 4), (35, 30, 20, 10, 5))):
            claim(gen, contract, gen.between(claims_from, claims_until))
    random_alerts(gen, contract)
    return contract
