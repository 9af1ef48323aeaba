"""Rules on one table must not overlap (the first promise against a policy mistake).

quotes (unconverted quotes, 12 months from issue) and contracts (converted quotes, from the
contract's end) share app.quotes; the two call-recordings rules (2 years, 6 months) share
app.call_recordings. An edit that drops a rule file's WHERE makes its rule select the other's
rows, on its own, shorter period: a running contract's quote, a contracting recording before its
2 years. A row another written rule selects too is kept by both (``Planner._claimed_by``), on
the row path and the partition path, and the before-gate fails naming both rules. And a rule
file's WHERE is its top-level one, never a subquery's (the clock test would land inside it).
"""

from __future__ import annotations

import pytest
from retention import gates
from retention.archive import partition_plan
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.gates.deletion_guard import awaiting_approval, deletion_share_results
from retention.paths import POLICY_FILE
from retention.planner import Planner
from retention.policy import load_policy
from retention.policy.rule_files import parse_rule_filter

from tests import factories as f
from tests.test_partitions import monthly_partitioned

pytestmark = pytest.mark.integration

LOST_WHERE = "-- the rule's WHERE, lost in an edit\n"


def policy_with_rule_file(tmp_path, monkeypatch, purpose: str, rule: str, text: str):
    """The policy with one rule file replaced (the others are the project's own)."""
    from retention.policy import loading

    sql_dir = tmp_path / "sql"
    for purpose_dir in POLICY_FILE.parent.joinpath("sql").iterdir():
        if purpose_dir.name != purpose:
            (sql_dir / purpose_dir.name).parent.mkdir(parents=True, exist_ok=True)
            (sql_dir / purpose_dir.name).symlink_to(purpose_dir)
            continue
        (sql_dir / purpose).mkdir(parents=True)
        for other in purpose_dir.iterdir():
            (sql_dir / purpose / other.name).symlink_to(other)
    (sql_dir / purpose / f"{rule}.sql").unlink()
    (sql_dir / purpose / f"{rule}.sql").write_text(text, encoding="utf-8")
    monkeypatch.setattr(loading, "SQL_DIR", sql_dir)
    return load_policy(POLICY_FILE).with_mode("enforce")


def engine_for(policy, purpose, source_dsn, s3, storage) -> RetentionEngine:
    return RetentionEngine(policy, purpose, source_dsn, ArchiveStore(s3, storage), lock_timeout=5)


def test_a_filter_is_written_as_a_condition_on_the_row_whatever_its_clock():
    joined = parse_rule_filter(
        "JOIN app.contracts AS contracts ON contracts.id = quotes.contract_id\nWHERE contracts.kind = 'a'",
        schema="app",
        table="quotes",
        clock="contracts.ended_at",
    )
    assert joined.selects_row("quotes") == (
        "EXISTS (SELECT FROM app.contracts AS contracts WHERE (contracts.id = quotes.contract_id)"
        " AND (contracts.kind = 'a'))"
    )
    plain = parse_rule_filter(
        "WHERE quotes.contract_id IS NULL", schema="app", table="quotes", clock="quotes.issued_at"
    )
    assert plain.selects_row("quotes") == "(quotes.contract_id IS NULL)"
    everything = parse_rule_filter("-- all", schema="app", table="quotes", clock="quotes.issued_at")
    assert everything.selects_row("quotes") == "true"


def test_the_projects_rules_sharing_a_table_keep_nothing_from_each_other(db, s3, storage, policy, source_dsn):
    """The policy as it stands: its rules are disjoint, every due row goes."""
    ended = f.contract(db, ended="2020-01-01")
    converted = f.quote(db, issued="2019-01-01", contract_id=ended)
    unconverted = f.quote(db, issued="2019-01-01")
    enforced = policy.with_mode("enforce")
    at = RunContext("quotes", "r", f.midnight("2025-06-01"))
    outcomes = Planner.load(db, enforced, "quotes").plan(db, at.logical_date)
    assert [o.claimed for o in outcomes] == [{}]
    engine_for(enforced, "quotes", source_dsn, s3, storage).archive_and_delete(at)
    assert unconverted not in f.ids(db, "quotes")
    engine_for(enforced, "contracts", source_dsn, s3, storage).archive_and_delete(
        RunContext("contracts", "r", f.midnight("2025-06-01"))
    )
    assert converted not in f.ids(db, "quotes")


def test_a_rule_that_lost_its_where_keeps_the_rows_another_rule_selects_and_the_gate_says_so(
    tmp_path, monkeypatch, db, s3, storage, source_dsn
):
    broken = policy_with_rule_file(tmp_path, monkeypatch, "quotes", "unconverted_quotes", LOST_WHERE)
    running = f.contract(db, ended=None)
    of_running = f.quote(db, issued="2020-01-01", contract_id=running)  # the contract runs: kept
    ended = f.contract(db, ended="2025-01-01")
    of_ended = f.quote(db, issued="2020-01-01", contract_id=ended)  # 5 years of archive, not 12 months
    unconverted = f.quote(db, issued="2020-01-01")  # the quotes purpose's own: goes
    at = RunContext("quotes", "r", f.midnight("2025-06-01"))

    outcomes = Planner.load(db, broken, "quotes").plan(db, at.logical_date)
    assert outcomes[0].claimed == {"contracts.converted_quotes": 2}
    assert outcomes[0].deletable == 1
    results = awaiting_approval(
        deletion_share_results(broken, broken.purpose("quotes"), source_dsn, at, {"quotes": 3}, 1.0)
    )
    overlap = [r for r in results if r["expectation"] == "rules_select_disjoint_rows"]
    assert len(overlap) == 1 and overlap[0]["success"] is False and not overlap[0].get("awaiting_approval")
    assert overlap[0]["observed"] == {"other_rule": "contracts.converted_quotes", "rows": 2}
    assert "include/sql/quotes/unconverted_quotes.sql" in overlap[0]["message"]
    # The run's before-gate fails on the plan the run made (carried as the plan task's XCom).
    plan = engine_for(broken, "quotes", source_dsn, s3, storage).make_plan(at)
    with pytest.raises(gates.QualityGateError, match=r"rule contracts\.converted_quotes too"):
        gates.run_before_gates(broken, broken.purpose("quotes"), source_dsn, at, 1.0, plan=plan.as_dict())

    # The engine keeps them without the gate: the re-check under lock leaves them out.
    engine_for(broken, "quotes", source_dsn, s3, storage).archive_and_delete(at)
    assert f.ids(db, "quotes") == {of_running, of_ended}
    assert unconverted not in f.ids(db, "quotes")

    # The other side too: the contracts purpose keeps the ended contract's quote (the quotes
    # rule now selects it), and the contract waits for it.
    engine_for(broken, "contracts", source_dsn, s3, storage).archive_and_delete(
        RunContext("contracts", "r", f.midnight("2025-06-01"))
    )
    assert of_ended in f.ids(db, "quotes") and ended in f.ids(db, "contracts")


@pytest.fixture
def quotes_partitioned(db):
    with monthly_partitioned(db, quotes="issued_at"):
        yield db


def test_a_partition_with_rows_another_rule_selects_is_not_retired_whole(
    tmp_path, monkeypatch, quotes_partitioned, s3, storage, source_dsn
):
    """The quotes rule lost its WHERE: every quote of January 2019's partition is 12 months old,
    but one is a running contract's. The partition stays; the other quote takes the row path.
    February's unconverted quotes go whole (and leave the plan room for January's two rows)."""
    db = quotes_partitioned
    db.execute(
        "CREATE TABLE app.quotes_2019_02 PARTITION OF app.quotes"
        " FOR VALUES FROM ('2019-02-01 00:00 Europe/Paris') TO ('2019-03-01 00:00 Europe/Paris')"
    )
    broken = policy_with_rule_file(tmp_path, monkeypatch, "quotes", "unconverted_quotes", LOST_WHERE)
    of_running = f.quote(db, issued="2019-01-10", contract_id=f.contract(db, ended=None))
    unconverted = f.quote(db, issued="2019-01-12")
    february = {f.quote(db, issued="2019-02-05"), f.quote(db, issued="2019-02-20")}
    report = engine_for(broken, "quotes", source_dsn, s3, storage).archive_and_delete(
        RunContext("quotes", "r", f.midnight("2025-06-01"))
    )
    assert f.ids(db, "quotes") == {of_running}, "the running contract's quote went with its partition"
    assert not {unconverted, *february} & f.ids(db, "quotes")
    left = [p.name for p in partition_plan.range_partitions(db, "app", "quotes", "issued_at")]
    assert "quotes_2019_01" in left and "quotes_2019_02" not in left
    assert report[0].partitions == {"dropped": 1, "rows": 2, "kept": 1}, report[0].partitions


# A natural rule file: converted quotes of contracts without a fraud alert, the subquery in the
# JOIN's ON clause. Its WHERE is the subquery's: taken as the file's, the planner's clock test
# went inside the NOT EXISTS and a running contract's quote was selected (found by a review).
SUBQUERY_IN_ON = (
    "JOIN app.contracts AS contracts ON contracts.id = quotes.contract_id\n"
    "  AND NOT EXISTS (SELECT 1 FROM app.fraud_alerts AS fraud_alerts WHERE fraud_alerts.contract_id = contracts.id)\n"
)


def test_a_where_inside_a_subquery_is_not_the_files_where():
    parsed = parse_rule_filter(SUBQUERY_IN_ON, schema="app", table="quotes", clock="contracts.ended_at")
    assert parsed.where == "" and parsed.joined_tables == ("contracts",)
    with_where = parse_rule_filter(
        SUBQUERY_IN_ON + "WHERE quotes.formula <> 'x'", schema="app", table="quotes", clock="contracts.ended_at"
    )
    assert with_where.where == "quotes.formula <> 'x'" and "NOT EXISTS" in with_where.joins


def test_a_subquery_in_an_on_clause_keeps_the_clock(tmp_path, monkeypatch, db, s3, storage, source_dsn):
    edited = policy_with_rule_file(tmp_path, monkeypatch, "contracts", "converted_quotes", SUBQUERY_IN_ON)
    of_running = f.quote(db, issued="2020-01-01", contract_id=f.contract(db, ended=None))
    of_ended = f.quote(db, issued="2019-01-01", contract_id=f.contract(db, ended="2020-01-01"))
    engine_for(edited, "contracts", source_dsn, s3, storage).archive_and_delete(
        RunContext("contracts", "r", f.midnight("2025-06-01"))
    )
    assert of_ended not in f.ids(db, "quotes")
    assert of_running in f.ids(db, "quotes"), "a running contract's quote was deleted"


def test_the_run_summary_never_counts_claimed_rows_as_deletable(tmp_path, monkeypatch, db, source_dsn):
    """docs/run_reports.md: the note never shows a claimed row as deletable (the summary recomputed
    deletable as due - held - waiting; found by a review)."""
    from retention import run_report
    from retention.planner import Planner

    broken = policy_with_rule_file(tmp_path, monkeypatch, "quotes", "unconverted_quotes", LOST_WHERE)
    running = f.contract(db, ended=None)
    f.quote(db, issued="2020-01-01", contract_id=running)
    ended = f.contract(db, ended="2025-01-01")
    f.quote(db, issued="2020-01-01", contract_id=ended)
    f.quote(db, issued="2020-01-01")
    outcome = Planner.load(db, broken, "quotes").plan(db, f.midnight("2025-06-01"))[0]
    assert outcome.claimed == {"contracts.converted_quotes": 2} and outcome.deletable == 1

    monkeypatch.setattr(run_report, "_base_url", lambda: "")
    context = {"params": {"dry_run": True}, "run_id": "r", "logical_date": f.midnight("2025-06-01")}
    states = dict.fromkeys(run_report.UPSTREAM, "success")
    summary = run_report.summary_dict("quotes", context, {}, states, "", [outcome.as_dict()])
    assert summary["rules"][0]["deletable"] == 1 and summary["totals"]["deletable"] == 1, (
        f"the run's summary shows {summary['totals']['deletable']} deletable (would archive / delete) for a rule whose "
        f"2 claimed rows are kept: {summary['rules'][0]}"
    )
