"""The Retention page's stored counts (retention.status_counts) on the test PostgreSQL server.

The figures equal a direct SQL count written from the policy's words (not from the rule SQL),
held, waiting and overdue records included; each purpose says how fresh they are; a change that
alters them (a run, a delete, a legal hold, a truncate, the policy, the date) withholds them,
and keeps the overdue figure they had for the alarm."""

from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests import factories as f
from tests import factories_policy as fp

pytestmark = pytest.mark.integration
PARIS = ZoneInfo("Europe/Paris")
# A weekday morning, neither a midnight nor near a change of clocks.
NOW = dt.datetime(2026, 6, 10, 10, 30, tzinfo=PARIS)
TTL = dt.timedelta(seconds=60)
MAX_AGE = dt.timedelta(minutes=15)
OVERDUE_DAYS = 3


@pytest.fixture
def data(db):
    """Quotes overdue (2), due today (1), held (1) and not due (1); a former customer past their
    period kept by a pending identity check (waiting past their end, an alarm)."""
    from retention.policy.periods import Period

    today = NOW.date()
    year = Period(months=12)
    overdue = [f.quote(db, issued=year.latest_start(today) - dt.timedelta(days=20)) for _ in range(2)]
    due_today = f.quote(db, issued=year.latest_start(today))
    held = f.quote(db, issued=today - dt.timedelta(days=500))
    f.legal_hold(db, "quotes", held)
    not_due = f.quote(db, issued=today - dt.timedelta(days=30))
    customer = f.customer(db, ended="2022-03-01")
    fp.identity_document(db, customer_id=customer)
    return {"overdue": overdue, "due_today": due_today, "held": held, "not_due": not_due, "customer": customer}


def direct_sql(conn, now: dt.datetime, overdue_days: int) -> dict:
    """Quotes: 12 months after issue (Paris calendar), unconverted; held: a hold on the quote,
    its customer or its prospect. Former customers: 3 years after the relationship ended, waiting
    while an identity document still references them."""
    held = (
        "EXISTS (SELECT 1 FROM retention.legal_holds h WHERE h.released_at IS NULL AND ((h.table_name = 'quotes'"
        " AND h.record_id = q.id) OR (h.table_name = 'customers' AND h.record_id = q.customer_id)"
        " OR (h.table_name = 'prospects' AND h.record_id = q.prospect_id)))"
    )
    due_on = "((q.issued_at AT TIME ZONE 'Europe/Paris')::date + interval '12 months')::date"
    today = now.astimezone(PARIS).date()

    def quotes(where: str, day: dt.date) -> int:
        return conn.execute(
            f"SELECT count(*) FROM app.quotes q WHERE q.contract_id IS NULL AND {due_on} <= %s AND {where}", (day,)
        ).fetchone()[0]

    waiting = conn.execute(
        "SELECT count(*) FROM app.customers c WHERE ((c.relationship_ended_at AT TIME ZONE 'Europe/Paris')::date"
        " + interval '3 years')::date <= %s AND EXISTS (SELECT 1 FROM app.identity_documents i WHERE i.customer_id = c.id)",
        (today,),
    ).fetchone()[0]
    deletable, held_now = quotes(f"NOT {held}", today), quotes(held, today)
    return {
        "quotes": {
            "due": deletable + held_now,  # past the schedule: deletable + held + waiting (none)
            "deletable": deletable,
            "overdue": quotes(f"NOT {held}", today - dt.timedelta(days=overdue_days)),
            "held": held_now,
            "waiting": 0,
        },
        "former_customers_waiting": waiting,
    }


def _figures(counts: dict) -> dict:
    return {k: counts[k] for k in ("due", "deletable", "overdue", "held", "waiting")}


def _count(source_dsn, policy, now=NOW):
    from retention.status_counts import count_and_store

    with psycopg.connect(source_dsn, autocommit=True) as conn:
        return count_and_store(conn, policy, now, OVERDUE_DAYS, counted_by="test")


def _read(source_dsn, policy, now):
    from retention.status_counts import read

    with psycopg.connect(source_dsn, autocommit=True) as conn:
        return read(conn, policy, now, OVERDUE_DAYS, TTL, MAX_AGE)


def test_stored_counts_equal_a_direct_sql_count(data, db, policy, source_dsn):
    from dataclasses import asdict

    live = _count(source_dsn, policy)
    expected = direct_sql(db, NOW, OVERDUE_DAYS)
    assert expected["quotes"] == {"due": 4, "deletable": 3, "overdue": 2, "held": 1, "waiting": 0}  # as built
    assert expected["former_customers_waiting"] == 1

    stored = _read(source_dsn, policy, NOW + dt.timedelta(seconds=10))
    quotes = stored["quotes"]
    assert quotes.state == "fresh" and _figures(quotes.counts) == expected["quotes"]
    prospects = stored["prospects"].counts
    [former] = [r for r in prospects["rules"] if r["rule"] == "former_customers"]
    assert former["waiting"] == expected["former_customers_waiting"]
    [wait] = prospects["waiting_past_end"]
    assert (wait["waiting_on"], wait["records"], wait["past_grace"], wait["alarm"]) == (
        "identity_documents",
        1,
        1,
        True,
    )
    # What was stored is what retention.status counted live, purpose by purpose.
    for status in live:
        assert stored[status.purpose].counts == {
            k: v for k, v in asdict(status).items() if k in stored["quotes"].counts
        }
    assert set(stored) == set(policy.purposes) and all(c.state == "fresh" for c in stored.values())


def test_each_purpose_says_how_fresh_its_figures_are(data, policy, source_dsn):
    _count(source_dsn, policy)
    next_midnight = dt.datetime(2026, 6, 11, tzinfo=PARIS)

    fresh = _read(source_dsn, policy, NOW + dt.timedelta(seconds=12))["quotes"].freshness(
        NOW + dt.timedelta(seconds=12)
    )
    assert fresh == {
        "state": "fresh",
        "counted_at": NOW.astimezone(dt.UTC).isoformat(),
        "age_s": 12.0,
        "valid_until": next_midnight.astimezone(dt.UTC).isoformat(),
        "counted_by": "test",
        "took_s": fresh["took_s"],
        "reason": None,
        "last_overdue": None,
        "last_waiting_alarm": None,
    }
    # Older than the TTL: still shown, as aged (a recount runs meanwhile).
    aged = _read(source_dsn, policy, NOW + TTL + dt.timedelta(seconds=1))["quotes"]
    assert aged.state == "aged" and aged.counts["overdue"] == 2
    # Older than the longest age shown: withheld.
    old = _read(source_dsn, policy, NOW + MAX_AGE + dt.timedelta(seconds=1))["quotes"]
    assert (old.state, old.counts, old.last_overdue) == ("outdated", None, 2)
    assert old.reason == "counted more than 15 minutes ago"
    # At the next Paris midnight every cutoff moves: withheld, whatever the TTL.
    midnight = _read(source_dsn, policy, next_midnight)["quotes"]
    assert midnight.state == "outdated" and midnight.reason.startswith("the date moved on")


def test_the_overdue_line_moving_outdates_the_counts(policy):
    """Overdue at T means due at T - 3 days (24-hour days, as the page and the watch count): after
    the autumn change of clocks that line crosses a Paris midnight at 23:00 Paris time, an hour
    before the day's own midnight. The counts are not kept past it."""
    from retention.policy.periods import local_date
    from retention.status import PurposeStatus
    from retention.status_counts import valid_until

    counted = dt.datetime(2026, 10, 27, 22, 30, tzinfo=PARIS).astimezone(dt.UTC)
    until = valid_until(counted, 3, policy, PurposeStatus("quotes", "", "enforce"))
    assert until == dt.datetime(2026, 10, 27, 23, 0, tzinfo=PARIS)
    three_days = dt.timedelta(days=3)
    assert local_date(until - three_days, PARIS) != local_date(counted - three_days, PARIS)
    assert local_date(until - dt.timedelta(microseconds=1) - three_days, PARIS) == local_date(
        counted - three_days, PARIS
    )


@pytest.mark.parametrize("change", ["run", "delete", "hold placed", "hold released", "truncate", "policy"])
def test_a_change_that_alters_the_figures_withholds_them_and_keeps_the_overdue_one(
    change, data, db, policy, source_dsn, monkeypatch
):
    """SAFETY: after a run, a delete, a legal hold or a truncate, the figures counted before are
    not shown as current (they could be acted on: a due count a run has just deleted, an overdue
    record a released hold has just exposed); the overdue figure stays for the alarm."""
    _count(source_dsn, policy)
    assert _read(source_dsn, policy, NOW)["quotes"].state == "fresh"
    reason = {
        "run": "a run or a subject request changed records since",
        "delete": "rows were deleted since",
        "hold placed": "legal holds were placed or released since",
        "hold released": "legal holds were placed or released since",
        "truncate": "tables were truncated or rewritten since",
        "policy": "the policy changed since",
    }[change]
    if change == "run":  # what a run writes as it commits its deletes
        db.execute(
            "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count)"
            " VALUES ('scheduled__test', now(), 'quotes', 'unconverted_quotes', 'quotes', 'deleted', 1)"
        )
    elif change == "delete":
        db.execute("DELETE FROM app.quotes WHERE id = %s", (data["not_due"],))
    elif change == "hold placed":
        f.legal_hold(db, "quotes", data["overdue"][0])
    elif change == "hold released":
        db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE record_id = %s", (data["held"],))
    elif change == "truncate":
        db.execute("TRUNCATE app.job_applications")
    else:
        from retention import status_counts

        monkeypatch.setattr(status_counts, "fingerprint", lambda policy, purpose: "another policy")

    # A delete reaches PostgreSQL's statistics within seconds of its commit.
    deadline = time.monotonic() + 20
    while (quotes := _read(source_dsn, policy, NOW)["quotes"]).state != "outdated" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (quotes.state, quotes.counts, quotes.reason, quotes.last_overdue) == ("outdated", None, reason, 2)
    assert quotes.freshness(NOW)["last_overdue"] == 2
    # The former customer waiting past their end (an alarm) stays counted in the withheld prospects.
    assert _read(source_dsn, policy, NOW)["prospects"].last_waiting_alarm == 1

    # Counted again: fresh, and equal to SQL after the change.
    _count(source_dsn, policy)
    again = _read(source_dsn, policy, NOW)["quotes"]
    assert again.state == "fresh" and _figures(again.counts) == direct_sql(db, NOW, OVERDUE_DAYS)["quotes"]


def test_an_application_insert_is_seen_at_the_next_count_within_the_ttl(data, db, policy, source_dsn):
    """What the marker does not follow: a new row by the application. Its figures are served
    with their age until the TTL, then counted again (``?fresh=true`` counts at once)."""
    _count(source_dsn, policy)
    f.quote(db, issued=NOW.date() - dt.timedelta(days=800))  # due, a new row
    soon = _read(source_dsn, policy, NOW + dt.timedelta(seconds=5))["quotes"]
    assert soon.state == "fresh" and soon.counts["deletable"] == 3
    assert _read(source_dsn, policy, NOW + TTL + dt.timedelta(seconds=1))["quotes"].state == "aged"
    _count(source_dsn, policy)
    recounted = _read(source_dsn, policy, NOW)["quotes"].counts["deletable"]
    assert recounted == 4 == direct_sql(db, NOW, 3)["quotes"]["deletable"]


def test_older_counts_never_replace_newer_ones(data, policy, source_dsn):
    _count(source_dsn, policy, now=NOW)
    _count(source_dsn, policy, now=NOW - dt.timedelta(minutes=5))  # a slow counting finishing late
    assert _read(source_dsn, policy, NOW)["quotes"].counted_at == NOW


def test_the_watch_counts_are_kept_for_the_page_and_a_failure_to_keep_them_does_not_stop_it(
    data, db, policy, source_dsn
):
    from retention.status_counts import count_and_store

    with psycopg.connect(source_dsn, autocommit=True) as conn:
        statuses = count_and_store(conn, policy, NOW, 3, names={"quotes"}, counted_by="watch", best_effort=True)
    assert [s.purpose for s in statuses] == ["quotes"] and statuses[0].overdue == 2
    stored = _read(source_dsn, policy, NOW)
    assert stored["quotes"].counted_by == "watch" and stored["contracts"].reason == "never counted"

    db.execute("ALTER TABLE retention.status_counts RENAME TO status_counts_away")
    try:
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            statuses = count_and_store(conn, policy, NOW, 3, names={"quotes"}, counted_by="watch", best_effort=True)
            assert statuses[0].overdue == 2  # the alarm's figures, whatever happened to the page's copy
            with pytest.raises(psycopg.errors.UndefinedTable):
                count_and_store(conn, policy, NOW, 3, names={"quotes"}, counted_by="page")
    finally:
        db.execute("ALTER TABLE retention.status_counts_away RENAME TO status_counts")
