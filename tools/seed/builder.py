"""Builder: what every purpose's builders draw from and add to.

It holds the seeded draws (``draws``), the people pools and the names, e-mails and phones drawn
from them (``people``), the dates and the retention model (``dates``), the ids of each table,
and the family being built: the rows made since the last flush(). A family (a customer with
everything under it, a prospect with its quotes, a candidate) then goes through the retention
model: what the daily runs until E removed is dropped, what a kept row references stays.

The purposes' modules take a Builder as their first argument; generator.Generator is the one
that knows every table and rule and builds the whole data set.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections import defaultdict
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from retention.policy import Policy

from tools.seed.dates import HISTORY_DAYS, RetentionModel, RuleClock
from tools.seed.draws import Draws
from tools.seed.people import EMAIL_DOMAINS, Pools, ascii_slug
from tools.seed.rows import Row

R = TypeVar("R", bound=Row)


class Builder(Draws):
    def __init__(
        self,
        *,
        seed: int,
        reference_date: dt.date,
        policy: Policy,
        row_types: tuple[type[Row], ...],
        rule_clocks: Mapping[str, RuleClock],
        boundary_rules: Collection[str],
        hold_tables: Collection[str],
    ):
        """``row_types`` children before parents (the order the engine deletes in); ``hold_tables``
        the tables whose due rows may get a legal hold."""
        super().__init__(random.Random(seed), policy.tz)
        self.pools = Pools.build(seed)
        self.retention = RetentionModel(policy, reference_date, rule_clocks, boundary_rules)
        # Random data stops at R 00:00 Paris (the snapshot the first run sees); boundary records
        # may fall on day R itself.
        self.snapshot = self.retention.run_date
        self.history_start = self.snapshot - dt.timedelta(days=HISTORY_DAYS)
        self._delete_order = {row_type.TABLE: index for index, row_type in enumerate(row_types)}
        self._hold_tables = frozenset(hold_tables)
        self._next_id = {row_type.TABLE: itertools.count(1) for row_type in row_types}
        # The rows made since the last flush(), in the order they were made.
        self.family: list[Row] = []
        self.tables: dict[str, list[Row]] = {row_type.TABLE: [] for row_type in reversed(row_types)}
        self.hold_candidates: dict[str, list[Row]] = defaultdict(list)
        self.customers_made = 0

    # -- the family being built ---------------------------------------------------------

    def flush(self, *, on_purpose: bool = False) -> None:
        """Apply the retention model to the family just built, children first: drop what the
        runs until E removed, keep what is referenced by a kept row (it waits)."""
        family = sorted(self.family, key=lambda row: self._delete_order[row.TABLE])
        self.family.clear()
        for row in family:
            if not row.waited_on and self.retention.due_at_enforcement(row):
                row.kept = False
                continue
            for parent in row.parents():
                parent.waited_on = True
            self.tables[row.TABLE].append(row)
            # Holds go on random due records, never on the boundary records made on purpose.
            if not on_purpose and row.TABLE in self._hold_tables and self.retention.due_at_run(row):
                self.hold_candidates[row.TABLE].append(row)

    def take_id(self, row_type: type[Row]) -> int:
        return next(self._next_id[row_type.TABLE])

    def add(self, row: R) -> R:
        self.family.append(row)
        return row

    def new(self, row_type: type[R], **fields: Any) -> R:
        return self.add(row_type(id=self.take_id(row_type), **fields))

    # -- people ---------------------------------------------------------------------------

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
