"""The Docker route (docker-compose.yaml, Dockerfile), checked by parsing: no Docker engine needed.

What is checked is what would otherwise only fail at `docker compose up`, or worse, silently:
the services and their wiring, the shared Airflow configuration, the mounts the `retention`
package needs, the two connections of DESIGN.md §5, and that every name and version agrees with
its source of truth (the policy file, tools/devstack.py, requirements.txt, constraints.txt).
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import inspect
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"

# Long-running Airflow components and one-shot Airflow containers (same image, same config).
AIRFLOW_SERVERS = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
]
AIRFLOW_ONE_SHOT = ["airflow-init", "retention-init"]
AIRFLOW_OPTIONAL = ["airflow-cli", "flower"]  # behind compose profiles, as in the official file
AIRFLOW_SERVICES = AIRFLOW_SERVERS + AIRFLOW_ONE_SHOT + AIRFLOW_OPTIONAL
REQUIRED_SERVICES = {"postgres", "redis", "source-postgres", "s3", *AIRFLOW_SERVERS, *AIRFLOW_ONE_SHOT}
# service -> container ports it publishes; everything else publishes nothing.
PUBLISHED_PORTS = {"airflow-apiserver": {8080}, "source-postgres": {5432}, "s3": {5000}, "flower": {5555}}
# DESIGN.md §5, the source once per database role (docs/audit.md, "Roles"), and the report
# task's (its run notes, through the REST API).
CONNECTION_IDS = {
    "source_postgres",
    "source_postgres_rights",
    "source_postgres_reader",
    "source_postgres_housekeeping",
    "source_postgres_counter",
    "retention_airflow_db",  # Airflow's metadata, for the housekeeping's db clean (issue 23)
    "archive_s3",
    "retention_airflow_api",
}
CONTAINER_ROOT = PurePosixPath("/opt/airflow")
S3_ENDPOINT = "http://s3:5000"

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, $$ -> $."""
    env = env or {}

    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, default = match.group(2), match.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    data = yaml.safe_load(compose_text)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services: mapping"
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    """A service's environment with compose's defaults applied (nothing set in the shell)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value)) for key, value in raw.items()}


def script_of(service: dict) -> str:
    command = service.get("command")
    if isinstance(command, list):
        command = "\n".join(str(part) for part in command)
    return interpolate(command or "")


def mounts_of(service: dict) -> dict[str, str]:
    """container path -> source, for the short volume syntax (source:target[:mode])."""
    result = {}
    for volume in service.get("volumes") or []:
        source, target, *_ = interpolate(volume).split(":")
        result[target] = source
    return result


def connection_commands(script: str) -> dict[str, list[str]]:
    """conn_id -> argv of each `airflow connections add` in a shell script."""
    found = {}
    for line in script.splitlines():
        if "airflow connections add" not in line:
            continue
        argv = shlex.split(line[line.index("airflow connections add") :])
        conn_id = argv[3]
        assert conn_id not in found, f"connection {conn_id} added twice"
        found[conn_id] = argv
    return found


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {' '.join(argv[:4])}"
    return argv[argv.index(name) + 1]


def pinned(requirements_file: Path, package: str) -> str:
    pattern = re.compile(rf"^{re.escape(package)}(\[[^\]]*\])?==([^\s;#]+)", re.IGNORECASE | re.MULTILINE)
    match = pattern.search(requirements_file.read_text(encoding="utf-8"))
    assert match, f"{package} is not pinned in {requirements_file.name}"
    return match.group(2)


# --- services and the shared Airflow configuration -------------------------------------------


def test_every_service_of_the_stack_exists(services):
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"docker-compose.yaml lacks services {sorted(missing)}"


def test_airflow_services_merge_the_common_anchor(compose_text):
    """Each Airflow service is `<<: *airflow-common` (and merges the common env if it overrides it)."""
    root = yaml.compose(compose_text)
    top = {key.value: value for key, value in root.value}
    common = top["x-airflow-common"]
    common_env = next(value for key, value in common.value if key.value == "environment")
    services = {key.value: value for key, value in top["services"].value}
    for name in AIRFLOW_SERVICES:
        node = services[name]
        merged = [value for key, value in node.value if key.value == "<<"]
        assert merged and merged[0] is common, f"{name} does not merge *airflow-common"
        own_env = [value for key, value in node.value if key.value == "environment"]
        if own_env:
            env_merges = [value for key, value in own_env[0].value if key.value == "<<"]
            assert env_merges and env_merges[0] is common_env, (
                f"{name} overrides environment without *airflow-common-env"
            )


def test_airflow_services_use_the_celery_executor(services):
    assert "redis" in services
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis", name
        assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/"), name


def test_celery_settings_are_the_local_stacks(services):
    """`make demo EXECUTOR=celery` runs its workers with the same queue and concurrency, so what
    the Celery stack tests pass (tests/test_celery_stack.py) is what runs here."""
    from tools import devstack

    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == devstack.CELERY_QUEUE, name
        assert int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) == devstack.CELERY_WORKER_CONCURRENCY, name
    command = services["airflow-worker"]["command"]
    assert command == "celery worker", "the queue and concurrency come from the environment above"


def test_common_airflow_settings(services, policy):
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false", name
        assert env["AIRFLOW__CORE__DEFAULT_TIMEZONE"] == policy.timezone, name
        assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"].lower() == "true", name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".SimpleAuthManager"), name
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"].lower() == "false", name
        assert {"/opt/airflow", "/opt/airflow/plugins"} <= set(env["PYTHONPATH"].split(":")), name


def test_airflow_options_exist_in_this_airflow_version(services):
    """A misspelt AIRFLOW__SECTION__KEY is silently ignored by Airflow: check each against config.yml."""
    spec = importlib.util.find_spec("airflow")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("apache-airflow is not installed")
    config_yml = Path(next(iter(spec.submodule_search_locations))) / "config_templates" / "config.yml"
    sections = yaml.safe_load(config_yml.read_text(encoding="utf-8"))
    # the celery provider's config
    provider_options = {("celery", "broker_url"), ("celery", "result_backend"), ("celery", "worker_concurrency")}
    for name, service in services.items():
        for key in env_of(service):
            if not key.startswith("AIRFLOW__"):
                continue
            section, _, opt = key[len("AIRFLOW__") :].lower().partition("__")
            if (section, opt) in provider_options:
                continue
            assert opt in (sections.get(section) or {}).get("options", {}), f"{name}: {key} is not an Airflow option"


def test_repository_directories_are_mounted_where_the_package_expects_them(services):
    from retention import paths

    # plugins/retention/paths.py finds include/ relative to itself: the container must keep
    # the repository's layout under /opt/airflow.
    package_dir = Path(paths.__file__).resolve().parent.relative_to(paths.REPO_ROOT)
    include_dir = paths.INCLUDE_DIR.relative_to(paths.REPO_ROOT)
    assert package_dir.parts[0] == "plugins" and include_dir == Path("include")
    for name in AIRFLOW_SERVICES:
        mounts = mounts_of(services[name])
        for directory in ("dags", "plugins", "include", "tools"):
            target = str(CONTAINER_ROOT / directory)
            assert mounts.get(target) == f"./{directory}", f"{name}: ./{directory} is not mounted at {target}"
        assert (REPO_ROOT / include_dir / "retention_policy.yaml").is_file()


# --- the project's side: connections, buckets, source database -------------------------------


def test_connections_created_are_exactly_the_designed_ones(services):
    for name, service in services.items():
        leaked = [key for key in env_of(service) if key.startswith("AIRFLOW_CONN_")]
        assert not leaked, f"{name} defines {leaked}: connections are created by retention-init (visible in the UI)"
    commands = connection_commands(script_of(services["retention-init"]))
    assert set(commands) == CONNECTION_IDS

    # The ids the code uses (the source's in connections.py, the archive's in tasks.py, the
    # REST API's in run_note.py), read without importing the engine.
    constants = {
        target.id: node.value.value
        for module in ("connections.py", "tasks.py", "run_note.py")
        for node in ast.parse((REPO_ROOT / "plugins" / "retention" / module).read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id.endswith("_CONN_ID")
    }
    assert set(constants.values()) == CONNECTION_IDS, constants


def test_source_postgres_connection_points_at_the_source_database(services):
    from tools import devstack

    init_env = env_of(services["retention-init"])
    argv = connection_commands(script_of(services["retention-init"]))["source_postgres"]
    assert option(argv, "--conn-type") == "postgres"
    assert option(argv, "--conn-host") == "source-postgres" and "source-postgres" in services
    assert option(argv, "--conn-port") == "5432"
    assert option(argv, "--conn-schema") == devstack.SOURCE_DB
    # The DAGs connect as the engine's role, not as the database's owner.
    assert option(argv, "--conn-login") == devstack.ROLE_USERS["retention_engine"][0]
    assert option(argv, "--conn-password") == "${SOURCE_ENGINE_PASSWORD}"

    source_env = env_of(services["source-postgres"])
    assert source_env["POSTGRES_DB"] == devstack.SOURCE_DB
    assert source_env["POSTGRES_USER"] == init_env["SOURCE_DB_USER"]
    assert source_env["POSTGRES_PASSWORD"] == init_env["SOURCE_DB_PASSWORD"]
    dsn = urlsplit(init_env["SOURCE_DSN"])
    assert (dsn.hostname, dsn.port, dsn.path) == ("source-postgres", 5432, f"/{devstack.SOURCE_DB}")
    assert (dsn.username, dsn.password) == (init_env["SOURCE_DB_USER"], init_env["SOURCE_DB_PASSWORD"])
    assert devstack.SOURCE_DB in services["source-postgres"]["healthcheck"]["test"]


def test_each_role_has_a_login_user_and_its_connection(services):
    """retention-init creates the roles' login users after the schema, and one connection per role
    uses its user, with a password from the environment."""
    from tools import devstack

    script = script_of(services["retention-init"])
    init_env = env_of(services["retention-init"])
    assert (
        script.index("python -m retention.schema")
        < script.index("ensure_role_users")
        < script.index("airflow connections add")
    )
    commands = connection_commands(script)
    for role, (user, conn_id) in devstack.ROLE_USERS.items():
        argv = commands[conn_id]
        assert option(argv, "--conn-host") == "source-postgres" and option(argv, "--conn-schema") == devstack.SOURCE_DB
        assert option(argv, "--conn-login") == user
        variable = f"SOURCE_{role.removeprefix('retention_').upper()}_PASSWORD"
        assert option(argv, "--conn-password") == "${" + variable + "}"
        assert init_env[variable].endswith("demo-only")


def test_the_report_writes_run_notes_with_its_own_account(services):
    """retention_airflow_api: the api-server's service, a user of role `user` (it may edit DAG
    runs), whose password airflow-init writes into the passwords file."""
    argv = connection_commands(script_of(services["retention-init"]))["retention_airflow_api"]
    assert option(argv, "--conn-type") == "http"
    url = urlsplit(option(argv, "--conn-host"))
    assert url.hostname == "airflow-apiserver" and url.hostname in services
    users = dict(
        u.split(":")
        for u in env_of(services["airflow-apiserver"])["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
    )
    assert users[option(argv, "--conn-login")] == "user"
    assert option(argv, "--conn-password") == "${AIRFLOW_REPORTER_PASSWORD}"
    password = env_of(services["retention-init"])["AIRFLOW_REPORTER_PASSWORD"]
    assert env_of(services["airflow-init"])["AIRFLOW_REPORTER_PASSWORD"] == password
    assert '"retention_reporter": os.environ["AIRFLOW_REPORTER_PASSWORD"]' in script_of(services["airflow-init"])


def test_archive_s3_connection_points_at_the_s3_service(services):
    from tools import devstack

    argv = connection_commands(script_of(services["retention-init"]))["archive_s3"]
    assert option(argv, "--conn-type") == "aws"
    assert option(argv, "--conn-login") == "${AWS_ACCESS_KEY_ID}"
    assert option(argv, "--conn-password") == "${AWS_SECRET_ACCESS_KEY}"
    extra = json.loads(option(argv, "--conn-extra"))
    assert extra == {"endpoint_url": S3_ENDPOINT, "region_name": devstack.S3_REGION}
    endpoint = urlsplit(S3_ENDPOINT)
    assert endpoint.hostname in services and endpoint.port in PUBLISHED_PORTS[endpoint.hostname]
    init_env = env_of(services["retention-init"])
    assert init_env["S3_ENDPOINT_URL"] == S3_ENDPOINT
    assert init_env["AWS_DEFAULT_REGION"] == devstack.S3_REGION


def test_storage_settings_agree_with_the_policy(services, policy):
    """The RETENTION_* defaults are the policy's values, and every name is one the policy reads."""
    tiers = sorted(policy.storage.tiers)
    expected_names = {"RETENTION_ARCHIVE_BUCKET", "RETENTION_DOCUMENTS_BUCKET"} | {
        f"RETENTION_{tier.upper()}_{what}" for tier in tiers for what in ("STORAGE_CLASS", "OBJECT_LOCK")
    }
    for name in AIRFLOW_SERVICES:
        retention_env = {
            k: v
            for k, v in env_of(services[name]).items()
            if k.startswith("RETENTION_") and k not in ("RETENTION_DATA_DOCS_DIR", "RETENTION_IDENTIFIER_KEY")
        }
        assert set(retention_env) == expected_names, name
        assert policy.storage.with_env_overrides(retention_env) == policy.storage, name
        assert retention_env["RETENTION_ARCHIVE_BUCKET"] == policy.storage.archive_bucket == "retention-archive"
        assert retention_env["RETENTION_DOCUMENTS_BUCKET"] == policy.storage.documents_bucket == "insurer-documents"

    # Each name really is read by the policy: overriding it changes the effective settings.
    def other(key: str, value: str) -> str:
        if key.endswith("_BUCKET"):
            return f"other-{value}"
        if key.endswith("_STORAGE_CLASS"):
            return "REDUCED_REDUNDANCY"
        return "false" if value.lower() == "true" else "true"

    for key, value in retention_env.items():
        assert policy.storage.with_env_overrides({key: other(key, value)}) != policy.storage, f"{key} is ignored"


def test_retention_init_creates_buckets_schema_and_data(services):
    from tools import devstack

    service = services["retention-init"]
    script = script_of(service)
    depends = service["depends_on"]
    assert depends["airflow-init"]["condition"] == "service_completed_successfully"
    assert depends["source-postgres"]["condition"] == "service_healthy"
    assert depends["s3"]["condition"] == "service_healthy"
    # Buckets: the same helper as the local stack (archive bucket with Object Lock).
    assert "from tools.devstack import ensure_buckets" in script
    assert "ObjectLockEnabledForBucket=True" in inspect.getsource(devstack.ensure_buckets)
    assert "storage_settings()" in script  # names from the policy, with the env overrides

    schema = shlex.split(next(line for line in script.splitlines() if "-m retention.schema" in line))
    assert schema[:3] == ["python", "-m", "retention.schema"] and "--dsn" in schema
    schema_source = (REPO_ROOT / "plugins" / "retention" / "schema.py").read_text(encoding="utf-8")
    assert '"--dsn"' in schema_source

    seed = shlex.split(next(line for line in script.splitlines() if "-m tools.seed" in line))
    assert seed[:3] == ["python", "-m", "tools.seed"]
    flags = [arg for arg in seed if arg.startswith("--")]
    assert flags == ["--dsn", "--customers", "--seed", "--reference-date", "--s3-endpoint", "--documents-bucket"]
    assert option(seed, "--s3-endpoint") == "${S3_ENDPOINT_URL}"
    assert option(seed, "--documents-bucket") == "${RETENTION_DOCUMENTS_BUCKET}"
    env = env_of(service)
    assert (env["SEED_CUSTOMERS"], env["SEED_RANDOM_SEED"]) == ("2000", "42")
    seed_file = REPO_ROOT / "tools" / "seed" / "__main__.py"  # its command line
    if seed_file.is_file():
        seed_source = seed_file.read_text(encoding="utf-8")
        unknown = [flag for flag in flags if f'"{flag}"' not in seed_source]
        assert not unknown, f"tools/seed has no option {unknown}"


def test_retention_init_creates_the_source_writers_pool(services):
    """The pool the archive units run in (retention.dag_factory) exists on the stack: a task in a
    missing pool is never scheduled."""
    from retention.airflow_names import SOURCE_WRITERS_POOL

    from tools import devstack

    service = services["retention-init"]
    line = next(line for line in script_of(service).splitlines() if "airflow pools set" in line)
    words = shlex.split(line.split("||", 1)[1])
    assert words[:4] == ["airflow", "pools", "set", SOURCE_WRITERS_POOL]
    assert words[4] == "${SOURCE_WRITERS_SLOTS}"
    assert f"airflow pools get {SOURCE_WRITERS_POOL}" in line, "a size set in the UI is kept"
    assert env_of(service)["SOURCE_WRITERS_SLOTS"] == "4"
    assert devstack.SOURCE_WRITERS_POOL == (SOURCE_WRITERS_POOL, 4), "make demo creates the same pool"


# --- images and versions ---------------------------------------------------------------------


def test_image_versions_follow_the_pins(compose):
    airflow = pinned(REPO_ROOT / "requirements.txt", "apache-airflow")
    common = compose["x-airflow-common"]
    assert common.get("build") in (".", {"context": "."}), "the Airflow image is built from ./Dockerfile"
    tag = interpolate(common["image"]).rsplit(":", 1)[1]
    assert tag.split("-python")[0] == airflow, f"image tag {tag} vs apache-airflow=={airflow}"

    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert froms == [f"apache/airflow:{tag}"], "the built image's tag names its base image"
    assert re.search(r"pip install[^\n]*(\\\n[^\n]*)*-r \S*requirements\.txt", dockerfile)
    assert re.search(r"pip install[^\n]*(\\\n[^\n]*)*-c \S*constraints\.txt", dockerfile)

    moto = pinned(REPO_ROOT / "constraints.txt", "moto")
    assert compose["services"]["s3"]["image"] == f"motoserver/moto:{moto}"


def test_python_of_the_image_matches_the_project():
    tag_python = re.search(r"^FROM\s+\S+-python(\d+\.\d+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    requires = re.search(r'^requires-python\s*=\s*"([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if not requires:
        pytest.skip("pyproject.toml declares no requires-python")
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(requires.group(1)).contains(tag_python.group(1))


# --- wiring: dependencies, ports, health checks, secrets -------------------------------------


def test_depends_on_names_existing_services_without_cycles(services):
    graph = {}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        deps = dict.fromkeys(depends) if isinstance(depends, list) else depends
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert dep in AIRFLOW_ONE_SHOT, f"{name} waits for {dep} to complete: it is not a one-shot service"
            else:
                assert condition == "service_started", condition
        graph[name] = set(deps)

    visiting, done = set(), set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in visiting, f"depends_on cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        visiting.add(node)
        for dep in graph[node]:
            visit(dep, (*path, node))
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, ())


def test_ports_are_published_only_where_expected_and_on_loopback(services):
    published = {}
    for name, service in services.items():
        for port in service.get("ports") or []:
            parts = interpolate(str(port)).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
            published.setdefault(name, set()).add(int(parts[2].split("/")[0]))
    assert published == PUBLISHED_PORTS
    for name in ("postgres", "redis"):
        assert "ports" not in services[name]


def test_long_running_services_have_health_checks(services):
    for name, service in services.items():
        if name in AIRFLOW_ONE_SHOT or name == "airflow-cli":
            assert service.get("restart") in (None, "no"), f"one-shot {name} must not restart"
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_secrets_are_overridable_demo_defaults(compose_text, services):
    """No real secret in the file: each is ${VAR:-default} with a default that says it is a demo."""
    secret_key = re.compile(r"PASSWORD|SECRET|FERNET|ACCESS_KEY", re.IGNORECASE)
    raw_services = yaml.safe_load(compose_text)["services"]
    for name, service in raw_services.items():
        for key, value in (service.get("environment") or {}).items():
            if not secret_key.search(key) or key.endswith("_FILE"):
                continue
            match = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", str(value))
            assert match, f"{name}: {key} must be ${{VAR:-demo default}}, not {value!r}"
            default = match.group(2)
            if "FERNET" in key:
                default = base64.urlsafe_b64decode(default).decode()
                assert len(default) == 32, "a Fernet key is 32 bytes, base64"
            assert "demo" in default, f"{name}: {key}'s default {default!r} does not say it is a demo value"
        for key, value in env_of(service).items():
            url = urlsplit(value) if "://" in value else None
            if url and url.password:
                assert "demo" in url.password, f"{name}: {key} embeds a password that is not a demo default"

    # The same variable has the same default everywhere it appears.
    defaults = {}
    for var, default in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", compose_text):
        assert defaults.setdefault(var, default) == default, (
            f"${{{var}}} has two defaults: {defaults[var]!r}, {default!r}"
        )


def test_only_the_init_services_run_as_root(services):
    for name in AIRFLOW_SERVICES:
        user = interpolate(str(services[name].get("user", "")))
        if name == "airflow-init":
            assert user == "0:0"
        else:
            assert user == "50000:0", f"{name} runs as {user!r}"


# --- compose-spec, secrets, restarts, image checks ---------------------------------------------


def test_compose_file_follows_the_compose_spec_schema(compose):
    import jsonschema

    schema = json.loads((REPO_ROOT / "tests" / "data" / "compose_spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    broken = json.loads(json.dumps(compose))
    broken["services"]["s3"]["helthcheck"] = broken["services"]["s3"].pop("healthcheck")
    assert list(validator.iter_errors(broken)), "the schema catches a misspelt key"


def test_demo_jwt_secret_is_long_enough_for_hs512(services):
    secret = env_of(services["airflow-apiserver"])["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(secret.encode()) >= 64 and "demo" in secret


def test_retention_init_refuses_when_s3_lost_what_the_database_remembers(services):
    from tools import devstack

    script = script_of(services["retention-init"])
    assert "from tools.devstack import missing_s3_objects" in script
    assert script.index("missing_s3_objects") < script.index("-m tools.seed"), "checked before anything else runs"
    assert "sys.exit(" in script and "docker compose down -v" in script
    assert callable(devstack.missing_s3_objects)


def test_image_build_runs_pip_check():
    run = DOCKERFILE.read_text(encoding="utf-8").split("RUN pip install", 1)[1]
    assert "&& pip check" in run


def test_data_docs_are_shared_by_the_workers_and_the_api_server(services):
    """The gates (celery workers) write the Data Docs the Retention page (api-server) serves."""
    for name in ("airflow-worker", "airflow-apiserver"):
        assert env_of(services[name])["RETENTION_DATA_DOCS_DIR"] == "/opt/airflow/data_docs"
        assert "retention-data-docs:/opt/airflow/data_docs" in services[name]["volumes"]
