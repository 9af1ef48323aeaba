"""Partitioned tables retired whole (issue 20 §2), against real PostgreSQL and S3: app.chat_messages
(probative, 5 years) and app.cookie_consents (tier none) monthly-partitioned on their clock for the
test, nothing declared in the policy. A partition whose every row is due is archived from itself
(the row path's objects, manifest, owners and audit), detached concurrently and dropped; one with
a held row, or a hold placed while it is archived, stays and its other rows take the row path; a
crash between the detach and the drop (or in the middle of the detach) is finished by the next
run. The row path's VACUUM after a mass delete is here too (a table that is not partitioned).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time

import psycopg
import pyarrow.parquet as pq
import pytest
from retention import run_report
from retention.archive import partition_detach, partition_drops, partition_plan, vacuum
from retention.archive import partitions as partition_path
from retention.archive.engine import RetentionEngine
from retention.archive.run import RetentionError, RunContext, plan_units
from retention.archive.store import ArchiveStore
from retention.rights import access as rights_access
from retention.rights import erase as rights_erase
from retention.rights import find as rights_find
from retention.rights.retirements import RetirementInTheWayError

from tests import factories as f
from tests import factories_policy as fp
from tests.test_safety import InThread, Pause, place_hold, waits_for_a_lock
from tests.test_subject_rights import request as subject_request
from tests.test_subject_rights import rights as subject_rights
from tools import devstack

pytestmark = pytest.mark.integration

D = f.midnight("2026-06-01")  # chat messages transmitted before D are due (live: 0 months)
MONTHS = ["2019-01", "2026-03", "2026-04", "2026-05", "2026-06", "2026-07"]


def _next_month(month: str) -> str:
    year, mon = map(int, month.split("-"))
    return f"{year + mon // 12}-{mon % 12 + 1:02d}"


def partition_by_month(conn, table: str, clock: str) -> None:
    """Turn ``app.<table>`` into a table range-partitioned by month (Paris) on ``clock``; the
    plain table waits under another name (restore_table). Its foreign keys are the plain
    table's (LIKE copies none): a drop of a detached partition locks the tables they name."""
    conn.execute(f"ALTER TABLE app.{table} RENAME TO {table}_plain")
    conn.execute(
        f"CREATE TABLE app.{table} (LIKE app.{table}_plain INCLUDING DEFAULTS INCLUDING IDENTITY"
        f" INCLUDING CONSTRAINTS) PARTITION BY RANGE ({clock})"
    )
    for (foreign_key,) in conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
        (f"app.{table}_plain",),
    ).fetchall():
        conn.execute(f"ALTER TABLE app.{table} ADD {foreign_key}")
    conn.execute(f"CREATE INDEX ON app.{table} (id)")
    conn.execute(f"CREATE INDEX ON app.{table} ({clock})")
    for month in MONTHS:
        conn.execute(
            f"CREATE TABLE app.{table}_{month.replace('-', '_')} PARTITION OF app.{table}"
            f" FOR VALUES FROM ('{month}-01 00:00 Europe/Paris') TO ('{_next_month(month)}-01 00:00 Europe/Paris')"
        )


def foreign_key_names(conn, table: str) -> list[str]:
    return [
        name
        for (name,) in conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'", (f"app.{table}",)
        )
    ]


def restore_table(conn, table: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS app.{table} CASCADE")
    for (name,) in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r' AND relname LIKE %s",
        (f"{table}\\_2%",),
    ).fetchall():
        conn.execute(f"DROP TABLE app.{name}")  # a partition a failed test left detached
    conn.execute(f"ALTER TABLE app.{table}_plain RENAME TO {table}")


@contextlib.contextmanager
def monthly_partitioned(db, **clocks: str):
    """The tables (``table=clock``) partitioned by month for the block (partition_by_month), then
    their plain tables back, once every other session is ended (one a failed test left may hold
    a lock on them)."""
    for table, clock in clocks.items():
        partition_by_month(db, table, clock)
    try:
        yield db
    finally:
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        for table in clocks:
            restore_table(db, table)


@pytest.fixture
def partitioned(db):
    with monthly_partitioned(db, chat_messages="transmitted_at", cookie_consents="recorded_at"):
        yield db


def engine_for(policy, source_dsn, s3, storage, purpose="subscriber_services", **kwargs) -> RetentionEngine:
    return RetentionEngine(policy, purpose, source_dsn, ArchiveStore(s3, storage), lock_timeout=2, **kwargs)


def partitions_left(db, table: str) -> list[str]:
    rows = partition_plan.range_partitions(
        db, "app", table, "transmitted_at" if table == "chat_messages" else "recorded_at"
    )
    return [p.name.removeprefix(f"{table}_") for p in rows]


def messages(db, customers: dict[str, int]) -> dict[str, list[int]]:
    """Three messages a month on different days (so several end-day objects a partition)."""
    made = {}
    for month in MONTHS:
        made[month] = [
            fp.chat_message(db, customers[month], transmitted=f.paris(f"{month}-{day:02d}", 9 + day % 7))
            for day in (1, 14, 28)
        ]
    return made


def archive_record(db, s3, storage, run_id: str) -> dict:
    """What a run left, comparable across runs: manifest rows, audit rows and the objects' rows
    (run ids taken out of the keys)."""
    manifest = db.execute(
        "SELECT replace(object_key, %s, 'RUN'), state, row_count, record_ids, owner_ids, purge_after,"
        " earliest_purge_after, identifier_hashes, tier, rule, locked_until IS NOT NULL FROM retention.archive_manifest"
        " WHERE run_id = %s ORDER BY object_key",
        (run_id, run_id),
    ).fetchall()
    audit = db.execute(
        "SELECT action, rule, table_name, record_count, record_ids, replace(object_key, %s, 'RUN')"
        " FROM retention.audit_log WHERE run_id = %s AND action IN ('archived_and_deleted', 'deleted')"
        " ORDER BY action, object_key NULLS FIRST",
        (run_id, run_id),
    ).fetchall()
    objects = {}
    for key, version in db.execute(
        "SELECT object_key, version_id FROM retention.archive_manifest WHERE run_id = %s AND state = 'committed'",
        (run_id,),
    ).fetchall():
        body = s3.get_object(Bucket=storage.archive_bucket, Key=key, VersionId=version)["Body"].read()
        objects[key.replace(run_id, "RUN")] = pq.read_table(io.BytesIO(body)).to_pylist()
    return {"manifest": manifest, "audit": audit, "objects": objects}


def committed_ids(db) -> list[int]:
    """The record ids in the committed objects, one per object that holds it."""
    return [
        i
        for (ids,) in db.execute("SELECT record_ids FROM retention.archive_manifest WHERE state = 'committed'")
        for i in ids
    ]


def a_hold_just_before_detaching(engine, dsn: str, partition: str, customer: int) -> None:
    """A DPO holds ``customer`` (from another connection) just before ``partition``'s detach: after
    the step-2 re-check, before step 4's."""
    detach = engine._detach

    def hold_then_detach(autocommit_conn, table, detached):
        if detached == partition:
            place_hold(dsn, "customers", customer).join(10)
        detach(autocommit_conn, table, detached)

    engine._detach = hold_then_detach


def merged_after_the_listing(engine, dsn: str, into: str, merged: str, until: str) -> None:
    """A DBA merges ``merged``'s partition into ``into``'s, its bound widened to ``until`` (all
    YYYY-MM), right after the engine listed chat_messages' partitions and their bounds."""
    listed = engine._partition_candidates

    def listed_then_merged(control, rule, cutoff):
        candidates = listed(control, rule, cutoff)
        if rule.table != "chat_messages":
            return candidates
        kept, gone = (f"app.chat_messages_{month.replace('-', '_')}" for month in (into, merged))
        with psycopg.connect(dsn, autocommit=True) as dba:
            dba.execute(f"ALTER TABLE app.chat_messages DETACH PARTITION {kept}")
            dba.execute(f"ALTER TABLE app.chat_messages DETACH PARTITION {gone}")
            dba.execute(f"INSERT INTO {kept} SELECT * FROM {gone}")
            dba.execute(f"DROP TABLE {gone}")
            dba.execute(
                f"ALTER TABLE app.chat_messages ATTACH PARTITION {kept}"
                f" FOR VALUES FROM ('{into}-01 00:00 Europe/Paris') TO ('{until}-01 00:00 Europe/Paris')"
            )
        return candidates

    engine._partition_candidates = listed_then_merged


def test_whole_partitions_give_the_row_paths_objects_manifest_and_audit(partitioned, s3, storage, policy, source_dsn):
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    rows = db.execute("SELECT * FROM app.chat_messages ORDER BY id").fetchall()
    columns = [c.name for c in db.execute("SELECT * FROM app.chat_messages LIMIT 0").description]

    row_path = engine_for(policy, source_dsn, s3, storage)
    row_path.partition_path = False
    (by_rows, _) = row_path.archive_and_delete(RunContext("subscriber_services", "rows", D))
    assert by_rows.partitions == {} and by_rows.deleted == 12
    assert partitions_left(db, "chat_messages") == [m.replace("-", "_") for m in MONTHS]

    # The same rows again, with their ids, for the partition path.
    db.execute("TRUNCATE app.chat_messages")
    with db.cursor() as cur:
        cur.executemany(
            f"INSERT INTO app.chat_messages ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})", rows
        )
    (by_partitions, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
        RunContext("subscriber_services", "parts", D)
    )
    assert by_partitions.partitions == {"dropped": 4, "rows": 12, "kept": 0}
    assert (by_partitions.deleted, by_partitions.objects, by_partitions.archived_until) == (
        by_rows.deleted,
        by_rows.objects,
        by_rows.archived_until,
    )
    # 2019's, March's, April's and May's partitions (May's ends at D itself) are gone; June's stays.
    assert partitions_left(db, "chat_messages") == ["2026_06", "2026_07"]
    assert f.ids(db, "chat_messages") == set(made["2026-06"] + made["2026-07"])
    expected, got = archive_record(db, s3, storage, "rows"), archive_record(db, s3, storage, "parts")
    assert got["manifest"] == expected["manifest"] and len(got["manifest"]) == 9  # 3 months x 3 end days
    assert all(row[-1] for row in got["manifest"]), "probative objects locked (Object Lock) after the commit"
    assert got["audit"] == expected["audit"]
    assert got["objects"] == expected["objects"]
    assert (
        db.execute("SELECT state, row_count FROM retention.partition_retirements ORDER BY id").fetchall()
        == [("dropped", 3)] * 4
    )


def test_a_partition_with_a_held_row_stays_and_its_other_rows_take_the_row_path(
    partitioned, s3, storage, policy, source_dsn
):
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    f.legal_hold(db, "chat_messages", made["2026-04"][1])
    (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
        RunContext("subscriber_services", "held", D)
    )
    assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 1}
    assert (outcome.deleted, outcome.held) == (11, 1)
    assert partitions_left(db, "chat_messages") == ["2026_04", "2026_06", "2026_07"]
    assert f.ids(db, "chat_messages") == {made["2026-04"][1], *made["2026-06"], *made["2026-07"]}


def test_a_sub_partitioned_partition_is_never_retired_whole(partitioned, s3, storage, policy, source_dsn):
    """April is itself partitioned (by half month): its rows live in its sub-partitions, so a
    check of April alone (``FROM ONLY``) would see no row at all, and its DROP would take the
    sub-partitions with it, held row included, unarchived. It is not a candidate: its rows take
    the row path, the held one stays."""
    db = partitioned
    db.execute("DROP TABLE app.chat_messages_2026_04")
    april, may = "'2026-04-01 00:00 Europe/Paris'", "'2026-05-01 00:00 Europe/Paris'"
    db.execute(
        f"CREATE TABLE app.chat_messages_2026_04 PARTITION OF app.chat_messages FOR VALUES FROM ({april}) TO ({may})"
        " PARTITION BY RANGE (transmitted_at)"
    )
    for name, lower, upper in (
        ("a", april, "'2026-04-16 00:00 Europe/Paris'"),
        ("b", "'2026-04-16 00:00 Europe/Paris'", may),
    ):
        db.execute(
            f"CREATE TABLE app.chat_messages_2026_04_{name} PARTITION OF app.chat_messages_2026_04"
            f" FOR VALUES FROM ({lower}) TO ({upper})"
        )
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    f.legal_hold(db, "chat_messages", made["2026-04"][2])
    (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
        RunContext("subscriber_services", "sub-partitioned", D)
    )
    assert f.ids(db, "chat_messages") == {made["2026-04"][2], *made["2026-06"], *made["2026-07"]}
    assert f.ids(db, "chat_messages_2026_04_b") == {made["2026-04"][2]}, "the held row, where it was"
    assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 0}
    assert (outcome.deleted, outcome.held) == (11, 1)
    assert partitions_left(db, "chat_messages") == ["2026_04", "2026_06", "2026_07"]
    # 2019's archive period is over (deleted without archive); April's two others by the row path.
    assert set(committed_ids(db)) == set(made["2026-03"] + made["2026-04"][:2] + made["2026-05"])


def test_a_foreign_partition_is_never_retired_whole(partitioned, s3, storage, policy, source_dsn):
    """April lives on another server (postgres_fdw, here a loopback to the same database): a
    foreign table cannot be dropped as a table, and its rows are another server's. It is not a
    candidate: its rows take the row path (deleted through the foreign table), it stays."""
    db = partitioned
    where = psycopg.conninfo.conninfo_to_dict(source_dsn)
    db.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
    try:
        options = {k: psycopg.sql.Literal(str(v)) for k, v in where.items()}
        db.execute(
            psycopg.sql.SQL(
                "CREATE SERVER elsewhere FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host {host}, port {port}, dbname {dbname})"
            ).format(**options)
        )
        db.execute(
            psycopg.sql.SQL(
                "CREATE USER MAPPING FOR PUBLIC SERVER elsewhere OPTIONS (user {user}, password {password})"
            ).format(**options)
        )
        for name in foreign_key_names(db, "chat_messages"):  # a foreign table takes no foreign key
            db.execute(f'ALTER TABLE app.chat_messages DROP CONSTRAINT "{name}"')
        db.execute("DROP TABLE app.chat_messages_2026_04")
        db.execute("CREATE TABLE app.april_elsewhere (LIKE app.chat_messages)")
        db.execute(
            "CREATE FOREIGN TABLE app.chat_messages_2026_04 PARTITION OF app.chat_messages"
            " FOR VALUES FROM ('2026-04-01 00:00 Europe/Paris') TO ('2026-05-01 00:00 Europe/Paris')"
            " SERVER elsewhere OPTIONS (schema_name 'app', table_name 'april_elsewhere')"
        )
        customers = {month: f.customer(db) for month in MONTHS}
        made = messages(db, customers)
        assert f.ids(db, "april_elsewhere") == set(made["2026-04"])
        (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
            RunContext("subscriber_services", "foreign", D)
        )
        assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 0}
        assert outcome.deleted == 12
        assert partitions_left(db, "chat_messages") == ["2026_04", "2026_06", "2026_07"]
        assert f.ids(db, "chat_messages") == {*made["2026-06"], *made["2026-07"]}
        assert f.ids(db, "april_elsewhere") == set()
    finally:
        db.execute("DROP TABLE IF EXISTS app.chat_messages CASCADE")  # its foreign partition with it
        db.execute("DROP TABLE IF EXISTS app.april_elsewhere")
        db.execute("DROP SERVER IF EXISTS elsewhere CASCADE")
        db.execute("DROP EXTENSION IF EXISTS postgres_fdw")


# What a DELETE does that a DROP of a partition would not: (set up, undo).
DELETE_DOES_MORE = {
    # the application's guard, refusing to delete one message ({guarded}: its id)
    "a guard trigger": (
        "CREATE FUNCTION app.on_message_delete() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN IF OLD.id = {guarded} THEN RETURN NULL; END IF; RETURN OLD; END $$;"
        " CREATE TRIGGER on_message_delete BEFORE DELETE ON app.chat_messages"
        " FOR EACH ROW EXECUTE FUNCTION app.on_message_delete()",
        "DROP TRIGGER on_message_delete ON app.chat_messages; DROP FUNCTION app.on_message_delete()",
    ),
    # the application's journal of deletions
    "a journal trigger": (
        "CREATE FUNCTION app.on_message_delete() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN INSERT INTO app.deletion_journal VALUES (OLD.id); RETURN OLD; END $$;"
        " CREATE TRIGGER on_message_delete AFTER DELETE ON app.chat_messages"
        " FOR EACH ROW EXECUTE FUNCTION app.on_message_delete()",
        "DROP TRIGGER on_message_delete ON app.chat_messages; DROP FUNCTION app.on_message_delete()",
    ),
    # policies that may hide rows from the checks (the owner too, forced)
    "row-level security": (
        "ALTER TABLE app.chat_messages ENABLE ROW LEVEL SECURITY;"
        " ALTER TABLE app.chat_messages FORCE ROW LEVEL SECURITY;"
        " CREATE POLICY support_only ON app.chat_messages USING (true)",
        "DROP POLICY support_only ON app.chat_messages; ALTER TABLE app.chat_messages DISABLE ROW LEVEL SECURITY",
    ),
    # a flag on a message outlives it (its reference set NULL); a partition with a flagged
    # message cannot be detached
    "a foreign key that sets NULL": (
        "ALTER TABLE app.chat_messages ADD PRIMARY KEY (id, transmitted_at);"
        " CREATE TABLE app.message_flags (message_id bigint, message_at timestamptz,"
        " FOREIGN KEY (message_id, message_at) REFERENCES app.chat_messages (id, transmitted_at) ON DELETE SET NULL);"
        " INSERT INTO app.message_flags SELECT id, transmitted_at FROM app.chat_messages WHERE id = {guarded}",
        "DROP TABLE app.message_flags",
    ),
    # a subscriber (a reporting database) gets each DELETE, never a DROP
    "logical replication": (
        "CREATE PUBLICATION to_reporting FOR TABLE app.chat_messages;"
        # what a published table needs to publish its deletes (this copy has no primary key)
        " DO $$ DECLARE r record; BEGIN FOR r IN SELECT relid FROM pg_partition_tree('app.chat_messages') LOOP"
        " EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', r.relid::regclass); END LOOP; END $$",
        "DROP PUBLICATION to_reporting",
    ),
}


@pytest.mark.parametrize("when", ["before the run", "after the listing"])
@pytest.mark.parametrize("more", list(DELETE_DOES_MORE))
def test_a_table_whose_delete_does_more_than_a_drop_takes_the_row_path(
    partitioned, s3, storage, policy, source_dsn, more, when
):
    """What a DELETE on chat_messages does that a drop of a partition would not: the guard
    trigger's refused message would go, the journal would miss rows, rows hidden by row-level
    security would go unchecked, the subscribers would keep every row. The table takes the row
    path: the refusal stops its batch (rolled back, nothing of it deleted), the journal is
    whole, no partition is detached. Also when the DBA adds it after the run listed the
    partitions: each is kept at its step 2 (the catalog read again under its lock)."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    guarded = made["2026-04"][1]
    db.execute("CREATE TABLE app.deletion_journal (message_id bigint)")
    set_up, undo = DELETE_DOES_MORE[more]
    engine = engine_for(policy, source_dsn, s3, storage)
    if when == "before the run":
        db.execute(set_up.format(guarded=guarded))
    else:
        listed = engine._partition_candidates

        def listed_then_set_up(control, rule, cutoff):
            candidates = listed(control, rule, cutoff)
            if rule.table == "chat_messages":
                assert candidates, "listed before the set-up"
                db.execute(set_up.format(guarded=guarded))
            return candidates

        engine._partition_candidates = listed_then_set_up
    try:
        ctx = RunContext("subscriber_services", more.replace(" ", "-"), D)
        if more == "a guard trigger":
            with pytest.raises(RetentionError, match="deleted .* rows, expected"):
                engine.archive_and_delete(ctx)
            assert guarded in f.ids(db, "chat_messages")
        else:
            (outcome, _) = engine.archive_and_delete(ctx)
            assert outcome.partitions.get("dropped", 0) == 0 and outcome.deleted == 12
            assert f.ids(db, "chat_messages") == {*made["2026-06"], *made["2026-07"]}
        if more == "a foreign key that sets NULL":
            assert db.execute("SELECT message_id FROM app.message_flags").fetchall() == [(None,)]
        if more == "a journal trigger":
            due = made["2019-01"] + made["2026-03"] + made["2026-04"] + made["2026-05"]
            assert sorted(i for (i,) in db.execute("SELECT message_id FROM app.deletion_journal")) == sorted(due)
        assert partitions_left(db, "chat_messages") == [m.replace("-", "_") for m in MONTHS], "none dropped"
        assert db.execute("SELECT count(*) FROM retention.partition_retirements").fetchone() == (0,)
    finally:
        db.execute(undo)
        db.execute("DROP TABLE app.deletion_journal")


@pytest.mark.parametrize("when", ["while it is archived", "while it is re-checked"])
@pytest.mark.parametrize("more", ["a guard trigger", "a journal trigger"])
def test_a_delete_trigger_added_while_a_partition_is_retired_keeps_it(
    partitioned, s3, storage, policy, source_dsn, more, when
):
    """A DBA adds the trigger while April is retired. While it is archived (step 1, which does
    not block the table), CREATE TRIGGER commits at once: step 2's catalog re-check sees it. While
    it is re-checked (step 2, the partition in SHARE mode), CREATE TRIGGER waits for that lock, so
    step 2 cannot see it; it commits just after, before the detach: step 4 reads the catalog
    again (found by a review, with this test). Either way April is attached again and its rows
    take the row path, where the trigger runs (the guard refuses its message; the journal has
    every row deleted from then on)."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    guarded = made["2026-04"][1]
    db.execute("CREATE TABLE app.deletion_journal (message_id bigint)")
    set_up, undo = DELETE_DOES_MORE[more]
    engine = engine_for(policy, source_dsn, s3, storage)
    recheck_the_catalog = engine._changed_since_the_listing
    dba = []

    def the_dba_adds_the_trigger():
        if when == "while it is archived":
            dba.append(InThread(lambda: as_the_dba(source_dsn, set_up.format(guarded=guarded))))
            dba[0].join(10)  # not kept waiting by the archive

    def recheck_while_the_dba_adds_the_trigger(control, rule, partition):
        changed = recheck_the_catalog(control, rule, partition)
        if partition == "chat_messages_2026_04" and when == "while it is re-checked":
            dba.append(
                a_dba_kept_waiting(
                    db, source_dsn, set_up.format(guarded=guarded), "the DDL never waited for the partition"
                )
            )
        return changed

    once_archived(engine, "chat_messages_2026_04", the_dba_adds_the_trigger)
    engine._changed_since_the_listing = recheck_while_the_dba_adds_the_trigger
    try:
        ctx = RunContext("subscriber_services", "trigger-added", D)
        if more == "a guard trigger":
            with pytest.raises(RetentionError, match="deleted .* rows, expected"):
                engine.archive_and_delete(ctx)
        else:
            engine.archive_and_delete(ctx)
        dba[0].join(30)
        assert partitions_left(db, "chat_messages") == ["2026_04", "2026_05", "2026_06", "2026_07"]
        states = db.execute("SELECT partition_name, state FROM retention.partition_retirements ORDER BY id").fetchall()
        if when == "while it is re-checked":
            assert ("chat_messages_2026_04", "kept") in states  # its record written, then attached again
        else:
            assert "chat_messages_2026_04" not in {name for name, _ in states}  # kept at step 2: never recorded
        if more == "a guard trigger":
            assert guarded in f.ids(db, "chat_messages")
        else:
            journal = sorted(i for (i,) in db.execute("SELECT message_id FROM app.deletion_journal"))
            assert journal == sorted(made["2026-04"] + made["2026-05"])
            assert f.ids(db, "chat_messages") == {*made["2026-06"], *made["2026-07"]}
    finally:
        db.execute(undo)
        db.execute("DROP TABLE app.deletion_journal")


def as_the_dba(dsn: str, statements: str) -> None:
    """A DBA's DDL, from its own session (named 'dba')."""
    with psycopg.connect(dsn, autocommit=True, application_name="dba") as conn:
        conn.execute(statements)


def a_dba_kept_waiting(db, dsn: str, statements: str, never_waited: str) -> InThread:
    """The DBA's ``statements`` started (as_the_dba), returned once they wait for a lock."""
    dba = InThread(lambda: as_the_dba(dsn, statements))
    waits = "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) WHERE NOT granted"
    deadline = time.monotonic() + 10
    while not db.execute(f"{waits} AND application_name = 'dba'").fetchone()[0]:
        assert time.monotonic() < deadline, never_waited
        time.sleep(0.05)
    return dba


def once_archived(engine, partition: str, then) -> None:
    """``then()`` runs once ``partition``'s rows are archived and uploaded, its step 1 still open
    (the engine's _archive_partition wrapped)."""
    archive = engine._archive_partition

    def archive_then(control, intents, reader, rule, ctx, archived_partition, batch):
        archived = archive(control, intents, reader, rule, ctx, archived_partition, batch)
        if archived_partition.name == partition:
            then()
        return archived

    engine._archive_partition = archive_then


def test_a_partition_in_another_schema_is_never_retired_whole(partitioned, s3, storage, policy, source_dsn):
    """January 2019's partition lives in schema app_old, and app holds an unrelated table of the
    same name (a DBA's copy): the engine, which names partitions in the table's schema, would
    check, archive and try to detach the copy. That partition is not a candidate: its rows go row
    by row, the copy is untouched."""
    db = partitioned
    db.execute("DROP TABLE app.chat_messages_2019_01")
    db.execute("CREATE SCHEMA app_old")
    try:
        db.execute(
            "CREATE TABLE app_old.chat_messages_2019_01 PARTITION OF app.chat_messages"
            " FOR VALUES FROM ('2019-01-01 00:00 Europe/Paris') TO ('2019-02-01 00:00 Europe/Paris')"
        )
        customers = {month: f.customer(db) for month in MONTHS}
        made = messages(db, customers)
        db.execute("CREATE TABLE app.chat_messages_2019_01 AS SELECT * FROM app.chat_messages WHERE false")
        db.execute("INSERT INTO app.chat_messages_2019_01 SELECT * FROM app_old.chat_messages_2019_01")
        (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
            RunContext("subscriber_services", "other-schema", D)
        )
        assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 0} and outcome.deleted == 12
        assert f.ids(db, "chat_messages") == {*made["2026-06"], *made["2026-07"]}
        assert f.ids(db, "chat_messages_2019_01") == set(made["2019-01"]), "the copy, untouched"
        assert db.execute("SELECT count(*) FROM app_old.chat_messages_2019_01").fetchone() == (0,)
    finally:
        db.execute("DROP TABLE IF EXISTS app.chat_messages_2019_01")
        db.execute("DROP SCHEMA app_old CASCADE")


def test_a_partition_merged_with_a_later_month_during_the_run_keeps_the_rows_not_due(
    partitioned, s3, storage, policy, source_dsn
):
    """A DBA merges June (not due) into May's partition, its bound widened to July, after the run
    listed the partitions and their bounds. chat_messages' rule has no condition: its check took
    every row of a partition wholly before the cutoff as due by that listed bound, and June's
    rows went with May's. The check counts the rows due by their clock: May stays, its due rows
    go by the row path, June's stay. (Holds in 2019 and March leave the plan's count room.)"""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    f.legal_hold(db, "chat_messages", made["2019-01"][0])
    f.legal_hold(db, "chat_messages", made["2026-03"][0])
    engine = engine_for(policy, source_dsn, s3, storage)
    merged_after_the_listing(engine, source_dsn, "2026-05", "2026-06", until="2026-07")
    (outcome, _) = engine.archive_and_delete(RunContext("subscriber_services", "merged", D))
    assert set(made["2026-06"]) <= f.ids(db, "chat_messages"), "June's rows are not due"
    assert f.ids(db, "chat_messages") == {made["2019-01"][0], made["2026-03"][0], *made["2026-06"], *made["2026-07"]}
    assert outcome.partitions == {"dropped": 1, "rows": 3, "kept": 3} and outcome.deleted == 10


# Objects that depend on March's partition, which DROP TABLE refuses to drop with it: (set up, undo).
DEPENDS_ON_MARCH = {
    "a foreign key to the partition": (
        "ALTER TABLE app.chat_messages_2026_03 ADD UNIQUE (id);"
        " CREATE TABLE app.march_notes (message_id bigint REFERENCES app.chat_messages_2026_03 (id))",
        "DROP TABLE app.march_notes",
    ),
    # a table attached as a partition that still owns the sequence the table's ids come from
    "a sequence it owns": (
        "CREATE SEQUENCE app.message_ids START 100000 OWNED BY app.chat_messages_2026_03.id;"
        " ALTER TABLE app.chat_messages ALTER id DROP IDENTITY IF EXISTS;"
        " ALTER TABLE app.chat_messages ALTER id SET DEFAULT nextval('app.message_ids')",
        "ALTER TABLE app.chat_messages ALTER id DROP DEFAULT",
    ),
    "a function's body": (
        "CREATE FUNCTION app.march_count() RETURNS bigint LANGUAGE sql"
        " BEGIN ATOMIC SELECT count(*) FROM app.chat_messages_2026_03; END",
        "DROP FUNCTION app.march_count()",
    ),
}


@pytest.mark.parametrize("dependent", list(DEPENDS_ON_MARCH))
def test_a_partition_postgresql_refuses_to_drop_is_attached_again(
    partitioned, s3, storage, policy, source_dsn, dependent
):
    """Found by a review: after March's detach, DROP TABLE is refused (an object depends on
    it); the run failed, and so did every next one at its recovery, March's rows hidden from
    the table meanwhile. Now March is attached again ('kept', its uploads removed) and its rows
    go by the row path in the same run; the object stays."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    set_up, undo = DEPENDS_ON_MARCH[dependent]
    db.execute(set_up)
    try:
        (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
            RunContext("subscriber_services", "refused", D)
        )
        assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 1} and outcome.deleted == 12
        assert f.ids(db, "chat_messages") == {*made["2026-06"], *made["2026-07"]}
        assert partitions_left(db, "chat_messages") == ["2026_03", "2026_06", "2026_07"]
        assert db.execute(
            "SELECT state FROM retention.partition_retirements WHERE partition_name = 'chat_messages_2026_03'"
        ).fetchall() == [("kept",)]
        # March's rows archived and audited once, by the row path (its own objects abandoned).
        assert sorted(committed_ids(db)) == sorted(made["2026-03"] + made["2026-04"] + made["2026-05"])
    finally:
        db.execute(undo)


def test_a_partition_with_its_columns_in_another_order_is_archived_in_the_tables_order(
    partitioned, s3, storage, policy, source_dsn
):
    """March is a table attached as a partition, its columns in another order (found by a
    review: its objects followed that order, the row path's the table's)."""
    db = partitioned
    columns = [c.name for c in db.execute("SELECT * FROM app.chat_messages LIMIT 0").description]
    definitions = db.execute(
        "SELECT format('%I %s%s', attname, format_type(atttypid, atttypmod), CASE WHEN attnotnull THEN ' NOT NULL'"
        " ELSE '' END) FROM pg_attribute WHERE attrelid = 'app.chat_messages'::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum DESC"
    ).fetchall()
    checks = db.execute(
        "SELECT format('CONSTRAINT %I %s', conname, pg_get_constraintdef(oid)) FROM pg_constraint"
        " WHERE conrelid = 'app.chat_messages'::regclass AND contype = 'c'"
    ).fetchall()
    db.execute("DROP TABLE app.chat_messages_2026_03")
    db.execute(f"CREATE TABLE app.chat_messages_2026_03 ({', '.join(d for (d,) in definitions + checks)})")
    db.execute(
        "ALTER TABLE app.chat_messages ATTACH PARTITION app.chat_messages_2026_03"
        " FOR VALUES FROM ('2026-03-01 00:00 Europe/Paris') TO ('2026-04-01 00:00 Europe/Paris')"
    )
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
        RunContext("subscriber_services", "reordered", D)
    )
    assert outcome.partitions == {"dropped": 4, "rows": 12, "kept": 0}
    march = db.execute(
        "SELECT object_key, version_id FROM retention.archive_manifest WHERE record_ids && %s::bigint[]",
        (made["2026-03"],),
    ).fetchall()
    assert march
    for key, version in march:
        body = s3.get_object(Bucket=storage.archive_bucket, Key=key, VersionId=version)["Body"].read()
        assert pq.read_table(io.BytesIO(body)).column_names == columns


def test_a_partition_merged_during_the_run_is_attached_again_with_its_new_bound(
    partitioned, s3, storage, policy, source_dsn
):
    """April (due) is merged into March's partition after the run listed the partitions, and a
    hold reaches April's rows just before the detach: March is attached again with the bound it
    has now (March to May), not the one listed (March alone), which April's rows would fail."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    merged_after_the_listing(engine, source_dsn, "2026-03", "2026-04", until="2026-05")
    a_hold_just_before_detaching(engine, source_dsn, "chat_messages_2026_03", customers["2026-04"])
    engine.archive_and_delete(RunContext("subscriber_services", "merged-and-held", D))
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_03") == "attached"
    assert set(made["2026-04"]) <= f.ids(db, "chat_messages"), "the held rows"
    (state, bound), *_ = db.execute(
        "SELECT state, partition_bound FROM retention.partition_retirements WHERE partition_name = 'chat_messages_2026_03'"
    ).fetchall()
    assert state == "kept" and "TO ('2026-04-30 22:00:00+00')" in bound, bound  # May 1st in Paris, in UTC


def test_a_partition_a_view_reads_stays(partitioned, s3, storage, policy, source_dsn):
    """A report's view reads the March partition directly: DROP TABLE would refuse it after the
    detach, failing this run and every next one at its recovery. March is not a candidate: its
    rows take the row path, the view stays and reads an empty partition."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    db.execute("CREATE VIEW app.march_messages AS SELECT id FROM app.chat_messages_2026_03")
    try:
        (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
            RunContext("subscriber_services", "viewed", D)
        )
        assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 0}
        assert outcome.deleted == 12
        assert partitions_left(db, "chat_messages") == ["2026_03", "2026_06", "2026_07"]
        assert f.ids(db, "chat_messages") == {*made["2026-06"], *made["2026-07"]}
        assert db.execute("SELECT count(*) FROM app.march_messages").fetchone() == (0,)
    finally:
        db.execute("DROP VIEW app.march_messages")


def units_of_two_rows(db, policy, source_dsn, s3, storage):
    """Messages in six months, one of April's held; a plan in units of (about) two rows."""
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)  # ids in month order, three a month
    f.legal_hold(db, "chat_messages", made["2026-04"][1])
    ctx = RunContext("subscriber_services", "manual__units", D)
    plan = engine_for(policy, source_dsn, s3, storage).make_plan(ctx, range_rows=2)
    return made, ctx, plan, next(u for u in plan_units(plan) if u[0].rule == "chat_messages")


def test_units_are_cut_between_partitions_so_that_each_retires_its_own_whole(
    partitioned, s3, storage, policy, source_dsn
):
    """A large rule is spread over units of ``range_rows`` rows; a partition split between two
    units would be neither's whole (each leaves it to the row path). The plan moves the cuts to
    the partitions' edges: each partition that may go whole lies in one unit; one with a held row
    stays anyway and is cut as usual."""
    db = partitioned
    made, ctx, plan, units = units_of_two_rows(db, policy, source_dsn, s3, storage)
    first, mar, apr, may = (made[m] for m in ("2019-01", "2026-03", "2026-04", "2026-05"))
    assert [(u.first_id, u.last_id, u.rows) for u in units] == [
        (first[0], first[2], 3),  # a partition a unit, though units were to hold 2 rows
        (mar[0], mar[2], 3),
        (apr[0], apr[2], 2),  # April has a held row: it stays, its rows are cut as usual
        (may[0], may[2], 3),
    ]

    # Side by side, as on Celery workers: each unit detaches its partitions while the others work.
    runs = [
        InThread(lambda unit=unit: engine_for(policy, source_dsn, s3, storage).archive_and_delete(ctx, plan, unit))
        for unit in units
    ]
    done = [run.join()[0] for run in runs]
    assert [o.partitions.get("dropped", 0) for o in done] == [1, 1, 0, 1]
    assert sum(o.deleted for o in done) == 11
    assert partitions_left(db, "chat_messages") == ["2026_04", "2026_06", "2026_07"]
    assert f.ids(db, "chat_messages") == {apr[1], *made["2026-06"], *made["2026-07"]}


def test_a_unit_does_not_wait_on_a_partition_another_unit_is_dropping(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """Between the moment a unit lists the partitions and the moment it looks at one, another
    unit may have detached it and be dropping it (an exclusive lock until its commit): this unit
    leaves it after a moment and goes on with its own range (it would wait 30 s for the lock,
    then fail, if it locked every partition to read its ids)."""
    db = partitioned
    made, ctx, plan, (_, _, april, _) = units_of_two_rows(db, policy, source_dsn, s3, storage)
    other_unit = psycopg.connect(source_dsn, autocommit=True)
    listed = partition_path.PartitionRetirement._partition_candidates

    def listed_then_dropping(self, *args):
        partitions = listed(self, *args)
        other_unit.execute("ALTER TABLE app.chat_messages DETACH PARTITION app.chat_messages_2019_01 CONCURRENTLY")
        other_unit.execute("BEGIN")
        other_unit.execute("LOCK TABLE app.chat_messages_2019_01 IN ACCESS EXCLUSIVE MODE")
        return partitions

    monkeypatch.setattr(partition_path.PartitionRetirement, "_partition_candidates", listed_then_dropping)
    try:
        (outcome,) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(ctx, plan, april)
    finally:
        other_unit.close()
    assert (outcome.deleted, outcome.partitions) == (2, {"dropped": 0, "rows": 0, "kept": 1})
    left = {made["2026-04"][1]} | {i for month in ("2026-03", "2026-05", "2026-06", "2026-07") for i in made[month]}
    assert f.ids(db, "chat_messages") == left  # 2019's, detached by the other unit, is no longer the table's


@pytest.mark.parametrize(
    ("spans", "expected"),
    [
        ([(21, 30), (1, 10)], [1, 11, 21, 31]),  # each partition's first id and the id after its last
        ([(1, 12), (9, 30)], [1, 31]),  # ids mixed between partitions: one span
        ([(1, 10), (11, 20)], [1, 11, 11, 21]),  # side by side: nothing between them
        ([], []),
    ],
)
def test_unit_bounds_start_a_unit_at_each_partition_and_after_it(spans, expected):
    assert partition_plan.unit_bounds(spans) == expected


def test_more_partitions_than_units_allowed_go_two_a_unit():
    assert partition_plan.pair_bounds([1, 11, 11, 21, 31, 41]) == [1, 21, 31, 41]
    assert partition_plan.pair_bounds([1, 11]) == [1, 11]


def test_a_hold_placed_while_the_partition_is_archived_keeps_it(partitioned, s3, storage, policy, source_dsn):
    """Two real connections: the engine stops once March's objects are uploaded and verified (the
    partition's rows frozen, not yet re-checked); a hold on one March message is placed and
    committed from another connection meanwhile (the hold table is not locked during the
    archive). The partition stays, its uploads are removed, the held message stays and March's
    other messages go by the row path."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    archived, release = threading.Event(), threading.Event()

    def tell_then_wait():
        archived.set()
        assert release.wait(60)

    once_archived(engine, "chat_messages_2026_03", tell_then_wait)
    run = InThread(lambda: engine.archive_and_delete(RunContext("subscriber_services", "mid", D)))
    assert archived.wait(60)
    uploaded = db.execute(
        "SELECT count(*) FROM retention.archive_manifest WHERE state = 'uploading' AND record_ids && %s::bigint[]",
        (made["2026-03"],),
    ).fetchone()[0]
    assert uploaded == 3  # one object per end day, uploaded and verified, not yet committed
    place_hold(source_dsn, "chat_messages", made["2026-03"][0]).join(10)
    release.set()
    (outcome, _) = run.join(60)

    assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 1}
    assert (outcome.deleted, outcome.held) == (11, 0)  # the plan counted no hold: it came after
    assert "2026_03" in partitions_left(db, "chat_messages")
    assert f.ids(db, "chat_messages") == {made["2026-03"][0], *made["2026-06"], *made["2026-07"]}
    states = dict(
        db.execute(
            "SELECT state, count(*) FROM retention.archive_manifest WHERE record_ids && %s::bigint[] GROUP BY 1",
            (made["2026-03"],),
        ).fetchall()
    )
    assert states == {"abandoned": 3, "committed": 2}  # the row path's two objects for the two others
    # The abandoned uploads are gone; a key the row path used again holds only its committed version.
    committed = dict(
        db.execute("SELECT object_key, version_id FROM retention.archive_manifest WHERE state = 'committed'").fetchall()
    )
    for (key,) in db.execute("SELECT object_key FROM retention.archive_manifest WHERE state = 'abandoned'").fetchall():
        listed = s3.list_object_versions(Bucket=storage.archive_bucket, Prefix=key).get("Versions", [])
        assert [v["VersionId"] for v in listed] == ([committed[key]] if key in committed else [])


class Crash(Exception):
    """The worker dies here (the process would: nothing after this point runs)."""


def a_run_crashes_after_detaching(
    policy, source_dsn, s3, storage, partition: str, ctx: RunContext | None = None, *plan_and_unit
) -> None:
    """A run (``ctx``, by default the chat messages' run 'crashed'; with ``plan_and_unit``, a
    unit's try) whose worker dies once ``partition`` is detached, before its drop (the partitions
    before it go through)."""
    ctx = ctx or RunContext("subscriber_services", "crashed", D)
    crashing = engine_for(policy, source_dsn, s3, storage, purpose=ctx.purpose)
    finish = crashing._finish_detached

    def crash(control, retirement_id, lock_timeout=partition_drops.BATCH_LOCK_TIMEOUT):
        (name,) = control.execute(
            "SELECT partition_name FROM retention.partition_retirements WHERE id = %s", (retirement_id,)
        ).fetchone()
        if name == partition:
            raise Crash(f"killed after detaching {partition}")
        return finish(control, retirement_id, lock_timeout)

    crashing._finish_detached = crash
    with pytest.raises(Crash):
        crashing.archive_and_delete(ctx, *plan_and_unit)


def test_a_write_left_open_past_the_lock_wait_keeps_the_partition_and_the_run_goes_on(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """An application transaction edits a March message while March is archived and stays open
    longer than step 2 waits for the partition's lock: March stays (its uploads removed, its
    rows to the row path), the run goes on with the next partitions and ends green; every row
    that left the table is in a committed object (2019's archive period is over)."""
    monkeypatch.setattr(partition_path, "BATCH_LOCK_TIMEOUT", "1s")
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    app = psycopg.connect(source_dsn, application_name="app")

    def a_long_edit():
        # By id and clock: pruned to March (by id alone it would lock every partition, April's too).
        app.execute(
            "UPDATE app.chat_messages SET body = body || ' (edited)' WHERE id = %s AND transmitted_at < %s",
            (made["2026-03"][0], f.paris("2026-04-01", 0)),
        )
        threading.Timer(3, app.commit).start()

    once_archived(engine, "chat_messages_2026_03", a_long_edit)
    try:
        (outcome, _) = engine.archive_and_delete(RunContext("subscriber_services", "long-edit", D))
    finally:
        time.sleep(3)
        app.close()
    assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 1}
    assert "2026_03" in partitions_left(db, "chat_messages")
    left = f.ids(db, "chat_messages")
    assert {*made["2026-06"], *made["2026-07"]} <= left <= {*made["2026-03"], *made["2026-06"], *made["2026-07"]}
    archived = set(committed_ids(db))
    assert set(made["2026-03"]) - left <= archived and {*made["2026-04"], *made["2026-05"]} <= archived
    assert db.execute("SELECT count(*) FROM retention.archive_manifest WHERE state = 'uploading'").fetchone() == (0,)


def test_a_hold_left_uncommitted_at_step_2_keeps_the_partition_and_the_run_goes_on(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """A DPO's session inserts a hold (on another table's record) while March is archived and
    leaves it uncommitted past step 2's wait for the hold table: March stays (its uploads
    removed), the DPO commits, and the run goes on: the next partitions are retired, March's
    rows take the row path, every row that left the table is in a committed object."""
    monkeypatch.setattr(partition_path, "BATCH_LOCK_TIMEOUT", "1s")
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    dpo = psycopg.connect(source_dsn, application_name="dpo-console")
    once_archived(
        engine,
        "chat_messages_2026_03",
        lambda: dpo.execute(
            "INSERT INTO retention.legal_holds (table_name, record_id, reason) VALUES ('quotes', 424242, 'litigation')"
        ),
    )
    stays = engine._stays

    def stays_then_the_dpo_commits(control, ctx, rule, partition, batch, why):
        kept = stays(control, ctx, rule, partition, batch, why)
        assert "hold table" in why, why
        dpo.commit()
        return kept

    engine._stays = stays_then_the_dpo_commits
    try:
        (outcome, _) = engine.archive_and_delete(RunContext("subscriber_services", "hold-open", D))
    finally:
        dpo.close()
    assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 1}
    assert "2026_03" in partitions_left(db, "chat_messages")
    assert f.ids(db, "chat_messages") == {*made["2026-06"], *made["2026-07"]}
    assert {*made["2026-03"], *made["2026-04"], *made["2026-05"]} <= set(committed_ids(db))
    assert db.execute("SELECT count(*) FROM retention.archive_manifest WHERE state = 'uploading'").fetchone() == (0,)


def test_a_write_left_open_on_a_tier_none_partition_keeps_it_and_the_run_goes_on(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """Tier none locks a partition in SHARE mode for its check. The application edits a March
    cookie choice just then and keeps its transaction open past the wait: March stays (nothing
    was done to it), the run goes on with April and May, and once the application commits,
    March's rows take the row path; the run ends green."""
    monkeypatch.setattr(partition_path, "BATCH_LOCK_TIMEOUT", "1s")
    db = partitioned
    choices = {month: [fp.cookie_consent(db, recorded=f"{month}-{day:02d}") for day in (3, 17)] for month in MONTHS}
    engine = engine_for(policy, source_dsn, s3, storage, purpose="cookie_consents")
    app = psycopg.connect(source_dsn, application_name="app")
    lock = engine._lock_partition

    def lock_once_the_application_writes(control, partition, mode):
        if partition == "cookie_consents_2026_03":
            app.execute(
                "UPDATE app.cookie_consents SET choice = choice WHERE id = %s AND recorded_at < %s",
                (choices["2026-03"][0], f.paris("2026-04-01", 0)),
            )
            threading.Timer(3, app.commit).start()
        return lock(control, partition, mode)

    engine._lock_partition = lock_once_the_application_writes
    try:
        (outcome,) = engine.archive_and_delete(RunContext("cookie_consents", "write-open", f.midnight("2026-12-01")))
    finally:
        time.sleep(3)
        app.close()
    assert outcome.partitions == {"dropped": 3, "rows": 6, "kept": 1}
    assert "2026_03" in partitions_left(db, "cookie_consents")
    assert f.ids(db, "cookie_consents") == {*choices["2026-06"], *choices["2026-07"]}


def test_a_lock_on_one_partition_is_named_as_in_the_way_of_its_table(partitioned, source_dsn):
    """A DBA holds March in ACCESS EXCLUSIVE mode (a rewrite): a batch over chat_messages waits
    for it, so a lock wait on the table names that session (found by a review: only the table's
    own locks were looked at)."""
    from retention.archive.locks import lock_holders

    dba = psycopg.connect(source_dsn, application_name="dba-rewrite")
    dba.execute("LOCK TABLE app.chat_messages_2026_03 IN ACCESS EXCLUSIVE MODE")
    try:
        assert f"pid {dba.info.backend_pid} (" in lock_holders(partitioned, ['"app"."chat_messages"'])
        assert "dba-rewrite" not in lock_holders(partitioned, ['"app"."chat_messages"'], partitions=False)
    finally:
        dba.rollback()
        dba.close()


def test_a_partition_dropped_by_a_dba_while_it_is_archived_stops_the_run_and_keeps_the_copies(
    partitioned, s3, storage, policy, source_dsn
):
    """A DBA drops March while it is archived (the DROP waits for step 1's ACCESS SHARE, then goes
    before step 2's lock). Its rows are gone, not by the run: the run stops with a message, and
    March's verified uploads, maybe their only copy, stay in the bucket under their intents."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    dba = []
    once_archived(
        engine,
        "chat_messages_2026_03",
        lambda: dba.append(
            a_dba_kept_waiting(
                db, source_dsn, "DROP TABLE app.chat_messages_2026_03", "the DROP never waited for the archive"
            )
        ),
    )
    with pytest.raises(RetentionError, match="chat_messages_2026_03 of chat_messages was dropped by another session"):
        engine.archive_and_delete(RunContext("subscriber_services", "dropped", D))
    dba[0].join(10)
    uploads = db.execute(
        "SELECT state, object_key FROM retention.archive_manifest WHERE record_ids && %s::bigint[]",
        (made["2026-03"],),
    ).fetchall()
    assert len(uploads) == 3 and {state for state, _ in uploads} == {"uploading"}
    for _, key in uploads:
        assert s3.list_object_versions(Bucket=storage.archive_bucket, Prefix=key).get("Versions")


def test_a_hold_committed_while_step_2_waits_for_the_hold_table_is_seen_whatever_the_default_isolation(
    partitioned, s3, storage, policy, source_dsn
):
    """The database defaults to REPEATABLE READ (a DBA's choice). A DPO's hold on a March message,
    begun while March is archived, commits while step 2 waits for the hold table: the engine's
    own connections are READ COMMITTED, so the re-check after that lock sees it and March stays.
    The engine's locks assume each statement's own snapshot: without the setting, this run fails
    (a batch of the row path reads its manifest rows in a stale snapshot: checked), and a re-check
    after the hold table's lock would read a snapshot taken before the lock was granted."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    held = made["2026-03"][0]
    (database,) = db.execute("SELECT current_database()").fetchone()
    db.execute(f"ALTER DATABASE {database} SET default_transaction_isolation = 'repeatable read'")
    engine = engine_for(policy, source_dsn, s3, storage)
    dpo = psycopg.connect(source_dsn, application_name="dpo")

    def a_hold_placed():
        dpo.execute(
            "INSERT INTO retention.legal_holds (table_name, record_id, reason) VALUES ('chat_messages', %s, 'x')",
            (held,),
        )
        threading.Timer(1.5, dpo.commit).start()

    once_archived(engine, "chat_messages_2026_03", a_hold_placed)
    try:
        (outcome, _) = engine.archive_and_delete(RunContext("subscriber_services", "isolation", D))
    finally:
        db.execute(f"ALTER DATABASE {database} RESET default_transaction_isolation")
        time.sleep(1.5)
        dpo.close()
    assert held in f.ids(db, "chat_messages")
    assert "2026_03" in partitions_left(db, "chat_messages")
    assert outcome.partitions["kept"] == 1


def test_a_crash_between_the_detach_and_the_drop_is_finished_by_the_next_run(
    partitioned, s3, storage, policy, source_dsn
):
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2019_01")
    # 2019's partition is detached (a table of its own), not dropped; its rows are not yet deleted
    # as far as the manifest and the audit say.
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "detached"
    assert db.execute("SELECT state FROM retention.partition_retirements").fetchall() == [("detaching",)]
    assert db.execute("SELECT count(*) FROM retention.audit_log WHERE action = 'deleted'").fetchone() == (0,)

    (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
        RunContext("subscriber_services", "next", D)
    )
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "gone"
    assert db.execute("SELECT state FROM retention.partition_retirements ORDER BY id").fetchall() == [("dropped",)] * 4
    # 2019's rows (archive period over) are audited once, under the crashed run that archived them.
    assert db.execute(
        "SELECT run_id, record_ids FROM retention.audit_log WHERE action = 'deleted' ORDER BY id"
    ).fetchall() == [("crashed", made["2019-01"])]
    # The next run's report says it finished what the crashed run left; its own three are not listed.
    assert run_report.finished_retirements(db, "subscriber_services", "next") == [
        ("chat_messages", "chat_messages_2019_01", "dropped", "crashed")
    ]
    assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 0}
    assert f.ids(db, "chat_messages") == set(made["2026-06"] + made["2026-07"])
    assert sorted(committed_ids(db)) == sorted(made["2026-03"] + made["2026-04"] + made["2026-05"])  # each once


def count_searches(monkeypatch) -> list:
    """The request's searches, one a list item (its calls of ``retention.rights.find.find``, each
    reading the manifest and the live rows until nothing new turns up)."""
    from retention.rights import retirements
    from retention.rights import subject_rights as requests

    calls = []
    for module in (retirements, requests):

        def find(*args, _real=module.find, **kwargs):
            calls.append(len(calls))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "find", find)
    return calls


def test_a_subject_request_waits_for_a_partition_retired_while_it_searches(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """From its detach to its drop a partition is in neither its table nor the archive: a search
    made meanwhile misses its rows. The request sees that a retirement moved under its search,
    waits for the run and searches again: the subject's messages are found, archived."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    real_expand = rights_find.expand
    expanded = []

    def expand_during_a_retirement(ctx, conn, roots, objects):
        expanded.append(len(expanded))
        if len(expanded) > 1:
            return real_expand(ctx, conn, roots, objects)
        # The run detaches March's partition, then the search reads the table, then the run
        # drops the partition and commits its objects.
        paused = threading.Event()
        go_on = threading.Event()
        engine = engine_for(policy, source_dsn, s3, storage)
        finish = engine._finish_detached

        def pause_at_march(control, retirement_id, lock_timeout=partition_drops.BATCH_LOCK_TIMEOUT):
            (name,) = control.execute(
                "SELECT partition_name FROM retention.partition_retirements WHERE id = %s", (retirement_id,)
            ).fetchone()
            if name == "chat_messages_2026_03":
                paused.set()
                assert go_on.wait(30)
            return finish(control, retirement_id, lock_timeout)

        engine._finish_detached = pause_at_march
        run = InThread(lambda: engine.archive_and_delete(RunContext("subscriber_services", "during", D)))
        assert paused.wait(30)
        found = real_expand(ctx, conn, roots, objects)
        assert "chat_messages" not in found.live  # the rows were out of sight
        go_on.set()
        run.join()
        return found

    monkeypatch.setattr(rights_find, "expand", expand_during_a_retirement)
    searches = count_searches(monkeypatch)
    report = subject_rights(policy, source_dsn, s3, storage).handle(
        subject_request("access", "during-a-retirement", kind="customer", subject_id=customers["2026-03"])
    )
    assert len(searches) == 2
    assert report["found"]["probative"] == {"chat_messages": len(made["2026-03"])}
    assert "chat_messages" not in report["found"]["live"]


def test_a_subject_request_waits_for_a_retirement_finished_while_it_searches(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """A crash left May detached; the purpose's next run finishes it while an access searches:
    the archive read before the drop's commit, the table after it. The retirement was open when
    the search began: the request searches again and finds the messages, archived."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2026_05")
    real_expand = rights_find.expand
    expanded = []

    def expand_while_the_next_run_finishes_it(ctx, conn, roots, objects):
        expanded.append(len(expanded))
        if len(expanded) == 1:
            engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "next", D))
        return real_expand(ctx, conn, roots, objects)

    monkeypatch.setattr(rights_find, "expand", expand_while_the_next_run_finishes_it)
    searches = count_searches(monkeypatch)
    report = subject_rights(policy, source_dsn, s3, storage).handle(
        subject_request("access", "open-before", kind="customer", subject_id=customers["2026-05"], preview=True)
    )
    assert len(searches) == 2
    assert report["found"]["probative"] == {"chat_messages": len(made["2026-05"])}


def a_crash_while_deciding(monkeypatch, module, services: tuple) -> None:
    """When the request decides its rows (``module.classify_live``, after its search), a run has
    just detached March's partition and crashed (``services``: policy, dsn, s3, storage)."""
    classify = module.classify_live

    def classify_after_a_detach(ctx, conn, live):
        monkeypatch.setattr(module, "classify_live", classify)
        a_run_crashes_after_detaching(*services, "chat_messages_2026_03")
        return classify(ctx, conn, live)

    monkeypatch.setattr(module, "classify_live", classify_after_a_detach)


@pytest.mark.parametrize("action", ["access", "erasure preview"])
def test_a_request_decides_and_reads_its_rows_inside_its_settled_search(
    partitioned, s3, storage, policy, source_dsn, monkeypatch, action
):
    """After its search, an access decides and reads its rows again for the export, a preview
    decides each row (erased or kept, and why): a partition detached in between (a crashed run
    leaves it so) left its rows out of the export while the report counted them, or had them
    reported kept for 'no rule'. Those reads are inside the settled search: the request stops,
    having changed nothing, no export written."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    messages(db, customers)
    a_crash_while_deciding(
        monkeypatch, rights_access if action == "access" else rights_erase, (policy, source_dsn, s3, storage)
    )
    with pytest.raises(RetirementInTheWayError, match="chat_messages_2026_03.*nothing was changed"):
        subject_rights(policy, source_dsn, s3, storage).handle(
            subject_request(
                action.split()[0],
                "decided",
                kind="customer",
                subject_id=customers["2026-03"],
                preview=action != "access",
            )
        )
    assert not s3.list_objects_v2(Bucket=storage.archive_bucket, Prefix="exports/decided/").get("Contents")


def test_an_erasure_stopped_after_its_live_deletes_says_so(partitioned, s3, storage, policy, source_dsn, monkeypatch):
    """A crash leaves a partition detached between the erasure's live deletes (committed) and its
    search of the archive: the request stops saying what it has done, not 'nothing was changed'."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    messages(db, customers)
    subject = customers["2026-03"]
    contact = fp.marketing_contact(db, channel="email", last_contact="2026-05-01", customer_id=subject)
    search = rights_erase.find_settled

    def a_crash_then_the_search(*args, **kwargs):
        a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2026_03")
        return search(*args, **kwargs)

    monkeypatch.setattr(rights_erase, "find_settled", a_crash_then_the_search)
    with pytest.raises(RetirementInTheWayError) as stopped:
        subject_rights(policy, source_dsn, s3, storage).handle(
            subject_request("erasure", "second-search", kind="customer", subject_id=subject)
        )
    assert "live rows that could go are erased (audited), its archived ones not yet" in str(stopped.value)
    assert "nothing was changed" not in str(stopped.value)
    assert contact not in f.ids(db, "marketing_contacts")


@pytest.mark.parametrize("step", ["archive_and_delete", "recover_before_units"])
def test_a_purpose_put_in_preview_after_a_crash_attaches_its_detached_partition_again(
    partitioned, s3, storage, policy, source_dsn, step
):
    """A crash leaves March detached; the purpose is then put in preview mode (the team looks
    into it). An enforced run's recovery would drop March; a preview deletes nothing, so its run
    attaches March again (either first step of the archive: one task, or the units' recovery),
    and the customers' requests go on. A dry run of the enforced purpose leaves it to the next
    enforced run, which retires March whole, each row archived once."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2026_03")
    engine_for(policy, source_dsn, s3, storage).archive_and_delete(
        RunContext("subscriber_services", "a-dry-run", D, dry_run=True)
    )
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_03") == "detached"

    previewing = engine_for(policy.with_mode("preview"), source_dsn, s3, storage)
    ctx = RunContext("subscriber_services", "in-preview", D, mode="preview", dry_run=True)
    if step == "recover_before_units":
        previewing.recover_before_units(ctx, previewing.make_plan(ctx))
    else:
        previewing.archive_and_delete(ctx)
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_03") == "attached"
    # The preview run's report says it (retention.run_report).
    assert run_report.finished_retirements(db, "subscriber_services", "in-preview") == [
        ("chat_messages", "chat_messages_2026_03", "kept", "crashed")
    ]
    assert set(made["2026-03"]) <= f.ids(db, "chat_messages")
    assert db.execute("SELECT partition_name, state FROM retention.partition_retirements ORDER BY id").fetchall() == [
        ("chat_messages_2019_01", "dropped"),
        ("chat_messages_2026_03", "kept"),
    ]
    report = subject_rights(policy, source_dsn, s3, storage).handle(
        subject_request("access", "after-the-preview", kind="customer", subject_id=customers["2026-03"], preview=True)
    )
    assert report["found"]["live"]["chat_messages"] == len(made["2026-03"])
    # Its uploads, copies of rows back in the table, are removed (an erasure must not leave copies behind).
    uploads = db.execute(
        "SELECT state, object_key FROM retention.archive_manifest WHERE run_id = 'crashed' AND record_ids && %s::bigint[]",
        (made["2026-03"],),
    ).fetchall()
    assert uploads and {state for state, _ in uploads} == {"abandoned"}
    for _, key in uploads:
        assert not s3.list_object_versions(Bucket=storage.archive_bucket, Prefix=key).get("Versions")

    engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "enforced", D))
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_03") == "gone"
    assert sorted(committed_ids(db)) == sorted(made["2026-03"] + made["2026-04"] + made["2026-05"])  # each once
    assert db.execute("SELECT count(*) FROM retention.archive_manifest WHERE state = 'uploading'").fetchone() == (0,)


def test_a_preview_that_cannot_attach_a_detached_partition_again_says_so_and_deletes_nothing(
    partitioned, s3, storage, policy, source_dsn
):
    """While March lay detached, a DBA made a new partition for its month: the preview cannot put
    March back. It stops with a message naming the partition; March's rows stay in its table,
    its record open."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2026_03")
    db.execute(
        "CREATE TABLE app.chat_messages_2026_03_new PARTITION OF app.chat_messages"
        " FOR VALUES FROM ('2026-03-01 00:00 Europe/Paris') TO ('2026-04-01 00:00 Europe/Paris')"
    )
    with pytest.raises(RetentionError, match="chat_messages_2026_03 of chat_messages.*could not be attached again"):
        engine_for(policy.with_mode("preview"), source_dsn, s3, storage).archive_and_delete(
            RunContext("subscriber_services", "in-preview", D, mode="preview", dry_run=True)
        )
    assert sorted(i for (i,) in db.execute("SELECT id FROM app.chat_messages_2026_03")) == sorted(made["2026-03"])
    assert db.execute(
        "SELECT state FROM retention.partition_retirements WHERE partition_name = 'chat_messages_2026_03'"
    ).fetchall() == [("detaching",)]


def test_a_retirement_stops_only_the_requests_whose_rows_may_be_in_its_table(
    partitioned, s3, storage, policy, source_dsn
):
    """A partition of chat_messages (a customer's) left detached does not stop a request for a
    prospect: its rows cannot be in that table."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    messages(db, customers)
    prospect = f.prospect(db, last_contact="2026-05-01")
    a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2026_03")
    report = subject_rights(policy, source_dsn, s3, storage).handle(
        subject_request("access", "a-prospect", kind="prospect", subject_id=prospect, preview=True)
    )
    assert report["found"]["live"] == {"prospects": 1}
    with pytest.raises(RetirementInTheWayError, match="chat_messages_2026_03"):
        subject_rights(policy, source_dsn, s3, storage).handle(
            subject_request("access", "a-customer", kind="customer", subject_id=customers["2026-07"], preview=True)
        )


def test_an_erasure_stops_at_a_partition_an_interrupted_run_left_detached(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """A crash between a partition's detach and its drop leaves its rows out of sight until the
    purpose's next run. An erasure that finds the subject's rows then (here: in the same
    transaction as its deletes) erases nothing and says why; after the next run it finishes,
    the rows found in the archive (probative: kept, reported)."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    subject = customers["2026-03"]
    contact = fp.marketing_contact(db, channel="email", last_contact="2026-05-01", customer_id=subject)
    real_expand = rights_erase.expand

    def expand_after_a_crash(ctx, conn, roots, objects):
        monkeypatch.setattr(rights_erase, "expand", real_expand)
        a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2026_03")
        return real_expand(ctx, conn, roots, objects)

    monkeypatch.setattr(rights_erase, "expand", expand_after_a_crash)
    with pytest.raises(RetirementInTheWayError, match="chat_messages_2026_03 of chat_messages was left detached"):
        subject_rights(policy, source_dsn, s3, storage).handle(
            subject_request("erasure", "after-a-crash", kind="customer", subject_id=subject)
        )
    assert contact in f.ids(db, "marketing_contacts")  # nothing erased
    assert db.execute("SELECT count(*) FROM retention.audit_log WHERE run_id LIKE '%after-a-crash'").fetchone() == (0,)
    # A new request meanwhile is refused too, before it changes anything.
    with pytest.raises(RetirementInTheWayError, match="next run finishes its retirement"):
        subject_rights(policy, source_dsn, s3, storage).handle(
            subject_request("access", "meanwhile", kind="customer", subject_id=subject, preview=True)
        )

    engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "next", D))
    report = subject_rights(policy, source_dsn, s3, storage).handle(
        subject_request("erasure", "after-the-next-run", kind="customer", subject_id=subject)
    )
    assert report["found"]["probative"] == {"chat_messages": len(made["2026-03"])}
    assert report["erased"]["live"] == {"marketing_contacts": 1}
    kept = [k for k in report["kept"] if k["table"] == "chat_messages"]
    assert {k["source"] for k in kept} == {"probative"}
    assert sum(k["records"] for k in kept) == len(made["2026-03"])  # one object an end day


@pytest.mark.parametrize("foreign_key", [True, False], ids=["foreign-key-to-customers", "no-foreign-key"])
def test_a_partition_is_dropped_while_the_next_one_is_archived(
    partitioned, s3, storage, policy, source_dsn, foreign_key
):
    """Step 4 of a partition (verify and drop, on a connection of its own) runs while the next
    partition is checked, read and uploaded: here the first drop waits until the next
    partition's archive has begun, which never comes if the two run one after the other. With
    the table's real foreign key too: the drop locks customers, which chat_messages' step 1
    does not read (its holds are looked up in active_holds alone)."""
    db = partitioned
    assert foreign_key_names(db, "chat_messages"), "the table's real foreign key, copied"
    if not foreign_key:
        for name in foreign_key_names(db, "chat_messages"):
            db.execute(f'ALTER TABLE app.chat_messages DROP CONSTRAINT "{name}"')
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    next_one_archiving = threading.Event()
    drop, archive = engine._drop_detached, engine._archive_partition

    def drop_once_the_next_one_archives(conn, rule, ctx, detached, lock_timeout):
        if detached.name == "chat_messages_2019_01":
            assert next_one_archiving.wait(10), "the next partition was not archived during this drop"
        return drop(conn, rule, ctx, detached, lock_timeout)

    def archive_and_tell(control, intents, reader, rule, ctx, partition, batch):
        if partition.name != "chat_messages_2019_01":
            next_one_archiving.set()
        return archive(control, intents, reader, rule, ctx, partition, batch)

    engine._drop_detached, engine._archive_partition = drop_once_the_next_one_archives, archive_and_tell
    (outcome, _) = engine.archive_and_delete(RunContext("subscriber_services", "overlapped", D))
    assert outcome.partitions == {"dropped": 4, "rows": 12, "kept": 0}
    assert f.ids(db, "chat_messages") == set(made["2026-06"] + made["2026-07"])
    assert db.execute("SELECT state, count(*) FROM retention.partition_retirements GROUP BY 1").fetchall() == [
        ("dropped", 4)
    ]
    assert db.execute(
        "SELECT count(*) FROM retention.archive_manifest WHERE state = 'committed' AND locked_until IS NULL"
    ).fetchone() == (0,), "every object locked, its lock recorded"


@pytest.mark.parametrize("write", ["an update", "an insert"])
def test_an_application_write_while_a_partition_is_archived_goes_through_and_keeps_it(
    partitioned, s3, storage, policy, source_dsn, write
):
    """While March is archived (step 1) and 2019's drop runs beside it (its foreign-key triggers
    lock customers), an ordinary application transaction reads a customer, then edits that
    customer's messages (every partition: no pruning on customer_id) or files a late March
    message. Step 1 blocks no write: it goes through at once (it used to wait for the whole
    archive). March's rows changed after they were read: step 2 finds it (their fingerprint,
    their count), so March stays, its uploads are removed and its rows go by the row path as
    they are now (the edited text archived); the late message, beyond the approved plan, stays."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    waited: list[float] = []
    late = []

    def the_application_writes():
        with psycopg.connect(source_dsn, application_name="app") as app:
            app.execute("SET lock_timeout = '5s'")
            app.execute("SELECT id FROM app.customers WHERE id = %s", (customers["2026-03"],))
            started = time.monotonic()
            if write == "an update":
                app.execute(
                    "UPDATE app.chat_messages SET body = body || ' (edited)' WHERE customer_id = %s",
                    (customers["2026-03"],),
                )
            else:
                late.append(fp.chat_message(app, customers["2026-03"], transmitted=f.paris("2026-03-20", 10)))
            app.commit()
            waited.append(time.monotonic() - started)

    once_archived(engine, "chat_messages_2026_03", the_application_writes)  # its step 1 still open
    (outcome, _) = engine.archive_and_delete(RunContext("subscriber_services", "application", D))
    assert waited and waited[0] < 2, f"the application waited {waited} s"
    assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 1}
    assert "2026_03" in partitions_left(db, "chat_messages")
    assert db.execute("SELECT state FROM retention.partition_retirements WHERE state <> 'dropped'").fetchall() == []
    assert f.ids(db, "chat_messages") == {*made["2026-06"], *made["2026-07"], *late}
    states = dict(
        db.execute(
            "SELECT state, count(*) FROM retention.archive_manifest WHERE record_ids && %s::bigint[] GROUP BY 1",
            (made["2026-03"],),
        ).fetchall()
    )
    assert states == {"abandoned": 3, "committed": 3}  # the partition's uploads, then the row path's
    archived_bodies = [
        row["body"]
        for (key,) in db.execute(
            "SELECT object_key FROM retention.archive_manifest WHERE state = 'committed' AND record_ids && %s::bigint[]",
            (made["2026-03"],),
        ).fetchall()
        for row in pq.read_table(
            io.BytesIO(s3.get_object(Bucket=storage.archive_bucket, Key=key)["Body"].read())
        ).to_pylist()
    ]
    assert len(archived_bodies) == 3
    assert all(body.endswith(" (edited)") for body in archived_bodies) == (write == "an update")


def test_an_application_transaction_waiting_for_a_tier_none_partition_is_not_kept_waiting_by_the_drop(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """Tier none holds the next partition in SHARE mode from its check to its step 2 (nothing to
    archive in between). An ordinary application transaction reads a customer, then updates that
    customer's cookie choices (every partition: no pruning on customer_id), so it waits for that
    lock; meanwhile the drop beside it needs customers in ACCESS EXCLUSIVE (the detached
    partition's foreign-key triggers), which waits for the application. The database sees no
    deadlock (the run waits for the drop in Python): the drop gives up within
    OVERLAPPED_DROP_LOCK_TIMEOUT and is done after the last partition, the application goes on in
    about that time, the run ends green and every retirement is closed."""
    monkeypatch.setattr(partition_drops, "BATCH_LOCK_TIMEOUT", "20s")  # what a drop waited before
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    choices = {
        month: [fp.cookie_consent(db, recorded=f"{month}-{day:02d}", customer_id=customers[month]) for day in (3, 17)]
        for month in MONTHS
    }
    engine = engine_for(policy, source_dsn, s3, storage, purpose="cookie_consents")
    drop, archive = engine._drop_detached, engine._archive_partition
    app_waits = threading.Event()
    waited: list[float] = []
    app = psycopg.connect(source_dsn)

    def drop_once_the_application_waits(conn, rule, ctx, detached, lock_timeout):
        if detached.name == "cookie_consents_2019_01":
            assert app_waits.wait(20), "the application never waited for the next partition"
        return drop(conn, rule, ctx, detached, lock_timeout)

    def check_beside_the_application(control, intents, reader, rule, ctx, partition, batch):
        if partition.name == "cookie_consents_2026_03":  # its check done: the run holds it in SHARE mode
            app.execute("SELECT id FROM app.customers WHERE id = %s", (customers["2026-03"],))

            def update_the_customers_choices():
                started = time.monotonic()
                app.execute(
                    "UPDATE app.cookie_consents SET choice = choice WHERE customer_id = %s", (customers["2026-03"],)
                )
                app.commit()
                waited.append(time.monotonic() - started)

            threading.Thread(target=update_the_customers_choices, daemon=True).start()
            waits_for_a_lock(db, app.info.backend_pid)
            app_waits.set()
            time.sleep(0.5)  # the drop asks for customers meanwhile
        return archive(control, intents, reader, rule, ctx, partition, batch)

    engine._drop_detached, engine._archive_partition = drop_once_the_application_waits, check_beside_the_application
    try:
        # Cookie choices: 6 months from the choice; on 2026-12-01, choices before 2026-06-01 are due.
        (outcome,) = engine.archive_and_delete(RunContext("cookie_consents", "application", f.midnight("2026-12-01")))
    finally:
        app.close()
    assert waited and waited[0] < 10, f"the application waited {waited} s"
    assert outcome.partitions == {"dropped": 4, "rows": 8, "kept": 0}
    assert db.execute(
        "SELECT partition_name, state FROM retention.partition_retirements ORDER BY finished_at"
    ).fetchall()[-1] == ("cookie_consents_2019_01", "dropped")  # given up beside the next check, done last
    assert db.execute("SELECT count(*) FROM retention.partition_retirements WHERE state = 'detaching'").fetchone() == (
        0,
    )
    assert f.ids(db, "cookie_consents") == set(choices["2026-06"] + choices["2026-07"])


def test_a_drop_still_locked_after_the_last_partition_fails_the_run_and_keeps_the_rows(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """A session reads the detached 2019 partition (a report, a pg_dump) and keeps its transaction
    open: the drop beside the next archive gives up, and so does the one after the last
    partition (the run's lock wait, shortened here). The run fails with an error naming the
    partition; its rows stay in the detached table under the 'detaching' record, none audited as
    deleted; the other partitions are retired. The next run, the reader gone, drops it and
    records every Object Lock."""
    monkeypatch.setattr(partition_drops, "BATCH_LOCK_TIMEOUT", "1s")
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    drop = engine._drop_detached
    reader = psycopg.connect(source_dsn)
    attempts: list[str] = []

    def drop_while_a_session_reads_it(conn, rule, ctx, detached, lock_timeout):
        if detached.name == "chat_messages_2019_01":
            if not attempts:
                reader.execute("SELECT count(*) FROM app.chat_messages_2019_01")  # ACCESS SHARE, kept
            attempts.append(lock_timeout)
        return drop(conn, rule, ctx, detached, lock_timeout)

    engine._drop_detached = drop_while_a_session_reads_it
    try:
        with pytest.raises(RetentionError, match="partition chat_messages_2019_01 is archived and detached"):
            engine.archive_and_delete(RunContext("subscriber_services", "locked", D))
        assert attempts == ["1s", "1s"], "given up beside the next archive, then after the last partition"
        assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "detached"
        assert set(f.ids(db, "chat_messages_2019_01")) == set(made["2019-01"]), "every row kept"
    finally:
        reader.close()
    assert db.execute(
        "SELECT partition_name, state FROM retention.partition_retirements ORDER BY partition_name"
    ).fetchall() == [
        ("chat_messages_2019_01", "detaching"),
        ("chat_messages_2026_03", "dropped"),
        ("chat_messages_2026_04", "dropped"),
        ("chat_messages_2026_05", "dropped"),
    ]
    deleted = {
        i for (ids,) in db.execute("SELECT record_ids FROM retention.audit_log WHERE action = 'deleted'") for i in ids
    }
    assert not deleted & set(made["2019-01"]), "not audited as deleted while its rows exist"

    (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
        RunContext("subscriber_services", "next", D)
    )
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "gone"
    assert db.execute("SELECT count(*) FROM retention.partition_retirements WHERE state <> 'dropped'").fetchone() == (
        0,
    )
    assert db.execute(
        "SELECT run_id, record_ids FROM retention.audit_log WHERE action = 'deleted' ORDER BY id"
    ).fetchall() == [("locked", made["2019-01"])]
    assert f.ids(db, "chat_messages") == set(made["2026-06"] + made["2026-07"])
    assert db.execute(
        "SELECT count(*) FROM retention.archive_manifest WHERE state = 'committed' AND locked_until IS NULL"
    ).fetchone() == (0,), "the locks of the failed run's objects recorded by the next run"


@pytest.fixture
def vet_partitioned(db):
    """app.vet_consultations monthly-partitioned, with its foreign keys to pets and customers."""
    with monthly_partitioned(db, vet_consultations="transmitted_at"):
        yield db


@pytest.mark.parametrize("declared_on", ["table", "partitions"])
def test_partitions_of_a_table_with_foreign_keys_are_dropped_one_after_the_other(
    vet_partitioned, s3, storage, policy, source_dsn, monkeypatch, declared_on
):
    """Dropping a detached partition drops its foreign-key triggers, which locks pets and
    customers (ACCESS EXCLUSIVE); the next partition's hold check has read pets in its open
    transaction. Beside each other, the drop would wait for that transaction while the run waits
    for the drop (until the drop gives up, then done after the last partition, the application's
    reads of pets queued behind it meanwhile): such a table's partitions are dropped one after
    the other, none given up. Also with the foreign keys declared on each partition alone."""
    db = vet_partitioned
    if declared_on == "partitions":
        keys = db.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'app.vet_consultations'::regclass AND contype = 'f'"
        ).fetchall()
        for name, _ in keys:
            db.execute(f'ALTER TABLE app.vet_consultations DROP CONSTRAINT "{name}"')
        for month in MONTHS:
            for _, definition in keys:
                db.execute(f"ALTER TABLE app.vet_consultations_{month.replace('-', '_')} ADD {definition}")
    given_up = []
    drop_deferred = partition_drops.PartitionDrops.drop_deferred

    def count_given_up(drops):
        given_up.extend(d.name for d in drops.deferred)
        drop_deferred(drops)

    monkeypatch.setattr(partition_drops.PartitionDrops, "drop_deferred", count_given_up)
    made = {}
    for month in MONTHS:
        customer = f.customer(db)
        pet = f.pet(db, customer)
        made[month] = [
            fp.vet_consultation(db, customer, pet_id=pet, transmitted=f.paris(f"{month}-{day:02d}", 10))
            for day in (1, 14, 28)
        ]
    outcome = next(
        o
        for o in engine_for(policy, source_dsn, s3, storage).archive_and_delete(
            RunContext("subscriber_services", "foreign-keys", D)
        )
        if o.table == "vet_consultations"
    )
    assert outcome.partitions == {"dropped": 4, "rows": 12, "kept": 0}
    assert given_up == [], "the drops ran beside the next partitions and gave up on their locks"
    assert f.ids(db, "vet_consultations") == set(made["2026-06"] + made["2026-07"])
    assert db.execute("SELECT DISTINCT state FROM retention.partition_retirements").fetchall() == [("dropped",)]


def test_a_purposes_table_keyed_into_a_partitioned_table_is_not_refused_for_its_partitions(
    db, s3, storage, policy, source_dsn
):
    """The DBA partitions call_recordings by month and, as PostgreSQL requires, keys the analyses
    into it by (id, started_at). PostgreSQL derives a copy of that key for each partition of the
    referenced table (on call_analyses, into call_recordings_2019_01...), and the check that every
    foreign key of a purpose's tables is in legal_holds.covers took each copy for a key into
    another table: the purpose was refused ("call_analyses.call_recording_id ->
    call_recordings_2019_01 ... are not in legal_holds.covers") although the coverage lists the
    key (found by a review). The table's own key is what the coverage names: the run goes on."""
    keys = db.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'app.call_analyses'::regclass AND contype = 'f'"
    ).fetchall()
    try:
        with monthly_partitioned(db, call_recordings="started_at"):
            try:
                db.execute("ALTER TABLE app.call_recordings ADD UNIQUE (id, started_at)")
                for name, _ in keys:
                    db.execute(f'ALTER TABLE app.call_analyses DROP CONSTRAINT "{name}"')
                db.execute(
                    "ALTER TABLE app.call_analyses ADD COLUMN call_recording_started_at timestamptz,"
                    " ADD FOREIGN KEY (call_recording_id, call_recording_started_at)"
                    " REFERENCES app.call_recordings (id, started_at) ON DELETE SET NULL"
                )
                started = f.paris("2019-01-15")
                recording = f.call_recording(db, reason="quality", started=started)
                analysis = f.call_analysis(
                    db, recording_id=recording, created="2019-01-20", call_recording_started_at=started
                )
                engine = RetentionEngine(
                    policy, "call_recordings", source_dsn, ArchiveStore(s3, storage), lock_timeout=2
                )
                outcomes = engine.archive_and_delete(RunContext("call_recordings", "keyed", D))
                assert sum(o.deleted for o in outcomes) == 2
                assert recording not in f.ids(db, "call_recordings") and analysis not in f.ids(db, "call_analyses")
            finally:
                db.execute("ALTER TABLE app.call_analyses DROP COLUMN IF EXISTS call_recording_started_at")
    finally:
        db.execute("DELETE FROM app.call_analyses")  # the plain recordings table is back, empty
        for name, definition in keys:
            db.execute(f'ALTER TABLE app.call_analyses ADD CONSTRAINT "{name}" {definition}')


DETACH_MARCH = "ALTER TABLE app.chat_messages DETACH PARTITION app.chat_messages_2026_03 CONCURRENTLY"


def detaches_running(db) -> int:
    return db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = %s", (DETACH_MARCH,)
    ).fetchone()[0]


def a_worker_is_killed_while_detaching_march(policy, source_dsn, s3, storage, db, vacuum) -> None:
    """A run whose worker dies (SIGKILL, out of memory, Airflow's timeout) while its DETACH of
    March waits for ``vacuum`` (a session holding SHARE UPDATE EXCLUSIVE on March, as a VACUUM
    does). What partition_detach.detach sends is sent on a session of its own, whose socket is
    then closed without a word: the server cannot tell it from a dead process, and its backend
    goes on with the statement until it ends."""
    crashing = engine_for(policy, source_dsn, s3, storage)
    detach = crashing._detach

    def killed_while_detaching(autocommit_conn, table, partition):
        if partition != "chat_messages_2026_03":
            return detach(autocommit_conn, table, partition)
        vacuum.execute("LOCK TABLE app.chat_messages_2026_03 IN SHARE UPDATE EXCLUSIVE MODE")
        worker = psycopg.connect(source_dsn, autocommit=True, application_name="retention:subscriber_services")
        worker.execute("SELECT pg_advisory_lock(hashtext(%s))", ("retention:detach:app.chat_messages",))
        worker.execute("SET statement_timeout = '30min'")
        worker.pgconn.send_query(DETACH_MARCH.encode())
        deadline = time.monotonic() + 10
        while not detaches_running(db) and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.pgconn.finish()
        raise Crash("killed while detaching March")

    crashing._detach = killed_while_detaching
    with pytest.raises(Crash):
        crashing.archive_and_delete(RunContext("subscriber_services", "crashed", D))
    assert detaches_running(db) == 1  # the dead worker's statement still waits for the VACUUM


def test_a_detach_still_running_for_a_killed_worker_is_waited_for_by_the_next_run(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """The next run's recovery finds March still attached while the dead worker's DETACH waits;
    closing its retirement 'kept' then (and removing its uploads) left March detached for good
    once the VACUUM ended: its rows neither in the table nor in the archive, no open record for a
    run to finish or a subject request to wait for. Recovery waits for that detach to end first,
    then finishes the retirement: March archived once and dropped."""
    monkeypatch.setattr(partition_path, "BATCH_LOCK_TIMEOUT", "1s")
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    with psycopg.connect(source_dsn, application_name="vacuum") as vacuum:
        a_worker_is_killed_while_detaching_march(policy, source_dsn, s3, storage, db, vacuum)
        ends = threading.Timer(3, vacuum.commit)  # the VACUUM ends 3 s into the next run
        ends.start()
        try:
            engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "next", D))
        finally:
            ends.cancel()
            ends.join()
    assert detaches_running(db) == 0
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_03") == "gone"
    assert run_report.finished_retirements(db, "subscriber_services", "next") == [
        ("chat_messages", "chat_messages_2026_03", "dropped", "crashed")
    ]
    assert f.ids(db, "chat_messages") == set(made["2026-06"] + made["2026-07"])
    assert sorted(committed_ids(db)) == sorted(made["2026-03"] + made["2026-04"] + made["2026-05"])  # each once


def test_a_detach_of_a_killed_worker_running_past_the_detach_wait_stops_the_next_run_and_keeps_the_record(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """The wait for a dead worker's detach is bounded by RETENTION_DETACH_WAIT: past it the run
    stops with the retirement still open and March's rows where they are; the run after the
    VACUUM finishes the retirement."""
    monkeypatch.setattr(partition_path, "BATCH_LOCK_TIMEOUT", "1s")
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    with psycopg.connect(source_dsn, application_name="vacuum") as vacuum:
        a_worker_is_killed_while_detaching_march(policy, source_dsn, s3, storage, db, vacuum)
        monkeypatch.setenv(partition_detach.DETACH_WAIT_ENV, "1s")
        with pytest.raises(RetentionError, match="a detach of a partition of chat_messages still ran after 1s"):
            engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "next", D))
        assert db.execute(
            "SELECT run_id, state FROM retention.partition_retirements WHERE partition_name = 'chat_messages_2026_03'"
        ).fetchall() == [("crashed", "detaching")]
        assert set(made["2026-03"]) <= f.ids(db, "chat_messages")
        vacuum.commit()
    deadline = time.monotonic() + 10
    while detaches_running(db) and time.monotonic() < deadline:
        time.sleep(0.05)
    engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "after", D))
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_03") == "gone"
    assert f.ids(db, "chat_messages") == set(made["2026-06"] + made["2026-07"])
    assert sorted(committed_ids(db)) == sorted(made["2026-03"] + made["2026-04"] + made["2026-05"])  # each once


def test_a_detach_kept_waiting_stops_the_run_and_the_next_run_finishes_it(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """DETACH ... CONCURRENTLY waits for every transaction that uses the table; a backup's
    (pg_dump holds one for hours) would hold the run as long. Past RETENTION_DETACH_WAIT the run
    stops, naming the session waited for (not its query); the partition is left 'detach pending'
    with its rows. A run while the backup goes on stops at the FINALIZE the same way; once it
    ends, the next run finalizes the detach, re-checks the rows and drops them, each archived once."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    monkeypatch.setenv(partition_detach.DETACH_WAIT_ENV, "1s")
    backup = psycopg.connect(source_dsn, application_name="pg_dump")
    backup.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    backup.execute("SELECT count(*) FROM app.chat_messages")  # a transaction that stays open
    # Without the bounded wait the run would wait for the backup: it ends after 30 s instead of never.
    ends = threading.Timer(30, backup.close)
    ends.start()
    try:
        with pytest.raises(RetentionError) as stopped:
            engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "kept", D))
        assert "chat_messages_2019_01 of chat_messages waited 1s" in str(stopped.value)
        assert f"pid {backup.info.backend_pid} (postgres, pg_dump)" in str(stopped.value)
        assert "the partition is pending" in str(stopped.value)
        assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "pending"
        assert db.execute("SELECT count(*) FROM ONLY app.chat_messages_2019_01").fetchone() == (3,)

        with pytest.raises(RetentionError, match="chat_messages_2019_01 of chat_messages waited 1s"):
            engine_for(policy, source_dsn, s3, storage).archive_and_delete(
                RunContext("subscriber_services", "still", D)
            )
    finally:
        ends.cancel()
        backup.close()

    (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
        RunContext("subscriber_services", "next", D)
    )
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "gone"
    assert outcome.partitions["dropped"] == 3
    assert f.ids(db, "chat_messages") == set(made["2026-06"] + made["2026-07"])
    assert sorted(committed_ids(db)) == sorted(made["2026-03"] + made["2026-04"] + made["2026-05"])  # each once


def test_a_preview_finalizes_a_detach_left_pending_then_attaches_the_partition_again(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """A backup kept 2019's detach pending; the purpose is then put in preview mode: once the
    backup is over, its run finalizes the detach and attaches the partition again, rows and all."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    monkeypatch.setenv(partition_detach.DETACH_WAIT_ENV, "1s")
    with psycopg.connect(source_dsn, application_name="pg_dump") as backup:
        backup.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        backup.execute("SELECT count(*) FROM app.chat_messages")
        with pytest.raises(RetentionError, match="the partition is pending"):
            engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "kept", D))
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "pending"

    engine_for(policy.with_mode("preview"), source_dsn, s3, storage).archive_and_delete(
        RunContext("subscriber_services", "in-preview", D, mode="preview", dry_run=True)
    )
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "attached"
    assert f.ids(db, "chat_messages") == {i for ids in made.values() for i in ids}
    assert db.execute("SELECT state FROM retention.partition_retirements").fetchall() == [("kept",)]


def test_a_wrong_detach_wait_stops_the_run_before_anything_is_archived(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    monkeypatch.setenv(partition_detach.DETACH_WAIT_ENV, "forever")
    with pytest.raises(ValueError, match="RETENTION_DETACH_WAIT must be"):
        engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "wrong", D))
    assert f.ids(db, "chat_messages") == {i for ids in made.values() for i in ids}
    assert db.execute("SELECT count(*) FROM retention.archive_manifest").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM retention.partition_retirements").fetchone() == (0,)


def test_a_retirement_is_dated_from_its_write_ahead_record_not_from_its_archive(
    partitioned, s3, storage, policy, source_dsn
):
    """The watch alarms on a retirement open for hours: its age starts when its record is
    committed (step 2), not when step 1's transaction began (the archive's whole duration)."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    archive = engine._archive_partition
    archived_at = {}

    def a_slow_archive(control, intents, reader, rule, ctx, partition, batch):
        done = archive(control, intents, reader, rule, ctx, partition, batch)
        time.sleep(1)
        archived_at[partition.name] = db.execute("SELECT clock_timestamp()").fetchone()[0]
        return done

    engine._archive_partition = a_slow_archive
    engine.archive_and_delete(RunContext("subscriber_services", "dated", D))
    dated = dict(db.execute("SELECT partition_name, created_at FROM retention.partition_retirements").fetchall())
    assert dated.keys() == archived_at.keys() and len(dated) == 4
    assert all(dated[name] >= archived_at[name] for name in dated)


def test_the_detach_wait_is_a_postgresql_interval():
    assert partition_detach.detach_wait({}) == "30min"
    assert partition_detach.detach_wait({partition_detach.DETACH_WAIT_ENV: " 90s "}) == "90s"
    assert partition_detach.detach_wait({partition_detach.DETACH_WAIT_ENV: "4h"}) == "4h"
    for wrong in ("0s", "soon", "10", "1 day", "5min; DROP TABLE x", "5h", "241min"):
        with pytest.raises(ValueError, match="RETENTION_DETACH_WAIT"):
            partition_detach.detach_wait({partition_detach.DETACH_WAIT_ENV: wrong})


def test_a_hold_placed_just_before_the_detach_attaches_the_partition_again(
    partitioned, s3, storage, policy, source_dsn
):
    """The last re-check, after the detach, with the holds and the detached table locked: a hold
    committed after the check before the detach keeps the partition (attached again, its uploads
    removed) and its held row."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    a_hold_just_before_detaching(engine, source_dsn, "chat_messages_2026_04", customers["2026-04"])
    (outcome, _) = engine.archive_and_delete(RunContext("subscriber_services", "late_hold", D))
    assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 1}
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_04") == "attached"
    assert set(made["2026-04"]) <= f.ids(db, "chat_messages")
    assert db.execute(
        "SELECT state, count(*) FROM retention.partition_retirements GROUP BY 1 ORDER BY 1"
    ).fetchall() == [("dropped", 3), ("kept", 1)]
    assert db.execute(
        "SELECT count(*) FROM retention.archive_manifest WHERE state = 'committed' AND record_ids && %s::bigint[]",
        (made["2026-04"],),
    ).fetchone() == (0,)


@pytest.mark.parametrize("write", ["edit", "same_content"])
def test_a_write_that_slips_in_before_the_detach_attaches_the_partition_again(
    partitioned, s3, storage, policy, source_dsn, write
):
    """Between the write-ahead record (the partition's lock released) and the detach, the
    application rewrites a message of an archived partition: the objects no longer hold the row
    as it is, so the partition is attached again and its uploads removed; its rows then take the
    row path, which archives the row as written. An update that rewrites the same content is a
    write too (a new row version): the partition is kept as well."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    engine = engine_for(policy, source_dsn, s3, storage)
    detach = engine._detach
    edited = made["2026-04"][1]
    change = "body || ' (corrigé)'" if write == "edit" else "body"

    def write_then_detach(autocommit_conn, table, partition):
        if partition == "chat_messages_2026_04":
            with psycopg.connect(source_dsn, autocommit=True) as app:
                app.execute(f"UPDATE app.chat_messages SET body = {change} WHERE id = %s", (edited,))
        detach(autocommit_conn, table, partition)

    engine._detach = write_then_detach
    (outcome, _) = engine.archive_and_delete(RunContext("subscriber_services", "late_write", D))
    assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 1}
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_04") == "attached"
    assert db.execute(
        "SELECT state, count(*) FROM retention.partition_retirements GROUP BY 1 ORDER BY 1"
    ).fetchall() == [("dropped", 3), ("kept", 1)]
    # The partition's uploads were removed ('abandoned'); the row path archived its rows once.
    assert db.execute(
        "SELECT state, count(*) FROM retention.archive_manifest WHERE record_ids && %s::bigint[] GROUP BY 1 ORDER BY 1",
        (made["2026-04"],),
    ).fetchall() == [("abandoned", 3), ("committed", 3)]
    archived = archive_record(db, s3, storage, "late_write")["objects"]
    (row,) = [r for rows in archived.values() for r in rows if r["id"] == edited]
    assert row["body"].endswith("(corrigé)") == (write == "edit")
    assert f.ids(db, "chat_messages") == set(made["2026-06"] + made["2026-07"])


def test_tier_none_partitions_are_detached_and_dropped_without_archive(partitioned, s3, storage, policy, source_dsn):
    db = partitioned
    # Cookie choices: 6 months from the choice; at D, choices before 2025-12-01 are due.
    old = [fp.cookie_consent(db, recorded=day) for day in ("2019-01-05", "2019-01-20")]
    recent = [fp.cookie_consent(db, recorded=day) for day in ("2026-03-02", "2026-06-10")]
    (outcome,) = engine_for(policy, source_dsn, s3, storage, purpose="cookie_consents").archive_and_delete(
        RunContext("cookie_consents", "none", D)
    )
    assert outcome.partitions == {"dropped": 1, "rows": 2, "kept": 0}
    assert (outcome.deleted, outcome.objects) == (2, 0)
    assert partitions_left(db, "cookie_consents") == ["2026_03", "2026_04", "2026_05", "2026_06", "2026_07"]
    assert f.ids(db, "cookie_consents") == set(recent)
    assert db.execute("SELECT action, record_ids FROM retention.audit_log WHERE run_id = 'none'").fetchall() == [
        ("deleted", old)
    ]
    assert db.execute("SELECT count(*) FROM retention.archive_manifest").fetchone() == (0,)


def test_a_role_that_does_not_own_the_table_takes_the_row_path(partitioned, s3, storage, policy, role_dsn):
    """retention_engine may delete rows, not detach or drop partitions (the table's owner's right):
    the same rows go, row by row, and every partition stays."""
    from retention.policy import default_policy
    from retention.roles import grant_statements

    db = partitioned
    for statement in grant_statements(db, default_policy()):  # the new tables' grants, as retention.schema
        db.execute(statement)
    old = [fp.cookie_consent(db, recorded=day) for day in ("2019-01-05", "2019-01-20")]
    recent = [fp.cookie_consent(db, recorded=day) for day in ("2026-03-02", "2026-06-10")]
    before = partitions_left(db, "cookie_consents")
    engine = engine_for(policy, role_dsn("retention_engine"), s3, storage, purpose="cookie_consents")
    (outcome,) = engine.archive_and_delete(RunContext("cookie_consents", "not-owner", D))
    assert outcome.deleted == 2 and outcome.partitions == {}
    assert f.ids(db, "cookie_consents") == set(recent) and set(old).isdisjoint(f.ids(db, "cookie_consents"))
    assert partitions_left(db, "cookie_consents") == before


def test_a_partition_owned_by_another_role_takes_the_row_path(partitioned, s3, storage, policy, role_dsn):
    """The DBA lets retention_engine act as the owner of cookie_consents and its partitions, but
    January 2019's partition belongs to another role (created by another tool): the engine may
    detach it, not drop it, which would fail this run and every next one at its recovery. It is
    not a candidate: its rows go row by row, it stays."""
    from retention.policy import default_policy
    from retention.roles import grant_statements

    db = partitioned
    for statement in grant_statements(db, default_policy()):
        db.execute(statement)
    engine_user, _ = devstack.ROLE_USERS["retention_engine"]
    db.execute("CREATE ROLE consents_owner_t NOLOGIN; CREATE ROLE archivist_t NOLOGIN")
    try:
        db.execute(f'GRANT consents_owner_t TO "{engine_user}"')
        for (relation,) in db.execute("SELECT relid::regclass::text FROM pg_partition_tree('app.cookie_consents')"):
            db.execute(f"ALTER TABLE {relation} OWNER TO consents_owner_t")
        db.execute("ALTER TABLE app.cookie_consents_2019_01 OWNER TO archivist_t")
        old = [fp.cookie_consent(db, recorded=day) for day in ("2019-01-05", "2019-01-20")]
        recent = [fp.cookie_consent(db, recorded=day) for day in ("2026-03-02", "2026-06-10")]
        before = partitions_left(db, "cookie_consents")
        engine = engine_for(policy, role_dsn("retention_engine"), s3, storage, purpose="cookie_consents")
        (outcome,) = engine.archive_and_delete(RunContext("cookie_consents", "partition-owner", D))
        assert outcome.deleted == 2 and not outcome.partitions
        assert f.ids(db, "cookie_consents") == set(recent) and set(old).isdisjoint(f.ids(db, "cookie_consents"))
        assert partitions_left(db, "cookie_consents") == before
    finally:
        db.execute("REASSIGN OWNED BY consents_owner_t, archivist_t TO CURRENT_USER")
        db.execute("DROP ROLE consents_owner_t; DROP ROLE archivist_t")


def test_a_table_that_is_not_partitioned_is_not_detected(db):
    assert partition_plan.range_partitions(db, "app", "cookie_consents", "recorded_at") == []
    db.execute("CREATE TABLE app.listed (id bigint, kind text) PARTITION BY LIST (kind)")
    try:
        assert partition_plan.range_partitions(db, "app", "listed", "kind") == []
    finally:
        db.execute("DROP TABLE app.listed")


def test_vacuum_after_a_mass_row_delete_reports_dead_tuples_and_size(db, s3, storage, policy, source_dsn, monkeypatch):
    """A table that is not partitioned: the row path deletes most of it, the engine vacuums it
    (dead share over the threshold) and reports dead tuples and size before and after."""
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO app.cookie_consents (visitor_id, choice, analytics, advertising, social_networks,"
            " personalisation, recorded_at) SELECT 'v' || g, 'refused_all', false, false, false, false,"
            " timestamptz '2024-01-01 12:00+01' + g * interval '1 minute' FROM generate_series(1, 3000) AS g"
        )
    fp.cookie_consent(db, recorded="2026-05-01")
    monkeypatch.setenv("RETENTION_VACUUM_DEAD_SHARE", "0.5")
    (outcome,) = engine_for(policy, source_dsn, s3, storage, purpose="cookie_consents").archive_and_delete(
        RunContext("cookie_consents", "vacuum", D)
    )
    assert outcome.deleted == 3000 and outcome.partitions == {}
    assert outcome.vacuum["relations"] == 1
    assert outcome.vacuum["dead_tuples_before"] >= 3000 and outcome.vacuum["dead_tuples_after"] == 0
    assert outcome.vacuum["bytes_before"] > 0 and outcome.vacuum["bytes_after"] > 0

    monkeypatch.setenv("RETENTION_VACUUM_DEAD_SHARE", "off")
    fp.cookie_consent(db, recorded="2024-01-01")
    (outcome,) = engine_for(policy, source_dsn, s3, storage, purpose="cookie_consents").archive_and_delete(
        RunContext("cookie_consents", "no_vacuum", D)
    )
    assert outcome.deleted == 1 and outcome.vacuum == {}


def test_the_vacuum_after_the_deletes_passes_over_a_partition_another_unit_dropped(
    partitioned, source_dsn, monkeypatch
):
    """Units of a partitioned table run side by side: a unit's VACUUM after its deletes reads the
    table's partitions, and another unit may retire one of them whole meanwhile (CI once failed
    on such a partition's missing size). The vacuum leaves it out and reports the rest."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    messages(db, customers)
    db.execute("DELETE FROM app.chat_messages WHERE transmitted_at < '2026-05-01'")  # March, April: all dead
    vacuum.flush_statistics(db)
    health = vacuum.table_health

    def then_another_unit_drops_march(conn, schema, table):
        figures = health(conn, schema, table)
        with psycopg.connect(source_dsn, autocommit=True) as other:
            other.execute("DROP TABLE IF EXISTS app.chat_messages_2026_03")
        return figures

    monkeypatch.setattr(vacuum, "table_health", then_another_unit_drops_march)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        report = vacuum.vacuum_if_bloated(conn, "app", "chat_messages", 0.2)
    assert report["relations"] >= 2 and report["bytes_after"] < report["bytes_before"], report
    assert "2026_03" not in partitions_left(db, "chat_messages")


def test_the_exceptions_looked_up_from_their_side_match_the_rules_select(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """A rule without conditions is checked from the holds' and children's side; the rule's
    whole select run over the partition (the test for a rule with conditions) counts the same."""
    from retention.planner import Planner
    from retention.policy.rule_files import RuleFilter

    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    f.legal_hold(db, "chat_messages", made["2026-03"][0])
    f.legal_hold(db, "customers", customers["2026-04"])
    engine = engine_for(policy, source_dsn, s3, storage)
    rule = engine.purpose.rules[0]
    engine._planner = Planner.load(db, policy, engine.purpose)
    engine._statements[rule.name] = engine._planner.statements(rule, D)
    # The partitions wholly before the cutoff: the only ones the engine checks.
    names = [f"chat_messages_{m.replace('-', '_')}" for m in MONTHS[:4]]
    fast = [engine._check_partition(db, rule, name) for name in names]
    monkeypatch.setattr(partition_path, "rule_filter", lambda *a: RuleFilter("", "true", ()))
    whole_select = [engine._check_partition(db, rule, name) for name in names]
    assert [(c.rows, c.held, c.waiting, c.whole) for c in fast] == [
        (c.rows, c.held, c.waiting, c.whole) for c in whole_select
    ]
    assert [c.whole for c in fast] == [True, False, False, True]
    assert [c.held for c in fast] == [0, 1, 3, 0]


def test_batch_statements_are_planned_for_their_ids_on_every_execution(partitioned, source_dsn):
    """A batch's statements name their ids as a parameter (``id = ANY(%s)``) and psycopg
    prepares a statement once it has run five times; PostgreSQL may then switch to a generic
    plan, where the ids are not a known array: no hashed lookup, a linear search of the batch's
    ids for every row (on a partitioned table, 6 s a 50,000-row batch instead of 0.25 s: the row
    path slowed down more than linearly). The engine's connections plan every execution."""
    from retention.archive import db as archive_db

    db = partitioned
    customer = f.customer(db)
    db.execute(
        "INSERT INTO app.chat_messages (customer_id, conversation_ref, sender, sent_at, body, transmitted_at)"
        " SELECT %s, 'c', 'customer', t, 'x', t FROM generate_series("
        " '2026-03-01 00:00+00'::timestamptz, '2026-05-31 00:00+00', interval '1 minute') AS t",
        (customer,),
    )
    db.execute("ANALYZE app.chat_messages")
    ids = [row[0] for row in db.execute("SELECT id FROM app.chat_messages ORDER BY id LIMIT 20000").fetchall()]
    with archive_db.connect(source_dsn, "test:plans") as conn:
        for _ in range(10):
            conn.execute(  # the batch's delete and re-check filter
                "SELECT count(*) FROM app.chat_messages WHERE id BETWEEN %s AND %s AND id + 0 = ANY(%s::bigint[])",
                (ids[0], ids[-1], ids),
                prepare=True,
            )
        generic, custom = conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE '%id + 0 = ANY%'"
        ).fetchone()
    assert (generic, custom) == (0, 10)


def test_the_run_report_says_how_many_partitions_were_retired_whole_or_kept_and_where_to_read_why():
    """The report task's line for a partitioned rule: retired whole, kept, and where the reason is
    (a partition is kept for a held or waiting row, and also for a write, a hold or a DBA's change
    in the way while it was retired)."""
    from retention.policy import default_policy
    from retention.tasks import report

    purpose = default_policy().with_mode("enforce").purpose("subscriber_services")
    rule = {
        "rule": "chat_messages",
        "table": "chat_messages",
        "tier": "probative",
        "due": 12,
        "deleted": 12,
        "held": 0,
        "waiting": {},
        "objects": 4,
        "archive_bytes": 100,
        "documents": 0,
        "partitions": {"dropped": 3, "rows": 9, "kept": 1},
    }
    context = {"logical_date": D, "params": {}, "run_id": "partitioned"}
    purged = {"purged_objects": 0, "purged_records": 0, "held_objects": 0}
    text = report(purpose, context, {}, {"rules": [rule]}, purged, {}, {})
    assert (
        "partitions (chat_messages): 3 retired whole (9 rows, detached and dropped), 1 kept for the row path"
        " (a row held, waiting or not due, or a write, a hold or a DBA's change in the way while it was retired:"
        " the task log says which)" in text
    )


def test_a_customer_deleted_while_a_partition_is_detached_leaves_its_rows_covered_by_a_later_hold(
    partitioned, s3, storage, policy, source_dsn
):
    """A cookie choice's customer_id is cleared when its customer is deleted (ON DELETE SET NULL):
    the delete records who the choice belonged to (retention.detached_owners), so that a hold
    placed afterwards on the customer still covers it. The choice's partition was detached by a
    cookie run that crashed before its drop; the former customer goes meanwhile (the prospects
    purpose, 3 years after the relationship ended): its delete read the choices through the
    table, which no longer shows the detached partition, so recorded nobody, while the foreign
    key, kept by the detached table, cleared the choice's link all the same. A hold then placed on
    the customer must keep the choice, as it does when the choice is in the table; the next cookie
    run dropped it."""
    db = partitioned
    customer = f.customer(db, ended="2019-01-01")
    choice = fp.cookie_consent(db, recorded="2019-01-05", customer_id=customer)
    crashing = engine_for(policy, source_dsn, s3, storage, purpose="cookie_consents")

    def crash(control, retirement_id, lock_timeout=partition_drops.BATCH_LOCK_TIMEOUT):
        raise Crash("killed after detaching cookie_consents_2019_01")

    crashing._finish_detached = crash
    with pytest.raises(Crash):
        crashing.archive_and_delete(RunContext("cookie_consents", "crashed", D))
    assert partition_plan.attached_state(db, "app", "cookie_consents", "cookie_consents_2019_01") == "detached"

    engine_for(policy, source_dsn, s3, storage, purpose="prospects").archive_and_delete(
        RunContext("prospects", "customers", D)
    )
    assert customer not in f.ids(db, "customers"), "the former customer is archived and deleted"
    assert db.execute("SELECT customer_id FROM app.cookie_consents_2019_01").fetchall() == [(None,)]

    f.legal_hold(db, "customers", customer)
    engine_for(policy, source_dsn, s3, storage, purpose="cookie_consents").archive_and_delete(
        RunContext("cookie_consents", "next", D)
    )
    assert choice in f.ids(db, "cookie_consents"), (
        "the held customer's cookie choice was dropped with its partition: its link was cleared while the "
        "partition was detached, and who it belonged to was never recorded"
    )
    assert partition_plan.attached_state(db, "app", "cookie_consents", "cookie_consents_2019_01") == "attached"


def test_a_detached_partition_is_not_dropped_unarchived_when_the_policy_now_archives_its_rows(
    partitioned, s3, storage, policy, source_dsn, tmp_path
):
    """A cookie run (tier none) crashes between a detach and its drop; before the next run the
    DPO changes the schedule: cookie choices are now archived 5 years as evidence (probative).
    The row path's crashed batch would have left the rows in the table, and the next run would
    archive them; the next run's recovery dropped the detached partition as the old tier said,
    its rows deleted without any copy."""
    from retention.paths import POLICY_FILE
    from retention.policy import load_policy

    db = partitioned
    old = [fp.cookie_consent(db, recorded=day) for day in ("2026-03-05", "2026-03-20")]
    later = f.midnight("2026-11-01")  # March's choices are due (6 months), their 5 years of archive are not over
    a_run_crashes_after_detaching(
        policy, source_dsn, s3, storage, "cookie_consents_2026_03", RunContext("cookie_consents", "crashed", later)
    )
    assert partition_plan.attached_state(db, "app", "cookie_consents", "cookie_consents_2026_03") == "detached"

    text = POLICY_FILE.read_text(encoding="utf-8")
    tier_none = "        clock: cookie_consents.recorded_at\n        live: 6 months\n        tier: none\n"
    assert text.count(tier_none) == 1
    path = tmp_path / "policy-cookies-archived.yaml"
    path.write_text(
        text.replace(tier_none, tier_none.replace("tier: none", "tier: probative\n        archive: 5 years")),
        encoding="utf-8",
    )
    archived = load_policy(path).with_mode("enforce")
    engine_for(archived, source_dsn, s3, storage, purpose="cookie_consents").archive_and_delete(
        RunContext("cookie_consents", "next", later)
    )
    kept = f.ids(db, "cookie_consents") | set(committed_ids(db))
    assert set(old) <= kept, (
        f"cookie choices {sorted(set(old) - kept)} were deleted without archive by the recovery of a retirement "
        "begun under the old tier, though the policy now archives them"
    )


def test_a_crash_after_detaching_an_archived_partition_is_dropped_by_the_next_run_with_its_objects(
    partitioned, s3, storage, policy, source_dsn
):
    """The policy unchanged, the next run's recovery finds the crashed run's objects as the rule
    asks for them (one per end day, its tier) and drops the partition, its rows in them once."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2026_03")
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_03") == "detached"
    engine_for(policy, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "next", D))
    assert run_report.finished_retirements(db, "subscriber_services", "next") == [
        ("chat_messages", "chat_messages_2026_03", "dropped", "crashed")
    ]
    assert sorted(committed_ids(db)) == sorted(made["2026-03"] + made["2026-04"] + made["2026-05"])


def test_a_detached_partition_is_not_dropped_with_objects_purged_before_the_policys_new_archive_period(
    partitioned, s3, storage, policy, source_dsn, tmp_path
):
    """A chat run crashes between a detach and its drop; before the next run the DPO lengthens
    the chat messages' archive period from 5 to 10 years. The next run's recovery committed the
    crashed run's objects, made for 5 years: March's messages would be purged from the archive
    (and their Object Lock end) 5 years before the policy's end."""
    from retention.paths import POLICY_FILE
    from retention.policy import load_policy

    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2026_03")
    text = POLICY_FILE.read_text(encoding="utf-8")
    five_years = "        clock: chat_messages.transmitted_at\n        live: 0 months\n        tier: probative\n        archive: 5 years\n"
    assert text.count(five_years) == 1
    path = tmp_path / "policy-chat-10-years.yaml"
    # The engine's own records that prove the archive must outlive it too.
    head, own_records = text.split("\nown_records:\n")
    text = head + "\nown_records:\n" + own_records.replace("period: 5 years", "period: 10 years")
    path.write_text(text.replace(five_years, five_years.replace("5 years", "10 years")), encoding="utf-8")
    longer = load_policy(path).with_mode("enforce")
    engine_for(longer, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "next", D))
    purged = db.execute(
        "SELECT min(purge_after) FROM retention.archive_manifest WHERE state = 'committed' AND record_ids && %s::bigint[]",
        (made["2026-03"],),
    ).fetchone()[0]
    assert purged is not None and purged >= f.midnight("2036-03-01"), (
        f"March's messages are committed in objects purged from {purged}, not 10 years after their transmission"
    )


def test_a_row_referenced_just_before_the_detach_keeps_the_partition_and_the_run_goes_on(
    partitioned, s3, storage, policy, source_dsn
):
    """Between the write-ahead record (the partition's lock released) and the detach, the
    application reports an April message (a new row of another table referencing it). PostgreSQL
    refuses to detach a partition rows of another table still refer to: the partition stays,
    like one written to meanwhile, its uploads removed, and the run goes on with the next
    partitions and the row path (the referenced message waits). The run failed at the detach."""
    db = partitioned
    db.execute("ALTER TABLE app.chat_messages ADD UNIQUE (id, transmitted_at)")
    db.execute(
        "CREATE TABLE app.message_reports (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " message_id bigint NOT NULL, message_transmitted_at timestamptz NOT NULL,"
        " FOREIGN KEY (message_id, message_transmitted_at) REFERENCES app.chat_messages (id, transmitted_at))"
    )
    try:
        customers = {month: f.customer(db) for month in MONTHS}
        made = messages(db, customers)
        engine = engine_for(policy, source_dsn, s3, storage)
        detach = engine._detach
        reported = made["2026-04"][1]

        def report_then_detach(autocommit_conn, table, partition):
            if partition == "chat_messages_2026_04":
                with psycopg.connect(source_dsn, autocommit=True) as app:
                    app.execute(
                        "INSERT INTO app.message_reports (message_id, message_transmitted_at)"
                        " SELECT id, transmitted_at FROM app.chat_messages WHERE id = %s",
                        (reported,),
                    )
            detach(autocommit_conn, table, partition)

        engine._detach = report_then_detach
        (outcome, _) = engine.archive_and_delete(RunContext("subscriber_services", "reported", D))
        assert outcome.partitions == {"dropped": 3, "rows": 9, "kept": 1}
        assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_04") == "attached"
        assert db.execute(
            "SELECT state, count(*) FROM retention.partition_retirements GROUP BY 1 ORDER BY 1"
        ).fetchall() == [("dropped", 3), ("kept", 1)]
        assert f.ids(db, "chat_messages") == {reported, *made["2026-06"], *made["2026-07"]}
        assert db.execute(
            "SELECT state, count(*) FROM retention.archive_manifest WHERE record_ids && %s::bigint[]"
            " GROUP BY 1 ORDER BY 1",
            (made["2026-04"],),
        ).fetchall() == [("abandoned", 3), ("committed", 2)]
    finally:
        db.execute("DROP TABLE IF EXISTS app.message_reports")


def test_the_recorded_owners_of_a_partitions_rows_go_with_the_dropped_partition(
    partitioned, s3, storage, policy, source_dsn
):
    """A cookie choice whose customer went (its link cleared, who it belonged to recorded in
    retention.detached_owners) goes with its partition once due: its entry must go with it, as
    the row path deletes a row's entry with the row (the customer's id stays linked to a row
    that no longer exists, for ever)."""
    db = partitioned
    customer = f.customer(db, ended="2019-01-01")
    choice = fp.cookie_consent(db, recorded="2019-01-05", customer_id=customer)
    engine_for(policy, source_dsn, s3, storage, purpose="prospects").archive_and_delete(
        RunContext("prospects", "customers", D)
    )
    assert db.execute("SELECT record_id FROM retention.detached_owners").fetchall() == [(choice,)]
    (outcome,) = engine_for(policy, source_dsn, s3, storage, purpose="cookie_consents").archive_and_delete(
        RunContext("cookie_consents", "choices", D)
    )
    assert outcome.partitions["dropped"] == 1 and choice not in f.ids(db, "cookie_consents")
    assert db.execute("SELECT count(*) FROM retention.detached_owners").fetchone() == (0,), (
        "the dropped cookie choice's entry of who it belonged to stayed"
    )


def test_a_retried_unit_spends_the_rows_of_a_partition_its_killed_try_detached(
    partitioned, s3, storage, policy, source_dsn
):
    """A unit's try is killed once 2019's partition is detached, before its drop; its retry runs
    no recovery (the run's prepare_units did), so the partition stays detached, its rows out of the
    table and not yet audited. The retry counted only the audited rows as spent: with 2019's three
    rows still in its count it retired May's partition with a message due since the plan, and the
    next run's recovery dropped 2019's under the run: 13 rows for a plan of 12."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    ctx = RunContext("subscriber_services", "retried", D)
    plan = engine_for(policy, source_dsn, s3, storage).make_plan(ctx)
    unit = next(u for (u, *_) in plan_units(plan) if u.rule == "chat_messages")
    assert unit.rows == 12
    a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2019_01", ctx, plan, unit)
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "detached"
    late = fp.chat_message(db, customers["2026-05"], transmitted=f.paris("2026-05-20", 10))  # due since the plan
    db.commit()
    retry = RunContext("subscriber_services", "retried", D, attempt=2)
    engine_for(policy, source_dsn, s3, storage).archive_and_delete(retry, plan, unit)
    # The next recovery finishes the retirement the killed try left, under this run.
    engine_for(policy, source_dsn, s3, storage).recover_before_units(ctx, plan)
    (deleted,) = db.execute(
        "SELECT coalesce(sum(record_count), 0) FROM retention.audit_log WHERE run_id = %s AND rule = 'chat_messages'"
        " AND action IN ('archived_and_deleted', 'deleted')",
        (ctx.run_id,),
    ).fetchone()
    assert deleted <= 12, "the run deleted more chat messages than its approved plan counted"
    assert f.ids(db, "chat_messages") == {late, *made["2026-06"], *made["2026-07"]}


def test_a_retried_unit_spends_the_rows_of_a_partition_its_zombie_try_detaches_after_the_count(
    partitioned, s3, storage, policy, source_dsn
):
    """A unit's try records 2019's retirement ('detaching', step 2), then waits in its detach
    (step 3, on its own autocommit connection); a DBA ends its control session, so Airflow's retry
    takes the unit's lock while that detach is still under way. The retry reads 2019 as still
    attached ("its rows are in the table, for the batches") and keeps its three rows in its count;
    the zombie's detach then takes them out of the table: the retry spends its whole count on the
    rows left and a message due since the plan, and the detached partition's rows go too."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    ctx = RunContext("subscriber_services", "zombie_detach", D)
    plan = engine_for(policy, source_dsn, s3, storage).make_plan(ctx)
    unit = next(u for (u, *_) in plan_units(plan) if u.rule == "chat_messages")
    assert unit.rows == 12
    zombie = engine_for(policy, source_dsn, s3, storage)
    real_detach = zombie._detach

    def control_ended_while_detaching(autocommit_conn, table, partition):
        if partition == "chat_messages_2019_01":  # its detach is still waiting: the worker is a zombie
            raise Crash("the control session ended while 2019's detach waits")
        return real_detach(autocommit_conn, table, partition)

    zombie._detach = control_ended_while_detaching
    with pytest.raises(Crash):
        zombie.archive_and_delete(ctx, plan, unit)
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "attached"
    late = fp.chat_message(db, customers["2026-05"], transmitted=f.paris("2026-05-20", 10))  # due since the plan
    db.commit()
    retry = RunContext("subscriber_services", "zombie_detach", D, attempt=2)
    retrying = engine_for(policy, source_dsn, s3, storage)
    real_count = retrying._deleted_by_the_run

    def then_the_zombies_detach_completes(*args, **kwargs):
        spent = real_count(*args, **kwargs)
        with psycopg.connect(source_dsn, autocommit=True) as zombies:
            partition_detach.detach(zombies, "app", "chat_messages", "chat_messages_2019_01")
        return spent

    retrying._deleted_by_the_run = then_the_zombies_detach_completes
    retrying.archive_and_delete(retry, plan, unit)
    # The next recovery finishes the retirement the zombie left, under this run.
    engine_for(policy, source_dsn, s3, storage).recover_before_units(ctx, plan)
    (deleted,) = db.execute(
        "SELECT coalesce(sum(record_count), 0) FROM retention.audit_log WHERE run_id = %s AND rule = 'chat_messages'"
        " AND action IN ('archived_and_deleted', 'deleted')",
        (ctx.run_id,),
    ).fetchone()
    assert deleted <= 12, f"the run deleted {deleted} chat messages, its approved plan counted 12"
    assert {late, *made["2026-06"], *made["2026-07"]} <= f.ids(db, "chat_messages")


def test_a_retried_unit_goes_on_beside_the_retirement_its_killed_try_recorded_before_the_detach(
    partitioned, s3, storage, policy, source_dsn
):
    """A unit's try is killed once 2019's retirement is recorded ('detaching', step 2), before
    its detach: the partition is still attached, its record open. The retry (no recovery) failed on
    the record's unique index at every try (found by a review): now the partition stays for the
    next recovery, the retry goes on, the run deletes no more than its plan counted, and the
    recovery then undoes the retirement (its rows changed since it was recorded: attached)."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    ctx = RunContext("subscriber_services", "killed_before_detach", D)
    plan = engine_for(policy, source_dsn, s3, storage).make_plan(ctx)
    unit = next(u for (u, *_) in plan_units(plan) if u.rule == "chat_messages")
    assert unit.rows == 12
    crashing = engine_for(policy, source_dsn, s3, storage)
    detach = crashing._detach

    def crash(conn, table, partition):
        if partition == "chat_messages_2019_01":
            raise Crash("killed before detaching 2019")
        return detach(conn, table, partition)

    crashing._detach = crash
    with pytest.raises(Crash):
        crashing.archive_and_delete(ctx, plan, unit)
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2019_01") == "attached"
    retry = RunContext("subscriber_services", "killed_before_detach", D, attempt=2)
    engine_for(policy, source_dsn, s3, storage).archive_and_delete(retry, plan, unit)
    engine_for(policy, source_dsn, s3, storage).recover_before_units(ctx, plan)
    (deleted,) = db.execute(
        "SELECT coalesce(sum(record_count), 0) FROM retention.audit_log WHERE run_id = %s AND rule = 'chat_messages'"
        " AND action IN ('archived_and_deleted', 'deleted')",
        (ctx.run_id,),
    ).fetchone()
    assert deleted <= 12, "the run deleted more chat messages than its approved plan counted"
    assert f.ids(db, "chat_messages") >= {*made["2026-06"], *made["2026-07"]}, "a row not yet due was deleted"
    assert not db.execute("SELECT 1 FROM retention.partition_retirements WHERE state = 'detaching'").fetchall(), (
        "the recovery left the retirement open"
    )


def test_a_rule_renamed_after_a_crash_attaches_its_detached_partition_again(
    partitioned, s3, storage, policy, source_dsn, tmp_path, monkeypatch
):
    """A crash leaves March detached by rule `chat_messages`; the policy then renames the rule
    (its file too). The next run's recovery looked the retirement's rule up by name and stopped on
    StopIteration, every run after it too, March out of the table. Nothing tells that the renamed
    rule would retire March whole: it is attached again, its rows take the row path of the rule
    as the policy now names it."""
    from retention.paths import POLICY_FILE
    from retention.policy import load_policy
    from retention.policy import loading as policy_module

    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    a_run_crashes_after_detaching(policy, source_dsn, s3, storage, "chat_messages_2026_03")
    assert partition_plan.attached_state(db, "app", "chat_messages", "chat_messages_2026_03") == "detached"

    sql_dir = tmp_path / "sql"
    (sql_dir / "subscriber_services").mkdir(parents=True)
    for purpose_dir in POLICY_FILE.parent.joinpath("sql").iterdir():
        if purpose_dir.is_dir() and purpose_dir.name != "subscriber_services":
            (sql_dir / purpose_dir.name).symlink_to(purpose_dir)
    for shipped in POLICY_FILE.parent.joinpath("sql", "subscriber_services").iterdir():
        name = "transmitted_chat_messages.sql" if shipped.name == "chat_messages.sql" else shipped.name
        (sql_dir / "subscriber_services" / name).write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(policy_module, "SQL_DIR", sql_dir)
    text = POLICY_FILE.read_text(encoding="utf-8").replace("mode: preview", "mode: enforce")
    assert text.count("      - name: chat_messages\n") == 1
    path = tmp_path / "renamed.yaml"
    path.write_text(text.replace("      - name: chat_messages\n", "      - name: transmitted_chat_messages\n"))
    renamed = load_policy(path)

    engine_for(renamed, source_dsn, s3, storage).archive_and_delete(RunContext("subscriber_services", "next", D))
    assert run_report.finished_retirements(db, "subscriber_services", "next") == [
        ("chat_messages", "chat_messages_2026_03", "kept", "crashed")
    ]
    # March attached again, then its rows archived by the renamed rule's run; nothing lost.
    assert set(made["2026-03"]) <= set(committed_ids(db))
    assert f.ids(db, "chat_messages") == set(made["2026-06"] + made["2026-07"])


def test_a_partition_of_a_child_table_is_not_a_child_table_of_its_own(partitioned, s3, storage, policy, source_dsn):
    """Chat messages partitioned by month: PostgreSQL copies their key into the customers onto
    each partition, and the planner read each copy as a child table of its own (a customer
    "waiting for chat_messages_2026_03", a name the policy has no decision for). A partition
    dropped while the prospects run deleted former customers (the subscriber services' run
    retiring it) left the run's statements naming a table gone, or its batch stopped as if a key
    had changed (found by a review). The table's own key reads its attached partitions."""
    from retention.planner import Planner

    db = partitioned
    planner = Planner.load(db, policy, "prospects")
    db.commit()
    children = {b.table for b in planner.blockers["customers"]}
    partitions = {f"chat_messages_{month}" for month in partitions_left(db, "chat_messages")}
    assert "chat_messages" in children and partitions and not children & partitions, children

    former = f.customer(db, ended="2021-01-01")
    db.commit()
    first_month = partitions_left(db, "chat_messages")[0]
    engine = engine_for(policy, source_dsn, s3, storage, purpose="prospects")
    pause = Pause(engine, "_audit_exceptions", before=True)
    run = InThread(lambda: engine.archive_and_delete(RunContext("prospects", "r", f.midnight("2025-06-01"))))
    try:
        assert pause.reached.wait(30)
        db.execute(f"DROP TABLE app.chat_messages_{first_month}")
        db.commit()
        pause.release.set()
        outcomes = run.join()
        assert former not in f.ids(db, "customers"), outcomes
    finally:
        pause.release.set()


@contextlib.contextmanager
def march_notes(db, table: str, column: str, row_id: int, *, cascading_key: bool):
    """A DBA's table of notes on one row of March's partition of ``table`` (not of the table),
    by ``column``; with ``cascading_key``, a key into that partition ON DELETE CASCADE from the
    start (else the test adds it: add_cascading_key_from_march_notes). Dropped at the end."""
    db.execute(f"ALTER TABLE app.{table}_2026_03 ADD UNIQUE (id)")
    key = f" REFERENCES app.{table}_2026_03 (id) ON DELETE CASCADE" if cascading_key else ""
    db.execute(
        "CREATE TABLE app.march_notes (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        f" {column} bigint{key}, note text)"
    )
    try:
        db.execute(f"INSERT INTO app.march_notes ({column}, note) VALUES (%s, 'a note')", (row_id,))
        db.commit()
        yield
        assert db.execute("SELECT count(*) FROM app.march_notes").fetchone()[0] == 1, "the note went by the cascade"
    finally:
        db.rollback()
        db.execute("DROP TABLE IF EXISTS app.march_notes")
        db.commit()


def add_cascading_key_from_march_notes(source_dsn, table: str, column: str) -> None:
    """A DBA, on a connection of their own, adds the march_notes' key into March's partition."""
    with psycopg.connect(source_dsn, autocommit=True) as dba:
        dba.execute("SET lock_timeout = '5s'")
        dba.execute(
            f"ALTER TABLE app.march_notes ADD FOREIGN KEY ({column})"
            f" REFERENCES app.{table}_2026_03 (id) ON DELETE CASCADE"
        )


def test_a_cascading_key_into_one_partition_keeps_the_messages_its_rows_reference(
    partitioned, s3, storage, policy, source_dsn
):
    """Found by a review: a key into one partition of a rule's table (not into the table) was
    not read by the planner (its parent is the partition, not a rule's table), nor by a batch's
    check that the keys did not change: the message a note references did not wait for it, and
    the row path's DELETE (the partition cannot be dropped: the key depends on it) took the note
    along by the key's cascade, unarchived and unaudited. The key is now the table's: the message
    waits for its note, the note stays."""
    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    noted = made["2026-03"][1]
    with march_notes(db, "chat_messages", "message_id", noted, cascading_key=True):
        (outcome, _) = engine_for(policy, source_dsn, s3, storage).archive_and_delete(
            RunContext("subscriber_services", "noted", D)
        )
        assert noted in f.ids(db, "chat_messages")
        assert outcome.waiting == {"march_notes": 1}
        assert noted not in committed_ids(db)


def test_a_cascading_key_added_into_one_partition_just_before_a_batchs_delete_stops_the_batch(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """Two connections: a DBA adds a cascading key from the notes into March's partition once a
    batch of March's rows (the partition kept whole by a hold, its other rows on the row path) has
    checked that the keys did not change. The batch's lock on the table (LOCK TABLE ONLY) does
    not keep a key into one partition waiting, so the key went in before the DELETE, which took
    the note along by the cascade, unarchived and unaudited (found by a review). The keys are
    read again after the DELETE, under the locks it took: the batch stops, nothing of it
    deleted, the note stays."""
    from retention.archive.run import RetentionError
    from retention.planner import Planner

    db = partitioned
    customers = {month: f.customer(db) for month in MONTHS}
    made = messages(db, customers)
    f.legal_hold(db, "chat_messages", made["2026-03"][0])
    noted = made["2026-03"][1]
    checked = Planner.keys_changed
    added = []

    def then_the_dba_adds_a_key(self, conn, table):
        changed = checked(self, conn, table)
        if table == "chat_messages" and not added:
            add_cascading_key_from_march_notes(source_dsn, "chat_messages", "message_id")
            added.append(table)
        return changed

    monkeypatch.setattr(Planner, "keys_changed", then_the_dba_adds_a_key)
    with march_notes(db, "chat_messages", "message_id", noted, cascading_key=False):
        with pytest.raises(RetentionError, match="a foreign key into it was added"):
            engine_for(policy, source_dsn, s3, storage).archive_and_delete(
                RunContext("subscriber_services", "raced", D)
            )
        assert added
        assert noted in f.ids(db, "chat_messages")


def test_an_erasure_keeps_a_consent_a_row_references_through_a_cascading_key_into_its_partition(
    partitioned, s3, storage, policy, source_dsn
):
    """Cookie consents partitioned by month; a DBA's table of notes refers to March's partition
    (not to the table) by a key ON DELETE CASCADE. The erasure's test that no row references a
    row it deletes through a cascading key read the keys into the table alone (the engine's
    planner reads a key into one partition as the table's since d9c5417): it erased the person's
    consent and the cascade took the note along, unaudited (found by a review). The consent is
    now kept, referenced by a kept row."""
    db = partitioned
    subject = f.customer(db)
    consent = fp.cookie_consent(db, recorded="2026-03-10", customer_id=subject)
    with march_notes(db, "cookie_consents", "consent_id", consent, cascading_key=True):
        report = subject_rights(policy, source_dsn, s3, storage).handle(
            subject_request("erasure", "noted-consent", kind="customer", subject_id=subject)
        )
        assert consent in f.ids(db, "cookie_consents")
        kept = {(k["source"], k["table"]): k["reason"] for k in report["kept"]}
        assert kept[("live", "cookie_consents")] == "referenced_by_kept_row"
        assert "cookie_consents" not in report["erased"]["live"]


def test_a_cascading_key_added_into_one_partition_while_an_erasure_deletes_stops_it(
    partitioned, s3, storage, policy, source_dsn, monkeypatch
):
    """Two connections: a DBA adds a cascading key from the notes into March's partition of the
    cookie consents once the erasure has read the keys into the table. The erasure's lock on the
    table (LOCK TABLE ONLY) does not keep a key into one partition waiting, so the key went in
    before the DELETE, which took the note along by the cascade, unaudited (found by a review; the
    engine's batches read the keys again after their DELETE since b32c12d). The keys are read
    again after each DELETE, under the locks it took: the erasure stops, nothing of it erased."""
    db = partitioned
    subject = f.customer(db)
    consent = fp.cookie_consent(db, recorded="2026-03-10", customer_id=subject)
    read = rights_erase.cascading_keys_into
    added = []

    def then_the_dba_adds_a_key(conn, schema, table):
        keys = read(conn, schema, table)
        if table == "cookie_consents" and not added:
            add_cascading_key_from_march_notes(source_dsn, "cookie_consents", "consent_id")
            added.append(table)
        return keys

    monkeypatch.setattr(rights_erase, "cascading_keys_into", then_the_dba_adds_a_key)
    with march_notes(db, "cookie_consents", "consent_id", consent, cascading_key=False):
        with pytest.raises(rights_erase.KeysChangedError, match="a foreign key into it was added"):
            subject_rights(policy, source_dsn, s3, storage).handle(
                subject_request("erasure", "raced-consent", kind="customer", subject_id=subject)
            )
        assert added
        assert consent in f.ids(db, "cookie_consents")
        assert subject in f.ids(db, "customers")


@pytest.mark.parametrize("referenced", [False, True], ids=["not-referenced", "referenced-by-the-detached-rows"])
def test_a_partition_of_a_child_table_detached_during_a_run_does_not_stop_its_batches(
    referenced, partitioned, s3, storage, policy, source_dsn
):
    """Two connections: the prospects run deletes a former customer while another purpose
    retires a partition of the chat messages (detached, not yet dropped). The detached
    partition's copy of the messages' key into the customers is a key of its own from the detach:
    the batch read it as a key added during the run and stopped, the run failed for nothing
    (found by a review). A key that refuses the delete (NO ACTION) takes nothing along: only an
    added key that cascades, or clears a link a hold follows, stops a batch now. A customer the
    detached rows still reference stays: the key refuses their delete."""
    db = partitioned
    former = f.customer(db, ended="2021-01-01")
    if referenced:
        fp.chat_message(db, former, transmitted=f.paris("2019-01-10", 10))
    db.commit()
    engine = engine_for(policy, source_dsn, s3, storage, purpose="prospects")
    pause = Pause(engine, "_audit_exceptions", before=True)
    run = InThread(lambda: engine.archive_and_delete(RunContext("prospects", "r", f.midnight("2025-06-01"))))
    try:
        assert pause.reached.wait(30)
        db.execute("ALTER TABLE app.chat_messages DETACH PARTITION app.chat_messages_2019_01")
        db.commit()
        pause.release.set()
        if referenced:
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                run.join()
            assert former in f.ids(db, "customers")
        else:
            outcomes = run.join()
            assert former not in f.ids(db, "customers"), outcomes
    finally:
        pause.release.set()
