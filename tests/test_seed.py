"""tools/seed against a real PostgreSQL (and S3 server): same seed, same data; work on both
sides of every rule's boundary; a document for every key; no card security code.

It seeds a database of its own (`seed_tests`) in the test session's PostgreSQL cluster.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from retention.planner import Planner
from retention.policy import Rule, default_policy
from retention.policy.periods import local_midnight
from retention.schema import apply_schema

from tools.seed.dates import ENFORCED_UNTIL_DAYS_BEFORE
from tools.seed.load import seed_database
from tools.seed.tables import TABLES

pytestmark = pytest.mark.integration

POLICY = default_policy()
TZ = POLICY.tz
# 2024-02-29 + 12 months = 2025-02-28 is due between E (R - 45 days) and R: still in the data.
REFERENCE_DATE = dt.date(2025, 3, 10)
RUN = local_midnight(REFERENCE_DATE, TZ)
ENFORCED = local_midnight(REFERENCE_DATE - dt.timedelta(days=ENFORCED_UNTIL_DAYS_BEFORE), TZ)
LEAP_DAY = dt.date(2024, 2, 29)
CUSTOMERS = 2000
SEED = 7
BUCKET = "seed-test-documents"
# The rules written in the policy (tools/seed models those; the ones generated from
# `dependents` are tested in tests/test_dependents.py).
RULES = [(purpose, rule) for purpose, spec in POLICY.purposes.items() for rule in spec.schedule_rules]
RULE_IDS = [rule.name for _, rule in RULES]
HELD_TABLES = ("quotes", "contracts", "job_applications", "call_recordings", "customers", "marketing_contacts")


@dataclass(frozen=True)
class Seeded:
    dsn: str
    s3: object | None


@pytest.fixture(scope="module")
def seeded(services) -> Iterator[Seeded]:
    """A database of its own in the test cluster, seeded once for the module, with documents."""
    from tools import devstack

    services["pg"].ensure_database("seed_tests")
    dsn = services["pg"].dsn("seed_tests")
    apply_schema(dsn)
    s3 = devstack.s3_client(services["s3"].endpoint_url)
    started = time.monotonic()
    counts = seed(dsn, s3_client=s3, documents_bucket=BUCKET if s3 else None)
    print(
        f"\n{CUSTOMERS:,} customers seeded in {time.monotonic() - started:.1f} s{' with documents' if s3 else ''}: {counts}"
    )
    yield Seeded(dsn, s3)


def seed(dsn: str, *, seed_value: int = SEED, **options: object) -> dict[str, int]:
    return seed_database(
        dsn, customers=CUSTOMERS, seed=seed_value, reference_date=REFERENCE_DATE, reset=True, **options
    )


def table_hashes(dsn: str) -> dict[str, str]:
    tables = [f"app.{table}" for table in TABLES] + ["retention.legal_holds"]
    with psycopg.connect(dsn) as conn:
        return {
            table: conn.execute(
                f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t.id), '')) FROM {table} AS t"
            ).fetchone()[0]
            for table in tables
        }


@dataclass(frozen=True)
class Selected:
    id: int
    clock: dt.datetime
    held: bool
    waiting_for: str | None
    claimed_by: str | None  # another rule selecting the row too (never, in the shipped policy)


def select_due(dsn: str, purpose: str, rule: Rule, day: dt.date) -> list[Selected]:
    """What the rule's SQL selects for the run whose logical date is Paris midnight of ``day``."""
    logical_date = local_midnight(day, TZ)
    with psycopg.connect(dsn) as conn:
        planner = Planner.load(conn, default_policy(), purpose)
        rows = conn.execute(planner.select(rule), planner.params(logical_date)).fetchall()
    return [Selected(*row) for row in rows]


def parent_tables(dsn: str) -> set[str]:
    """Tables other rows reference through a blocking foreign key: their rows may wait."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT DISTINCT c.relname FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.confrelid "
            "WHERE k.contype = 'f' AND k.confdeltype <> 'n' AND k.connamespace = 'app'::regnamespace"
        ).fetchall()
    return {name for (name,) in rows}


def test_same_seed_gives_the_same_data(seeded: Seeded) -> None:
    first = table_hashes(seeded.dsn)  # the fixture's seed (with documents, when S3 is set)
    started = time.monotonic()
    seed(seeded.dsn)
    print(f"\n{CUSTOMERS:,} customers, database only: {time.monotonic() - started:.1f} s")
    assert table_hashes(seeded.dsn) == first

    seed(seeded.dsn, seed_value=SEED + 1)
    other = table_hashes(seeded.dsn)
    assert other["app.customers"] != first["app.customers"]
    seed(seeded.dsn)  # leave the module's data as the other tests expect it
    assert table_hashes(seeded.dsn) == first


def test_an_already_seeded_database_is_left_alone(seeded: Seeded) -> None:
    before = table_hashes(seeded.dsn)
    counts = seed_database(seeded.dsn, customers=10, seed=SEED + 2, reference_date=REFERENCE_DATE)
    assert counts["customers"] == CUSTOMERS
    assert table_hashes(seeded.dsn) == before


@pytest.mark.parametrize(("purpose", "rule"), RULES, ids=RULE_IDS)
def test_every_rule_has_records_on_both_sides_of_its_boundary(seeded: Seeded, purpose: str, rule: Rule) -> None:
    due = select_due(seeded.dsn, purpose, rule, REFERENCE_DATE)
    actionable = [row for row in due if not row.held]
    assert actionable, f"{rule.name}: nothing due and not held at {REFERENCE_DATE}"
    if rule.table not in parent_tables(seeded.dsn):
        assert any(row.waiting_for is None for row in actionable), f"{rule.name}: every due row waits"

    two_days_before = select_due(seeded.dsn, purpose, rule, REFERENCE_DATE - dt.timedelta(days=2))
    assert len(two_days_before) < len(due)

    due_ids = {row.id for row in due}
    day_before_ids = {row.id for row in select_due(seeded.dsn, purpose, rule, REFERENCE_DATE - dt.timedelta(days=1))}
    day_after_ids = {row.id for row in select_due(seeded.dsn, purpose, rule, REFERENCE_DATE + dt.timedelta(days=1))}
    assert day_before_ids < due_ids, f"{rule.name}: no record becomes due exactly at {REFERENCE_DATE}"
    assert due_ids < day_after_ids, f"{rule.name}: no record becomes due the day after {REFERENCE_DATE}"


def whole_year_rules_with_a_leap_day_clock() -> list[tuple[str, Rule]]:
    """Rules in whole years whose 29 February 2024 record is still in the data at R."""
    return [
        (purpose, rule)
        for purpose, rule in RULES
        if rule.live.months and not rule.live.months % 12 and rule.live.add_to(LEAP_DAY) > ENFORCED.date()
    ]


def test_a_twelve_month_rule_has_a_leap_day_clock() -> None:
    assert any(rule.live.months == 12 for _, rule in whole_year_rules_with_a_leap_day_clock())


@pytest.mark.parametrize(
    ("purpose", "rule"),
    whole_year_rules_with_a_leap_day_clock(),
    ids=[rule.name for _, rule in whole_year_rules_with_a_leap_day_clock()],
)
def test_a_leap_day_clock_is_due_at_the_end_of_february(seeded: Seeded, purpose: str, rule: Rule) -> None:
    due_day = rule.live.add_to(LEAP_DAY)
    assert due_day.month == 2 and due_day.day == 28

    def leap_day_ids(day: dt.date) -> set[int]:
        rows = select_due(seeded.dsn, purpose, rule, day)
        return {row.id for row in rows if row.clock.astimezone(TZ).date() == LEAP_DAY}

    assert leap_day_ids(due_day), f"{rule.name}: no record with a {LEAP_DAY} clock due on {due_day}"
    assert not leap_day_ids(due_day - dt.timedelta(days=1))


def test_the_first_run_has_a_backlog_not_a_flood(seeded: Seeded) -> None:
    """Retention ran until R - 45 days: every table has some due rows, none a majority.

    Except where every rule of the table has a live period shorter than that backlog (0 days
    from the handling, the verification, the transmission): there, all that happened in the
    45 days is due by definition; some rows must still stay (open, pending, not transmitted)."""
    due_by_table: dict[str, set[int]] = {}
    short_lived: dict[str, bool] = {}
    for purpose, rule in RULES:
        due_by_table.setdefault(rule.table, set()).update(
            row.id for row in select_due(seeded.dsn, purpose, rule, REFERENCE_DATE)
        )
        shorter = rule.live.add_to(ENFORCED.date()) < REFERENCE_DATE
        short_lived[rule.table] = short_lived.get(rule.table, True) and shorter
    with psycopg.connect(seeded.dsn) as conn:
        for table, due in due_by_table.items():
            total = conn.execute(f"SELECT count(*) FROM app.{table}").fetchone()[0]
            if short_lived[table]:
                assert 0 < len(due) < total, f"{table}: {len(due)} of {total} rows due"
            else:
                assert 0 < len(due) <= 0.4 * total, f"{table}: {len(due)} of {total} rows due"


def test_legal_holds_cover_due_records_of_several_tables(seeded: Seeded) -> None:
    held_tables = set()
    for purpose, rule in RULES:
        if any(row.held for row in select_due(seeded.dsn, purpose, rule, REFERENCE_DATE)):
            held_tables.add(rule.table)
    assert set(HELD_TABLES) <= held_tables
    with psycopg.connect(seeded.dsn) as conn:
        released = conn.execute("SELECT count(*) FROM retention.legal_holds WHERE released_at IS NOT NULL").fetchone()[
            0
        ]
    assert released >= 1


def test_never_due_records_exist(seeded: Seeded) -> None:
    """NULL clocks and records no rule selects: running contracts, open cases, converted
    quotes of running contracts, hired candidates contacted long ago."""
    checks = {
        "running contracts": "SELECT count(*) FROM app.contracts WHERE ended_at IS NULL AND status = 'active'",
        "open fraud cases": "SELECT count(*) FROM app.fraud_cases WHERE closed_at IS NULL AND status = 'open'",
        "converted quotes": "SELECT count(*) FROM app.quotes q JOIN app.contracts c ON c.id = q.contract_id WHERE c.ended_at IS NULL",
        "old hired candidates": "SELECT count(*) FROM app.job_applications WHERE hired AND last_contact_at < %(run)s - interval '3 years'",
        "ten-year-old running contracts": "SELECT count(*) FROM app.contracts WHERE ended_at IS NULL AND started_at < %(run)s - interval '9 years'",
    }
    with psycopg.connect(seeded.dsn) as conn:
        for what, sql in checks.items():
            assert conn.execute(sql, {"run": RUN}).fetchone()[0] > 0, what


def test_relationship_end_follows_the_contracts(seeded: Seeded) -> None:
    with psycopg.connect(seeded.dsn) as conn:
        running_but_ended = conn.execute(
            "SELECT count(*) FROM app.customers c WHERE c.relationship_ended_at IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM app.contracts k WHERE k.customer_id = c.id AND k.ended_at IS NULL)"
        ).fetchone()[0]
        active_without_contract = conn.execute(
            "SELECT count(*) FROM app.customers c WHERE c.relationship_ended_at IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM app.contracts k WHERE k.customer_id = c.id AND k.ended_at IS NULL)"
        ).fetchone()[0]
        ended_after_relationship = conn.execute(
            "SELECT count(*) FROM app.customers c JOIN app.contracts k ON k.customer_id = c.id "
            "WHERE k.ended_at > c.relationship_ended_at"
        ).fetchone()[0]
    assert (running_but_ended, active_without_contract, ended_after_relationship) == (0, 0, 0)


def test_later_inserts_get_fresh_ids(seeded: Seeded) -> None:
    with psycopg.connect(seeded.dsn) as conn:
        new_id = conn.execute(
            "INSERT INTO app.job_applications (first_name, last_name, email, position, applied_at, last_contact_at) "
            "VALUES ('A', 'B', 'a.b@example.org', 'Juriste', now(), now()) RETURNING id"
        ).fetchone()[0]
        highest = conn.execute("SELECT max(id) FROM app.job_applications WHERE id <> %s", (new_id,)).fetchone()[0]
        conn.rollback()
    assert new_id > highest


def test_every_document_key_has_an_object(seeded: Seeded) -> None:
    with psycopg.connect(seeded.dsn) as conn:
        key_columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'app' AND column_name LIKE '%\\_key' ORDER BY 1, 2"
        ).fetchall()
        assert key_columns
        keys = set()
        for table, column in key_columns:
            keys.update(k for (k,) in conn.execute(f"SELECT {column} FROM app.{table} WHERE {column} IS NOT NULL"))
    stored = set()
    for page in seeded.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        stored.update(item["Key"] for item in page.get("Contents", ()))
    missing = sorted(keys - stored)
    assert not missing, f"{len(missing)} keys without an object, e.g. {missing[:5]}"

    head = seeded.s3.head_object(Bucket=BUCKET, Key=min(keys), ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "AES256"
    assert head.get("ChecksumSHA256")
    assert head["ContentLength"] < 1024


def test_no_card_security_code_is_stored(seeded: Seeded) -> None:
    with psycopg.connect(seeded.dsn) as conn:
        columns = conn.execute(
            "SELECT table_name || '.' || column_name FROM information_schema.columns "
            "WHERE table_schema = 'app' AND column_name ~* '(cvv|cvc|cvn|cryptogram|security_code)'"
        ).fetchall()
    assert columns == []
