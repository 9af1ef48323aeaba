"""A try of the archive step killed after some of its batches committed, then retried by Airflow
(issue 20: workers killed mid-unit), against real PostgreSQL and S3: the run never deletes more
rows than its approved plan counted (rows due since the plan, a hold released between tries);
a try Airflow gave up on but still running does not run beside its retry; a database's
idle_session_timeout does not take a unit's purpose lock from under its upload. Found by a
review; each test failed before its fix."""

from __future__ import annotations

import contextlib
import threading

import psycopg
import pytest
from retention.archive.engine import RetentionEngine
from retention.archive.run import PurposeLockedError, RunContext, plan_units
from retention.archive.store import ArchiveStore

from tests import factories as f
from tests.test_safety import InThread

pytestmark = pytest.mark.integration

D = f.midnight("2025-02-28")


def make_engine(policy, dsn, s3, storage) -> RetentionEngine:
    return RetentionEngine(policy, "quotes", dsn, ArchiveStore(s3, storage), lock_timeout=2)


class Killed(BaseException):
    """The worker dies (SIGKILL): the try stops where it is."""


def die_at_batch(engine, n: int) -> None:
    """The try dies before the n-th batch's upload (earlier batches committed)."""
    original = engine._upload_and_commit
    calls = {"n": 0}

    def wrapped(rule, ctx, batch, stopping):
        calls["n"] += 1
        if calls["n"] >= n:
            raise Killed()
        return original(rule, ctx, batch, stopping)

    engine._upload_and_commit = wrapped


def committed_rows(db, run_id):
    return db.execute(
        "SELECT coalesce(sum(record_count), 0) FROM retention.audit_log WHERE run_id = %s"
        " AND action IN ('archived_and_deleted', 'deleted')",
        (run_id,),
    ).fetchone()[0]


def test_a_retried_whole_rule_unit_deletes_no_more_than_the_plan_approved(db, s3, storage, policy, source_dsn):
    """One unit for the whole rule (rows = the plan's count). Its first try commits 2 batches,
    then its worker is killed; a quote that became due after the plan appears; the retry must
    leave it, as a single try does (test_plan.test_more_rows_due_at_execution_than_approved...)."""
    approved = [f.quote(db, issued="2023-06-01") for _ in range(5)]
    ctx = RunContext("quotes", "retry", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    ((unit,),) = plan_units(plan)
    assert unit.rows == 5
    first = make_engine(policy, source_dsn, s3, storage)
    die_at_batch(first, 3)
    with pytest.raises(Killed):
        first.archive_and_delete(ctx, plan, unit)
    assert committed_rows(db, ctx.run_id) == 2
    late = f.quote(db, issued="2023-06-01")
    db.commit()
    retry = RunContext("quotes", "retry", D, batch_size=1, attempt=2)
    make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, plan, unit)
    assert committed_rows(db, ctx.run_id) == 5, "the run deleted more rows than its approved plan counted"
    left = f.ids(db, "quotes")
    assert late in left and not set(approved) & left, "the approved rows are gone, the late one is left"


def test_the_runs_report_counts_what_every_try_of_a_unit_archived(db, s3, storage, policy, source_dsn):
    """A unit's result (its XCom) is its last try's: the report merged from it counted only the
    retry's rows archived per end day. Recounted from the manifest and the audit log, it counts
    the killed try's committed batches too, once."""
    from retention.tasks import merge_units, recount_from_records

    days = ["2023-06-01", "2023-06-02", "2023-06-02", "2023-06-03", "2023-06-03"]
    for day in days:
        f.quote(db, issued=day)
    ctx = RunContext("quotes", "recount", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    ((unit,),) = plan_units(plan)
    first = make_engine(policy, source_dsn, s3, storage)
    die_at_batch(first, 3)
    with pytest.raises(Killed):
        first.archive_and_delete(ctx, plan, unit)
    retry = RunContext("quotes", "recount", D, batch_size=1, attempt=2)
    (last_try,) = make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, plan, unit)
    assert sum(last_try.archived_until.values()) == 3  # the killed try's 2 rows are not in its result

    outcomes = merge_units(plan, [{"unit": unit.as_dict(), "outcome": last_try.as_dict()}])
    recount_from_records(db, outcomes, "quotes", ctx.run_id, policy.timezone)
    (outcome,) = outcomes
    assert outcome.deleted == 5 and outcome.objects == 5
    assert outcome.archived_until == {"2025-06-01": 1, "2025-06-02": 2, "2025-06-03": 2}


def test_a_retried_range_unit_deletes_no_more_than_its_range_count(db, s3, storage, policy, source_dsn):
    """Units of a split rule: a row held at planning (inside unit 0's range) is released between
    the killed try and its retry; the unit may still delete only the 3 rows it was approved."""
    q = [f.quote(db, issued="2023-06-01") for _ in range(6)]
    hold = f.legal_hold(db, "quotes", q[2])
    ctx = RunContext("quotes", "retry_range", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx, range_rows=3)
    (units,) = plan_units(plan)
    assert [(u.first_id, u.last_id, u.rows) for u in units] == [(q[0], q[3], 3), (q[4], q[5], 2)]
    first = make_engine(policy, source_dsn, s3, storage)
    die_at_batch(first, 2)
    with pytest.raises(Killed):
        first.archive_and_delete(ctx, plan, units[0])
    assert committed_rows(db, ctx.run_id) == 1
    db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE id = %s", (hold,))
    db.commit()
    retry = RunContext("quotes", "retry_range", D, batch_size=1, attempt=2)
    make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, plan, units[0])
    assert committed_rows(db, ctx.run_id) == 3, "unit 0 deleted more rows than its approved range count"


def test_a_retried_archive_step_without_units_deletes_no_more_than_the_plan_approved(
    db, s3, storage, policy, source_dsn
):
    """The same for a run not spread over units (the archive_and_delete task retried)."""
    [f.quote(db, issued="2023-06-01") for _ in range(5)]
    ctx = RunContext("quotes", "retry_whole", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    first = make_engine(policy, source_dsn, s3, storage)
    die_at_batch(first, 3)
    with pytest.raises(Killed):
        first.archive_and_delete(ctx, plan)
    late = f.quote(db, issued="2023-06-01")
    db.commit()
    retry = RunContext("quotes", "retry_whole", D, batch_size=1, attempt=2)
    make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, plan)
    assert committed_rows(db, ctx.run_id) == 5, "the run deleted more rows than its approved plan counted"
    assert late in f.ids(db, "quotes")


def test_a_run_cleared_whole_plans_again_and_deletes_what_its_new_plan_approved(db, s3, storage, policy, source_dsn):
    """A run cleared whole in the UI after its first execution died: the plan task plans again
    (the rows left, a quote due since then among them) and the archive step may delete what that
    plan approved. It subtracted the first execution's deletions from the new plan too, deleted
    less than approved and left due rows behind. A retry of the new execution still spends what
    the new plan's earlier tries deleted."""
    first_approved = [f.quote(db, issued="2023-06-01") for _ in range(5)]
    ctx = RunContext("quotes", "cleared", D, batch_size=1)
    first_plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    first = make_engine(policy, source_dsn, s3, storage)
    die_at_batch(first, 3)
    with pytest.raises(Killed):
        first.archive_and_delete(ctx, first_plan)
    assert committed_rows(db, ctx.run_id) == 2
    late = f.quote(db, issued="2023-06-01")
    db.commit()

    cleared = RunContext("quotes", "cleared", D, batch_size=1, attempt=2)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(cleared)
    assert plan.rule("unconverted_quotes").deletable == 4 and len(plan.audited_before) == 2
    second = make_engine(policy, source_dsn, s3, storage)
    die_at_batch(second, 2)
    with pytest.raises(Killed):
        second.archive_and_delete(cleared, plan)
    retry = RunContext("quotes", "cleared", D, batch_size=1, attempt=3)
    make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, plan)
    assert not (set(first_approved) | {late}) & f.ids(db, "quotes"), "due rows the new plan approved were left"
    assert committed_rows(db, ctx.run_id) == 6

    from retention.tasks import merge_units, recount_from_records

    (outcome,) = merge_units(plan, [])
    recount_from_records(db, [outcome], "quotes", ctx.run_id, policy.timezone, plan.audited_before)
    assert (outcome.deleted, outcome.objects) == (4, 4), "the report counts what the new plan's execution did"

    f.quote(db, issued="2023-06-01")  # due after the new plan: not approved by it
    db.commit()
    again = RunContext("quotes", "cleared", D, batch_size=1, attempt=4)
    make_engine(policy, source_dsn, s3, storage).archive_and_delete(again, plan)
    assert committed_rows(db, ctx.run_id) == 6, "a try deleted more than the new plan approved"


def test_a_unit_of_an_earlier_plan_of_the_run_spends_every_deletion_of_the_run(db, s3, storage, policy, source_dsn):
    """The `plan` task cleared alone while its units were not: a retried unit is still the
    earlier plan's (its count included the rows its killed try deleted) beside the new plan's
    figures. It must spend every deletion of the run in its range, not only those after the new
    plan, or it deletes past what either plan approved (here: a hold released since)."""
    q = [f.quote(db, issued="2023-06-01") for _ in range(6)]
    hold = f.legal_hold(db, "quotes", q[2])
    ctx = RunContext("quotes", "replanned", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx, range_rows=3)
    (units,) = plan_units(plan)
    assert [(u.first_id, u.last_id, u.rows) for u in units] == [(q[0], q[3], 3), (q[4], q[5], 2)]
    first = make_engine(policy, source_dsn, s3, storage)
    die_at_batch(first, 3)
    with pytest.raises(Killed):
        first.archive_and_delete(ctx, plan, units[0])
    assert committed_rows(db, ctx.run_id) == 2
    replanned = make_engine(policy, source_dsn, s3, storage).make_plan(ctx, range_rows=3)
    assert units[0] not in plan_units(replanned)[0]
    db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE id = %s", (hold,))
    db.commit()
    retry = RunContext("quotes", "replanned", D, batch_size=1, attempt=2)
    make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, replanned, units[0])
    assert committed_rows(db, ctx.run_id) == 3, "the earlier plan's unit deleted more than its range count"


def test_a_unit_of_an_earlier_plan_that_looks_like_one_of_the_new_plan_spends_every_deletion(
    db, s3, storage, policy, source_dsn
):
    """The same, a rule in one unit (Unit(rule, rows=<its count>)): holds released before the
    `plan` task, cleared alone, plans again give the new plan the earlier plan's count, so its
    unit is equal to the earlier one, and the earlier plan's unit was taken for the new plan's:
    it spent none of the deletions of its killed try and deleted its whole count again, two
    rows more than the only plan the before gate judged (found by a review)."""
    q = [f.quote(db, issued="2023-06-01") for _ in range(6)]
    holds = [f.legal_hold(db, "quotes", q[4]), f.legal_hold(db, "quotes", q[5])]
    ctx = RunContext("quotes", "replanned-alike", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    ((unit,),) = plan_units(plan)
    assert unit.rows == 4
    first = make_engine(policy, source_dsn, s3, storage)
    die_at_batch(first, 3)
    with pytest.raises(Killed):
        first.archive_and_delete(ctx, plan, unit)
    assert committed_rows(db, ctx.run_id) == 2
    db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE id = ANY(%s)", (holds,))
    db.commit()
    replanned = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    ((alike,),) = plan_units(replanned)
    assert (alike.first_id, alike.last_id, alike.rows) == (unit.first_id, unit.last_id, unit.rows)
    assert len(replanned.audited_before) == 2
    retry = RunContext("quotes", "replanned-alike", D, batch_size=1, attempt=2)
    (last_try,) = make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, replanned, unit)
    assert committed_rows(db, ctx.run_id) == 4, "the earlier plan's unit deleted more than its count"

    # The run's report counts what that unit spent: every deletion of the run, not those since
    # the new plan only (it said 2 deleted of the 4 its unit did).
    from retention.tasks import audited_before_of_units, merge_units, recount_from_records

    results = [{"unit": unit.as_dict(), "outcome": last_try.as_dict()}]
    (outcome,) = merge_units(replanned, results)
    recount_from_records(
        db, [outcome], "quotes", ctx.run_id, policy.timezone, audited_before_of_units(replanned, results)
    )
    assert outcome.deleted == 4
    assert audited_before_of_units(replanned, [{"unit": alike.as_dict()}]) == replanned.audited_before


@contextlib.contextmanager
def an_idle_session_timeout(admin, database: str):
    """A DBA's database-wide ``idle_session_timeout`` (PostgreSQL 14+): ``control`` sits idle
    outside any transaction while the other connection's batch uploads, and is ended."""
    admin.execute(f'ALTER DATABASE "{database}" SET idle_session_timeout = 1500')
    try:
        yield lambda: threading.Event().wait(3.0)  # longer than the database timeout
    finally:
        admin.execute(f'ALTER DATABASE "{database}" RESET idle_session_timeout')


@contextlib.contextmanager
def a_dba_ending_the_control_session(admin, database: str):
    """A DBA ends the session that holds the purpose's lock (``pg_terminate_backend``)."""

    def end() -> None:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND ((classid::bigint << 32) | objid::bigint) = hashtext('retention:quotes')::bigint"
        ).fetchall()
        assert ended == [(True,)], ended
        threading.Event().wait(0.5)

    yield end


@pytest.mark.parametrize("session_ended_by", [an_idle_session_timeout, a_dba_ending_the_control_session])
def test_a_unit_that_loses_its_purpose_lock_while_uploading_keeps_its_upload_from_a_recovery(
    db, s3, storage, policy, source_dsn, session_ended_by
):
    """The unit's purpose lock lives on its ``control`` session, while its last batch uploads on
    the other connection. That session ends (a database's idle timeout, a DBA) and the lock with
    it: a recovery (exclusive) then got the lock and removed the batch's upload, which the unit
    committed anyway: the rows deleted, their object gone. The batch's own transaction now holds
    the purpose's batches lock, which the recovery waits for."""
    quotes = [f.quote(db, issued="2023-06-01") for _ in range(2)]  # archived until 2025-06
    db.commit()
    database = db.execute("SELECT current_database()").fetchone()[0]
    ctx = RunContext("quotes", "idle", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    ((unit,),) = plan_units(plan)
    unit_engine = make_engine(policy, source_dsn, s3, storage)
    uploaded, go_on = threading.Event(), threading.Event()
    real_upload, calls = unit_engine._upload_batch, []

    def upload_then_wait(batch):
        real_upload(batch)
        calls.append(batch)
        if len(calls) == 2:  # the last batch, on the second connection
            uploaded.set()
            assert go_on.wait(60)

    unit_engine._upload_batch = upload_then_wait
    recovery = make_engine(policy, source_dsn, s3, storage)
    removed, commit_now = threading.Event(), threading.Event()
    real_delete = recovery.store.delete_all_versions

    def delete_then_wait(keys):
        real_delete(keys)
        removed.set()
        assert commit_now.wait(60)

    recovery.store.delete_all_versions = delete_then_wait
    with psycopg.connect(source_dsn, autocommit=True) as admin, session_ended_by(admin, database) as end_session:
        run = InThread(lambda: unit_engine.archive_and_delete(ctx, plan, unit))
        assert uploaded.wait(30), (run.done.wait(5), repr(run.error), len(calls))
        end_session()
        recovering = InThread(lambda: recovery.recover_before_units(ctx, plan))
        got_in = removed.wait(5)
        go_on.set()  # the unit deletes and commits
        threading.Event().wait(1.0)
        commit_now.set()
        try:
            recovering.join()
        except PurposeLockedError:
            pass
        try:
            run.join()
        except Exception:  # noqa: BLE001 - the unit's control session is gone
            pass
    committed = db.execute(
        "SELECT object_key FROM retention.archive_manifest WHERE run_id = %s AND state = 'committed'", (ctx.run_id,)
    ).fetchall()
    missing = []
    for (key,) in committed:
        try:
            s3.head_object(Bucket=storage.archive_bucket, Key=key)
        except s3.exceptions.ClientError:
            missing.append(key)
    assert missing == [], "rows deleted from the source, their committed object removed by the recovery"
    assert len(committed) + len(f.ids(db, "quotes") & set(quotes)) == 2
    assert not got_in, "a recovery removed uploads while a unit of the run was still uploading"


def test_a_unit_retried_while_its_killed_try_still_runs_deletes_no_more_than_approved(
    db, s3, storage, policy, source_dsn
):
    """A zombie: Airflow gave up on try 1 (heartbeats lost) and started try 2, but try 1's
    process still runs. Together they must not delete more than the unit's approved count."""
    from tests.test_safety import Pause

    [f.quote(db, issued="2023-06-01") for _ in range(5)]
    ctx = RunContext("quotes", "zombie", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    ((unit,),) = plan_units(plan)
    late = f.quote(db, issued="2023-06-01")
    db.commit()
    zombie = make_engine(policy, source_dsn, s3, storage)
    pause = Pause(zombie, "_upload_batch")  # its first batch uploaded, not committed
    first = InThread(lambda: zombie.archive_and_delete(ctx, plan, unit))
    assert pause.reached.wait(30)
    retry = RunContext("quotes", "zombie", D, batch_size=1, attempt=2)
    second = InThread(lambda: make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, plan, unit))
    try:
        second.join(20)
    except Exception:  # noqa: BLE001 - a fix may refuse the second try while the first runs
        pass
    pause.release.set()
    try:
        first.join()
    except Exception:  # noqa: BLE001
        pass
    assert committed_rows(db, ctx.run_id) <= 5, "the run's two tries deleted more than the plan approved"
    assert late in f.ids(db, "quotes")


def test_a_zombie_unit_whose_control_session_ended_does_not_delete_beside_its_retry(
    db, s3, storage, policy, source_dsn
):
    """The unit's own lock (one try at a time) lives on the try's ``control`` session, while its
    last batch uploads on the other connection. A zombie try (Airflow gave up on it, it runs on)
    whose control session a DBA ends loses that lock: its retry took it, counted what the run had
    committed (not the zombie's batch in flight), skipped the zombie's locked rows and deleted a
    row due since the plan in their place; the zombie then committed its batch: the run deleted
    more than the plan approved."""
    approved = [f.quote(db, issued="2023-06-01") for _ in range(2)]
    db.commit()
    ctx = RunContext("quotes", "zombie_ended", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    ((unit,),) = plan_units(plan)
    assert unit.rows == 2
    zombie = make_engine(policy, source_dsn, s3, storage)
    uploaded, go_on = threading.Event(), threading.Event()
    real_upload, calls = zombie._upload_batch, []

    def upload_then_wait(batch):
        real_upload(batch)
        calls.append(batch)
        if len(calls) == 2:  # the last batch, on the second connection
            uploaded.set()
            assert go_on.wait(60)

    zombie._upload_batch = upload_then_wait
    late = f.quote(db, issued="2023-06-01")
    db.commit()
    with psycopg.connect(source_dsn, autocommit=True) as admin:
        first = InThread(lambda: zombie.archive_and_delete(ctx, plan, unit))
        assert uploaded.wait(30), (first.done.wait(5), repr(first.error), len(calls))
        with a_dba_ending_the_control_session(admin, "") as end_session:
            end_session()
        retry = RunContext("quotes", "zombie_ended", D, batch_size=1, attempt=2)
        second = InThread(lambda: make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, plan, unit))
        second.done.wait(10)  # a fix may make it wait for the zombie's batch, then give up
        go_on.set()  # the zombie deletes and commits its batch
        for run in (first, second):
            try:
                run.join()
            except Exception:  # noqa: BLE001 - the zombie's control session is gone; the retry may give up
                pass
    assert committed_rows(db, ctx.run_id) <= 2, "the zombie and its retry deleted more than the plan approved"
    assert late in f.ids(db, "quotes")
    assert not set(approved) & f.ids(db, "quotes") or committed_rows(db, ctx.run_id) < 2


def test_a_retry_after_the_runs_objects_were_purged_and_their_audit_ids_forgotten_deletes_no_more_than_approved(
    db, s3, storage, policy, source_dsn, role_dsn
):
    """A backfill run (its logical date long past): its try commits 2 batches, then is killed.
    Their objects' archive period is already over today: the purpose's purge removes them, and
    the housekeeping then forgets the ids their audit rows listed (ids naming a purged object
    go). A retry of the try (cleared the next day) counted what the run had deleted from those
    ids: none, and deleted the whole approved count again, a row due since the plan with it."""
    import datetime as dt

    from retention import housekeeping

    approved = [f.quote(db, issued="2023-06-01") for _ in range(5)]  # archived until 2025-06-01
    ctx = RunContext("quotes", "retry_forgotten", D, batch_size=1)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    first = make_engine(policy, source_dsn, s3, storage)
    die_at_batch(first, 3)
    with pytest.raises(Killed):
        first.archive_and_delete(ctx, plan)
    assert committed_rows(db, ctx.run_id) == 2
    purge = RunContext("quotes", "purge", f.midnight("2025-06-02"))
    assert make_engine(policy, source_dsn, s3, storage).purge_archives(purge)["purged_objects"] == 2
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        done = housekeeping.prune_own_rows(conn, policy, dt.datetime.now(dt.UTC), enforce=True)
    assert done["audit_record_ids"]["forgotten"] >= 2
    late = f.quote(db, issued="2023-06-01")
    db.commit()
    retry = RunContext("quotes", "retry_forgotten", D, batch_size=1, attempt=2)
    make_engine(policy, source_dsn, s3, storage).archive_and_delete(retry, plan)
    assert committed_rows(db, ctx.run_id) <= 5, "the run deleted more rows than its approved plan counted"
    assert late in f.ids(db, "quotes")
    assert set(approved) & f.ids(db, "quotes") or committed_rows(db, ctx.run_id) == 5
