"""The Retention page's source database: its settings, its read-only connections (kept between
requests), and the stored counts per purpose with their background recount (retention_ui.recount).

Settings ([retention] section of airflow.cfg, or AIRFLOW__RETENTION__<KEY>): see retention_ui.app.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time


def overdue_days_setting() -> int:
    from airflow.configuration import conf
    from retention.alerts import DEFAULT_OVERDUE_DAYS

    return conf.getint("retention", "overdue_days", fallback=DEFAULT_OVERDUE_DAYS)


def status_settings() -> tuple[dt.timedelta, dt.timedelta, float]:
    """(ttl, max_age, wait) of the stored counts (module docstring)."""
    from airflow.configuration import conf

    ttl = conf.getint("retention", "status_ttl_seconds", fallback=60)
    max_age = conf.getint("retention", "status_max_age_seconds", fallback=900)
    wait = conf.getfloat("retention", "status_wait_seconds", fallback=5.0)
    return dt.timedelta(seconds=ttl), dt.timedelta(seconds=max(max_age, ttl)), wait


def source_dsn(setting: str = "reader_conn_id") -> str:
    """libpq connection string of the page's connection (as retention_reader), of the subject
    requests' (``rights_conn_id``, the form) or of the recount's (``counter_conn_id``, as
    retention_counter: the one that stores the counts), read the server's way (secrets backends, then the
    metadata database), every extra applied (retention.connections)."""
    from airflow.configuration import conf
    from airflow.models.connection import Connection
    from retention.connections import COUNTER_CONN_ID, READER_CONN_ID, RIGHTS_CONN_ID, conninfo

    default = {"reader_conn_id": READER_CONN_ID, "rights_conn_id": RIGHTS_CONN_ID, "counter_conn_id": COUNTER_CONN_ID}[
        setting
    ]
    conn_id = conf.get("retention", setting, fallback=default)
    return conninfo(connection=Connection.get_connection_from_secrets(conn_id))


# Opening a connection costs ~50 ms here (the provider's hook opens one to read its parameters,
# then the SCRAM handshake), more than the page's queries: the parameters are read at most once a
# minute (an RDS IAM token in them lives 15 minutes) and a few read-only connections are kept
# between requests, for IDLE_SECONDS at most.
DSN_SECONDS = 60

IDLE_SECONDS = 300

MAX_IDLE = 4

_dsn_lock = threading.Lock()

_dsn: tuple[float, str] | None = None

_idle_lock = threading.Lock()

_idle: list[tuple[float, object]] = []


def cached_source_dsn() -> str:
    global _dsn
    with _dsn_lock:
        if _dsn is None or time.monotonic() - _dsn[0] > DSN_SECONDS:
            _dsn = (time.monotonic(), source_dsn())
        return _dsn[1]


def _open_read_only():
    import psycopg

    conn = psycopg.connect(cached_source_dsn(), autocommit=True, application_name="retention:ui")
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("SET default_transaction_read_only = on")
    return conn


def _checkout():
    """A kept connection that still answers, or a new one."""
    while True:
        with _idle_lock:
            if not _idle:
                break
            since, conn = _idle.pop()
        if time.monotonic() - since > IDLE_SECONDS:
            conn.close()
            continue
        try:
            conn.execute("SELECT 1")  # the server may have ended it (a restart, pg_terminate_backend)
            return conn
        except Exception:
            conn.close()
    return _open_read_only()


@contextlib.contextmanager
def connect():
    """A read-only connection to the source database for the duration of the block."""
    from psycopg.pq import TransactionStatus

    conn = _checkout()
    try:
        yield conn
    except BaseException:
        conn.close()
        raise
    with _idle_lock:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE and len(_idle) < MAX_IDLE:
            _idle.append((time.monotonic(), conn))
            return
    conn.close()


def _connect_for_counting():
    """The recount's connection, as retention_counter: the page's reads, and writing its counts
    into retention.status_counts (the only table that role may write)."""
    import psycopg

    return psycopg.connect(source_dsn("counter_conn_id"), autocommit=True, application_name="retention:ui-recount")


_recounter = None


def recounter():
    """The process's Recounter (created on first use: the plugin is imported at parse time too)."""
    global _recounter
    if _recounter is None:
        from retention_ui.recount import Recounter

        _recounter = Recounter(_connect_for_counting, lambda: status_settings()[:2])
    return _recounter


# How long ?fresh=true waits for its counts at most.
FRESH_WAIT_SECONDS = 300


def counted_figures(conn, policy, now: dt.datetime, overdue_days: int, fresh: bool = False):
    """The stored counts judged at the end (status_counts.read); a recount started when some are
    not fresh, waited for a little when some are withheld (all the way with ``fresh``). Returns
    (the counts, the instant they were judged at, whether a recount is running, its last error)."""
    from retention import status_counts

    ttl, max_age, wait = status_settings()
    counted = status_counts.read(conn, policy, now, overdue_days, ttl, max_age)
    if fresh or any(c.state != "fresh" for c in counted.values()):
        job = recounter().ensure(overdue_days, since=now if fresh else None)
        withheld = any(c.state == "outdated" for c in counted.values())
        if (fresh or withheld) and job.done.wait(FRESH_WAIT_SECONDS if fresh else wait):
            now = dt.datetime.now(dt.UTC)
            counted = status_counts.read(conn, policy, now, overdue_days, ttl, max_age)
    return counted, now, recounter().running(overdue_days), recounter().last_error(overdue_days)
