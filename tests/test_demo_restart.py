"""The demo survives a restart: the S3 server's state is saved on `make down` and loaded on
`make demo`, so objects, version ids, checksums and locks match what the database remembers;
when they don't, `up` refuses with a clear message and `reset` starts over. As root, the stack
also comes up from a folder the `postgres` user cannot enter (a clone under a 0700 home).

Real PostgreSQL (its own cluster), the real S3 server wrapper, the real engine; no Airflow."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tools import devstack

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]


def _start_s3server(port: int, state: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.s3server", "--port", str(port), "--state", str(state)],
        cwd=REPO_ROOT,
        stdout=open(log, "ab"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    server = devstack.S3Server(port, log)
    devstack.wait_until(lambda: proc.poll() is None and server._healthy(), 60, "s3server", log)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_s3server_keeps_objects_versions_and_locks(tmp_path):
    port = devstack.free_port()
    state = tmp_path / "s3" / "state.pickle"
    proc = _start_s3server(port, state, tmp_path / "s3.log")
    client = devstack.s3_client(f"http://127.0.0.1:{port}")
    devstack.ensure_buckets(client, "archive-r", "documents-r")
    put = client.put_object(Bucket="archive-r", Key="p/a.parquet", Body=b"x" * 5000, ChecksumAlgorithm="SHA256")
    until = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    client.put_object_retention(
        Bucket="archive-r",
        Key="p/a.parquet",
        VersionId=put["VersionId"],
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until},
    )
    _stop(proc)
    assert state.exists()

    proc = _start_s3server(port, state, tmp_path / "s3.log")
    try:
        assert {b["Name"] for b in client.list_buckets()["Buckets"]} == {"archive-r", "documents-r"}
        got = client.get_object(
            Bucket="archive-r", Key="p/a.parquet", VersionId=put["VersionId"], ChecksumMode="ENABLED"
        )
        assert got["Body"].read() == b"x" * 5000
        assert got["ChecksumSHA256"] == put["ChecksumSHA256"]
        assert got["ObjectLockMode"] == "COMPLIANCE" and got["ObjectLockRetainUntilDate"] == until
        with pytest.raises(client.exceptions.ClientError):
            client.delete_object(Bucket="archive-r", Key="p/a.parquet", VersionId=put["VersionId"])
    finally:
        _stop(proc)


def _run_engine(config: devstack.StackConfig, purpose: str, day: dt.date) -> list:
    from retention.archive.engine import RetentionEngine
    from retention.archive.run import RunContext
    from retention.archive.store import ArchiveStore
    from retention.policy import default_policy

    policy = default_policy()
    store = ArchiveStore(devstack.s3_client(config.s3_endpoint), policy.storage_settings())
    engine = RetentionEngine(policy, purpose, config.source_dsn(), store)
    logical = dt.datetime.combine(day, dt.time(0), tzinfo=policy.tz)
    return engine.archive_and_delete(RunContext(purpose, f"test__{purpose}__{day}", logical))


@pytest.fixture
def closed_home():
    """As root: a 0700 folder (like /root or a private home) holding the demo's state."""
    home = Path(tempfile.mkdtemp(prefix="retention-home-"))
    home.chmod(0o700)
    state = home / "clone" / ".local"
    yield state
    import shutil

    if (state / "stack.json").exists():
        devstack.reset(state)
        pg_root = devstack.StackConfig.load_or_create(state).postgres.root
        if pg_root != state:
            shutil.rmtree(pg_root, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


def test_demo_data_survives_down_and_up_and_reset_starts_over(closed_home, monkeypatch, capsys):
    for name in [k for k in os.environ if k.startswith("RETENTION_") and k.endswith("_BUCKET")]:
        monkeypatch.delenv(name)
    state = closed_home
    state.mkdir(parents=True)
    config = devstack.StackConfig.load_or_create(
        state, devstack.free_port(), devstack.free_port(), devstack.free_port(), devstack.free_port()
    )
    # Yesterday's demo: the runs after the restart are the next day's, and no run may be dated
    # in the future.
    today = dt.date.today() - dt.timedelta(days=1)
    devstack.up(config, customers=40, reference_date=today.isoformat(), with_airflow=False)
    if os.geteuid() == 0:
        assert not devstack.postgres_can_enter(state)
        assert config.postgres.root != state, "the cluster lives where postgres can reach it"
    outcomes = _run_engine(config, "aml", today) + _run_engine(config, "quotes", today)
    archived = sum(o.objects for o in outcomes)
    assert archived > 0, [o.as_dict() for o in outcomes]

    assert "seeded      " in capsys.readouterr().out
    devstack.down(state)
    devstack.up(config, customers=40, reference_date=today.isoformat(), with_airflow=False)
    # A second `make demo` keeps the data and says how to start over (no "seeded" after "nothing done").
    again = capsys.readouterr().out
    assert "kept: the database is already seeded (`make reset` starts over from a fresh seed)" in again
    assert "seeded      " not in again and "--reset" not in again, again
    from retention.policy import default_policy

    storage = default_policy().storage_settings()
    client = devstack.s3_client(config.s3_endpoint)
    assert (
        devstack.missing_s3_objects(config.source_dsn(), client, storage.archive_bucket, storage.documents_bucket) == []
    )
    # The next day's runs (documents copied into the archive, purges) find every object.
    tomorrow = today + dt.timedelta(days=1)
    _run_engine(config, "aml", tomorrow)
    _run_engine(config, "contracts", tomorrow)

    # A lost S3 state: `up` refuses instead of running DAGs into missing objects.
    devstack.down(state)
    config.s3_state_file.unlink()
    with pytest.raises(devstack.StackError, match="make reset"):
        devstack.up(config, customers=40, reference_date=today.isoformat(), with_airflow=False)

    devstack.reset(state)
    assert not config.s3_state_file.exists() and not (config.postgres.data_dir / "PG_VERSION").exists()
    devstack.up(config, customers=40, reference_date=today.isoformat(), with_airflow=False)
    import psycopg

    with psycopg.connect(config.source_dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM retention.archive_manifest").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM app.customers").fetchone()[0] > 0


def test_s3server_survives_a_key_deleted_during_a_save(capsys):
    """moto yields (key, None) for a key deleted while the snapshot reads it: the save is skipped
    and retried, the server lives on (a TypeError there used to end the demo's S3 server)."""
    from types import SimpleNamespace

    from tools import s3server

    class Keys:
        def iterlists(self):
            yield "gone.parquet", None

    state = {"buckets": {("123", "aws"): {"b": SimpleNamespace(keys=Keys())}}}
    assert s3server.fingerprint(state) == (("123", "aws", "b", ()),)

    def broken():
        raise TypeError("'NoneType' object is not iterable")

    assert s3server._quietly(broken) is None
    assert "state not saved this time (TypeError" in capsys.readouterr().out


def test_a_new_demo_signs_its_tokens_with_a_key_long_enough_for_hs512(tmp_path):
    """Airflow's API tokens are HS512: a shorter key makes PyJWT warn on every token."""
    config = devstack.StackConfig.load_or_create(tmp_path / "state")
    assert len(config.jwt_secret.encode()) >= 64
    assert devstack.StackConfig.load_or_create(tmp_path / "state").jwt_secret == config.jwt_secret


def test_a_demo_has_an_identifier_key_that_never_changes(tmp_path):
    """The key of the archived e-mails' hashes (retention.identifiers) is created once and kept
    (another key would not find what was archived); a demo created before it gets one."""
    import json

    config = devstack.StackConfig.load_or_create(tmp_path / "state")
    assert (
        len(config.identifier_key) >= 32 and config.airflow_env()["RETENTION_IDENTIFIER_KEY"] == config.identifier_key
    )
    assert devstack.StackConfig.load_or_create(tmp_path / "state").identifier_key == config.identifier_key
    stack = tmp_path / "state" / "stack.json"
    stack.write_text(json.dumps({k: v for k, v in json.loads(stack.read_text()).items() if k != "identifier_key"}))
    older = devstack.StackConfig.load_or_create(tmp_path / "state")
    assert len(older.identifier_key) >= 32
    assert devstack.StackConfig.load_or_create(tmp_path / "state").identifier_key == older.identifier_key


def test_a_demo_has_a_reporter_account_for_the_run_notes(tmp_path):
    """The report task writes each run's note through the REST API with its own account (role
    `user`: it may edit DAG runs); a demo created before gets one."""
    import json

    config = devstack.StackConfig.load_or_create(tmp_path / "state")
    env = config.airflow_env()
    assert f"{devstack.REPORTER_USER}:user" in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
    assert len(config.reporter_password) >= 32
    stack = tmp_path / "state" / "stack.json"
    stack.write_text(json.dumps({k: v for k, v in json.loads(stack.read_text()).items() if k != "reporter_password"}))
    older = devstack.StackConfig.load_or_create(tmp_path / "state")
    assert len(older.reporter_password) >= 32 and older.identifier_key == config.identifier_key


def test_a_task_process_loads_the_plugin_without_the_gitwildmatch_warning(tmp_path):
    """Every Airflow process (a task's included: the Task SDK's plugin loader reads
    plugins/.airflowignore as globs whatever [core] dag_ignore_file_syntax says) met pathspec's
    deprecation of GitWildMatchPattern: one warning in every task log. The stack's environment
    filters it; without the filter it is there, so this test can tell."""
    config = devstack.StackConfig.load_or_create(tmp_path / "state")
    env = devstack._component_env(config) | {"AIRFLOW_HOME": str(tmp_path / "home")}
    code = "from airflow.sdk import plugins_manager as pm; print(sorted(p.name for p in pm._get_plugins()[0]))"

    def load_plugins(environment: dict) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "'retention'" in done.stdout, done.stdout
        return done.stdout + done.stderr

    assert "gitwildmatch" not in load_plugins(env)
    assert "gitwildmatch" in load_plugins({k: v for k, v in env.items() if k != "PYTHONWARNINGS"})
