"""The dates the data is seen from, and the policy's rules applied at them.

The reference date R is the first run to come; the retention DAGs are modelled as having run
every day until E = R - 45 days; the business has ten years of history. RetentionModel gives,
for each rule of the policy, its cutoffs at E and R (is a row already gone, is it due at R), the
oldest clock still in the database, and the clocks the boundary records are made at.

Which rows a rule selects and from which clock (a RuleClock) is declared by each purpose's
module, mirroring include/sql/<purpose>/<rule>.sql; the periods always come from the policy file.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, NamedTuple

from retention.policy import Policy, Rule
from retention.policy.periods import cutoff, local_midnight

from tools.seed.errors import SeedError
from tools.seed.rows import Row

# The retention DAGs are modelled as having run daily until this many days before R.
ENFORCED_UNTIL_DAYS_BEFORE = 45
HISTORY_DAYS = 3652  # ten years of business before the reference date


class RuleClock(NamedTuple):
    table: str
    # The row's clock under this rule, or None when the rule does not select the row or the
    # clock is NULL (a running contract, an open case...).
    clock_of: Callable[[Any], dt.datetime | None]


def ceil_to_second(instant: dt.datetime) -> dt.datetime:
    if not instant.microsecond:
        return instant
    return instant.replace(microsecond=0) + dt.timedelta(seconds=1)


class RetentionModel:
    """The policy's rules applied to generated rows at two logical dates (Paris midnights):
    the reference date R (the first run to come) and E, until which runs already happened."""

    def __init__(
        self,
        policy: Policy,
        reference_date: dt.date,
        rule_clocks: Mapping[str, RuleClock],
        boundary_rules: Collection[str],
    ):
        self.tz = policy.tz
        self.run_date = local_midnight(reference_date, self.tz)
        self.enforced_date = local_midnight(reference_date - dt.timedelta(days=ENFORCED_UNTIL_DAYS_BEFORE), self.tz)
        # The rules written in the policy. Those generated from `dependents` take what a person
        # past their period still has and never reaches its own clock (a chat message never
        # transmitted, a request never handled); the generated data has none of that for them:
        # their messages are transmitted and their requests handled days after the last activity.
        self.rules: list[Rule] = [rule for purpose in policy.purposes.values() for rule in purpose.schedule_rules]
        # table -> [(clock_of, cutoff at E, cutoff at R)]
        self._checks: dict[str, list[tuple[Callable, dt.datetime, dt.datetime]]] = defaultdict(list)
        self._cutoff_at_enforcement: dict[str, dt.datetime] = {}
        for rule in self.rules:
            known = rule_clocks.get(rule.name)
            if known is None or rule.name not in boundary_rules:
                raise SeedError(
                    f"tools/seed does not know rule {rule.name!r} of the policy: add it to the RULE_CLOCKS "
                    "of its purpose's module and to BOUNDARY_BUILDERS (tools/seed/boundaries.py)"
                )
            if known.table != rule.table:
                raise SeedError(f"rule {rule.name!r}: the policy says table {rule.table!r}, tools/seed {known.table!r}")
            at_enforcement = self.cutoff(rule, self.enforced_date)
            self._cutoff_at_enforcement[rule.name] = at_enforcement
            self._checks[rule.table].append((known.clock_of, at_enforcement, self.cutoff(rule, self.run_date)))

    def cutoff(self, rule: Rule, logical_date: dt.datetime) -> dt.datetime:
        return cutoff(logical_date, rule.live, self.tz)

    def rule(self, name: str) -> Rule:
        return next(rule for rule in self.rules if rule.name == name)

    def kept_since(self, rule_name: str) -> dt.datetime:
        """The oldest clock a record of this rule can have and still be in the database."""
        return self._cutoff_at_enforcement[rule_name]

    def due_at_enforcement(self, row: Row) -> bool:
        return any(
            (clock := clock_of(row)) is not None and clock < at_e for clock_of, at_e, _ in self._checks[row.TABLE]
        )

    def due_at_run(self, row: Row) -> bool:
        return any(
            (clock := clock_of(row)) is not None and clock < at_r for clock_of, _, at_r in self._checks[row.TABLE]
        )

    def boundary_clocks(self, rule: Rule) -> Iterator[dt.datetime]:
        """Clocks first due at R - 1 day, R and R + 1 day: the first and the last whole second
        of each window [cutoff(day - 1), cutoff(day)), and 30 minutes after the first (00:30
        Paris time is the previous day in UTC, which catches UTC date arithmetic)."""
        for offset in (-1, 0, 1):
            due_day = self.run_date.date() + dt.timedelta(days=offset)
            since = self.cutoff(rule, local_midnight(due_day - dt.timedelta(days=1), self.tz))
            until = self.cutoff(rule, local_midnight(due_day, self.tz))
            first = ceil_to_second(since)
            last = ceil_to_second(until) - dt.timedelta(seconds=1)
            if last < first:
                continue  # no clock becomes due that day (e.g. 31 March for a 1-month rule)
            yield from sorted({first, min(first + dt.timedelta(minutes=30), last), last})

    def leap_day_clocks(self, rule: Rule, history_start: dt.datetime) -> Iterator[dt.datetime]:
        """29 February clocks of a rule counted in whole years, when such a record would still be
        in the database (2024-02-29 + 12 months = 2025-02-28)."""
        if rule.live.days or not rule.live.months or rule.live.months % 12:
            return
        for year in range(history_start.year, self.run_date.year + 1):
            if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
                clock = dt.datetime(year, 2, 29, 12, 0, tzinfo=self.tz)
                if self.kept_since(rule.name) <= clock < self.run_date:
                    yield clock
