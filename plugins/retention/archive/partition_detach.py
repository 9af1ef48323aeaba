"""Step 3 of a partition's retirement (retention.archive.partitions): ``DETACH PARTITION ...
CONCURRENTLY``, and at recovery ``... FINALIZE`` for a detach left pending, each waiting a bounded
time for the transactions that use the table.

The statement waits for every transaction that uses the table to end; one that never ends (a
nightly ``pg_dump`` holds one for hours) would hold the run, and the purpose's lock, as long. So it
waits at most ``RETENTION_DETACH_WAIT`` (default 30min); past it the run stops, naming the
sessions waited for (pid, user, application: never their query). The write-ahead record stays
open for the next run: a partition still attached is kept, one left pending is finalized.
"""

from __future__ import annotations

import contextlib
import os
import re

import psycopg
from psycopg import sql

from retention.archive.locks import lock_holders
from retention.archive.partition_plan import attached_state
from retention.archive.run import RetentionError

DETACH_WAIT_ENV = "RETENTION_DETACH_WAIT"
DEFAULT_DETACH_WAIT = "30min"
# At most this long: the watch alarms on a retirement open longer (retention.alerts).
LONGEST_DETACH_WAIT_S = 4 * 3600
_INTERVAL = re.compile(r"([1-9][0-9]*)\s*(ms|s|min|h)")
_SECONDS = {"ms": 0.001, "s": 1, "min": 60, "h": 3600}


def detach_wait(environ: dict | None = None) -> str:
    """The configured wait, as PostgreSQL reads it (``90s``, ``30min``, ``2h``; at most 4h)."""
    value = (environ if environ is not None else os.environ).get(DETACH_WAIT_ENV, "").strip() or DEFAULT_DETACH_WAIT
    interval = _INTERVAL.fullmatch(value)
    if not interval or int(interval[1]) * _SECONDS[interval[2]] > LONGEST_DETACH_WAIT_S:
        raise ValueError(
            f"{DETACH_WAIT_ENV} must be a positive number of ms, s, min or h up to 4h (e.g. 30min), got {value!r}"
        )
    return value


def _detach_lock(schema: str, table: str) -> tuple[str]:
    """The advisory lock a session holds from before its detach of one of the table's partitions
    until the statement ends (retention:detach:<schema>.<table>, hashed)."""
    return (f"retention:detach:{schema}.{table}",)


def _lock_detaches(autocommit_conn, schema: str, table: str, partition: str) -> None:
    """The table's detach lock, waited for at most ``RETENTION_DETACH_WAIT``: its holder is a unit
    beside this one, or the backend of a worker killed during its detach. PostgreSQL notices a
    closed socket only when the statement ends, so that backend goes on detaching (up to its own
    wait) after its process is gone."""
    wait = detach_wait()
    autocommit_conn.execute(f"SET lock_timeout = '{wait}'")
    try:
        autocommit_conn.execute("SELECT pg_advisory_lock(hashtext(%s))", _detach_lock(schema, table))
    except psycopg.errors.LockNotAvailable:
        raise RetentionError(
            f"a detach of a partition of {table} still ran after {wait} ({DETACH_WAIT_ENV}), maybe for an "
            f"interrupted run: partition {partition} and its rows stay as they are; the next run finishes or keeps it"
        ) from None
    finally:
        with contextlib.suppress(psycopg.OperationalError):
            autocommit_conn.execute("RESET lock_timeout")


def detach(autocommit_conn, schema: str, table: str, partition: str) -> None:
    """``DETACH PARTITION ... CONCURRENTLY``: the table stays readable and writable. One at a time
    a table: PostgreSQL refuses a second while one of its partitions is pending detach (units side
    by side wait for each other here, holding no lock on the table meanwhile)."""
    _lock_detaches(autocommit_conn, schema, table, partition)
    try:
        _waited(autocommit_conn, schema, table, partition, "CONCURRENTLY")
    finally:
        with contextlib.suppress(psycopg.OperationalError):  # a broken session released it
            autocommit_conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", _detach_lock(schema, table))


def wait_for_detach_in_flight(autocommit_conn, schema: str, table: str, partition: str) -> None:
    """Wait until no session is detaching a partition of the table (_lock_detaches): recovery
    must look at the partition of an interrupted retirement once the dead worker's detach has
    ended, or it would keep a partition that statement then detaches, out of every later run's
    reach (its rows neither in the table nor archived, no open record)."""
    _lock_detaches(autocommit_conn, schema, table, partition)
    autocommit_conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", _detach_lock(schema, table))


def finalize(autocommit_conn, schema: str, table: str, partition: str) -> None:
    """``DETACH PARTITION ... FINALIZE``: a detach an interrupted run left pending, finished."""
    _waited(autocommit_conn, schema, table, partition, "FINALIZE")


def _waited(autocommit_conn, schema: str, table: str, partition: str, how: str) -> None:
    wait = detach_wait()
    autocommit_conn.execute(f"SET statement_timeout = '{wait}'")
    try:
        autocommit_conn.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {} " + how).format(
                sql.Identifier(schema, table), sql.Identifier(schema, partition)
            )
        )
    except psycopg.errors.QueryCanceled:
        # DETACH ... CONCURRENTLY waits for the transactions that locked the table itself.
        parent = [sql.Identifier(schema, table).as_string(autocommit_conn)]
        named = lock_holders(autocommit_conn, parent, readers=True, partitions=False)
        where = attached_state(autocommit_conn, schema, table, partition)
        raise RetentionError(
            f"the detach of partition {partition} of {table} waited {wait} ({DETACH_WAIT_ENV}) for the"
            f" transactions using the table to end: {named or 'they ended just after'}; the partition is"
            f" {where}, its rows kept (archived objects not committed yet); the next run finishes or keeps it"
        ) from None
    finally:
        with contextlib.suppress(psycopg.OperationalError):
            autocommit_conn.execute("RESET statement_timeout")
