"""The housekeeping of the project's own records (issue 23 §1, docs/housekeeping.md), against the
real source database as retention_housekeeping, the real test metadata database (Airflow's own
db clean) and the S3 server: rows past their period removed with the chain's checkpoint, the
audit's ids forgotten once their archive is purged, a preview that changes nothing, verify
failing the run on a break, Airflow's runs, task instances and XCom removed with no archive table
left behind, and the files past their period."""

from __future__ import annotations

import datetime as dt
import os
import time

import psycopg
import pytest
from retention import audit, housekeeping
from retention.archive.store import ArchiveStore

from tests.dag_runs import load_dag, task_states

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
LONG_AGO = NOW - dt.timedelta(days=6 * 366)  # past the audit's 5 years
RECENT = NOW - dt.timedelta(days=1)


def audit_row(
    conn, *, object_key: str | None, ids: list[int], at: dt.datetime | None = None, run_id: str = "manual__hk"
) -> int:
    return conn.execute(
        "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count,"
        " object_key, record_ids, at) VALUES (%s, now(), 'quotes', 'unconverted_quotes', 'quotes',"
        " 'archived_and_deleted', %s, %s, %s::bigint[], coalesce(%s, now())) RETURNING id",
        (run_id, len(ids), object_key, ids, at),
    ).fetchone()[0]


def manifest_row(conn, key: str, *, state: str, purged_at: dt.datetime | None) -> int:
    return conn.execute(
        "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,"
        " object_key, state, purge_month, purge_after, row_count, record_ids, purged_at)"
        " VALUES ('manual__hk', now(), 'quotes', 'unconverted_quotes', 'quotes', 'intermediate', 'b', %s, %s,"
        " '2020-01', now(), 1, '{1}', %s) RETURNING id",
        (key, state, purged_at),
    ).fetchone()[0]


def own_records(db) -> dict:
    """Some of every kind, old (past their period) and recent; the old audit rows chained long ago."""
    old_audit = audit_row(db, object_key=None, ids=[1, 2], at=LONG_AGO)
    purged_key_row = audit_row(db, object_key="intermediate/quotes/old.parquet", ids=[3, 4])
    live_key_row = audit_row(db, object_key="intermediate/quotes/live.parquet", ids=[5])
    recent_no_archive = audit_row(db, object_key=None, ids=[6])
    month_old_no_archive = audit_row(db, object_key=None, ids=[7], at=NOW - dt.timedelta(days=40))
    # Chained long ago (chained_at is not hashed: the chain stays intact).
    db.execute(
        "UPDATE retention.audit_chain SET chained_at = %s WHERE chain = 'audit_log' AND row_key = %s",
        (LONG_AGO, str(old_audit)),
    )
    manifest_row(db, "intermediate/quotes/old.parquet", state="purged", purged_at=LONG_AGO)
    manifest_row(db, "intermediate/quotes/recently-purged.parquet", state="purged", purged_at=RECENT)
    manifest_row(db, "intermediate/quotes/live.parquet", state="committed", purged_at=None)
    db.execute(
        "INSERT INTO retention.document_disposals (run_id, purpose, table_name, record_id, bucket, source_key,"
        " disposed_at, outcome) VALUES ('r', 'quotes', 'quotes', 1, 'b', 'old', %s, 'deleted'),"
        " ('r', 'quotes', 'quotes', 2, 'b', 'new', %s, 'deleted')",
        (LONG_AGO, RECENT),
    )
    return {
        "old_audit": old_audit,
        "purged_key_row": purged_key_row,
        "live_key_row": live_key_row,
        "recent_no_archive": recent_no_archive,
        "month_old_no_archive": month_old_no_archive,
    }


def test_own_rows_past_their_period_go_through_the_housekeeping_role(db, policy, role_dsn):
    rows = own_records(db)
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        preview = housekeeping.prune_own_rows(conn, policy, NOW, enforce=False)
    # The preview's counts are the enforced run's, and it changed nothing.
    assert db.execute("SELECT count(*) FROM retention.audit_log").fetchone()[0] == 5
    assert db.execute("SELECT count(*) FROM retention.audit_log WHERE record_ids IS NULL").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM retention.audit_checkpoints").fetchone()[0] == 0
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        done = housekeeping.prune_own_rows(conn, policy, NOW, enforce=True)
    assert preview == done
    assert done["audit_log"]["removed"] == 1 and done["audit_log"]["period"] == "5 years"
    assert done["manifest_purged"]["removed"] == 1
    assert done["document_disposals"]["removed"] == 1
    assert done["subject_request_evidence"]["removed"] == 0
    # The ids naming a purged object went, and those of a row naming no archive past 30 days;
    # those naming a live object, and a recent row's without archive, stay. The counts stay.
    assert done["audit_record_ids"]["forgotten"] == 2
    ids = dict(db.execute("SELECT id, record_ids FROM retention.audit_log").fetchall())
    assert ids == {
        rows["purged_key_row"]: None,
        rows["live_key_row"]: [5],
        rows["recent_no_archive"]: [6],
        rows["month_old_no_archive"]: None,
    }
    assert db.execute("SELECT sum(record_count) FROM retention.audit_log").fetchone()[0] == 2 + 1 + 1 + 1
    assert [k for (k,) in db.execute("SELECT object_key FROM retention.archive_manifest ORDER BY id")] == [
        "intermediate/quotes/recently-purged.parquet",
        "intermediate/quotes/live.parquet",
    ]
    checkpoint = db.execute("SELECT seq, links_removed, rows_removed FROM retention.audit_checkpoints").fetchone()
    assert checkpoint == (1, 1, 1)
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        result = audit.verify(conn)
    assert result.intact, result.message


def test_the_ids_go_once_no_copy_of_their_object_is_archived(db, policy, role_dsn):
    """docs/housekeeping.md: 'ids naming an archive object go when that object is purged'. They
    went only when every manifest row of the key was 'purged': an object whose first upload a
    crash left (abandoned, the retry wrote the same key), or one rewritten (an erasure, a purge of
    some rows) whose new object was purged since, kept its ids (and so its purged manifest row)
    until the audit row itself went, years later (found by a review). An object whose rewrite is
    not finished (the old one kept by a hold) keeps them."""
    retried = audit_row(db, object_key="intermediate/quotes/retried.parquet", ids=[1, 2])
    manifest_row(db, "intermediate/quotes/retried.parquet", state="abandoned", purged_at=None)
    manifest_row(db, "intermediate/quotes/retried.parquet", state="purged", purged_at=RECENT)
    rewritten = audit_row(db, object_key="intermediate/quotes/rewritten.parquet", ids=[3, 4])
    old = manifest_row(db, "intermediate/quotes/rewritten.parquet", state="rewritten", purged_at=None)
    new = manifest_row(db, "intermediate/quotes/rewritten.erasure-r.parquet", state="purged", purged_at=RECENT)
    pending = audit_row(db, object_key="intermediate/quotes/pending.parquet", ids=[5, 6])
    held_old = manifest_row(db, "intermediate/quotes/pending.parquet", state="rewritten", purged_at=None)
    held_new = manifest_row(db, "intermediate/quotes/pending.erasure-r.parquet", state="purged", purged_at=RECENT)
    db.execute(
        "INSERT INTO retention.object_rewrites (request_id, old_manifest_id, new_manifest_id, removed_ids, state)"
        " VALUES ('r', %s, %s, '{3}', 'done'), ('r', %s, %s, '{5}', 'committed')",
        (old, new, held_old, held_new),
    )
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        housekeeping.prune_own_rows(conn, policy, NOW, enforce=True)
    ids = dict(db.execute("SELECT id, record_ids FROM retention.audit_log").fetchall())
    assert ids == {retried: None, rewritten: None, pending: [5, 6]}, ids
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        assert audit.verify(conn).intact


def test_the_inbox_row_of_a_request_goes_with_its_evidence(db, policy, role_dsn):
    """A request recorded in the inbox (its kind, the customer's id, the keyed hash of an
    address, who recorded it) lost its evidence to the housekeeping after 5 years, but its inbox
    row stayed for ever: no period, no function removed it (found by a review). It goes with the
    evidence; a recent request's stays."""
    from tests.test_audit import finished_request

    for request_id in ("DSR-old", "DSR-new"):
        db.execute(
            "INSERT INTO retention.subject_request_inbox (request_id, action, subject_kind, subject_id, subject_ref,"
            " received_on, submitted_by, identifiers_cleared_at) VALUES (%s, 'erasure', 'customer', 7,"
            " 'customers:7', current_date, 'dpo', now())",
            (request_id,),
        )
    with psycopg.connect(role_dsn("retention_rights")) as conn:
        for request_id in ("DSR-old", "DSR-new"):
            finished_request(conn, request_id)
            conn.commit()
    db.execute(
        "UPDATE retention.audit_chain SET chained_at = %s WHERE chain = 'subject_requests' AND row_key = 'DSR-old'",
        (LONG_AGO,),
    )
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        done = housekeeping.prune_own_rows(conn, policy, NOW, enforce=True)
    assert done["subject_request_evidence"]["removed"] == 1
    assert [r for (r,) in db.execute("SELECT request_id FROM retention.subject_requests")] == ["DSR-new"]
    inbox = [r for (r,) in db.execute("SELECT request_id FROM retention.subject_request_inbox ORDER BY 1")]
    assert inbox == ["DSR-new"], f"the inbox kept a request whose evidence the housekeeping removed: {inbox}"


def test_a_housekeeping_run_is_dated_when_recorded(db, role_dsn):
    """The Retention page shows the latest housekeeping run by ran_at (its mode, the cut of
    Airflow's records). The role wrote any ran_at: one row dated 2100 hid every later run, as a
    verification dated 2100 did (found by a review); the database's time is recorded."""
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO retention.housekeeping_runs (run_id, mode, ran_at, results)"
            " VALUES ('manual__forged', 'enforce', '2100-01-01', '{}')"
        )
        housekeeping.record_run(conn, "scheduled__real", enforce=False, results={})
        shown = housekeeping.last_run(conn)
    assert shown["run_id"] == "scheduled__real", f"the page shows: {shown}"


@pytest.mark.parametrize("role", ["retention_engine", "retention_rights", "retention_reader"])
def test_only_the_housekeeping_role_may_remove_own_records(db, role_dsn, role):
    with psycopg.connect(role_dsn(role), autocommit=True) as conn:
        for call in (
            "SELECT retention.prune_own_records('manifest_purged', now() - interval '1 day')",
            "SELECT retention.forget_audit_ids_past_archive(now() - interval '1 day')",
            "INSERT INTO retention.housekeeping_runs (run_id, mode, results) VALUES ('x', 'enforce', '{}')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for"):
                conn.execute(call)


def test_a_cut_in_the_future_is_refused(db, role_dsn):
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="must be a time in the past"):
            conn.execute("SELECT retention.prune_own_records('document_disposals', now() + interval '1 day')")


def test_files_past_their_period_are_deleted(tmp_path, policy):
    logs = tmp_path / "logs"
    old = logs / "dag_id=retention_quotes" / "run_id=old" / "task_id=plan" / "attempt=1.log"
    new = logs / "dag_id=retention_quotes" / "run_id=new" / "task_id=plan" / "attempt=1.log"
    for path in (old, new):
        path.parent.mkdir(parents=True)
        path.write_text("counts only\n")
    aged = time.time() - 100 * 86400
    os.utime(old, (aged, aged))
    roots = {"task_logs": logs, "gx_validation_results": tmp_path / "absent", "data_docs": None}
    preview = housekeeping.delete_files(policy, NOW, roots, enforce=False)
    assert preview["task_logs"]["files"] == 1 and old.exists()
    done = housekeeping.delete_files(policy, NOW, roots, enforce=True)
    assert done["task_logs"] | {"period": "90 days"} == done["task_logs"]
    assert done["task_logs"]["files"] == 1 and not old.exists() and new.exists()
    assert not (logs / "dag_id=retention_quotes" / "run_id=old").exists()  # its empty folders too
    assert done["gx_validation_results"]["files"] == 0 and done["data_docs"]["files"] == 0


def _metadata_counts(conn, run_id: str) -> dict[str, int]:
    return {
        t: conn.execute(
            f"SELECT count(*) FROM {t} WHERE dag_id = 'retention_housekeeping' AND run_id = %s", (run_id,)
        ).fetchone()[0]
        for t in ("dag_run", "task_instance", "xcom")
    }


def test_the_dag_cleans_airflow_metadata_with_db_clean_and_records_its_run(
    db, s3, storage, airflow_db, role_dsn, services
):
    """A real run of the DAG (enforce, as the tests' policy), then its records aged past 90 days,
    then a second run: Airflow's db clean removed the first run, its task instances and XCom, and
    left no archive table; the second run's records stay; the page's row says what went."""
    dag = load_dag("housekeeping")
    first = dag.test()
    assert set(task_states(first).values()) == {"success"}, task_states(first)
    metadata = services["pg"].dsn("airflow_tests")
    aged = NOW - dt.timedelta(days=120)
    with psycopg.connect(metadata, autocommit=True) as meta:
        first_rows = _metadata_counts(meta, first.run_id)
        assert first_rows["dag_run"] == 1 and first_rows["task_instance"] == 6 and first_rows["xcom"] >= 6, first_rows
        meta.execute("UPDATE dag_run SET start_date = %s WHERE run_id = %s", (aged, first.run_id))
        meta.execute("UPDATE task_instance SET start_date = %s WHERE run_id = %s", (aged, first.run_id))
        meta.execute("UPDATE xcom SET timestamp = %s WHERE run_id = %s", (aged, first.run_id))
    second = dag.test()
    assert set(task_states(second).values()) == {"success"}, task_states(second)
    with psycopg.connect(metadata, autocommit=True) as meta:
        assert _metadata_counts(meta, first.run_id) == {"dag_run": 0, "task_instance": 0, "xcom": 0}
        second_rows = _metadata_counts(meta, second.run_id)
        assert second_rows["dag_run"] == 1 and second_rows["task_instance"] == 6, second_rows
        archives = meta.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE '\\_airflow\\_deleted\\_\\_%'")
        assert archives.fetchall() == []
    recorded = db.execute("SELECT run_id, mode, results FROM retention.housekeeping_runs ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in recorded] == [(first.run_id, "enforce"), (second.run_id, "enforce")]
    removed = recorded[1][2]["airflow_metadata"]["airflow_dag_runs"]["removed"]
    assert removed["dag_run"] == 1 and removed["task_instance"] == 6 and removed["xcom"] == first_rows["xcom"]
    # Verified, and the heads stored under Object Lock, by each run.
    assert db.execute("SELECT count(*) FROM retention.audit_verifications WHERE intact").fetchone()[0] == 2
    assert len(ArchiveStore(s3, storage).list_versions(f"{audit.HEAD_PREFIX}/")) >= 2


def test_a_preview_run_removes_nothing(db, s3, storage, airflow_db, monkeypatch):
    from retention.paths import POLICY_FILE

    monkeypatch.setenv("RETENTION_POLICY_FILE", str(POLICY_FILE))  # the shipped policy: preview
    own_records(db)
    run = load_dag("housekeeping").test()
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    assert db.execute("SELECT count(*) FROM retention.audit_log").fetchone()[0] == 5
    assert db.execute("SELECT count(*) FROM retention.archive_manifest").fetchone()[0] == 3
    (mode, results) = db.execute("SELECT mode, results FROM retention.housekeeping_runs").fetchone()
    assert mode == "preview" and results["retention_schema"]["audit_log"]["removed"] == 1


def test_a_broken_chain_fails_the_run_and_nothing_is_pruned(db, s3, storage, airflow_db):
    rows = own_records(db)
    db.execute("UPDATE retention.audit_log SET record_count = 9 WHERE id = %s", (rows["live_key_row"],))
    run = load_dag("housekeeping").test()
    states = task_states(run)
    assert states["verify_audit"] == "failed", states
    assert states["prune_own_rows"] == "upstream_failed" and states["record"] == "upstream_failed", states
    assert db.execute("SELECT count(*) FROM retention.audit_log").fetchone()[0] == 5
    intact, message = db.execute(
        "SELECT intact, message FROM retention.audit_verifications ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert not intact and f"audit_log row id {rows['live_key_row']} (seq 3) was changed" in message


def test_a_broken_chain_removes_none_of_airflows_records_either(db, s3, storage, airflow_db, services):
    """The DAG's doc: on a break 'nothing is pruned'. Airflow's run records, its log table (who
    triggered, cleared or changed what) and the task logs are what one investigates a broken chain
    with; clean_airflow_metadata and delete_old_files did not wait for verify_audit and removed
    them on the very run that found the break (found by a review)."""
    dag = load_dag("housekeeping")
    first = dag.test()
    assert set(task_states(first).values()) == {"success"}, task_states(first)
    aged = NOW - dt.timedelta(days=120)
    with psycopg.connect(services["pg"].dsn("airflow_tests"), autocommit=True) as meta:
        meta.execute("UPDATE dag_run SET start_date = %s WHERE run_id = %s", (aged, first.run_id))
        meta.execute("UPDATE task_instance SET start_date = %s WHERE run_id = %s", (aged, first.run_id))
        meta.execute("UPDATE xcom SET timestamp = %s WHERE run_id = %s", (aged, first.run_id))
    rows = own_records(db)
    db.execute("UPDATE retention.audit_log SET record_count = 9 WHERE id = %s", (rows["live_key_row"],))
    second = dag.test()
    states = task_states(second)
    assert states["verify_audit"] == "failed", states
    with psycopg.connect(services["pg"].dsn("airflow_tests"), autocommit=True) as meta:
        left = _metadata_counts(meta, first.run_id)
    assert left["dag_run"] == 1 and left["task_instance"] == 6, (
        f"the run that found the broken chain removed Airflow's records of an earlier run: {left}; {states}"
    )
    assert states["clean_airflow_metadata"] == "upstream_failed", states
    assert states["delete_old_files"] == "upstream_failed", states


def test_the_page_says_which_runs_lost_their_airflow_record(db, airflow_db):
    """A run older than the last enforced housekeeping's cut keeps its evidence on the page, and
    the page says why its Airflow link is gone (read as retention_reader)."""
    import json

    from retention_ui.render import render_page
    from retention_ui.summary import summary as page_summary

    audit_row(db, object_key=None, ids=[1], at=NOW - dt.timedelta(days=200), run_id="scheduled__old")
    audit_row(db, object_key=None, ids=[2])
    cut = (NOW - dt.timedelta(days=90)).isoformat()
    db.execute(
        "INSERT INTO retention.housekeeping_runs (run_id, mode, results) VALUES ('manual__hk', 'enforce', %s)",
        (json.dumps({"airflow_metadata": {"airflow_dag_runs": {"period": "90 days", "cut": cut}}}),),
    )
    summary = page_summary()
    gone = {r["run_id"]: r["airflow_record_gone"] for r in summary["runs"]}
    assert gone == {"scheduled__old": True, "manual__hk": False}
    assert summary["housekeeping"]["mode"] == "enforce" and summary["housekeeping"]["airflow_runs_cut"] == cut
    html = render_page(summary)
    assert html.count('data-testid="airflow-record-gone"') == 1 and "their evidence below stays" in html
