"""The data-quality gates (plugins/retention/gates/) against the real PostgreSQL and S3 servers.

Each gate has a test that breaks the data so that this gate must fail, then asserts that the
error names the expectation, the table and the counts, and that nothing was deleted: `attempt`
runs the DAG's order without Airflow (before-gate, then archive-and-delete only if it passed),
and one dag.test() shows the same through Airflow. The seeded demo data passes every gate.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from retention import gates
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.gates import QualityGateError
from retention.gates.checks import latest_plausible_clock

from tests import factories as f
from tests.dag_runs import run_dag, task_states

pytestmark = pytest.mark.integration

D = f.midnight("2025-02-28")  # the quotes tests' logical date: issued before 2024-02-29 is due


def all_rows(conn) -> dict[str, list[int]]:
    """Every id of every table of schema app (duplicates kept): 'nothing was deleted' compares these."""
    tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'app' ORDER BY 1")]
    return {t: [r[0] for r in conn.execute(f"SELECT id FROM app.{t} ORDER BY id")] for t in tables}


def make_engine(policy, purpose, dsn, s3, storage) -> RetentionEngine:
    return RetentionEngine(policy, purpose, dsn, ArchiveStore(s3, storage), lock_timeout=2)


def attempt(policy, purpose, dsn, s3, storage, ctx, max_fraction=1.0, purge=True) -> tuple[dict, dict]:
    """The DAG's order without Airflow: before-gate, archive-and-delete only if it passed, purge.
    Returns what the after-gate gets: (before, archived)."""
    before = gates.run_before_gates(policy, purpose, dsn, ctx, max_fraction)
    engine = make_engine(policy, purpose, dsn, s3, storage)
    archived = {"dry_run": ctx.dry_run, "rules": [o.as_dict() for o in engine.archive_and_delete(ctx)]}
    if purge:
        engine.purge_archives(ctx)
    return before, archived


def after(policy, purpose, dsn, s3, storage, ctx, before, archived) -> dict:
    return gates.run_after_gates(policy, purpose, dsn, ArchiveStore(s3, storage), ctx, before, archived)


def quotes_ctx(run_id="manual__gates", **kwargs) -> RunContext:
    return RunContext("quotes", run_id, D, **kwargs)


def some_quotes(conn, due: int = 2, not_due: int = 6) -> list[int]:
    """Due quotes (issued 2023) and quotes not due yet at D (issued after 2024-02-29)."""
    return [f.quote(conn, issued="2023-06-01") for _ in range(due)] + [
        f.quote(conn, issued="2024-12-01") for _ in range(not_due)
    ]


def by_expectation(report: dict, expectation: str) -> list[dict]:
    return [r for r in report["results"] if r["expectation"] == expectation]


# ------------------------------------------------------------------------------ before-gates


def test_null_end_date_on_an_ended_contract_stops_the_run(db, s3, storage, policy, source_dsn):
    due = f.contract(db, ended="2025-06-01")
    f.claim(db, due)
    f.contract(db, status="ended")  # says ended, has no end date: it would never expire
    rows = all_rows(db)

    ctx = RunContext("contracts", "manual__null_end", f.midnight("2026-01-15"))
    with pytest.raises(QualityGateError) as failure:
        attempt(policy, "contracts", source_dsn, s3, storage, ctx)

    message = str(failure.value)
    assert "before-gate of purpose 'contracts' failed" in message and "nothing was deleted" in message
    assert (
        "expect_column_values_to_not_be_null(ended_at) where status in ('ended') on app.contracts: "
        "element_count=2, unexpected_count=1"
    ) in message
    assert all_rows(db) == rows


def test_duplicated_id_stops_the_run(db, s3, storage, policy, source_dsn):
    first, *_ = some_quotes(db)
    db.execute("ALTER TABLE app.quotes DROP CONSTRAINT quotes_pkey")
    try:
        f.quote(db, issued="2024-12-01", id=first)
        rows = all_rows(db)
        with pytest.raises(QualityGateError) as failure:
            attempt(policy, "quotes", source_dsn, s3, storage, quotes_ctx())
        assert "expect_column_values_to_be_unique(id) on app.quotes: element_count=9, unexpected_count=2" in str(
            failure.value
        )
        assert all_rows(db) == rows
    finally:
        db.execute("DELETE FROM app.quotes WHERE id = %s", (first,))
        db.execute("ALTER TABLE app.quotes ADD CONSTRAINT quotes_pkey PRIMARY KEY (id)")


def test_card_code_column_stops_every_purpose(db, s3, storage, policy, source_dsn):
    contract = f.contract(db, ended="2025-06-01")
    f.payment_method(db, contract)
    some_quotes(db)
    db.execute("ALTER TABLE app.payment_methods ADD COLUMN cvv2 text")
    try:
        rows = all_rows(db)
        for purpose in ("contracts", "quotes"):
            ctx = RunContext(purpose, f"manual__cvv_{purpose}", f.midnight("2026-01-15"))
            with pytest.raises(QualityGateError) as failure:
                attempt(policy, purpose, source_dsn, s3, storage, ctx)
            assert (
                "expect_column_values_to_not_match_regex(column_name) where table_schema in ('app') "
                "on information_schema.columns"
            ) in str(failure.value)
            assert "unexpected_values=['cvv2']" in str(failure.value)
        assert all_rows(db) == rows
    finally:
        db.execute("ALTER TABLE app.payment_methods DROP COLUMN cvv2")


def test_card_code_value_stops_the_contracts_run(db, s3, storage, policy, source_dsn):
    contract = f.contract(db, ended="2025-06-01")
    f.payment_method(db, contract, card_expiry="737")  # a security code where the expiry should be
    f.payment_method(db, f.contract(db), kind="sepa_debit", card_last4=None, iban_last4="1234")
    rows = all_rows(db)

    ctx = RunContext("contracts", "manual__cvv_value", f.midnight("2026-01-15"))
    with pytest.raises(QualityGateError) as failure:
        attempt(policy, "contracts", source_dsn, s3, storage, ctx)

    message = str(failure.value)
    assert (
        "expect_column_values_to_not_match_regex(card_expiry) where kind in ('card') on app.payment_methods: "
        "element_count=1, unexpected_count=1"
    ) in message
    assert "card_last4" not in message and "iban_last4" not in message  # 4 digits there on purpose
    assert "737" not in message, "the report holds counts, never the values"
    assert all_rows(db) == rows


def test_future_clock_stops_the_run(db, s3, storage, policy, source_dsn):
    some_quotes(db)
    f.quote(db, issued=f.paris("2025-02-28", 23))  # written on the run's day, before it started
    f.quote(db, issued="2025-09-01")  # after the logical date, before now: what a backfill sees
    gates.run_before_gates(policy, "quotes", source_dsn, quotes_ctx(), 1.0)  # both are plausible

    f.quote(db, issued=dt.datetime.now(dt.UTC) + dt.timedelta(days=400))
    rows = all_rows(db)
    with pytest.raises(QualityGateError) as failure:
        attempt(policy, "quotes", source_dsn, s3, storage, quotes_ctx())
    assert re.search(
        r"expect_column_values_to_be_between\(issued_at\) on app\.quotes: element_count=11, "
        r"unexpected_count=1, missing_count=0, not_after=\d{4}-",
        str(failure.value),
    )
    assert all_rows(db) == rows


def test_missing_clock_column_stops_the_run(db, s3, storage, policy, source_dsn):
    some_quotes(db)
    rows = all_rows(db)
    db.execute("ALTER TABLE app.quotes RENAME COLUMN issued_at TO issue_date")
    try:
        with pytest.raises(QualityGateError) as failure:
            attempt(policy, "quotes", source_dsn, s3, storage, quotes_ctx())
        message = str(failure.value)
        assert "expect_column_to_exist(issued_at) on app.quotes" in message
        assert "mass_deletion_guard on app.*: error=" in message  # the rule SQL cannot run either
    finally:
        db.execute("ALTER TABLE app.quotes RENAME COLUMN issue_date TO issued_at")
    assert all_rows(db) == rows


def test_mass_deletion_guard(db, s3, storage, policy, source_dsn):
    some_quotes(db, due=6, not_due=3)
    held = f.quote(db, issued="2023-06-01")
    f.legal_hold(db, "quotes", held)  # due but held: not in the share
    rows = all_rows(db)

    with pytest.raises(QualityGateError) as failure:
        attempt(policy, "quotes", source_dsn, s3, storage, quotes_ctx(), max_fraction=0.5)
    message = str(failure.value)
    assert (
        "mass_deletion_guard on app.quotes: this run would delete 60% of app.quotes (6 of 10 rows) > "
        "max_delete_fraction=50%; raise the max_delete_fraction param for this run if intended"
    ) in message
    assert "nothing was deleted" in message
    assert all_rows(db) == rows

    dry = gates.run_before_gates(policy, "quotes", source_dsn, quotes_ctx("manual__dry", dry_run=True), 0.5)
    (guard,) = by_expectation(dry, "mass_deletion_guard")
    assert (guard["success"], guard["enforced"], guard["observed"]["fraction"]) == (False, False, 0.6)

    attempt(policy, "quotes", source_dsn, s3, storage, quotes_ctx("manual__raised"), max_fraction=0.6)
    assert len(f.ids(db, "quotes")) == 4, "raised for this run, the 6 due quotes are deleted"


def test_clock_limit_is_the_end_of_the_logical_day_or_now():
    tz = f.PARIS
    same_day = f.paris("2026-03-15", 10)
    assert latest_plausible_clock(f.midnight("2026-03-15"), tz, now=same_day) == f.midnight("2026-03-16")
    backfill_now = f.paris("2026-11-25", 10)
    assert latest_plausible_clock(f.midnight("2026-03-15"), tz, now=backfill_now) == backfill_now


# ------------------------------------------------------------------------------ after-gates


def test_after_gates_pass_after_a_run_and_skip_on_a_dry_run(db, s3, storage, policy, source_dsn):
    some_quotes(db, due=5)
    dry = quotes_ctx("manual__dry", dry_run=True)
    before, archived = attempt(policy, "quotes", source_dsn, s3, storage, dry)
    report = after(policy, "quotes", source_dsn, s3, storage, dry, before, archived)
    skipped = [r["expectation"] for r in report["results"] if r["success"] is None]
    assert skipped == ["no_due_record_remains", "no_archive_kept_beyond_purge_date"]
    assert report["skipped"] == 2 and report["after"] == "2/2 expectations passed"

    ctx = quotes_ctx(batch_size=2)
    before, archived = attempt(policy, "quotes", source_dsn, s3, storage, ctx)
    f.quote(db, issued="2024-12-01")  # written meanwhile: not in the before-snapshot, not counted
    report = after(policy, "quotes", source_dsn, s3, storage, ctx, before, archived)

    total = len(report["results"])
    assert report["after"] == f"{total}/{total} expectations passed" and report["skipped"] == 0
    (objects,) = by_expectation(report, "archive_objects_match_manifest")
    assert objects["observed"] == {"objects": 3, "rows": 5, "mismatched_objects": 0, "mismatches": []}
    (rows,) = [r for r in by_expectation(report, "expect_table_row_count_to_equal") if r["table"] == "app.quotes"]
    assert rows["observed"] == {
        "observed_value": 6,
        "rows_before": 11,
        "deleted_by_run": 5,
        "deleted_reported_by_task": 5,
    }
    json.dumps(report)  # goes to XCom as is
    assert report["summary"].splitlines()[0].split() == ["expectation", "table", "success", "observed"]


def test_archive_object_altered_after_upload_fails_the_after_gate(db, s3, storage, policy, source_dsn):
    some_quotes(db, due=3)
    ctx = quotes_ctx(batch_size=2)  # intermediate tier: no Object Lock, the object can be overwritten
    before, archived = attempt(policy, "quotes", source_dsn, s3, storage, ctx)
    key = db.execute("SELECT object_key FROM retention.archive_manifest ORDER BY id LIMIT 1").fetchone()[0]
    original = pq.read_table(io.BytesIO(s3.get_object(Bucket=storage.archive_bucket, Key=key)["Body"].read()))
    emails = original.column("email").to_pylist()
    altered = original.set_column(
        original.schema.get_field_index("email"), "email", pa.array(["someone.else@example.fr"] + emails[1:])
    )
    sink = io.BytesIO()
    pq.write_table(altered, sink, compression="zstd")
    s3.put_object(Bucket=storage.archive_bucket, Key=key, Body=sink.getvalue())

    with pytest.raises(QualityGateError) as failure:
        after(policy, "quotes", source_dsn, s3, storage, ctx, before, archived)
    message = str(failure.value)
    assert "after-gate of purpose 'quotes' failed" in message
    assert "archive_objects_match_manifest on archive:quotes: objects=2, rows=3, mismatched_objects=1" in message
    # The archive is versioned: the verified version is intact, and the overwrite is flagged.
    assert re.search(rf"{re.escape(key)}: [^']*a newer version was written over the key", message)
    assert "someone.else" not in message and "lea.dubois" not in message


def test_rows_gone_outside_the_run_fail_the_after_gate(db, s3, storage, policy, source_dsn):
    *_, not_due = some_quotes(db)
    ctx = quotes_ctx()
    before, archived = attempt(policy, "quotes", source_dsn, s3, storage, ctx)
    db.execute("DELETE FROM app.quotes WHERE id = %s", (not_due,))  # not by this run, not audited

    with pytest.raises(QualityGateError) as failure:
        after(policy, "quotes", source_dsn, s3, storage, ctx, before, archived)
    assert (
        f"expect_table_row_count_to_equal where id <= {not_due} on app.quotes: observed_value=5, "
        "rows_before=8, deleted_by_run=2"
    ) in str(failure.value)


def test_due_record_left_fails_the_after_gate(db, s3, storage, policy, source_dsn):
    some_quotes(db)
    ctx = quotes_ctx()
    before, archived = attempt(policy, "quotes", source_dsn, s3, storage, ctx)
    f.quote(db, issued="2023-01-01")  # due, and still there after the run

    with pytest.raises(QualityGateError) as failure:
        after(policy, "quotes", source_dsn, s3, storage, ctx, before, archived)
    assert "no_due_record_remains[unconverted_quotes] on app.quotes: remaining=1" in str(failure.value)


def test_archive_kept_beyond_its_purge_date_fails_unless_held(db, s3, storage, policy, source_dsn):
    some_quotes(db)
    key = "intermediate/quotes/quotes/purge_month=2025-01/scheduled__2024/000001.parquet"
    db.execute(
        "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,"
        " object_key, state, purge_month, purge_after, row_count, record_ids)"
        " VALUES ('scheduled__2024', %s, 'quotes', 'unconverted_quotes', 'quotes', 'intermediate', %s, %s,"
        " 'committed', '2025-01', %s, 1, '{101}')",
        (f.midnight("2024-01-15"), storage.archive_bucket, key, f.midnight("2025-01-15")),
    )
    ctx = quotes_ctx()
    before, archived = attempt(policy, "quotes", source_dsn, s3, storage, ctx, purge=False)  # the purge did not run

    with pytest.raises(QualityGateError) as failure:
        after(policy, "quotes", source_dsn, s3, storage, ctx, before, archived)
    assert (
        f"no_archive_kept_beyond_purge_date on retention.archive_manifest: overdue_objects=1, "
        f"kept_under_legal_hold=0, overdue_keys=['{key}']"
    ) in str(failure.value)

    f.legal_hold(db, "quotes", 101)
    report = after(policy, "quotes", source_dsn, s3, storage, ctx, before, archived)
    (kept,) = by_expectation(report, "no_archive_kept_beyond_purge_date")
    assert kept["success"] and kept["observed"]["kept_under_legal_hold"] == 1


# ------------------------------------------------------------------------------ through Airflow


def test_a_failing_gate_fails_its_task_and_the_dag_deletes_nothing(airflow_db, db, s3, storage, policy):
    due = f.contract(db, ended="2025-06-01")
    f.claim(db, due)
    f.contract(db, status="ended")  # no end date
    rows = all_rows(db)

    dag_run = run_dag("contracts", f.midnight("2026-01-15"))

    states = task_states(dag_run)
    assert states["check_before"] == "failed"
    assert states["archive_and_delete"] != "success"
    assert all_rows(db) == rows


# ------------------------------------------------------------------------------ seeded demo data


def test_every_gate_passes_on_the_seeded_data(db, s3, storage, policy, source_dsn):
    from tools.seed.load import seed_database

    reference = dt.date(2026, 3, 15)
    seed_database(
        source_dsn,
        customers=300,
        seed=42,
        reference_date=reference,
        s3_client=s3,
        documents_bucket=storage.documents_bucket,
        reset=True,
    )

    def ctx(purpose):
        return RunContext(purpose, f"scheduled__{reference}", f.midnight(reference))

    # At 300 customers the few boundary records the seed makes for every rule are a large share
    # of the small fraud tables (56% of app.fraud_alerts would go): the guard is tested on its
    # own above, so it is opened here; the demo's 2,000 customers stay under the defaults.
    max_fraction = 1.0
    for purpose in policy.purposes:
        report = gates.run_before_gates(policy, purpose, source_dsn, ctx(purpose), max_fraction)
        n = len(report["results"])
        assert report["before"] == f"{n}/{n} expectations passed", report["summary"]

    for purpose in policy.purposes:  # then each purpose's whole run, in turn
        before, archived = attempt(policy, purpose, source_dsn, s3, storage, ctx(purpose), max_fraction)
        assert sum(rule["deleted"] for rule in archived["rules"]) > 0, purpose
        report = after(policy, purpose, source_dsn, s3, storage, ctx(purpose), before, archived)
        n = len(report["results"])
        assert report["after"] == f"{n}/{n} expectations passed", report["summary"]


def test_row_count_gate_allows_for_another_purpose_deleting_from_the_same_table(db, s3, storage, policy, source_dsn):
    """The quotes and contracts DAGs share the run id 'scheduled__<date>' and both delete from
    app.quotes: the contracts run's converted quotes must not fail the quotes run's row count."""
    some_quotes(db)
    contract = f.contract(db, ended="2020-01-01")
    f.quote(db, issued="2019-06-01", contract_id=contract)
    run_id = "scheduled__shared"
    ctx = quotes_ctx(run_id)
    before = gates.run_before_gates(policy, "quotes", source_dsn, ctx, 1.0)
    make_engine(policy, "contracts", source_dsn, s3, storage).archive_and_delete(RunContext("contracts", run_id, D))
    archived = {
        "dry_run": False,
        "rules": [o.as_dict() for o in make_engine(policy, "quotes", source_dsn, s3, storage).archive_and_delete(ctx)],
    }
    report = after(policy, "quotes", source_dsn, s3, storage, ctx, before, archived)
    assert report["after"].endswith("expectations passed")


def test_a_run_cleared_whole_after_its_first_execution_deleted_some_passes_its_gates(
    db, s3, storage, policy, source_dsn
):
    """A run whose first execution died after two of its five batches, cleared whole in the UI:
    it plans and checks again (the three rows left), deletes them, and its after gate's row count
    leaves out the first execution's deletions, gone before its before-snapshot. It counted them
    too and failed the run: a cleared run stayed red whatever it did."""
    from tests.test_retries import Killed, die_at_batch

    [f.quote(db, issued="2023-06-01") for _ in range(5)]
    not_due = some_quotes(db, due=0)
    ctx = quotes_ctx("manual__cleared", batch_size=1)
    engine = make_engine(policy, "quotes", source_dsn, s3, storage)
    plan = engine.make_plan(ctx)
    gates.run_before_gates(policy, "quotes", source_dsn, ctx, 1.0, plan)
    die_at_batch(engine, 3)
    with pytest.raises(Killed):
        engine.archive_and_delete(ctx, plan)

    cleared = quotes_ctx("manual__cleared", batch_size=1, attempt=2)
    engine = make_engine(policy, "quotes", source_dsn, s3, storage)
    plan = engine.make_plan(cleared)
    before = gates.run_before_gates(policy, "quotes", source_dsn, cleared, 1.0, plan)
    archived = {"dry_run": False, "rules": [o.as_dict() for o in engine.archive_and_delete(cleared, plan)]}
    report = after(policy, "quotes", source_dsn, s3, storage, cleared, before, archived)
    assert report["after"].endswith("expectations passed")
    assert f.ids(db, "quotes") == set(not_due)


# ------------------------------------------------------------------------------ Data Docs


def test_data_docs_hold_counts_never_values(db, s3, storage, policy, source_dsn, tmp_path, monkeypatch):
    """The gates' Checkpoints build the Data Docs site; failed expectations on distinctive values
    (a future clock, a card code where the expiry goes, a name) leave counts there, not values."""
    docs = tmp_path / "docs"
    monkeypatch.setenv("RETENTION_DATA_DOCS_DIR", str(docs))
    contract = f.contract(db, ended="2025-06-01", customer_id=f.customer(db, first_name="Zorglubette"))
    f.payment_method(db, contract, card_expiry="7391")
    f.contract(db, ended=dt.datetime(2097, 7, 13, 4, 5, 6, tzinfo=dt.UTC))
    with pytest.raises(QualityGateError):
        gates.run_before_gates(policy, "contracts", source_dsn, RunContext("contracts", "manual__docs", D), 1.0)
    some_quotes(db, due=3)
    ctx = quotes_ctx(batch_size=2)
    before, archived = attempt(policy, "quotes", source_dsn, s3, storage, ctx)
    after(policy, "quotes", source_dsn, s3, storage, ctx, before, archived)

    index = (docs / "site" / "index.html").read_text()
    assert "contracts.before.app.payment_methods" in index and "quotes.after.archive.quotes" in index
    written = [p for p in docs.rglob("*") if p.suffix in (".json", ".html")]
    assert len([p for p in written if p.suffix == ".json"]) >= 6, written
    text = "\n".join(p.read_text(errors="replace") for p in written)
    assert "unexpected_count" in text
    # Checksums (hex) and version / GX ids (UUIDs) are random: one may hold "2097" by chance (seen
    # once), which says nothing of the data.
    text = re.sub(r"[0-9a-f]{32,}|[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}", " ", text)
    leaked = [v for v in ("7391", "2097-07-13", "2097", "Zorglubette", "Camille", "example.fr") if v in text]
    assert not leaked, f"Data Docs must hold counts only, found {leaked}"
    assert '"partial_unexpected_list": []' in text or "partial_unexpected_list" not in text


def test_the_data_docs_page_templates_are_compiled_once(db, policy, source_dsn, tmp_path, monkeypatch):
    """GX builds a new Jinja environment for every view of every Data Docs build: its page
    templates are kept compiled on disk (Jinja's bytecode cache, retention.gates.data_docs_views),
    so the next gate loads them (its files untouched) instead of compiling them again."""
    docs = tmp_path / "docs"
    monkeypatch.setenv("RETENTION_DATA_DOCS_DIR", str(docs))
    some_quotes(db, due=2)
    gates.run_before_gates(policy, "quotes", source_dsn, quotes_ctx(), 1.0)
    compiled = {p.name: p.stat().st_mtime_ns for p in (docs / "cache").iterdir()}
    assert len(compiled) >= 5, compiled  # the index, a validation page, a suite page and their parts
    gates.run_before_gates(policy, "quotes", source_dsn, quotes_ctx(), 1.0)
    assert {p.name: p.stat().st_mtime_ns for p in (docs / "cache").iterdir()} == compiled


def test_an_id_read_back_from_another_object_than_its_manifest_rows_fails(source_dsn):
    """The objects of a table are validated in one frame, each id tagged with its object's
    number: an id found in another object than the one whose manifest row lists it fails, as
    it did when each object was validated alone (the table's ids taken together would pass)."""
    import pandas as pd
    from retention.gates.archive_readback import id_frame
    from retention.gates.checks import archive_object_checks
    from retention.gates.gx import CheckpointRuns, frame_batch_definition, gx_sources, validate_frame

    manifest = ["0:1", "0:2", "1:3", "1:4"]  # object 0 holds ids 1 and 2, object 1 ids 3 and 4

    def validate(*objects) -> dict:
        frame = id_frame([(number, pd.DataFrame({"id": ids})) for number, ids in enumerate(objects)], manifest)
        checks = archive_object_checks("archive:quotes", len(objects), 4)
        with gx_sources(source_dsn) as (context, _):
            batch = frame_batch_definition(context)
            results = validate_frame(context, batch, "t.after.archive.quotes", checks, frame, CheckpointRuns())
        return {r["expectation"]: (r["success"], r["observed"].get("unexpected_count")) for r in results}

    assert set(validate([1, 2], [3, 4]).values()) == {(True, None), (True, 0)}
    swapped = validate([1, 3], [2, 4])
    assert swapped["expect_column_values_to_be_in_set"] == (False, 2)
    assert swapped["expect_table_row_count_to_equal"][0] and swapped["expect_column_values_to_be_unique"][0]
    missing = validate([1, None], [3, 4])
    assert missing["expect_column_values_to_not_be_null"] == (False, 1)
    twice = validate([1, 1], [3, 4])
    assert twice["expect_column_values_to_be_unique"] == (False, 2)


def test_a_backlogs_archive_objects_are_validated_a_frame_at_a_time(db, s3, storage, policy, source_dsn, monkeypatch):
    """Memory stays bounded on a backlog: the objects of a table are validated FRAME_ROWS ids at
    a time, their results summed into one line per expectation."""
    from retention.gates import archive_readback

    monkeypatch.setattr(archive_readback, "FRAME_ROWS", 2)
    some_quotes(db, due=5)
    ctx = quotes_ctx(batch_size=2)
    before, archived = attempt(policy, "quotes", source_dsn, s3, storage, ctx)
    report = after(policy, "quotes", source_dsn, s3, storage, ctx, before, archived)
    (objects,) = by_expectation(report, "archive_objects_match_manifest")
    (in_set,) = by_expectation(report, "expect_column_values_to_be_in_set")
    assert objects["success"] and in_set["success"]
    assert in_set["observed"]["frames"] >= 2 and in_set["observed"]["failed_frames"] == 0
    assert in_set["observed"]["objects_validated"] == objects["observed"]["objects"]
    assert in_set["observed"]["element_count"] == objects["observed"]["rows"] == 5
