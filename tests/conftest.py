"""Test services: a throwaway PostgreSQL cluster and an S3 server (moto) on free loopback ports.

They are started once per test session, before any test module imports Airflow (Airflow reads
its configuration at import time), and stopped at the end. Nothing is mocked: integration
tests talk to real PostgreSQL and to the S3 API over HTTP.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "plugins"), str(REPO_ROOT)]

from tools import devstack  # noqa: E402

pytest.register_assert_rewrite("tests.outcome")

_SERVICES: dict = {}


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # never under xdist workers
        return
    state = Path(tempfile.mkdtemp(prefix="retention-tests-"))
    state.chmod(0o755)
    pg = devstack.Postgres(state / "pg", devstack.free_port(), secrets.token_urlsafe(12))
    pg.start()
    pg.ensure_database(devstack.SOURCE_DB)
    pg.ensure_database("airflow_tests")
    s3 = devstack.S3Server(devstack.free_port(), state / "moto.log")
    s3.start()
    from tools.stripe_stub import StripeStub  # the payment processor's API, on loopback

    stripe_stub = StripeStub().start()
    _SERVICES.update(state=state, pg=pg, s3=s3, stripe=stripe_stub)

    airflow_home = state / "airflow"
    airflow_home.mkdir()
    # The shipped policy runs every purpose in preview; the tests exercise enforcement, so they
    # read the same schedule switched to enforce (tests of preview point back at the shipped file).
    from retention.paths import POLICY_FILE

    enforced_policy = state / "retention_policy.enforce.yaml"
    enforced_policy.write_text(
        POLICY_FILE.read_text(encoding="utf-8").replace("mode: preview", "mode: enforce"), encoding="utf-8"
    )
    # The code paths connect as their roles (docs/audit.md, "Roles"): the purpose DAGs as
    # retention_engine, the subject requests as retention_rights, the page as retention_reader.
    # The login users are created with the schema (the source_dsn fixture); the tests' own
    # set-up and checks connect as the superuser.
    passwords = devstack.new_role_passwords()
    _SERVICES["role_passwords"] = passwords
    sources = devstack.role_connections("127.0.0.1", pg.port, passwords)
    archive = {
        "conn_type": "aws",
        "login": devstack.S3_ACCESS_KEY,
        "password": devstack.S3_SECRET_KEY,
        "extra": {"endpoint_url": s3.endpoint_url, "region_name": devstack.S3_REGION},
    }
    os.environ.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.dsn("airflow_tests").replace(
                "postgresql://", "postgresql+psycopg://"
            ),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(state / "airflow-logs"),
            **{f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in sources.items()},
            "AIRFLOW_CONN_ARCHIVE_S3": json.dumps(archive),
            "AIRFLOW_CONN_RETENTION_AIRFLOW_DB": json.dumps(
                devstack.metadata_connection("127.0.0.1", pg.port, pg.password, devstack.PG_SUPERUSER, "airflow_tests")
            ),
            "AIRFLOW_CONN_STRIPE_DEFAULT": json.dumps(stripe_stub.connection()),
            "AWS_ACCESS_KEY_ID": devstack.S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": devstack.S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": devstack.S3_REGION,
            "RETENTION_POLICY_FILE": str(enforced_policy),
            "RETENTION_TEST_SOURCE_DSN": pg.dsn(devstack.SOURCE_DB),
            "RETENTION_TEST_S3_ENDPOINT": s3.endpoint_url,
            # The gates' Data Docs cost 1-3 s per gate: off, except in the tests that check them
            # (tests/test_checks.py, tests/test_retention_ui.py); the Checkpoints run either way.
            "RETENTION_DATA_DOCS_DIR": "off",
            # The key of the archived identifiers' hashes (retention.identifiers): one per session.
            "RETENTION_IDENTIFIER_KEY": secrets.token_urlsafe(32),
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _SERVICES:
        return
    _SERVICES["stripe"].stop()
    _SERVICES["s3"].stop()
    _SERVICES["pg"].stop()
    shutil.rmtree(_SERVICES["state"], ignore_errors=True)
    _SERVICES.clear()


@pytest.fixture(scope="session")
def services() -> dict:
    return _SERVICES


@pytest.fixture(scope="session")
def source_dsn(services) -> str:
    from retention.schema import apply_schema

    dsn = services["pg"].dsn(devstack.SOURCE_DB)
    apply_schema(dsn)
    devstack.ensure_role_users(dsn, services["role_passwords"])
    return dsn


@pytest.fixture(scope="session")
def role_dsn(services, source_dsn):
    """The libpq URI of a role's login user: ``role_dsn("retention_engine")``."""

    def dsn(role: str) -> str:
        user, _ = devstack.ROLE_USERS[role]
        return services["pg"].dsn(devstack.SOURCE_DB, user=user, password=services["role_passwords"][role])

    return dsn


@pytest.fixture
def stripe_stub(services):
    """The stub payment processor (tools/stripe_stub.py), emptied for the test."""
    services["stripe"].state.reset()
    return services["stripe"]


@pytest.fixture(scope="session")
def s3_endpoint(services) -> str:
    return services["s3"].endpoint_url


@pytest.fixture(scope="session")
def policy():
    from retention.policy import default_policy

    return default_policy()


@pytest.fixture
def storage(policy, monkeypatch):
    """Fresh bucket names for each test, seen by the engine and by DAG tasks (env overrides).

    Fresh buckets rather than emptied ones: objects under COMPLIANCE Object Lock cannot be
    deleted before their retain-until date, by design."""
    suffix = secrets.token_hex(4)
    monkeypatch.setenv("RETENTION_ARCHIVE_BUCKET", f"archive-{suffix}")
    monkeypatch.setenv("RETENTION_DOCUMENTS_BUCKET", f"documents-{suffix}")
    return policy.storage_settings()


@pytest.fixture
def s3(s3_endpoint, storage):
    """A boto3 client on the test S3 server, with this test's two buckets created."""
    client = devstack.s3_client(s3_endpoint)
    devstack.ensure_buckets(client, storage.archive_bucket, storage.documents_bucket)
    return client


@pytest.fixture
def db(source_dsn):
    """An empty source database (schema applied) for each test; yields a psycopg connection."""
    import psycopg

    with psycopg.connect(source_dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname IN ('app', 'retention')"
        ).fetchall()
        # A failed test may leave a connection (a paused engine thread, a killed worker's
        # child) holding locks: end them, so one failure cannot hang the rest of the suite.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        conn.execute("SET lock_timeout = '60s'")
        conn.execute("TRUNCATE " + ", ".join(t[0] for t in tables) + " RESTART IDENTITY CASCADE")
        yield conn


@pytest.fixture(scope="session")
def airflow_db(services) -> None:
    """Airflow's metadata database, migrated once per session (dag.test() needs it)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The archive units' pool, as the stacks create it (tools/devstack.py, docker-compose.yaml).
    from airflow.models.pool import Pool

    name, slots = devstack.SOURCE_WRITERS_POOL
    Pool.create_or_update_pool(name, slots, "Archive units writing to the source database at once", False)


@pytest.fixture(scope="session")
def api_server(airflow_db, tmp_path_factory):
    """One real `airflow api-server` for the session (tests/api_server.py): the browser test's
    viewer `dpo`, the trigger guard's admin `operator`, the browser approval's `approver` and the
    run notes' `reporter` (users: may act on DAGs, not administer); it serves the Data Docs of an
    empty folder (tests/test_browser_data_docs.py builds them there)."""
    from tests.api_server import running_api_server

    users = {"dpo": "viewer", "operator": "admin", "approver": "user", "reporter": "user"}
    home, docs = tmp_path_factory.mktemp("api-server"), tmp_path_factory.mktemp("api-server-data-docs")
    with running_api_server(home, users, data_docs=docs) as server:
        yield server
