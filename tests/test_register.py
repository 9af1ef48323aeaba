"""The register of the schedule (retention.register): `python -m retention.register` on the real
test PostgreSQL after a real enforced run of the quotes purpose that archived, deleted and held,
and audit rows of earlier months. Its counts equal SQL over the audit; its schedule is the policy
file's; a period with nothing done shows zeros; bad dates are refused; no personal data."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.policy.periods import Period

from tests import factories as f

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# Audit rows of earlier runs, written by hand at chosen instants (UTC): (purpose, run, action, records, at).
EARLIER = [
    ("fraud", "scheduled__a", "deleted", 2, "2026-01-15 10:00+00"),
    # 23:30 UTC on 31 January is 00:30 on 1 February in Paris: a February row.
    ("fraud", "scheduled__b", "deleted", 5, "2026-01-31 23:30+00"),
    # Held rows are written again by every run: the month shows the most of one run, not the sum.
    ("quotes", "scheduled__c", "held", 3, "2026-02-10 09:00+00"),
    ("quotes", "scheduled__d", "held", 3, "2026-02-11 09:00+00"),
    ("quotes", "scheduled__d", "object_purged", 7, "2026-02-11 09:00+00"),
    ("quotes", "scheduled__d", "rows_purged", 2, "2026-02-11 09:00+00"),
    ("quotes", "scheduled__d", "orphan_removed", 4, "2026-02-11 09:00+00"),
    ("contracts", "subject_request__DSR-1", "deleted", 4, "2026-03-05 09:00+00"),
]


def register_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m retention.register` as the DPO runs it (the test session's policy file)."""
    env = os.environ | {"PYTHONPATH": f"{REPO_ROOT / 'plugins'}{os.pathsep}{REPO_ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", "retention.register", *args], env=env, capture_output=True, text=True, timeout=120
    )


def sections(text: str) -> dict[str, list[dict]]:
    """The CSV's sections (`section,<name>`, then a header and rows), as dicts."""
    found: dict[str, list[dict]] = {}
    for block in text.replace("\r\n", "\n").split("\n\n")[1:]:
        rows = list(csv.reader(io.StringIO(block)))
        assert rows[0][0] == "section", rows[0]
        found[rows[0][1]] = [dict(zip(rows[1], r, strict=True)) for r in rows[2:]]
    return found


@pytest.fixture
def ran(db, s3, storage, policy, source_dsn):
    """An enforced quotes run (one archived, one past its archive period deleted, one held), and
    the audit rows of EARLIER; yields the seeded personal values."""
    f.quote(db, issued="2024-02-01", email="register.archived@example.fr")
    f.quote(db, issued="2020-01-01", email="register.deleted@example.fr")
    held = f.quote(db, issued="2020-01-01")
    f.legal_hold(db, "quotes", held)
    f.customer(db)
    seeded = {v for (v,) in db.execute("SELECT email FROM app.quotes UNION SELECT email FROM app.customers")}
    seeded |= {"Camille", "Martin", "+33612345678"}
    engine = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    ctx = RunContext("quotes", "manual__register", f.midnight("2025-02-28"))
    (outcome,) = engine.archive_and_delete(ctx)
    assert (outcome.deleted, outcome.held) == (2, 1)
    for purpose, run_id, action, records, at in EARLIER:
        db.execute(
            "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count, at)"
            " VALUES (%s, %s, %s, 'r', 't', %s, %s, %s)",
            (run_id, at, purpose, action, records, at),
        )
    return seeded


def test_cli_counts_equal_the_audit_and_the_schedule_is_the_policys(ran, source_dsn, policy, db, tmp_path):
    today = dt.datetime.now(f.PARIS).date()
    out = tmp_path / "register.csv"
    result = register_cli(
        "--dsn", source_dsn, "--from", "2026-01-01", "--to", today.isoformat(), "--format", "csv", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "-> " in result.stdout and str(out) in result.stdout
    text = out.read_text(encoding="utf-8")
    register = sections(text)

    # What was done: every purpose of the policy, every month of the period, zeros included.
    activity = {(r["purpose"], r["month"]): r for r in register["activity"]}
    months = sorted({m for _, m in activity})
    assert months[0] == "2026-01" and months[-1] == today.strftime("%Y-%m")
    assert set(activity) == {(p, m) for p in policy.purposes for m in months}
    counts = {k: {c: int(v) for c, v in r.items() if c not in ("purpose", "month")} for k, r in activity.items()}
    # Equal to SQL over the audit, month by month in Paris.
    expected: dict[tuple, dict] = {}
    for purpose, month, action, records in db.execute(
        "SELECT purpose, to_char(at AT TIME ZONE 'Europe/Paris', 'YYYY-MM'), action, sum(record_count)"
        " FROM retention.audit_log WHERE NOT starts_with(run_id, 'subject_request__') AND action <> 'held'"
        " GROUP BY 1, 2, 3"
    ):
        column = {"archived_and_deleted": "archived_and_deleted", "deleted": "deleted_without_archive"}.get(action)
        column = column or {"object_purged": "purged_from_archive", "rows_purged": "purged_from_archive"}.get(action)
        if column:
            slot = expected.setdefault((purpose, month), {})
            slot[column] = slot.get(column, 0) + records
    for key, figures in expected.items():
        for column, records in figures.items():
            assert counts[key][column] == records, (key, column)
    this_month = today.strftime("%Y-%m")
    assert counts[("quotes", this_month)] == {
        "runs": 1,
        "archived_and_deleted": 1,
        "deleted_without_archive": 1,
        "erased_on_request": 0,
        "purged_from_archive": 0,
        "held": 1,
        "archive_held": 0,
        "waiting": 0,
    }
    assert counts[("fraud", "2026-01")]["deleted_without_archive"] == 2
    assert counts[("fraud", "2026-02")]["deleted_without_archive"] == 5  # 31 Jan 23:30 UTC is February in Paris
    assert counts[("quotes", "2026-02")]["held"] == 3 and counts[("quotes", "2026-02")]["runs"] == 2
    assert counts[("quotes", "2026-02")]["purged_from_archive"] == 9  # orphan uploads are not counted
    assert counts[("contracts", "2026-03")]["erased_on_request"] == 4
    assert counts[("contracts", "2026-03")]["runs"] == 0
    assert counts[("job_applications", "2026-04")] == dict.fromkeys(counts[("job_applications", "2026-04")], 0)

    # The schedule: every rule of every purpose, with the periods and tier the policy file says.
    data = yaml.safe_load((Path(os.environ["RETENTION_POLICY_FILE"])).read_text(encoding="utf-8"))
    schedule = {(r["purpose"], r["rule"]): r for r in register["schedule"]}
    assert {p for p, _ in schedule} == set(data["purposes"])
    for purpose, spec in data["purposes"].items():
        for rule in spec["rules"]:
            row = schedule[(purpose, rule["name"])]
            assert Period.parse(row["live"]) == Period.parse(rule["live"]), (purpose, rule["name"])
            assert row["archive_tier"] == rule["tier"] and row["table"] == rule["table"]
            assert (Period.parse(row["archive"]) if row["archive"] else None) == (
                Period.parse(rule["archive"]) if "archive" in rule else None
            )
            assert row["legal_basis_fr"] == spec["legal_basis_fr"]
            assert row["data_categories_fr"] == "; ".join(spec["data_categories_fr"])
    assert (
        schedule[("contracts", "claims")]["held_by"] == "a hold on the claims row or on its customers, pets, contracts"
    )
    waits = schedule[("prospects", "former_customers")]["waits_for"]
    assert "identity_documents.customer_id (alarmed)" in waits and "contracts.customer_id" in waits
    assert "chat_messages" not in waits  # go_with_parent: they go with the customer

    # No personal data: none of the seeded values, no address at all.
    html = tmp_path / "register.html"
    result = register_cli("--dsn", source_dsn, "--from", "2026-01-01", "--format", "html", "--out", str(html))
    assert result.returncode == 0, result.stderr
    page = html.read_text(encoding="utf-8")
    assert all(f'id="purpose-{p}"' in page for p in policy.purposes)
    for output in (text, page):
        assert not EMAIL.search(output)
        assert not [v for v in ran if v in output]
    # Printable and self-contained: print CSS, nothing to load.
    assert "@media print" in page and "@page" in page
    assert not re.search(r"<(script|link|img)\b|src=|url\(|https?://", page)


def test_a_period_with_nothing_done_shows_zeros(ran, source_dsn, policy, tmp_path):
    out = tmp_path / "empty.csv"
    result = register_cli(
        "--dsn", source_dsn, "--from", "2019-01-01", "--to", "2019-03-31", "--format", "csv", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    activity = sections(out.read_text(encoding="utf-8"))["activity"]
    assert [(r["purpose"], r["month"]) for r in activity] == [
        (p, m) for p in policy.purposes for m in ("2019-01", "2019-02", "2019-03")
    ]
    assert {v for r in activity for k, v in r.items() if k not in ("purpose", "month")} == {"0"}


@pytest.mark.parametrize(
    ("dates", "message"),
    [
        (("--from", "2026-05-01", "--to", "2026-04-01"), "from 2026-05-01 is after to 2026-04-01: the period is empty"),
        (("--from", "2026-02-30"), "from: '2026-02-30' is not a date (expected YYYY-MM-DD)"),
        (("--to", "last week"), "to: 'last week' is not a date (expected YYYY-MM-DD)"),
        (("--from", "2000-01-01", "--to", "2026-01-01"), "the period covers 313 months, at most 120"),
    ],
    ids=["from-after-to", "not-a-day", "not-a-date", "too-long"],
)
def test_bad_dates_are_refused_before_anything_is_read(tmp_path, dates, message):
    out = tmp_path / "never.csv"
    result = register_cli("--dsn", "postgresql://nowhere.invalid/none", *dates, "--format", "csv", "--out", str(out))
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists()


def test_a_database_it_cannot_read_is_one_line_and_no_file(tmp_path):
    out = tmp_path / "never.csv"
    result = register_cli("--dsn", "postgresql://127.0.0.1:1/none", "--format", "csv", "--out", str(out))
    assert result.returncode == 1 and not out.exists()
    assert result.stderr.startswith("register: cannot read the database:") and "Traceback" not in result.stderr
