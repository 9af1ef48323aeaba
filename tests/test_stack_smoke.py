"""The demo stack, brought up exactly as `make demo` does (tools.devstack.up) on free ports:
log in through the REST API, check health and both connections, then trigger three
DAGs, wait for the runs and check what they report against the audit log."""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tools import devstack

pytestmark = [pytest.mark.stack, pytest.mark.integration]
# Three purposes on the real scheduler and executor: an intermediate tier, the probative tier
# with files, locks and the payment processor, and a tier without archive. Every purpose's DAG
# runs with dag.test() in tests/test_dags_run.py; here the question is the stack's wiring.
DAG_IDS = [f"retention_{p}" for p in ("quotes", "contracts", "call_recordings")]
RUN_TIMEOUT_S = 900


class Api:
    def __init__(self, base: str, token: str | None = None):
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(
            self.base + path, method=method, data=json.dumps(body).encode() if body is not None else None
        )
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def stack():
    state = Path(tempfile.mkdtemp(prefix="retention-stack-"))
    config = devstack.StackConfig.load_or_create(
        state, devstack.free_port(), devstack.free_port(), devstack.free_port(), devstack.free_port()
    )
    try:
        devstack.up(config, customers=300, seed=7)
        yield config
    finally:
        devstack.down(state)


def test_login_health_and_connections(stack):
    anonymous = Api(stack.api_url)
    with pytest.raises(urllib.error.HTTPError) as denied:
        anonymous.call("GET", "/api/v2/connections/source_postgres")
    assert denied.value.code == 401
    with pytest.raises(urllib.error.HTTPError):
        anonymous.call("POST", "/auth/token", {"username": devstack.DEMO_USER, "password": "wrong"})
    token = anonymous.call("POST", "/auth/token", {"username": devstack.DEMO_USER, "password": stack.demo_password})
    api = Api(stack.api_url, token["access_token"])

    health = api.call("GET", "/api/v2/monitor/health")
    assert {health[c]["status"] for c in ("metadatabase", "scheduler", "triggerer", "dag_processor")} == {"healthy"}
    source = api.call("GET", "/api/v2/connections/source_postgres")
    assert source["conn_type"] == "postgres" and source["port"] == stack.pg_port and source["schema"] == "insurer"
    # One connection per database role, each with its role's login user (docs/audit.md, "Roles").
    for user, conn_id in devstack.ROLE_USERS.values():
        assert api.call("GET", f"/api/v2/connections/{conn_id}")["login"] == user
    archive = api.call("GET", "/api/v2/connections/archive_s3")
    assert archive["conn_type"] == "aws" and stack.s3_endpoint in archive["extra"]


def test_only_loopback_listens(stack):
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    ours = {stack.api_port, stack.pg_port, stack.s3_port}
    for line in listening:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and int(port, 16) in ours | {8793, 8794}:
            assert address == "0100007F", f"port {int(port, 16)} listens beyond 127.0.0.1"


def test_each_dag_runs_on_the_seeded_stack(stack):
    token = Api(stack.api_url).call(
        "POST", "/auth/token", {"username": devstack.DEMO_USER, "password": stack.demo_password}
    )["access_token"]
    api = Api(stack.api_url, token)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        dag_ids = {d["dag_id"] for d in api.call("GET", "/api/v2/dags?limit=50")["dags"]}
        if set(DAG_IDS) <= dag_ids:
            break
        time.sleep(2)
    assert set(DAG_IDS) <= dag_ids, "the dag-processor did not parse the DAGs"

    runs = {}
    for dag_id in DAG_IDS:
        run = api.call(
            "POST",
            f"/api/v2/dags/{dag_id}/dagRuns",
            {"logical_date": dt.datetime.now(dt.UTC).isoformat(), "conf": {"batch_size": 500}, "note": "smoke test"},
        )
        runs[dag_id] = run["dag_run_id"]
        api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    states = {}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and len(states) < len(runs):
        for dag_id, run_id in runs.items():
            state = api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}")["state"]
            if state in ("success", "failed"):
                states[dag_id] = state
        time.sleep(5)
    assert states == {dag_id: "success" for dag_id in DAG_IDS}

    with psycopg.connect(stack.source_dsn()) as conn:
        for dag_id, run_id in runs.items():
            value = api.call(
                "GET",
                f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/report/"
                "xcomEntries/return_value",
            )["value"]
            summary = json.loads(value) if isinstance(value, str) else value  # the report's structured summary
            report = summary["table"]
            reported = sum(int(m) for m in re.findall(r"^\| \w+ \| \w+ \| \w+ \| \d+ \| (\d+) \|", report, re.M))
            audited = conn.execute(
                "SELECT coalesce(sum(record_count), 0) FROM retention.audit_log WHERE run_id = %s"
                " AND action IN ('archived_and_deleted', 'deleted')",
                (run_id,),
            ).fetchone()[0]
            assert reported == audited == summary["totals"]["deleted"], (dag_id, report)
            assert "after " in report and "expectations passed" in report
            # The report's note, through the REST API from a task of the LocalExecutor, below
            # the note the trigger gave the run.
            note = api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}")["note"]
            assert note.startswith(f"smoke test\n\n---\n\n[Run evidence]({summary['evidence_path']}) · "), note
    # No task log carries pathspec's GitWildMatchPattern deprecation (PYTHONWARNINGS, devstack).
    task_logs = list((stack.state / "logs" / "airflow").rglob("*.log"))
    assert task_logs and not [p for p in task_logs if "gitwildmatch" in p.read_text(errors="replace")]


def test_retention_page_on_the_stack(stack):
    """After the runs above: the Retention plugin, served by the stack's own api-server, shows
    each purpose's last run green and nothing overdue; without a token it answers 401."""
    with pytest.raises(urllib.error.HTTPError) as denied:
        Api(stack.api_url).call("GET", "/retention/api/summary")
    assert denied.value.code == 401
    token = Api(stack.api_url).call(
        "POST", "/auth/token", {"username": devstack.DEMO_USER, "password": stack.demo_password}
    )["access_token"]
    # The page shows each purpose's latest run: the scheduler may have started a scheduled one
    # since (the DAGs are unpaused; at midnight in Paris each gets its daily run: a CI run across
    # it saw them 'running'). Read it once every run of theirs has ended.
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        summary = Api(stack.api_url, token).call("GET", "/retention/api/summary")
        purposes = {p["dag_id"]: p for p in summary["purposes"]}
        if time.monotonic() > deadline or not [
            d for d in DAG_IDS if purposes[d]["airflow"]["last"]["state"] in ("queued", "running")
        ]:
            break
        time.sleep(5)
    from retention.policy import default_policy

    assert set(purposes) == {f"retention_{name}" for name in default_policy().purposes}
    ran = {d: purposes[d] for d in DAG_IDS}  # the purposes the test ran
    assert {d: p["airflow"]["last"]["state"] for d, p in ran.items()} == {d: "success" for d in DAG_IDS}
    assert {d: p["overdue"] for d, p in ran.items()} == {d: 0 for d in DAG_IDS}
    assert summary["runs"], "the runs' evidence is listed"
