"""The local stack without Docker: PostgreSQL, an S3 server (moto) and Airflow 3 on 127.0.0.1.

Used by `make demo` / `make down` and by the tests, so that both start the services the same
way. Every process it starts is recorded in <state>/pids/<name>.pid and only those are stopped.

    python -m tools.devstack up      # PostgreSQL + S3 + schema + seed + Airflow, prints URL/login
    python -m tools.devstack up --executor celery --workers 2   # the same on the CeleryExecutor:
                                     # Redis and two `airflow celery worker`s (the Docker route's executor)
    python -m tools.devstack down    # stops what `up` started
    python -m tools.devstack status
    python -m tools.devstack reset   # stops it and removes its data: the next `up` seeds afresh
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE = REPO_ROOT / ".local"
VENV_BIN = Path(sys.executable).parent
SOURCE_DB = "insurer"
AIRFLOW_DB = "airflow"
PG_SUPERUSER = "postgres"
S3_REGION = "eu-west-3"  # Paris
S3_ACCESS_KEY = "demo-access-key"  # moto accepts any key; these never reach AWS
S3_SECRET_KEY = "demo-secret-key"
STRIPE_STUB_KEY = "sk_test_retention_stub"  # the stand-in accepts it; never a real key


class StackError(RuntimeError):
    pass


# A login user in each role of include/sql/schema/050_roles.sql, and the Airflow connection that
# uses it (the ids are retention.connections'): docs/audit.md, "Roles".
ROLE_USERS = {
    "retention_engine": ("retention_engine_user", "source_postgres"),
    "retention_rights": ("retention_rights_user", "source_postgres_rights"),
    "retention_reader": ("retention_reader_user", "source_postgres_reader"),
    "retention_housekeeping": ("retention_housekeeping_user", "source_postgres_housekeeping"),
    "retention_counter": ("retention_counter_user", "source_postgres_counter"),
}


def new_role_passwords(existing: dict[str, str] | None = None) -> dict[str, str]:
    """A password per role's login user: the ones given, a new one for any missing."""
    existing = dict(existing or {})
    return {role: existing.get(role) or secrets.token_urlsafe(16) for role in ROLE_USERS}


def ensure_role_users(admin_dsn: str, passwords: dict[str, str]) -> None:
    """Each role's login user, created or given its password again (the roles themselves come
    with the schema, retention.schema). Run as a user that may create roles."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for role, (user, _) in ROLE_USERS.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN INHERIT PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(passwords[role])
                )
            )
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(user)))


def role_connections(host: str, port: int, passwords: dict[str, str], database: str = SOURCE_DB) -> dict[str, dict]:
    """The Airflow connection of each role's login user."""
    return {
        conn_id: {
            "conn_type": "postgres",
            "host": host,
            "port": port,
            "login": user,
            "password": passwords[role],
            "schema": database,
        }
        for role, (user, conn_id) in ROLE_USERS.items()
    }


def metadata_connection(
    host: str, port: int, password: str, user: str = AIRFLOW_DB, database: str = AIRFLOW_DB
) -> dict:
    """The Airflow connection to Airflow's own metadata database (retention.housekeeping)."""
    return {
        "conn_type": "postgres",
        "host": host,
        "port": port,
        "login": user,
        "password": password,
        "schema": database,
    }


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


# The demo's fixed ports, below Linux's ephemeral range (32768-60999), which the kernel hands to
# client sockets: a fresh clone's `make demo` once failed to bind the Stripe stand-in on 55600
# ("Address already in use") with nothing listening there, most likely a client's port.
DEMO_PORTS = {"pg": 25433, "s3": 25500, "stripe": 25600}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = ""
    if log and log.exists():
        tail = (
            "\n--- last lines of " + str(log) + " ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        )
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def pg_bindir() -> Path:
    """The PostgreSQL server binaries: $PG_BINDIR, else the newest /usr/lib/postgresql/*/bin."""
    candidates = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).parent)
    for path in candidates:
        if (path / "pg_ctl").is_file() and (path / "initdb").is_file():
            return path
    raise StackError(
        "PostgreSQL server binaries not found (initdb, pg_ctl): install them with `apt-get install postgresql`"
    )


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the `postgres` system user."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "running as root needs the `postgres` system user (created by `apt-get install postgresql`)"
        ) from None
    return ["runuser", "-u", "postgres", "--", *cmd]


def _pg_run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL binary (as `postgres` under root) from "/": initdb and pg_ctl change
    back to the working directory, which `postgres` may not enter (a clone under a 0700 home)."""
    return subprocess.run(_as_postgres_user(cmd), cwd="/", **kwargs)


def postgres_can_enter(path: Path) -> bool:
    """Whether the `postgres` system user can reach `path` (always true when not root)."""
    if os.geteuid() != 0:
        return True
    return subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)], cwd="/").returncode == 0


def pg_root_for(state: Path) -> Path:
    """Where the cluster of a stack lives: inside its state folder, unless that folder sits under
    a directory the `postgres` user cannot enter (as root, a clone under a 0700 home): then in
    /var/tmp, one folder per state path, owned by `postgres`."""
    state.mkdir(parents=True, exist_ok=True)
    if postgres_can_enter(state):
        return state
    import hashlib

    digest = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:12]
    root = Path("/var/tmp") / f"retention-demo-pg-{digest}"
    root.mkdir(mode=0o755, exist_ok=True)
    return root


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class Postgres:
    """A throwaway cluster listening on 127.0.0.1 only, data under `root`."""

    root: Path
    port: int
    password: str
    # False: fsync, synchronous commits and full-page writes off (a throwaway cluster for tests
    # and the demo). True: PostgreSQL's defaults, as in production (WAL with full-page images).
    durable: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / "postgres.log"

    def dsn(self, database: str = SOURCE_DB, user: str = PG_SUPERUSER, password: str | None = None) -> str:
        return f"postgresql://{user}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        bindir = pg_bindir()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        sock_dir = self.root / "pgsock"
        sock_dir.mkdir(exist_ok=True)
        _chown_postgres(sock_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.data_dir.chmod(0o700)
            _chown_postgres(self.data_dir)
            pwfile = self.root / "pgsock" / "pwfile"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            _chown_postgres(pwfile)
            try:
                _pg_run(
                    [
                        str(bindir / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        PG_SUPERUSER,
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
            except subprocess.CalledProcessError as exc:
                raise StackError(f"initdb failed: {exc.stderr.strip()}") from exc
            finally:
                pwfile.unlink(missing_ok=True)
        if self.log_file.exists():
            _chown_postgres(self.log_file)
        else:
            self.log_file.touch()
            _chown_postgres(self.log_file)
        if self.is_running():
            return
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sock_dir} "
            + ("" if self.durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off ")
            + "-c shared_buffers=256MB -c max_connections=200 -c timezone=UTC"
        )
        result = _pg_run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-o",
                options,
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "start",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise StackError(f"pg_ctl start failed: {result.stdout}{result.stderr}\nsee {self.log_file}")

    def is_running(self) -> bool:
        bindir = pg_bindir()
        result = _pg_run(
            [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "status"],
            capture_output=True,
            text=True,
        )
        return result.returncode == 0

    def stop(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists() or not self.is_running():
            return
        _pg_run(
            [str(pg_bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            capture_output=True,
            text=True,
        )

    def ensure_database(self, name: str, owner_password: str | None = None) -> None:
        """Create database `name` (and a login role of the same name if a password is given)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            if owner_password:
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
                verb = "ALTER" if exists else "CREATE"
                conn.execute(
                    sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(name), sql.Literal(owner_password)
                    )
                )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                owner = sql.Identifier(name if owner_password else PG_SUPERUSER)
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), owner))


@dataclass
class S3Server:
    """moto's server mode on 127.0.0.1: an S3 API with versioning, Object Lock, checksums."""

    port: int
    log_file: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> subprocess.Popen:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        moto = VENV_BIN / "moto_server"
        if not moto.exists():
            raise StackError(f"{moto} not found: install the dev requirements (make venv)")
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: self._healthy(), 60, f"the S3 server on port {self.port}", self.log_file)
        return self.process

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise StackError(f"the S3 server exited with {self.process.returncode}; see {self.log_file}")
        try:
            urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1)
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            if self.process.poll() is None:
                self.process.kill()


def s3_client(endpoint_url: str):
    import boto3
    from retention.archive.store import client_config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        config=client_config(),
    )


def ensure_buckets(client, archive_bucket: str, documents_bucket: str) -> None:
    """The archive bucket is versioned with Object Lock (the probative tier's immutability)."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    location = {"LocationConstraint": S3_REGION}
    if archive_bucket not in existing:
        client.create_bucket(Bucket=archive_bucket, CreateBucketConfiguration=location, ObjectLockEnabledForBucket=True)
    if documents_bucket not in existing:
        client.create_bucket(Bucket=documents_bucket, CreateBucketConfiguration=location)
    for bucket in (archive_bucket, documents_bucket):
        client.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )


# ---------------------------------------------------------------------------- Airflow

DEMO_USER = "demo"
# The report task's account on the api-server: it writes each run's note (retention.run_note,
# connection retention_airflow_api). SimpleAuthManager's role `user` may edit DAG runs.
REPORTER_USER = "retention_reporter"
# pathspec 1.x deprecates the glob matcher Airflow 3.3 reads plugins/.airflowignore with, in
# every process (the Task SDK's plugin loader ignores [core] dag_ignore_file_syntax): one
# warning in every task log otherwise. Python reads this before any code runs.
PYTHONWARNINGS = "ignore:GitWildMatchPattern:DeprecationWarning"
AIRFLOW_COMPONENTS = {
    # name: command after `airflow`. The API server is bound to loopback; the scheduler and the
    # triggerer don't serve logs (standalone would open log servers on 0.0.0.0:8793/8794).
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{api_port}", "--workers", "1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
# The CeleryExecutor's settings, the same as the Docker route's (docker-compose.yaml; checked by
# tests/test_docker_compose.py): every task on Airflow's default queue, each worker running this
# many tasks at once. The pool (SOURCE_WRITERS_POOL) caps the archive units among them.
CELERY_QUEUE = "default"
CELERY_WORKER_CONCURRENCY = 4
# A local Celery worker's name (worker1, worker2, ...), read by celery_worker_hostname.
WORKER_NAME_ENV = "DEVSTACK_CELERY_WORKER"


def celery_node_name(worker: str) -> str:
    """The Celery node name of a local worker (`airflow celery worker -H`): worker1@<host>."""
    return f"{worker}@{socket.gethostname()}"


def celery_worker_hostname() -> str:
    """[core] hostname_callable of the local Celery workers. Every worker of `make demo` shares
    this machine's host name; Airflow records the one this returns in task_instance.hostname
    (and checks each heartbeat against it), so each worker reports its Celery node name. On the
    Docker route each worker is a container with a host name of its own: not needed there."""
    worker = os.environ.get(WORKER_NAME_ENV)
    return celery_node_name(worker) if worker else socket.getfqdn()


@dataclass
class StackConfig:
    """Everything a stack instance needs; persisted in <state>/stack.json so `up` is re-runnable."""

    state: Path
    pg_port: int
    s3_port: int
    api_port: int
    pg_password: str
    airflow_db_password: str
    demo_password: str
    jwt_secret: str
    api_secret_key: str
    fernet_key: str
    stripe_port: int = DEMO_PORTS["stripe"]  # the local stand-in for the payment processor's API
    # Key of the archived identifiers' hashes (retention.identifiers); a demo created before it
    # existed gets one at its next `make demo` (its older objects: retention.archive.backfill_owners).
    identifier_key: str = ""
    # The password of each role's login user (ROLE_USERS); a demo created before the roles gets
    # them at its next `make demo`.
    role_passwords: dict[str, str] = field(default_factory=dict)
    # The report task's password on the api-server (REPORTER_USER); a demo created before gets one.
    reporter_password: str = ""
    # The CeleryExecutor's broker (Redis on loopback, with a password): a free port chosen once.
    redis_port: int = 0
    redis_password: str = ""
    # Not saved, given to each `up` (`make demo EXECUTOR=celery WORKERS=2`): the executor
    # (EXECUTORS), its number of Celery workers, and extra Airflow settings (AIRFLOW__SECTION__KEY
    # -> value; the tests shorten timeouts with them). <state>/executor records the running one.
    executor: str = "local"
    workers: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load_or_create(
        cls,
        state: Path,
        pg_port: int | None = None,
        s3_port: int | None = None,
        api_port: int | None = None,
        stripe_port: int | None = None,
    ) -> StackConfig:
        path = state / "stack.json"
        if path.exists():
            data = json.loads(path.read_text())
            missing = {"identifier_key", "reporter_password", "redis_password"} - {k for k, v in data.items() if v}
            data |= {key: secrets.token_urlsafe(32) for key in missing}
            if not data.get("redis_port"):
                data["redis_port"] = free_port()
                missing.add("redis_port")
            if set(data.get("role_passwords", {})) != set(ROLE_USERS):
                data["role_passwords"] = new_role_passwords(data.get("role_passwords"))
                missing.add("role_passwords")
            if missing:
                path.write_text(json.dumps(data, indent=2))
            data["state"] = state
            return cls(**data)
        from cryptography.fernet import Fernet

        config = cls(
            state=state,
            pg_port=pg_port or DEMO_PORTS["pg"],
            s3_port=s3_port or DEMO_PORTS["s3"],
            api_port=api_port or 8080,
            pg_password=secrets.token_urlsafe(16),
            airflow_db_password=secrets.token_urlsafe(16),
            demo_password=secrets.token_urlsafe(12),
            # Airflow signs its tokens with HS512: a key of 64 bytes or more (RFC 7518 3.2), else
            # PyJWT warns on every token. A demo created before keeps its secret until `make reset`.
            jwt_secret=secrets.token_urlsafe(64),
            api_secret_key=secrets.token_urlsafe(32),
            fernet_key=Fernet.generate_key().decode(),
            stripe_port=stripe_port or DEMO_PORTS["stripe"],
            identifier_key=secrets.token_urlsafe(32),
            role_passwords=new_role_passwords(),
            reporter_password=secrets.token_urlsafe(32),
            redis_port=free_port(),
            redis_password=secrets.token_urlsafe(32),
        )
        config.save()
        return config

    def save(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        path = self.state / "stack.json"
        saved = {k: v for k, v in self.__dict__.items() if k not in ("state", "executor", "workers", "extra_env")}
        path.write_text(json.dumps(saved, indent=2))
        path.chmod(0o600)

    @property
    def postgres(self) -> Postgres:
        return Postgres(pg_root_for(self.state), self.pg_port, self.pg_password)

    @property
    def s3_state_file(self) -> Path:
        return self.state / "s3" / "state.pickle"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def stripe_url(self) -> str:
        return f"http://127.0.0.1:{self.stripe_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def airflow_home(self) -> Path:
        return self.state / "airflow"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    def airflow_env(self) -> dict[str, str]:
        home = self.airflow_home
        env = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS[self.executor],
            "AIRFLOW__CORE__DEFAULT_TIMEZONE": "Europe/Paris",
            "AIRFLOW__CORE__FERNET_KEY": self.fernet_key,
            # 2 cores: few task processes at once.
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
            "AIRFLOW__SCHEDULER__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__SECRET_KEY": self.api_secret_key,
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{DEMO_USER}:admin,{REPORTER_USER}:user",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                f"postgresql+psycopg://{AIRFLOW_DB}:{self.airflow_db_password}@127.0.0.1:{self.pg_port}/{AIRFLOW_DB}"
            ),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.state / "logs" / "airflow"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "0",
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "0",
            "AIRFLOW__WEBSERVER__EXPOSE_CONFIG": "False",
            "RETENTION_IDENTIFIER_KEY": self.identifier_key,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)]),
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONWARNINGS": PYTHONWARNINGS,
        }
        if self.executor == "celery":
            env |= self.celery_env()
        return env | self.extra_env

    @property
    def worker_names(self) -> list[str]:
        return [f"worker{n}" for n in range(1, self.workers + 1)] if self.executor == "celery" else []

    def celery_env(self) -> dict[str, str]:
        """The CeleryExecutor: Redis as the broker, the metadata database as the result backend,
        and room for what the workers run (the pool, not the scheduler, caps the archive units)."""
        slots = max(self.workers, 1) * CELERY_WORKER_CONCURRENCY
        return {
            "AIRFLOW__CELERY__BROKER_URL": self.redis_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+"
            + f"postgresql+psycopg://{AIRFLOW_DB}:{self.airflow_db_password}@127.0.0.1:{self.pg_port}/{AIRFLOW_DB}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CELERY_WORKER_CONCURRENCY),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": CELERY_QUEUE,
            "AIRFLOW__CORE__PARALLELISM": str(slots),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(slots),
        }

    def source_dsn(self) -> str:
        return self.postgres.dsn(SOURCE_DB)


def _component_env(config: StackConfig) -> dict[str, str]:
    """The caller's environment minus any Airflow or AWS setting it carries (a test session's
    AIRFLOW_CONN_* would otherwise shadow the stack's own connections), plus the stack's.
    RETENTION_* overrides pass through: the buckets were created with the same ones."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    return inherited | config.airflow_env()


def _airflow(config: StackConfig, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    env = _component_env(config)
    result = subprocess.run([str(VENV_BIN / "airflow"), *args], env=env, capture_output=capture, text=True)
    if check and result.returncode != 0:
        raise StackError(
            f"airflow {' '.join(args[:2])} failed:\n{(result.stdout or '')[-2000:]}{(result.stderr or '')[-3000:]}"
        )
    return result


def configure_connections(config: StackConfig) -> None:
    """The connections of DESIGN.md §5, stored in the metadata DB so they show in the UI: the
    source database once per role (docs/audit.md, "Roles"), the archive, the processor, and the
    report's (its run notes)."""
    pg = config.postgres
    descriptions = {
        "source_postgres": "Operational database as retention_engine (the purpose DAGs, the watch)",
        "source_postgres_rights": "Operational database as retention_rights (the subject requests)",
        "source_postgres_reader": "Operational database as retention_reader (the Retention page)",
        "source_postgres_housekeeping": "Operational database as retention_housekeeping (own records)",
        "source_postgres_counter": "Operational database as retention_counter (the Retention page's recount)",
    }
    sources = role_connections("127.0.0.1", pg.port, config.role_passwords)
    connections = {
        **{conn_id: conn | {"description": descriptions[conn_id]} for conn_id, conn in sources.items()},
        "archive_s3": {
            "conn_type": "aws",
            "login": S3_ACCESS_KEY,
            "password": S3_SECRET_KEY,
            "description": "Archive S3 (local moto server)",
            "extra": {"endpoint_url": config.s3_endpoint, "region_name": S3_REGION},
        },
        # The housekeeping's db clean (a task has no ORM session of its own in Airflow 3).
        "retention_airflow_db": metadata_connection("127.0.0.1", pg.port, config.airflow_db_password)
        | {"description": "Airflow's metadata database, for the housekeeping's db clean"},
        # retention_contracts erases payment methods at the processor before deleting our rows.
        "stripe_default": {
            "conn_type": "generic",
            "host": config.stripe_url,
            "password": STRIPE_STUB_KEY,
            "description": "Payment processor API (local stand-in for Stripe: demo only)",
            "extra": {"max_network_retries": 2, "timeout": 10},
        },
        # The report task writes each run's note through the REST API (retention.run_note).
        "retention_airflow_api": {
            "conn_type": "http",
            "host": config.api_url,
            "login": REPORTER_USER,
            "password": config.reporter_password,
            "description": "Airflow's REST API, for the run notes of the report task",
        },
    }
    for conn_id, conn in connections.items():
        _airflow(config, "connections", "delete", conn_id, check=False)
        _airflow(config, "connections", "add", conn_id, "--conn-json", json.dumps(conn))


SOURCE_WRITERS_POOL = ("retention_source_writers", 4)  # retention.airflow_names.SOURCE_WRITERS_POOL


def configure_pools(config: StackConfig) -> None:
    """The pool that caps the archive units writing to the source database at once
    (docs/architecture.md, "Scaling out")."""
    name, slots = SOURCE_WRITERS_POOL
    description = "Archive units writing to the source database at once"
    _airflow(config, "pools", "set", name, str(slots), description)


def _pid_file(config: StackConfig, name: str) -> Path:
    return config.state / "pids" / f"{name}.pid"


def _recorded_pid(config: StackConfig, name: str) -> int | None:
    """The PID recorded for a process, alive or not; also its process group's id (_spawn)."""
    path = _pid_file(config, name)
    if not path.exists():
        return None
    return int(path.read_text().strip() or 0) or None


def _group_members(pgid: int) -> list:
    """The live processes of a process group (its leader may be gone); zombies left out: an
    orphan's zombie waits for PID 1 to reap it, which a container's may never do."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    import psutil

    members = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def _group_alive(pgid: int) -> bool:
    return bool(_group_members(pgid))


def _running_pid(config: StackConfig, name: str) -> int | None:
    pid = _recorded_pid(config, name)
    if pid is None:
        return None
    # A process this one started (the tests call up() in-process) stays a zombie, which
    # os.kill(pid, 0) still finds, until it is reaped: reap it here, or down() waits out its 20 s.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
        if _is_zombie(pid):  # dead, not yet reaped by its parent (PID 1 for a stack's process)
            raise ProcessLookupError(pid)
    except (ProcessLookupError, PermissionError):
        # The record stays while its group has processes left (a Celery worker killed alone
        # leaves its children): _stop and _spawn end them.
        if not _group_alive(pid):
            _pid_file(config, name).unlink(missing_ok=True)
        return None
    return pid


def _is_zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _end_leftovers(config: StackConfig, name: str) -> int:
    """SIGKILL to what is left of a process group whose leader is gone (a worker killed with
    ``kill -9``: its children live on, orphaned); how many processes were left."""
    pgid = _recorded_pid(config, name)
    if pgid is None or _running_pid(config, name):
        return 0
    left = _group_members(pgid)
    if left:
        import psutil

        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        psutil.wait_procs(left, timeout=10)
    _pid_file(config, name).unlink(missing_ok=True)
    return len(left)


def _spawn(config: StackConfig, name: str, cmd: list[str], env: dict[str, str]) -> int:
    """Start a long-running process in its own session, log to a file, record its PID."""
    existing = _running_pid(config, name)
    if existing:
        return existing
    if left := _end_leftovers(config, name):
        print(f"ended {left} process(es) left by {name}, whose main process was gone")
    log_path = config.state / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(config, name).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO_ROOT,
        )
    _pid_file(config, name).write_text(str(proc.pid))
    return proc.pid


# ---------------------------------------------------------------------------- Celery


def _redis_ping(config: StackConfig) -> bool:
    """Redis answers PONG to its password (the protocol's inline commands, no client needed)."""
    try:
        with socket.create_connection(("127.0.0.1", config.redis_port), timeout=1) as sock:
            sock.sendall(f"AUTH {config.redis_password}\r\nPING\r\n".encode())
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return False
    return answer.endswith(b"+PONG\r\n")


def start_redis(config: StackConfig) -> None:
    """Debian's redis-server as the Celery broker: loopback only, a password, its own port and
    folder, no snapshots (a lost message is a task the scheduler queues again)."""
    if not _running_pid(config, "redis"):
        server = shutil.which("redis-server")
        if server is None:
            raise StackError("redis-server not found: `bash tools/system_packages.sh redis` installs it")
        folder = config.state / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        settings = folder / "redis.conf"  # the password stays out of the process list
        settings.write_text(
            f"bind 127.0.0.1\nport {config.redis_port}\nprotected-mode yes\ndir {folder}\n"
            f'requirepass {config.redis_password}\nsave ""\nappendonly no\ndaemonize no\n'
        )
        settings.chmod(0o600)
        _spawn(config, "redis", [server, str(settings)], dict(os.environ))
    wait_until(lambda: _redis_ping(config), 30, "Redis", config.state / "logs" / "redis.log")


def start_workers(config: StackConfig, workers: list[str], timeout: float = 180) -> list[int]:
    """`airflow celery worker`s, each named (Celery's node name and Airflow's
    task_instance.hostname), on the Docker route's queue and concurrency, started together;
    returns their PIDs once each consumes from the queue."""
    starting = []
    for worker in workers:
        if _running_pid(config, worker):
            continue
        log_path = config.state / "logs" / f"{worker}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        cmd = [
            str(VENV_BIN / "airflow"),
            "celery",
            "worker",
            "--celery-hostname",
            celery_node_name(worker),
            "--queues",
            CELERY_QUEUE,
            "--concurrency",
            str(CELERY_WORKER_CONCURRENCY),
            # The log files are on this machine: no log server on 0.0.0.0:8793.
            "--skip-serve-logs",
            # Airflow's own PID file, one per worker (the default one would stop the second).
            "--pid",
            str(config.airflow_home / f"{worker}.pid"),
        ]
        env = _component_env(config) | {
            WORKER_NAME_ENV: worker,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tools.devstack.celery_worker_hostname",
        }
        _spawn(config, worker, cmd, env)
        starting.append((worker, log_path, offset))

    def ready(worker: str, log_path: Path, offset: int) -> bool:
        if not _running_pid(config, worker):
            raise StackError(f"the Celery worker {worker} exited; see {log_path}")
        with open(log_path, "rb") as log:
            log.seek(offset)
            return b" ready." in log.read()

    for worker, log_path, offset in starting:
        wait_until(lambda: ready(worker, log_path, offset), timeout, f"the Celery worker {worker}", log_path)  # noqa: B023
    return [_running_pid(config, worker) for worker in workers]


def _stop(config: StackConfig, name: str, grace: float = 20) -> None:
    """SIGTERM to a recorded process's group, SIGKILL after `grace` seconds to what is left of
    it (a Celery worker's warm shutdown waits for its running tasks); a group whose main process
    is already gone, SIGKILL at once."""
    pid = _running_pid(config, name)
    if not pid:
        if left := _end_leftovers(config, name):
            print(f"stopped {left} process(es) left by {name}, whose main process was gone")
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (_running_pid(config, name) or _group_alive(pid)):
        time.sleep(0.2)
    if _running_pid(config, name) or _group_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _pid_file(config, name).unlink(missing_ok=True)
    print(f"stopped {name} (pid {pid})")


def _recorded_workers(config: StackConfig) -> list[str]:
    """The Celery workers a stack recorded, whatever its configuration says now."""
    found = [p.stem for p in (config.state / "pids").glob("worker*.pid")]
    return sorted(found, key=lambda name: int(name.removeprefix("worker") or 0))


def up(
    config: StackConfig,
    customers: int = 2000,
    seed: int = 42,
    reference_date: str | None = None,
    with_airflow: bool = True,
) -> None:
    """Bring the whole stack up, seeded. Safe to re-run: running pieces are left as they are."""
    import datetime as dt

    state = config.state
    (state / "logs").mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)  # the postgres system user must reach its data folder inside
    pg = config.postgres
    pg.start()
    pg.ensure_database(SOURCE_DB)
    pg.ensure_database(AIRFLOW_DB, owner_password=config.airflow_db_password)
    print(f"PostgreSQL  127.0.0.1:{pg.port}  (source database {SOURCE_DB!r}, Airflow metadata {AIRFLOW_DB!r})")

    if not _running_pid(config, "s3"):
        # moto, with its buckets saved to a file on `make down` and loaded on the next start.
        cmd = [
            sys.executable,
            "-m",
            "tools.s3server",
            "--port",
            str(config.s3_port),
            "--state",
            str(config.s3_state_file),
        ]
        _spawn(config, "s3", cmd, dict(os.environ))
    wait_until(
        lambda: S3Server(config.s3_port, state / "logs" / "s3.log")._healthy(),
        60,
        "the S3 server",
        state / "logs" / "s3.log",
    )
    if not _running_pid(config, "stripe"):
        _spawn(
            config,
            "stripe",
            [sys.executable, "-m", "tools.stripe_stub", "--port", str(config.stripe_port)],
            dict(os.environ),
        )
    wait_until(lambda: _port_open(config.stripe_port), 30, "the Stripe stand-in", state / "logs" / "stripe.log")
    print(f"Stripe API  {config.stripe_url}  (local stand-in for the payment processor)")
    sys.path[:0] = [str(REPO_ROOT / "plugins"), str(REPO_ROOT)]
    from retention.policy import default_policy
    from retention.schema import apply_schema

    storage = default_policy().storage_settings()
    client = s3_client(config.s3_endpoint)
    ensure_buckets(client, storage.archive_bucket, storage.documents_bucket)
    print(f"S3 (moto)   {config.s3_endpoint}  (buckets {storage.archive_bucket}, {storage.documents_bucket})")

    apply_schema(config.source_dsn())
    ensure_role_users(config.source_dsn(), config.role_passwords)
    missing = missing_s3_objects(config.source_dsn(), client, storage.archive_bucket, storage.documents_bucket)
    if missing:
        raise StackError(
            f"the database remembers {len(missing)} S3 object(s) the S3 server lacks, e.g. {missing[:3]}: "
            f"its saved state ({config.s3_state_file}) was lost or is older than the database. "
            "Nothing was started on top of it: `make reset` starts over from a fresh seed."
        )
    from retention.policy import default_policy

    from tools.seed.load import seed_database

    # Today where the policy counts its days (Europe/Paris), not the machine's (UTC): from 23:00
    # UTC a UTC date lags the latest scheduled run (Paris midnight) by a day, and that run then
    # finds the next day's rows due as well (contracts: over the mass-deletion guard).
    today = dt.datetime.now(default_policy().tz).date()
    reference = dt.date.fromisoformat(reference_date) if reference_date else today
    if already_seeded(config.source_dsn()):
        # Its data and the runs on it are kept: a re-run of `make demo` only starts what stopped.
        print("data        kept: the database is already seeded (`make reset` starts over from a fresh seed)")
    else:
        counts = seed_database(
            config.source_dsn(),
            customers=customers,
            seed=seed,
            reference_date=reference,
            s3_client=client,
            documents_bucket=storage.documents_bucket,
        )
        print(f"seeded      {sum(counts.values()):,} rows (reference date {reference})")
    if not with_airflow:
        return

    home = config.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({DEMO_USER: config.demo_password, REPORTER_USER: config.reporter_password}) + "\n")
    passwords.chmod(0o600)
    running = [name for name in [*AIRFLOW_COMPONENTS, *_recorded_workers(config)] if _running_pid(config, name)]
    if running and (config.executor != _started_executor(config) or _recorded_workers(config) != config.worker_names):
        raise StackError(
            f"Airflow is running with the {_started_executor(config)} executor and "
            f"{len(_recorded_workers(config))} Celery worker(s): `make down` first to change them"
        )
    if config.executor == "celery":
        start_redis(config)
        print(f"Redis       127.0.0.1:{config.redis_port}  (Celery broker)")
    _airflow(config, "db", "migrate")
    configure_connections(config)
    configure_pools(config)
    env = _component_env(config)
    for name, args in AIRFLOW_COMPONENTS.items():
        cmd = [str(VENV_BIN / "airflow"), *[a.format(api_port=config.api_port) for a in args]]
        _spawn(config, name, cmd, env)
    (state / "executor").write_text(config.executor)
    wait_until(lambda: _api_healthy(config), 180, "the Airflow API server", state / "logs" / "api-server.log")
    start_workers(config, config.worker_names)
    for worker in config.worker_names:
        print(
            f"worker      {celery_node_name(worker)}  (queue {CELERY_QUEUE!r}, concurrency {CELERY_WORKER_CONCURRENCY})"
        )
    env_file = state / "airflow.env"
    env_file.write_text("".join(f"export {k}={json.dumps(v)}\n" for k, v in config.airflow_env().items()))
    env_file.chmod(0o600)
    print(f"Airflow UI  {config.api_url}   login: {DEMO_USER} / {config.demo_password}")
    print(f"logs        {state / 'logs'}   (airflow CLI: source {env_file})")


def _started_executor(config: StackConfig) -> str:
    """The executor the running Airflow components were started with."""
    path = config.state / "executor"
    return path.read_text().strip() if path.exists() else "local"


def already_seeded(dsn: str) -> bool:
    """Whether the source database holds data (tools.seed leaves such a database alone)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM app.customers)").fetchone()[0])


def missing_s3_objects(dsn: str, client, archive_bucket: str, documents_bucket: str) -> list[str]:
    """Objects the database refers to that the S3 server does not hold: committed archive objects
    (by version) and the documents named by the source rows' *_key columns."""
    import psycopg
    from psycopg import sql

    def versions(bucket: str) -> set[tuple[str, str | None]]:
        found: set[tuple[str, str | None]] = set()
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []):
                found.add((v["Key"], v.get("VersionId")))
                found.add((v["Key"], None))
        return found

    with psycopg.connect(dsn, autocommit=True) as conn:
        archived = conn.execute(
            "SELECT bucket, object_key, version_id FROM retention.archive_manifest WHERE state = 'committed'"
        ).fetchall()
        documents: list[str] = []
        key_columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'app' AND column_name LIKE '%%\\_key' ORDER BY 1, 2"
        ).fetchall()
        for table, column in key_columns:
            documents += [
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT {c} FROM app.{t} WHERE {c} IS NOT NULL").format(
                        c=sql.Identifier(column), t=sql.Identifier(table)
                    )
                )
            ]
    if not archived and not documents:
        return []
    held: dict[str, set] = {}
    missing = []
    for bucket, key, version in archived:
        if bucket not in held:
            held[bucket] = versions(bucket)
        if (key, version) not in held[bucket]:
            missing.append(f"s3://{bucket}/{key}")
    if documents:
        # The current keys are enough here, and a plain listing is several times faster than
        # listing versions on the demo's S3 server (3.7x on 8,000 keys; both grow faster than n).
        current = {
            obj["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=documents_bucket)
            for obj in page.get("Contents", [])
        }
        missing += [f"s3://{documents_bucket}/{k}" for k in documents if k not in current]
    return missing


def reset(state: Path) -> None:
    """Stop the stack and remove its data (PostgreSQL cluster, S3 state, Airflow home); keep
    stack.json (ports, passwords) and the logs. The next `up` seeds afresh."""
    if not (state / "stack.json").exists():
        print("nothing to reset")
        return
    down(state)
    config = StackConfig.load_or_create(state)
    for path in (config.postgres.data_dir, config.s3_state_file.parent, config.airflow_home):
        if path.exists():
            shutil.rmtree(path)
            print(f"removed {path}")


def _api_healthy(config: StackConfig) -> bool:
    for name in AIRFLOW_COMPONENTS:
        if not _running_pid(config, name):
            raise StackError(f"Airflow {name} exited; see {config.state / 'logs' / (name + '.log')}")
    try:
        with urllib.request.urlopen(f"{config.api_url}/api/v2/monitor/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def down(state: Path) -> None:
    """Stop what `up` recorded (by PID, process group included), then PostgreSQL."""
    config_path = state / "stack.json"
    if not config_path.exists():
        print("nothing to stop")
        return
    config = StackConfig.load_or_create(state)
    # The workers first (nothing new starts on them), the broker after the scheduler.
    for name in [*_recorded_workers(config), *reversed(list(AIRFLOW_COMPONENTS)), "redis", "stripe", "s3"]:
        _stop(config, name)
    config.postgres.stop()
    print("stopped PostgreSQL")


def status(state: Path) -> None:
    if not (state / "stack.json").exists():
        print("not started")
        return
    config = StackConfig.load_or_create(state)
    print(f"{'executor':14} {EXECUTORS[_started_executor(config)]}")
    for name in [*AIRFLOW_COMPONENTS, *_recorded_workers(config), "redis", "stripe", "s3"]:
        pid = _running_pid(config, name)
        if name == "redis" and not pid and _started_executor(config) != "celery":
            continue
        node = f"  {celery_node_name(name)}, queue {CELERY_QUEUE!r}" if name.startswith("worker") else ""
        print(f"{name:14} {'running, pid ' + str(pid) if pid else 'stopped'}{node}")
    print(f"{'postgres':14} {'running' if config.postgres.is_running() else 'stopped'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local stack: PostgreSQL + S3 (moto) + Airflow 3 on 127.0.0.1")
    parser.add_argument("command", choices=["up", "down", "status", "reset"])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="git-ignored folder for data, logs, PIDs")
    parser.add_argument("--customers", type=int, default=int(os.environ.get("DEMO_CUSTOMERS", "2000")))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--reference-date", help="YYYY-MM-DD the synthetic data is built around (default: today)")
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--pg-port", type=int)
    parser.add_argument("--s3-port", type=int)
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default=os.environ.get("EXECUTOR") or "local")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or 2), help="Celery workers")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            config = StackConfig.load_or_create(args.state.resolve(), args.pg_port, args.s3_port, args.api_port)
            config.executor, config.workers = args.executor, args.workers if args.executor == "celery" else 0
            if config.executor == "celery" and config.workers < 1:
                parser.error("--workers: at least one Celery worker")
            up(config, customers=args.customers, seed=args.seed, reference_date=args.reference_date)
        elif args.command == "down":
            down(args.state.resolve())
        elif args.command == "reset":
            reset(args.state.resolve())
        else:
            status(args.state.resolve())
    except StackError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
