"""Calendar arithmetic of retention periods, in the company's time zone.

A period counts from the clock's *calendar date* in Europe/Paris: a record whose clock falls
on day d is due for every run whose logical date, in Paris, is on or after d + period
(calendar months, clipped to the month's end: 2024-02-29 + 12 months = 2025-02-28), and never
before the clock itself. The SQL only ever compares a clock with a cutoff instant:
``clock < cutoff`` selects exactly the records due at the logical date.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

_RESOLUTION = dt.timedelta(microseconds=1)  # of timestamptz
_PERIOD_RE = re.compile(r"^\s*(\d+)\s+(day|days|month|months|year|years)\s*$")
# A period written in the policy has three digits at most; a sum of two (a rule's live + archive,
# which the manifest records as ``gone_after``) may have more, and is read back with written=False.
_WRITTEN_DIGITS = 3


@dataclass(frozen=True, order=True)
class Period:
    """A whole number of days or of calendar months (years are stored as 12 months)."""

    months: int = 0
    days: int = 0

    @classmethod
    def parse(cls, text: str, *, written: bool = True) -> Period:
        match = _PERIOD_RE.match(str(text))
        if not match or (written and len(match.group(1)) > _WRITTEN_DIGITS):
            raise ValueError(f"{text!r} is not a period like '12 months', '5 years' or '0 days'")
        n, unit = int(match.group(1)), match.group(2)
        if unit.startswith("day"):
            return cls(days=n)
        return cls(months=n * 12 if unit.startswith("year") else n)

    def __add__(self, other: Period) -> Period:
        if (self.months and other.days) or (self.days and other.months):
            raise ValueError("cannot add a period in days to a period in months")
        return Period(self.months + other.months, self.days + other.days)

    def __str__(self) -> str:
        if self.days:
            return f"{self.days} day{'s' if self.days != 1 else ''}"
        if self.months and self.months % 12 == 0:
            years = self.months // 12
            return f"{years} year{'s' if years != 1 else ''}"
        return f"{self.months} month{'s' if self.months != 1 else ''}"

    def add_to(self, day: dt.date) -> dt.date:
        """``day + self`` with month-end clipping."""
        if self.days:
            return day + dt.timedelta(days=self.days)
        month_index = day.year * 12 + day.month - 1 + self.months
        year, month = divmod(month_index, 12)
        last = calendar.monthrange(year, month + 1)[1]
        return dt.date(year, month + 1, min(day.day, last))

    def latest_start(self, day: dt.date) -> dt.date:
        """The latest date d with ``d + self <= day`` (the inverse of :meth:`add_to`).

        ``add_to`` is non-decreasing, so the set of such d is every date up to this one.
        When ``day`` is the last day of its month, every later day of the source month
        clips onto it too (2024-02-29 + 12 months = 2025-02-28).
        """
        if self.days:
            return day - dt.timedelta(days=self.days)
        month_index = day.year * 12 + day.month - 1 - self.months
        year, month = divmod(month_index, 12)
        source_last = calendar.monthrange(year, month + 1)[1]
        target_last = calendar.monthrange(day.year, day.month)[1]
        source_day = source_last if day.day == target_last else min(day.day, source_last)
        return dt.date(year, month + 1, source_day)


def local_date(instant: dt.datetime, tz: ZoneInfo) -> dt.date:
    if instant.tzinfo is None:
        raise ValueError("logical dates and clocks must be timezone-aware")
    return instant.astimezone(tz).date()


def local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=tz)


def cutoff(logical_date: dt.datetime, period: Period, tz: ZoneInfo) -> dt.datetime:
    """The instant such that ``clock < cutoff`` <=> the record is due at ``logical_date``.

    Due means: the clock's Paris date + period <= the logical date's Paris date, and the
    clock is not after the logical date itself (which only matters for a zero period:
    ``clock <= D``, hence D plus PostgreSQL's resolution of one microsecond).
    """
    last_due_day = period.latest_start(local_date(logical_date, tz))
    return min(local_midnight(last_due_day + dt.timedelta(days=1), tz), logical_date + _RESOLUTION)


def due_date(clock: dt.datetime | dt.date, period: Period, tz: ZoneInfo) -> dt.datetime:
    """The first logical date at which a record with this clock is due, consistent with
    :func:`cutoff`: Paris midnight of clock's date + period, never before the clock itself.

    A clock column of type date is read as a ``datetime.date``: the start of that day in UTC,
    as the engine's sessions (UTC) compare it with a cutoff (the same day in Paris)."""
    if not isinstance(clock, dt.datetime):
        clock = dt.datetime.combine(clock, dt.time(0), tzinfo=dt.UTC)
    return max(local_midnight(period.add_to(local_date(clock, tz)), tz), clock)
