"""Calendar arithmetic of periods and cutoffs (pure logic, no services)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from retention.policy.periods import Period, cutoff, due_date

PARIS = ZoneInfo("Europe/Paris")


def at(day: str, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(hour, minute), tzinfo=PARIS)


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("12 months", Period(months=12)),
        ("5 years", Period(months=60)),
        ("1 year", Period(months=12)),
        ("0 days", Period(days=0)),
        ("6 months", Period(months=6)),
        (" 3 years ", Period(months=36)),
    ],
)
def test_parse(text, period):
    assert Period.parse(text) == period


@pytest.mark.parametrize("text", ["12", "twelve months", "-1 months", "1.5 years", "3 weeks", ""])
def test_parse_rejects(text):
    with pytest.raises(ValueError, match="is not a period"):
        Period.parse(text)


def test_month_end_clipping():
    assert Period(months=12).add_to(dt.date(2024, 2, 29)) == dt.date(2025, 2, 28)
    assert Period(months=1).add_to(dt.date(2025, 1, 31)) == dt.date(2025, 2, 28)
    assert Period(months=60).add_to(dt.date(2020, 2, 29)) == dt.date(2025, 2, 28)


def test_feb29_is_due_on_feb28_of_the_next_year():
    twelve = Period(months=12)
    c = cutoff(at("2025-02-28"), twelve, PARIS)
    assert at("2024-02-29", 23, 59) < c  # due at the run of 2025-02-28
    assert not at("2024-03-01") < c  # not yet
    assert not at("2024-02-29", 12) < cutoff(at("2025-02-27"), twelve, PARIS)  # the day before: not due


def test_day_before_on_and_after_boundary():
    p = Period(months=6)
    clock = at("2025-03-15", 17, 30)
    assert due_date(clock, p, PARIS) == at("2025-09-15")
    assert not clock < cutoff(at("2025-09-14"), p, PARIS)
    assert clock < cutoff(at("2025-09-15"), p, PARIS)
    assert clock < cutoff(at("2025-09-16"), p, PARIS)


def test_zero_period_never_selects_a_clock_after_the_logical_date():
    d = at("2026-03-10", 14)
    c = cutoff(d, Period(days=0), PARIS)
    assert d < c  # clock + 0 <= D: a clock exactly at the logical date is due
    assert at("2026-03-10", 13) < c and not at("2026-03-10", 15) < c
    assert not d + dt.timedelta(microseconds=1) < c


def test_paris_calendar_not_utc():
    # 23:30 UTC on Jan 31 is already Feb 1 in Paris: its 1-month period ends on Mar 1, not Feb 28.
    clock = dt.datetime(2025, 1, 31, 23, 30, tzinfo=dt.UTC)
    assert due_date(clock, Period(months=1), PARIS) == at("2025-03-01")


def test_dst_change_keeps_local_midnight():
    assert cutoff(at("2025-03-31"), Period(days=1), PARIS) == at("2025-03-31")  # DST began on Mar 30


def test_inverse_is_exact_over_three_years():
    """latest_start is the exact inverse of add_to (the cutoff never includes a record too early)."""
    for period in [Period(months=m) for m in (1, 6, 12, 24, 36, 60, 96)] + [Period(days=0), Period(days=30)]:
        day = dt.date(2024, 1, 1)
        while day < dt.date(2027, 1, 1):
            start = period.latest_start(day)
            assert period.add_to(start) <= day < period.add_to(start + dt.timedelta(days=1)), (period, day)
            day += dt.timedelta(days=1)


def test_naive_logical_date_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        cutoff(dt.datetime(2025, 1, 1), Period(months=1), PARIS)


@pytest.mark.parametrize("period", [Period(days=0), Period(months=1), Period(months=12)])
@pytest.mark.parametrize("clock", [at("2025-03-15", 10), at("2024-02-29"), at("2025-01-31", 23, 59)])
def test_due_date_agrees_with_cutoff(period, clock):
    first = due_date(clock, period, PARIS)
    assert clock < cutoff(first, period, PARIS)
    assert not clock < cutoff(first - dt.timedelta(microseconds=1), period, PARIS)


def test_own_end_of_a_zero_period_is_the_clocks_paris_day_whatever_its_time_zone():
    """The end date told to a data subject for a record of a zero period whose clock the database
    returns in UTC (the engine's sessions): 23:30 UTC on Mar 10 is 00:30 on Mar 11 in Paris, the
    day the record is due, not Mar 10."""
    from retention.policy import default_policy
    from retention.rights.ends import own_end

    policy = default_policy()
    rule = next(r for r in policy.purpose("contracts").rules if r.name == "payment_references")
    assert rule.gone_after == Period()
    clock = dt.datetime(2024, 3, 10, 23, 30, tzinfo=dt.UTC)
    assert due_date(clock, rule.gone_after, PARIS) == clock
    assert own_end(rule, clock, PARIS) == "2024-03-11"


@pytest.mark.parametrize(
    ("period", "told"),
    [(Period(months=12), "2025-02-28"), (Period(days=0), "2024-02-29"), (Period(months=60), "2029-02-28")],
)
def test_own_end_of_a_record_whose_clock_is_a_date(period, told):
    """A clock column may be a date (retention.planner.CLOCK_TYPES): the database returns a
    datetime.date, whose end is told from that day (the engine's sessions compare it with a
    cutoff as the start of that day in UTC: the same Paris day)."""
    from retention.policy import default_policy
    from retention.rights.ends import own_end

    rule = next(r for r in default_policy().purpose("contracts").rules if r.name == "payment_references")
    rule = rule.model_copy(update={"live": period})
    clock = dt.date(2024, 2, 29)
    assert due_date(clock, period, PARIS).astimezone(PARIS).date().isoformat() == told
    assert own_end(rule, clock, PARIS) == told


def test_a_rules_whole_period_recorded_in_the_manifest_is_read_back():
    """The manifest records each object's live + archive as text (``gone_after``), read back by
    every purge and after-gate (retention.archive.purge.policy_keeps_longer). Two periods the
    policy accepts, say 500 + 600 days, add up to 1100 days: that text must parse too, or the
    purge of the purpose fails at every run and its objects stay past their date."""
    from retention.archive.purge import policy_keeps_longer
    from retention.policy import default_policy

    quotes = default_policy().purpose("quotes")
    rule = quotes.rules[0].model_copy(update={"live": Period.parse("500 days"), "archive": Period.parse("600 days")})
    purpose = quotes.model_copy(update={"rules": (rule,)})
    assert str(rule.gone_after) == "1100 days"
    assert not policy_keeps_longer(purpose, rule.name, str(rule.gone_after))
    assert policy_keeps_longer(purpose, rule.name, "1099 days")
    for longest in (Period(days=999) + Period(days=999), Period(months=999) + Period(months=998)):
        assert Period.parse(str(longest), written=False) == longest
    with pytest.raises(ValueError, match="is not a period"):
        Period.parse("1100 days")  # written in the policy: three digits at most, as before
