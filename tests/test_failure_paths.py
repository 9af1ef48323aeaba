"""Every way a run can go wrong loses nothing: crashes, S3 down, concurrent runs, races,
legal holds on archives, dry runs and backfills."""

from __future__ import annotations

import threading

import psycopg
import pytest
from retention.archive.engine import RetentionEngine
from retention.archive.run import PurposeLockedError, RetentionError, RunContext
from retention.archive.store import ArchiveStorageError, ArchiveStore

from tests import factories as f
from tests import scenarios
from tests.outcome import archived_rows_by_table, assert_scenario_outcome
from tests.test_safety import waits_for_a_lock

pytestmark = pytest.mark.integration


class InjectedFault(RuntimeError):
    """A crash at a named step of the protocol, injected by monkeypatching the step."""


def crash_at(engine, method: str, *, after: bool = False):
    """Make ``engine.<method>`` crash (before it runs, or after it returned); returns the undo."""
    original = getattr(engine, method)

    def crashing(*args, **kwargs):
        if after:
            original(*args, **kwargs)
        raise InjectedFault(f"crash {'after' if after else 'before'} {method}")

    setattr(engine, method, crashing)
    return lambda: delattr(engine, method)


def engine_for(policy, purpose, source_dsn, s3, storage, **kw) -> RetentionEngine:
    return RetentionEngine(
        policy, purpose, source_dsn, ArchiveStore(s3, storage), lock_timeout=kw.pop("lock_timeout", 2)
    )


def all_versions(s3, bucket: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys += [v["Key"] for v in page.get("Versions", [])]
    return keys


@pytest.mark.parametrize("purpose", ["quotes", "contracts"])
def test_crash_between_upload_and_delete_loses_nothing_and_rerun_does_not_duplicate(
    purpose, db, s3, storage, policy, source_dsn, monkeypatch
):
    scenario = scenarios.BUILDERS[purpose](db, s3, storage)
    before = {t: f.ids(db, t) for t in set(scenario.deleted) | set(scenario.kept)}
    engine = engine_for(policy, purpose, source_dsn, s3, storage)
    ctx = RunContext(purpose, "scheduled__crash", scenario.logical_date, batch_size=1)

    undo = crash_at(engine, "_delete_rows")  # uploaded and verified, not yet deleted
    with pytest.raises(InjectedFault):
        engine.archive_and_delete(ctx)
    assert {t: f.ids(db, t) for t in before} == before, "the source must be intact after the crash"
    orphans = db.execute("SELECT count(*) FROM retention.archive_manifest WHERE state = 'uploading'").fetchone()[0]
    assert orphans >= 1 and all_versions(s3, storage.archive_bucket), "the crash happened after an upload"

    undo()
    engine.archive_and_delete(ctx)  # the task's retry: same run id
    assert_scenario_outcome(db, s3, storage, policy, scenario)
    states = dict(db.execute("SELECT state, count(*) FROM retention.archive_manifest GROUP BY state").fetchall())
    assert states.get("uploading", 0) == 0 and states["abandoned"] == orphans
    # No record twice anywhere in the bucket, old versions included.
    committed = {
        r[0] for r in db.execute("SELECT object_key FROM retention.archive_manifest WHERE state = 'committed'")
    }
    parquet_versions = [k for k in all_versions(s3, storage.archive_bucket) if k.endswith(".parquet")]
    assert sorted(parquet_versions) == sorted(committed)
    actions = dict(db.execute("SELECT action, count(*) FROM retention.audit_log GROUP BY action").fetchall())
    assert actions["orphan_removed"] == orphans


def test_a_failure_while_a_batch_is_in_flight_deletes_nothing_of_it(db, s3, storage, policy, source_dsn):
    """Batch 1 is uploading in the worker thread when preparing batch 2 fails: batch 1 deletes
    nothing (its upload stays an orphan of an 'uploading' intent), and the next run archives
    and deletes every quote once."""
    quotes = {f.quote(db, issued="2024-01-01") for _ in range(3)}
    engine = engine_for(policy, "quotes", source_dsn, s3, storage)
    uploading, failed = threading.Event(), threading.Event()
    real_upload, real_prepare = engine._upload_batch, engine._archive_batch

    def slow_upload(batch):
        uploading.set()
        assert failed.wait(10), "batch 2 never failed"
        real_upload(batch)

    def prepare(*args, **kwargs):
        if uploading.is_set():  # batch 1 is in flight
            failed.set()
            raise InjectedFault("crash while preparing batch 2")
        return real_prepare(*args, **kwargs)

    engine._upload_batch, engine._archive_batch = slow_upload, prepare
    ctx = RunContext("quotes", "r1", f.midnight("2025-06-01"), batch_size=1)
    with pytest.raises(InjectedFault):
        engine.archive_and_delete(ctx)
    assert f.ids(db, "quotes") == quotes, "the batch in flight must not delete its row"
    assert db.execute("SELECT count(*) FROM retention.audit_log").fetchone()[0] == 0
    states = dict(db.execute("SELECT state, count(*) FROM retention.archive_manifest GROUP BY state").fetchall())
    assert states == {"uploading": 1}, states

    del engine._upload_batch, engine._archive_batch
    outcome = engine.archive_and_delete(ctx)
    assert f.ids(db, "quotes") == set() and sum(o.deleted for o in outcome) == 3
    archived = db.execute(
        "SELECT array_agg(r ORDER BY r) FROM retention.archive_manifest, unnest(record_ids) r WHERE state = 'committed'"
    ).fetchone()[0]
    assert archived == sorted(quotes)


@pytest.mark.parametrize("days_without_a_run", [0, 30])
def test_an_upload_landing_after_a_recovery_removed_its_intent_is_removed_by_the_next_recovery(
    db, s3, storage, policy, source_dsn, days_without_a_run
):
    """A run cut off from the database (a failover, a DBA ending its sessions: its purpose and
    batches locks go with them) while its batch's PUT is still travelling: the next run's recovery
    finds the 'uploading' intent, removes what is stored (nothing yet), marks it 'abandoned' and
    archives the rows itself; then the PUT lands. Nothing named that copy of personal data any
    more (an erasure finds archives through committed manifest rows) and no later recovery looked
    at 'abandoned' intents: it stayed in the bucket for good. Found by a review. The next
    recovery may come weeks later (the DAG paused meanwhile): it still removes it."""
    from tests.test_safety import InThread, Pause

    quote = f.quote(db, issued="2024-01-01")
    D = f.midnight("2025-06-01")
    zombie = engine_for(policy, "quotes", source_dsn, s3, storage)
    travelling = Pause(zombie.store, "put_verified", before=True)
    run = InThread(lambda: zombie.archive_and_delete(RunContext("quotes", "zombie", D)))
    assert travelling.reached.wait(30)
    (zombie_key,) = db.execute("SELECT object_key FROM retention.archive_manifest WHERE state = 'uploading'").fetchone()
    ended = db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    ).fetchall()
    assert ended and all(ok for (ok,) in ended)
    threading.Event().wait(0.5)
    (outcome,) = engine_for(policy, "quotes", source_dsn, s3, storage).archive_and_delete(
        RunContext("quotes", "next", D)
    )
    assert outcome.deleted == 1 and quote not in f.ids(db, "quotes")
    travelling.release.set()  # the PUT lands; the zombie's delete then fails on its ended session
    with pytest.raises(Exception):  # noqa: B017 - whatever the dead session raises
        run.join()
    assert zombie_key in all_versions(s3, storage.archive_bucket), "the late PUT landed"
    db.execute(
        "UPDATE retention.archive_manifest SET created_at = created_at - make_interval(days => %s)",
        (days_without_a_run,),
    )

    engine_for(policy, "quotes", source_dsn, s3, storage).archive_and_delete(RunContext("quotes", "later", D))
    committed = {
        r[0] for r in db.execute("SELECT object_key FROM retention.archive_manifest WHERE state = 'committed'")
    }
    parquet_versions = [k for k in all_versions(s3, storage.archive_bucket) if k.endswith(".parquet")]
    assert sorted(parquet_versions) == sorted(committed), "an upload no live manifest row names stayed in the bucket"
    assert db.execute(
        "SELECT array_agg(r) FROM retention.archive_manifest, unnest(record_ids) r WHERE state = 'committed'"
    ).fetchone()[0] == [quote]


def test_the_recovery_of_late_uploads_never_removes_a_committed_object_that_reuses_the_abandoned_key(
    db, s3, storage, policy, source_dsn
):
    """A batch crashed before its delete and retried with the same run id and try commits under
    the key its abandoned intent named: a later recovery, looking for uploads landed after their
    intent was abandoned, leaves it (and its rows' only copy) alone."""
    quote = f.quote(db, issued="2024-01-01")
    ctx = RunContext("quotes", "same_key", f.midnight("2025-06-01"))
    engine = engine_for(policy, "quotes", source_dsn, s3, storage)
    undo = crash_at(engine, "_delete_rows")
    with pytest.raises(InjectedFault):
        engine.archive_and_delete(ctx)
    undo()
    engine.archive_and_delete(ctx)
    states = db.execute("SELECT state, object_key FROM retention.archive_manifest ORDER BY id").fetchall()
    assert [s for s, _ in states] == ["abandoned", "committed"] and states[0][1] == states[1][1]
    engine.archive_and_delete(RunContext("quotes", "later", f.midnight("2025-06-01")))
    assert quote not in f.ids(db, "quotes")
    assert all_versions(s3, storage.archive_bucket) == [states[1][1]], "the committed object must stay"


def test_crash_after_commit_finishes_file_disposal_on_the_next_run(db, s3, storage, policy, source_dsn, monkeypatch):
    scenario = scenarios.job_applications(db, s3, storage)
    engine = engine_for(policy, "job_applications", source_dsn, s3, storage)
    undo = crash_at(engine, "_finish_commit")
    with pytest.raises(InjectedFault):
        engine.archive_and_delete(RunContext("job_applications", "r1", scenario.logical_date))
    pending = db.execute("SELECT count(*) FROM retention.document_disposals WHERE disposed_at IS NULL").fetchone()[0]
    assert pending == 1, "the CV of the committed batch is still to be deleted"
    undo()
    engine.archive_and_delete(RunContext("job_applications", "r1", scenario.logical_date))
    assert_scenario_outcome(db, s3, storage, policy, scenario)


def test_file_replaced_while_being_copied_fails_the_batch_and_loses_nothing(db, s3, storage, policy, source_dsn):
    """The application replaces a vet invoice between the copy's HEAD and its COPY: the copy's
    ETag differs from the one looked at, so the claim's batch fails before its row is deleted;
    the next run archives the file as it is now."""
    scenario = scenarios.BUILDERS["contracts"](db, s3, storage)
    before = {t: f.ids(db, t) for t in set(scenario.deleted) | set(scenario.kept)}
    engine = engine_for(policy, "contracts", source_dsn, s3, storage)
    real_copy = s3.copy_object
    replaced = []

    def copy_after_a_replace(**kwargs):
        if not replaced:
            source = kwargs["CopySource"]
            s3.put_object(Bucket=source["Bucket"], Key=source["Key"], Body=b"a newer scan of the invoice")
            replaced.append(source["Key"])
        return real_copy(**kwargs)

    s3.copy_object = copy_after_a_replace
    try:
        with pytest.raises(ArchiveStorageError, match="does not match its source"):
            engine.archive_and_delete(RunContext("contracts", "r1", scenario.logical_date, batch_size=1))
    finally:
        del s3.copy_object
    assert replaced, "the scenario archives at least one file"
    # Reimbursements (no files) went before; the claims batch whose file changed did not.
    assert f.ids(db, "claims") == before["claims"]
    engine.archive_and_delete(RunContext("contracts", "r2", scenario.logical_date, batch_size=1))
    assert_scenario_outcome(db, s3, storage, policy, scenario)


def test_s3_unreachable_fails_clearly_and_deletes_nothing(db, storage, policy, source_dsn):
    import boto3
    import botocore.config

    from tools.devstack import free_port

    dead = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="eu-west-3",
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    quote = f.quote(db, issued="2020-01-01")
    engine = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(dead, storage), lock_timeout=1)
    with pytest.raises(ArchiveStorageError, match="not reachable"):
        engine.archive_and_delete(RunContext("quotes", "r", f.midnight("2025-01-01")))
    assert f.ids(db, "quotes") == {quote}
    assert db.execute("SELECT count(*) FROM retention.audit_log").fetchone()[0] == 0


def test_s3_failing_mid_batch_rolls_the_batch_back(db, s3, storage, policy, source_dsn):
    """The bucket disappears after the preflight: the upload fails, the rows stay."""
    quote = f.quote(db, issued="2024-01-01")
    store = ArchiveStore(s3, storage)
    engine = RetentionEngine(policy, "quotes", source_dsn, store, lock_timeout=1)
    store.preflight = lambda: None  # skip the early check so that the failure happens at upload
    s3.delete_bucket(Bucket=storage.archive_bucket)
    with pytest.raises(ArchiveStorageError, match="upload of s3://"):
        engine.archive_and_delete(RunContext("quotes", "r", f.midnight("2025-06-01")))
    assert f.ids(db, "quotes") == {quote}


def test_a_manifest_intent_changed_during_the_upload_rolls_the_batch_back(db, s3, storage, policy, source_dsn):
    """The batch's objects are committed in the manifest in one round trip: if any one of its
    'uploading' rows was changed meanwhile (by anyone), the whole batch rolls back, rows kept."""
    quotes = {f.quote(db, issued="2024-01-01"), f.quote(db, issued="2024-01-02")}  # two end days: two objects
    store = ArchiveStore(s3, storage)
    engine = RetentionEngine(policy, "quotes", source_dsn, store, lock_timeout=1)
    upload = store.put_verified

    def upload_then_intent_changed(key, *args, **kwargs):
        verified = upload(key, *args, **kwargs)
        if key.endswith(f"-{min(quotes):012d}.parquet"):
            db.execute("UPDATE retention.archive_manifest SET state = 'abandoned' WHERE object_key = %s", (key,))
        return verified

    store.put_verified = upload_then_intent_changed
    with pytest.raises(RetentionError, match="no longer 'uploading'"):
        engine.archive_and_delete(RunContext("quotes", "r", f.midnight("2025-06-01"), batch_size=10))
    assert f.ids(db, "quotes") == quotes
    assert not db.execute("SELECT count(*) FROM retention.audit_log WHERE action = 'archived_and_deleted'").fetchone()[
        0
    ]


def test_second_run_of_a_purpose_stops_on_the_advisory_lock(db, s3, storage, policy, source_dsn):
    quote = f.quote(db, issued="2020-01-01")
    with psycopg.connect(source_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('retention:quotes'))")
        engine = engine_for(policy, "quotes", source_dsn, s3, storage, lock_timeout=1)
        with pytest.raises(PurposeLockedError, match="another run of purpose 'quotes'"):
            engine.archive_and_delete(RunContext("quotes", "r", f.midnight("2025-01-01")))
        assert f.ids(db, "quotes") == {quote}
        # Another purpose is not blocked by it.
        engine_for(policy, "job_applications", source_dsn, s3, storage).archive_and_delete(
            RunContext("job_applications", "r", f.midnight("2025-01-01"))
        )
    # Once released, the waiting run goes through.
    engine.archive_and_delete(RunContext("quotes", "r", f.midnight("2025-01-01")))
    assert f.ids(db, "quotes") == set()


def test_second_run_waits_for_the_first_to_finish(db, s3, storage, policy, source_dsn):
    f.quote(db, issued="2020-01-01")
    with psycopg.connect(source_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('retention:quotes'))")
        timer = threading.Timer(1.0, lambda: other.execute("SELECT pg_advisory_unlock(hashtext('retention:quotes'))"))
        timer.start()
        engine = engine_for(policy, "quotes", source_dsn, s3, storage, lock_timeout=20)
        outcomes = engine.archive_and_delete(RunContext("quotes", "r", f.midnight("2025-01-01")))
        timer.join()
    assert outcomes[0].deleted == 1


def test_row_whose_clock_moved_after_planning_is_not_deleted(db, s3, storage, policy, source_dsn):
    D = f.midnight("2025-06-01")
    stays = f.quote(db, issued="2024-01-01")
    goes = f.quote(db, issued="2024-01-01")
    engine = engine_for(policy, "quotes", source_dsn, s3, storage)
    assert engine.plan(RunContext("quotes", "r", D))[0].due == 2
    db.execute("UPDATE app.quotes SET issued_at = %s WHERE id = %s", (f.paris("2025-05-01"), stays))
    engine.archive_and_delete(RunContext("quotes", "r", D))
    assert f.ids(db, "quotes") == {stays}
    assert archived_rows_by_table(db, s3, storage, "quotes") == {"quotes": [goes]}


def test_recheck_under_lock_drops_rows_no_longer_due(db, s3, storage, policy, source_dsn, monkeypatch):
    """Even if the batch picked a row that is no longer due (a race with the application),
    the re-check on the locked rows keeps it out of the archive and of the delete."""
    D = f.midnight("2025-06-01")
    due = f.quote(db, issued="2024-01-01")
    fresh = f.quote(db, issued="2025-05-01")
    held = f.quote(db, issued="2024-01-01")
    f.legal_hold(db, "quotes", held)
    engine = engine_for(policy, "quotes", source_dsn, s3, storage)

    def lock_everything(conn, rule, ctx, after_id):  # what a stale snapshot could have picked
        return [
            r[0] for r in conn.execute("SELECT id FROM app.quotes WHERE id > %s ORDER BY id FOR UPDATE", (after_id,))
        ]

    monkeypatch.setattr(engine, "_lock_batch", lock_everything)
    engine.archive_and_delete(RunContext("quotes", "r", D))
    assert f.ids(db, "quotes") == {fresh, held}
    assert archived_rows_by_table(db, s3, storage, "quotes") == {"quotes": [due]}


def test_a_hold_left_uncommitted_past_the_batch_lock_wait_stops_the_run_naming_its_session(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """A DPO's session inserts a legal hold and leaves its transaction open: the batch waits for
    the hold table (BATCH_LOCK_TIMEOUT, 1 s here), gives up, and the run stops with a message
    naming that session (pid, user, application); nothing deleted, nothing archived. Once the
    hold is committed, the next run archives the rest and keeps the held quote."""
    from retention.archive import protocol

    monkeypatch.setattr(protocol, "BATCH_LOCK_TIMEOUT", "1s")
    D = f.midnight("2025-06-01")
    quotes = [f.quote(db, issued="2024-01-01") for _ in range(3)]
    dpo = psycopg.connect(source_dsn, application_name="dpo-console")
    dpo.execute(
        "INSERT INTO retention.legal_holds (table_name, record_id, reason) VALUES ('quotes', %s, 'litigation')",
        (quotes[0],),
    )
    engine = engine_for(policy, "quotes", source_dsn, s3, storage)
    try:
        with pytest.raises(RetentionError) as stopped:
            engine.archive_and_delete(RunContext("quotes", "hold-left-open", D))
        message = str(stopped.value)
        assert "waited 1s for its locks and gave up; it changed nothing" in message
        assert f"pid {dpo.info.backend_pid} (" in message and "dpo-console)" in message
        assert f.ids(db, "quotes") == set(quotes)
        assert db.execute("SELECT count(*) FROM retention.archive_manifest").fetchone() == (0,)
    finally:
        dpo.commit()
        dpo.close()
    engine.archive_and_delete(RunContext("quotes", "hold-committed", D))
    assert f.ids(db, "quotes") == {quotes[0]}


def test_a_lock_wait_names_the_sessions_queued_ahead_and_the_readers_they_wait_for(db, source_dsn):
    """A report reads the hold table in a transaction left open; a DBA's migration asks for the
    table in ACCESS EXCLUSIVE mode and waits for the report; a batch asking for SHARE mode then
    queues behind the DBA. Both are named when the batch gives up (found by a review: only the
    granted locks of writers were named, so the message said no one was in the way)."""
    from retention.archive.locks import lock_holders

    report = psycopg.connect(source_dsn, application_name="monthly-report")
    report.execute("SELECT count(*) FROM retention.legal_holds")
    dba = psycopg.connect(source_dsn, application_name="dba-migration")
    migration = threading.Thread(
        target=lambda: dba.execute("LOCK TABLE retention.legal_holds IN ACCESS EXCLUSIVE MODE"), daemon=True
    )
    migration.start()
    try:
        assert waits_for_a_lock(db, dba.info.backend_pid), "the migration never waited for the report"
        named = lock_holders(db, ["retention.legal_holds"])
        assert f"pid {report.info.backend_pid} (" in named and "monthly-report)" in named
        assert f"pid {dba.info.backend_pid} (" in named and "dba-migration, waiting)" in named
        report.rollback()
        migration.join(10)
        assert "monthly-report" not in lock_holders(db, ["retention.legal_holds"])  # a reader alone is in no one's way
        assert "dba-migration)" in lock_holders(db, ["retention.legal_holds"])
    finally:
        report.close()
        dba.rollback()
        dba.close()


def test_dry_run_changes_nothing(db, s3, storage, policy, source_dsn):
    scenario = scenarios.contracts(db, s3, storage)
    tables = ["contracts", "claims", "reimbursements", "payment_methods", "quotes"]
    before = {t: f.ids(db, t) for t in tables}
    engine = engine_for(policy, "contracts", source_dsn, s3, storage)
    outcomes = engine.archive_and_delete(RunContext("contracts", "dry", scenario.logical_date, dry_run=True))
    assert sum(o.due for o in outcomes) > 0 and sum(o.deleted for o in outcomes) == 0
    purge = engine.purge_archives(RunContext("contracts", "dry", scenario.logical_date, dry_run=True))
    assert purge["purged_objects"] == 0
    assert {t: f.ids(db, t) for t in tables} == before
    assert (
        db.execute(
            "SELECT (SELECT count(*) FROM retention.audit_log) + (SELECT count(*) FROM retention.archive_manifest)"
        ).fetchone()[0]
        == 0
    )
    assert all_versions(s3, storage.archive_bucket) == []


def test_backfill_at_an_earlier_date_deletes_only_what_was_due_then(db, s3, storage, policy, source_dsn):
    due_then = f.quote(db, issued="2023-01-10")  # due 2024-01-10
    due_later = f.quote(db, issued="2023-06-10")  # due 2024-06-10
    engine = engine_for(policy, "quotes", source_dsn, s3, storage)
    engine.archive_and_delete(RunContext("quotes", "backfill__2024-02-01", f.midnight("2024-02-01")))
    assert f.ids(db, "quotes") == {due_later}
    engine.archive_and_delete(RunContext("quotes", "backfill__2024-06-10", f.midnight("2024-06-10")))
    assert f.ids(db, "quotes") == set()
    assert archived_rows_by_table(db, s3, storage, "quotes") == {"quotes": [due_then, due_later]}


def test_archive_purge_respects_the_purge_date_and_legal_holds(db, s3, storage, policy, source_dsn):
    """Quotes archived 12 months, one object per day their archive period ends: an object goes on
    that day, never while one of its records is under a legal hold."""
    f.quote(db, issued="2023-02-10")  # purge 2025-02-10
    f.quote(db, issued="2023-02-20")  # purge 2025-02-20
    q_mar = f.quote(db, issued="2023-03-05")  # purge 2025-03-05
    engine = engine_for(policy, "quotes", source_dsn, s3, storage)
    engine.archive_and_delete(RunContext("quotes", "archive", f.midnight("2024-04-01")))
    day = "(purge_after AT TIME ZONE 'Europe/Paris')::date::text"
    manifest = dict(db.execute(f"SELECT {day}, object_key FROM retention.archive_manifest").fetchall())
    assert set(manifest) == {"2025-02-10", "2025-02-20", "2025-03-05"}

    early = engine.purge_archives(RunContext("quotes", "p1", f.midnight("2025-02-19")))
    assert early["purged_objects"] == 1 and early["purged_records"] == 1, "the 10th's object, not the 20th's"
    f.legal_hold(db, "quotes", q_mar)
    result = engine.purge_archives(RunContext("quotes", "p2", f.midnight("2025-03-05")))
    assert result["purged_objects"] == 1 and result["purged_records"] == 1
    assert result["held_objects"] == 1 and result["held_keys"] == [manifest["2025-03-05"]]
    keys = all_versions(s3, storage.archive_bucket)
    assert manifest["2025-02-10"] not in keys and manifest["2025-02-20"] not in keys and manifest["2025-03-05"] in keys
    states = dict(db.execute(f"SELECT {day}, state FROM retention.archive_manifest").fetchall())
    assert states == {"2025-02-10": "purged", "2025-02-20": "purged", "2025-03-05": "committed"}
    audit = dict(
        db.execute(
            "SELECT action, sum(record_count) FROM retention.audit_log WHERE action LIKE 'object%%' GROUP BY action"
        ).fetchall()
    )
    assert audit == {"object_purged": 2, "object_purge_held": 1}


def test_probative_objects_are_locked_until_their_purge_date(db, s3, storage, policy, source_dsn):
    scenario = scenarios.aml(db, s3, storage)
    engine = engine_for(policy, "aml", source_dsn, s3, storage)
    engine.archive_and_delete(RunContext("aml", "r", scenario.logical_date))
    key, purge_after, locked_until, doc_keys = db.execute(
        "SELECT object_key, purge_after, locked_until, document_keys FROM retention.archive_manifest"
    ).fetchone()
    assert purge_after == f.midnight("2031-01-14") and locked_until == purge_after
    for k in [key, *doc_keys]:
        head = s3.head_object(Bucket=storage.archive_bucket, Key=k)
        assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"] == purge_after
        assert head["ServerSideEncryption"] == "AES256" and head["StorageClass"] == "GLACIER_IR"
        version = s3.list_object_versions(Bucket=storage.archive_bucket, Prefix=k)["Versions"][0]["VersionId"]
        with pytest.raises(s3.exceptions.ClientError):
            s3.delete_object(Bucket=storage.archive_bucket, Key=k, VersionId=version)


def test_a_failed_object_lock_check_is_not_taken_for_a_bucket_without_object_lock(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The engine asks once whether the bucket has Object Lock. A network error on that request
    was taken as "no Object Lock" for the rest of the engine's life: every probative object of
    the run was committed unlocked, and the run succeeded saying nothing. The error now fails the
    step (the batch is committed; its lock is applied by the next run), and is not remembered."""
    from botocore.exceptions import EndpointConnectionError
    from retention.archive.run import CommittedBatchError

    scenario = scenarios.aml(db, s3, storage)
    real, calls = s3.get_object_lock_configuration, []

    def unreachable_once(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise EndpointConnectionError(endpoint_url=s3.meta.endpoint_url)
        return real(**kwargs)

    monkeypatch.setattr(s3, "get_object_lock_configuration", unreachable_once)
    engine = engine_for(policy, "aml", source_dsn, s3, storage)
    ctx = RunContext("aml", "r", scenario.logical_date)
    try:
        engine.archive_and_delete(ctx)
    except CommittedBatchError as exc:  # said, not hidden: the next run applies the lock
        assert "Object Lock" in str(exc)
    else:
        (locked_until,) = db.execute("SELECT locked_until FROM retention.archive_manifest").fetchone()
        assert locked_until is not None, "a probative object committed unlocked, and the run said nothing"
    assert engine.store.lock_supported(), "a network error is not the bucket's answer"
    engine_for(policy, "aml", source_dsn, s3, storage).archive_and_delete(
        RunContext("aml", "r2", scenario.logical_date)
    )
    (locked_until,) = db.execute("SELECT locked_until FROM retention.archive_manifest").fetchone()
    assert locked_until is not None


def test_a_refused_object_lock_check_is_not_taken_for_a_bucket_without_object_lock(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """As above, the engine's credentials refused the question (AccessDenied: a policy without
    s3:GetBucketObjectLockConfiguration, an expired session): a refusal is not the bucket's answer
    either. Taken as "no Object Lock", every probative object of the run was committed unlocked,
    the lock gate skipped as if no tier wanted a lock, the run green."""
    from botocore.exceptions import ClientError
    from retention.archive.run import CommittedBatchError

    scenario = scenarios.aml(db, s3, storage)
    real, calls = s3.get_object_lock_configuration, []

    def refused_once(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise ClientError(
                {
                    "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                    "ResponseMetadata": {"HTTPStatusCode": 403},
                },
                "GetObjectLockConfiguration",
            )
        return real(**kwargs)

    monkeypatch.setattr(s3, "get_object_lock_configuration", refused_once)
    engine = engine_for(policy, "aml", source_dsn, s3, storage)
    ctx = RunContext("aml", "r", scenario.logical_date)
    try:
        engine.archive_and_delete(ctx)
    except CommittedBatchError as exc:  # said, not hidden: the next run applies the lock
        assert "Object Lock" in str(exc)
    else:
        (locked_until,) = db.execute("SELECT locked_until FROM retention.archive_manifest").fetchone()
        assert locked_until is not None, "a probative object committed unlocked, and the run said nothing"
    assert engine.store.lock_supported(), "a refused request is not the bucket's answer"
    engine_for(policy, "aml", source_dsn, s3, storage).archive_and_delete(
        RunContext("aml", "r2", scenario.logical_date)
    )
    (locked_until,) = db.execute("SELECT locked_until FROM retention.archive_manifest").fetchone()
    assert locked_until is not None


def test_a_hold_on_a_customer_keeps_their_contract_file_and_recordings(db, s3, storage, policy, source_dsn):
    customer = f.customer(db)
    contract = f.contract(db, customer_id=customer, ended="2025-01-01")
    claim = f.claim(db, contract)
    recording = f.call_recording(db, reason="quality", started="2024-01-01", customer_id=customer)
    f.legal_hold(db, "customers", customer, reason="litigation")
    D = f.midnight("2025-06-01")
    for purpose in ("contracts", "call_recordings"):
        engine_for(policy, purpose, source_dsn, s3, storage).archive_and_delete(RunContext(purpose, "r", D))
    assert f.ids(db, "contracts") == {contract}
    assert f.ids(db, "claims") == {claim}
    assert f.ids(db, "call_recordings") == {recording}


def test_a_database_timeout_on_idle_transactions_does_not_end_a_batch_while_it_uploads(
    db, s3, storage, policy, source_dsn
):
    """A batch's transaction holds its locks, idle, while its objects upload (by design), and
    the Arrow reader's transaction spans the run. A DBA's ``idle_in_transaction_session_timeout``
    shorter than an upload would end them mid-batch and fail the run (nothing lost, but nothing
    done): the engine's sessions turn it off for themselves."""
    quotes = {f.quote(db, issued="2024-01-01") for _ in range(3)}
    db.commit()
    database = db.execute("SELECT current_database()").fetchone()[0]
    engine = engine_for(policy, "quotes", source_dsn, s3, storage)
    real_upload = engine._upload_batch

    def slow_upload(batch):
        threading.Event().wait(1.0)  # an upload longer than the database's timeout
        real_upload(batch)

    engine._upload_batch = slow_upload
    with psycopg.connect(source_dsn, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET idle_in_transaction_session_timeout = 300')
        try:
            (outcome,) = engine.archive_and_delete(RunContext("quotes", "r1", f.midnight("2025-06-01"), batch_size=1))
        finally:
            admin.execute(f'ALTER DATABASE "{database}" RESET idle_in_transaction_session_timeout')
    assert outcome.deleted == 3 and f.ids(db, "quotes") & quotes == set()
