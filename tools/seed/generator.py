"""Generator: the whole data set, in order: for every rule of the policy, records on both sides
of its boundary and on leap days (``boundaries``); the records no rule may select; then the
random families (``families``) and candidates (``job_applications``) up to the number of customers
asked for; and legal holds on a few due records of several tables.

It is the one place that knows every purpose: their tables (``tables``) and the clocks of their
rules (RULE_CLOCKS, each purpose's own gathered here), checked against the policy when it starts.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from retention.policy import Policy, Rule

from tools.seed import (
    aml,
    call_recordings,
    contracts,
    cookie_consents,
    fraud,
    information_requests,
    job_applications,
    marketing,
    prospects,
    quotes,
    rights_requests,
    subscriber_services,
)
from tools.seed.boundaries import BOUNDARY_BUILDERS, special_cases
from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.families import customer_family, prospect_family, visitors
from tools.seed.tables import ROW_TYPES

# Which rows each rule of the policy selects, and from which clock: each purpose's module
# mirrors include/sql/<purpose>/<rule>.sql.
RULE_CLOCKS: dict[str, RuleClock] = {
    **quotes.RULE_CLOCKS,
    **contracts.RULE_CLOCKS,
    **prospects.RULE_CLOCKS,
    **call_recordings.RULE_CLOCKS,
    **aml.RULE_CLOCKS,
    **fraud.RULE_CLOCKS,
    **job_applications.RULE_CLOCKS,
    **subscriber_services.RULE_CLOCKS,
    **marketing.RULE_CLOCKS,
    **information_requests.RULE_CLOCKS,
    **rights_requests.RULE_CLOCKS,
    **cookie_consents.RULE_CLOCKS,
}
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


class Generator(Builder):
    """Builds the rows one family at a time (a customer with everything under it, a prospect
    with its quotes, a candidate); each family then goes through the retention model."""

    def __init__(self, *, seed: int, reference_date: dt.date, policy: Policy):
        super().__init__(
            seed=seed,
            reference_date=reference_date,
            policy=policy,
            row_types=ROW_TYPES,
            rule_clocks=RULE_CLOCKS,
            boundary_rules=BOUNDARY_BUILDERS,
            hold_tables=LEGAL_HOLD_REASONS,
        )

    def generate(self, customers: int) -> None:
        for rule in self.retention.rules:
            for clock in self.retention.boundary_clocks(rule):
                self._family_for(rule, clock)
            for clock in self.retention.leap_day_clocks(rule, self.history_start):
                self._family_for(rule, clock)
        special_cases(self)
        while self.customers_made < customers:
            customer_family(self)
            self.flush()
        for _ in range(customers):
            prospect_family(self)
            self.flush()
        for _ in range(max(1, customers // 20)):
            job_applications.job_application(self)
            self.flush()
        visitors(self, customers // 2)

    def _family_for(self, rule: Rule, clock: dt.datetime) -> None:
        BOUNDARY_BUILDERS[rule.name](self, clock)
        self.flush(on_purpose=True)

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
