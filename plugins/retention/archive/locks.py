"""The locks that keep the archive's writers apart: the purpose's advisory lock (one run, purge
or erasure of a purpose at a time; shared by the units of one run), the hold table's SHARE lock
(a hold placed meanwhile waits for the batch, or was committed before and is seen), and the
timeouts of a batch's row locks.
"""

from __future__ import annotations

import time

import psycopg

from retention.archive.run import PurposeLockedError

# How long a batch waits for a row lock (a parent row the application holds) before failing.
BATCH_LOCK_TIMEOUT = "30s"
# The same wait while the previous batch is still uploading (see _run_rule): that batch's
# transaction cannot commit before this one has its locks, so a long wait here could only end
# in the 30 s timeout; after this one the batch is prepared again once the previous has committed.
PIPELINED_LOCK_TIMEOUT = "200ms"
# A partition's drop while the next partition is being archived (partitions.py): an application
# transaction may wait for that archive's lock while holding what the drop needs (it read a
# customer the drop's foreign-key triggers lock): a wait the database cannot see as a deadlock.
# The drop gives up soon and is done again once the partitions are through.
OVERLAPPED_DROP_LOCK_TIMEOUT = "1s"
# A file disposal's SHARE locks on the tables naming files (archive/documents.py): those are the
# application's busy tables, whose writes queue behind the request while it waits. Past it the
# files stay pending for the next batch or run.
DISPOSAL_LOCK_TIMEOUT = "1s"
# LOCK TABLE ... IN SHARE MODE through a function (include/sql/schema/050_roles.sql): the mode
# needs a privilege that would let the caller release holds.
LOCK_HOLDS = "SELECT retention.lock_legal_holds()"
# A batch's transaction holds its purpose's batches lock (shared) from its row locks to its
# commit, on the connection that commits it; a recovery takes it exclusively before it reads
# the 'uploading' intents. The purpose lock alone lives on the run's control session: a DBA who
# ends that session frees it while the other connection's batch uploads, and a recovery would
# remove the upload that batch then commits (rows deleted, their object gone).
LOCK_HOLDS_AND_BATCHES = "SELECT retention.lock_legal_holds(), pg_advisory_xact_lock_shared(hashtext(%s))"
# How long a recovery waits for such a batch to commit or roll back.
BATCHES_LOCK_TIMEOUT = "60s"


def purpose_lock_name(purpose: str) -> str:
    return f"retention:{purpose}"


def acquire_purpose_lock(
    conn: psycopg.Connection, purpose: str, timeout: float, *, shared: bool = False, on_timeout: str | None = None
) -> None:
    """The purpose's advisory lock (session level), waited for up to ``timeout`` seconds, then
    PurposeLockedError. Exclusive for whatever may remove objects of the purpose (a run's
    recovery of 'uploading' orphans, purges, subject erasures); shared for the units of one run
    (retention.dag_factory), which only add objects: a recovery never runs beside an upload."""
    try_lock = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    deadline = time.monotonic() + timeout
    while True:
        got = conn.execute(f"SELECT {try_lock}(hashtext(%s))", (purpose_lock_name(purpose),)).fetchone()[0]
        if not conn.autocommit:
            conn.commit()
        if got:
            return
        if time.monotonic() >= deadline:
            raise PurposeLockedError(
                on_timeout
                or f"another run of purpose {purpose!r} holds its advisory lock (waited {timeout:.0f}s); "
                "nothing was changed by this run"
            )
        time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))


def batches_lock_name(purpose: str) -> str:
    return f"retention:{purpose}:batches"


def wait_for_batches_in_flight(conn: psycopg.Connection, purpose: str) -> None:
    """In the caller's transaction (its commit lets go): wait, at most BATCHES_LOCK_TIMEOUT, for
    the purpose's batches still open on other sessions, then PurposeLockedError."""
    conn.execute(f"SET LOCAL lock_timeout = '{BATCHES_LOCK_TIMEOUT}'")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (batches_lock_name(purpose),))
    except psycopg.errors.LockNotAvailable:
        conn.rollback()
        raise PurposeLockedError(
            f"a batch of purpose {purpose!r} is still open on another session after {BATCHES_LOCK_TIMEOUT} (its run "
            "lost its purpose lock: its control session ended); no orphan was removed, try again"
        ) from None
    conn.execute("SET LOCAL lock_timeout = 0")


def unit_batches_lock_name(unit_lock: str) -> str:
    """Held (shared) by each batch transaction of a unit's try, from its row locks to its commit,
    on the connection that commits it; a later try of the unit takes it exclusively before it
    counts what the run deleted (wait_for_unit_batches)."""
    return f"{unit_lock}:batches"


def wait_for_unit_batches(conn: psycopg.Connection, unit_lock: str) -> None:
    """In the caller's transaction (its commit lets go): wait, at most BATCHES_LOCK_TIMEOUT, for
    the batches an earlier try of the unit still has open on another session, then
    PurposeLockedError. The unit's own lock lives on that try's control session: ended (a DBA,
    a network cut), it frees the lock while the try's batch on its other connection may still
    commit, and a retry that counted the run's deletions before that commit would take the
    batch's rows' place in the approved count with rows beyond it."""
    conn.execute(f"SET LOCAL lock_timeout = '{BATCHES_LOCK_TIMEOUT}'")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (unit_batches_lock_name(unit_lock),))
    except psycopg.errors.LockNotAvailable:
        conn.rollback()
        raise PurposeLockedError(
            f"a batch of an earlier try of {unit_lock} is still open on another session after {BATCHES_LOCK_TIMEOUT} "
            "(that try lost its control session); nothing was changed by this try, try again"
        ) from None
    conn.execute("SET LOCAL lock_timeout = 0")


def release_purpose_lock(conn: psycopg.Connection, purpose: str, *, shared: bool = False) -> None:
    unlock = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
    conn.execute(f"SELECT {unlock}(hashtext(%s))", (purpose_lock_name(purpose),))
    if not conn.autocommit:
        conn.commit()


def lock_holders(conn, tables: list[str], *, readers: bool = False, partitions: bool = True) -> str:
    """The other sessions of this database with a lock on these tables (and, with ``partitions``,
    on their partitions) now, as "pid 123 (alice, psql), pid 124 (dba, psql, waiting)": a lock
    wait that ran out names whom it most likely waited for. A reader's lock blocks only a
    DBA's ALTER or DROP, so readers are named when someone waits on these tables (a request
    queued behind a reader blocks every request after it) or with ``readers`` (a detach waits
    for them). Never their query: pid, user and application name are what any role sees of
    another session."""
    # The partitions from the catalog (pg_partition_tree would wait for the very lock in the way).
    tree = (
        " UNION SELECT i.inhrelid FROM tables JOIN pg_inherits AS i ON i.inhparent = tables.oid" if partitions else ""
    )
    rows = conn.execute(
        "WITH RECURSIVE named AS (SELECT to_regclass(t) AS oid FROM unnest(%(tables)s::text[]) AS t),"
        f" tables AS (SELECT oid FROM named{tree}),"
        " locks AS (SELECT l.pid, l.mode, l.granted FROM pg_locks AS l"
        "  WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "  AND l.relation IN (SELECT oid FROM tables) AND l.pid <> pg_backend_pid())"
        " SELECT a.pid, a.usename, a.application_name, bool_or(NOT l.granted) FROM locks AS l"
        " JOIN pg_stat_activity AS a USING (pid)"
        " WHERE %(readers)s OR l.mode <> 'AccessShareLock' OR EXISTS (SELECT FROM locks WHERE NOT granted)"
        " GROUP BY 1, 2, 3 ORDER BY a.pid",
        {"tables": tables, "readers": readers},
    ).fetchall()
    return ", ".join(
        f"pid {pid} ({user or '?'}, {app or 'no application name'}{', waiting' if waits else ''})"
        for pid, user, app, waits in rows
    )


def has_waiters(conn, backend_pid: int) -> bool:
    """Whether a session waits for a lock that the backend ``backend_pid`` holds (pg_locks is
    visible to every role, unlike other sessions' wait events in pg_stat_activity)."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND %s = ANY(pg_blocking_pids(pid)))",
        (backend_pid,),
    ).fetchone()[0]
