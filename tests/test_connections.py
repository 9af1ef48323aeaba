"""The source connection's extras reach both drivers: psycopg (the engine's transactions) and
ADBC (its Arrow reads) connect with what the Postgres provider's hook connected with."""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pytest

from tools import devstack

pytestmark = pytest.mark.integration


@pytest.fixture
def tuned_connection(services, source_dsn, monkeypatch) -> str:
    pg = services["pg"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_TUNED_SOURCE",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": pg.port,
                "login": devstack.PG_SUPERUSER,
                "password": pg.password,
                "schema": devstack.SOURCE_DB,
                "extra": {
                    "sslmode": "disable",
                    "options": "-c statement_timeout=4321 -c search_path=retention",
                    "keepalives": "1",
                    "keepalives_idle": "37",
                    "connect_timeout": "7",
                },
            }
        ),
    )
    return "tuned_source"


def test_every_extra_reaches_psycopg_and_adbc(tuned_connection):
    from retention.connections import conninfo

    dsn = conninfo(tuned_connection)
    assert "keepalives_idle=37" in dsn and "connect_timeout=7" in dsn and "sslmode=disable" in dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "4321ms"
        assert conn.execute("SHOW search_path").fetchone()[0] == "retention"
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is False
    with adbc.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('statement_timeout'), current_setting('search_path')")
        assert cur.fetchone() == ("4321ms", "retention")


def test_a_wrong_password_fails_at_the_hook(tuned_connection, services, monkeypatch):
    from retention.connections import conninfo

    pg = services["pg"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_WRONG_SOURCE",
        json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": "postgres", "password": "no"}
        ),
    )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        conninfo("wrong_source")


def test_the_tasks_and_the_page_use_the_same_string(tuned_connection, monkeypatch):
    from retention import connections, tasks

    assert tasks.source_dsn(tuned_connection) == connections.conninfo(tuned_connection)


def test_the_archive_client_has_a_connection_for_each_request_in_flight(services, monkeypatch):
    """The engine has up to 8 objects in flight, each copying its files 8 at a time: a client with
    botocore's default pool (10) drops and reopens connections beyond it, with a warning each in
    the task log. The Airflow connection's own botocore settings (config_kwargs) are kept."""
    archive = json.loads(os.environ["AIRFLOW_CONN_ARCHIVE_S3"])
    archive["extra"]["config_kwargs"] = {"retries": {"max_attempts": 7, "mode": "standard"}}
    monkeypatch.setenv("AIRFLOW_CONN_ARCHIVE_S3", json.dumps(archive))
    from retention.archive.store import MAX_POOL_CONNECTIONS
    from retention.tasks import archive_store

    client = archive_store().client
    assert client.meta.config.max_pool_connections == MAX_POOL_CONNECTIONS
    assert client.meta.config.retries == {"total_max_attempts": 8, "mode": "standard"}  # 7 retries: kept

    dropped = []

    class Dropped(logging.Handler):
        def emit(self, record):
            if "pool is full" in record.getMessage():
                dropped.append(record)

    handler = Dropped()
    logging.getLogger("urllib3.connectionpool").addHandler(handler)
    try:
        all_in_flight = threading.Barrier(MAX_POOL_CONNECTIONS)

        def request(_):
            all_in_flight.wait(30)
            client.list_buckets()

        with ThreadPoolExecutor(MAX_POOL_CONNECTIONS) as pool:
            list(pool.map(request, range(MAX_POOL_CONNECTIONS)))
    finally:
        logging.getLogger("urllib3.connectionpool").removeHandler(handler)
    assert not dropped, f"{len(dropped)} connections dropped"


def _other_sessions(conn) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    ).fetchone()[0]


def _settles_at(conn, expected: int) -> bool:
    for _ in range(100):  # a closed connection's backend exits a moment later
        if _other_sessions(conn) <= expected:
            return True
        threading.Event().wait(0.05)
    return False


def test_the_reader_opened_meanwhile_is_closed_when_the_run_fails_before_asking_for_it(source_dsn):
    """The engine opens its Arrow reader on a thread while it locks and plans; a run that fails
    before it reads (purpose lock taken, plan refused) must not leave that connection open."""
    from retention.archive.db import reader_opened_meanwhile

    with psycopg.connect(source_dsn, autocommit=True) as watcher:
        before = _other_sessions(watcher)
        with pytest.raises(RuntimeError, match="the run failed"), reader_opened_meanwhile(source_dsn):
            raise RuntimeError("the run failed before reading")
        assert _settles_at(watcher, before), "the reader's connection was left open"
        with reader_opened_meanwhile(source_dsn) as opened:
            with opened().cursor() as cur:
                cur.execute("SELECT current_setting('default_transaction_isolation')")
                assert cur.fetchone() == ("read committed",)
            assert _other_sessions(watcher) >= before + 1
        assert _settles_at(watcher, before)


def test_a_reader_that_cannot_connect_fails_where_it_is_asked_for(services, source_dsn):
    """A refused connection is raised to the run when it asks for the reader, not swallowed; a
    run that failed first keeps its own error."""
    from retention.archive.db import reader_opened_meanwhile

    wrong = source_dsn.replace(services["pg"].password, "not-the-password")
    assert wrong != source_dsn
    with pytest.raises(Exception, match="password authentication failed"):
        with reader_opened_meanwhile(wrong) as opened:
            opened()
    with pytest.raises(RuntimeError, match="its own error"), reader_opened_meanwhile(wrong):
        raise RuntimeError("its own error")
