"""The CeleryExecutor on this machine (`make demo EXECUTOR=celery WORKERS=2`, tools.devstack):
Redis and two named `airflow celery worker`s beside the scheduler, one stack for the module.

- a purpose's backlog spread over 4+ units runs on both workers, at most the pool's slots of
  units at once, with the same result (rows, objects, manifest, audit) as the same run under
  dag.test() (tests/test_dags_run.py's path);
- a worker killed with SIGKILL (the worker, its pool and the task process: a machine lost) while
  its unit uploads, and another between DELETE and COMMIT: the scheduler notices the missing
  heartbeats, Airflow retries the unit on the other worker, the run ends green, every row is
  counted once, nothing is lost or duplicated (tests/invariants.py, after the next run's
  recovery has removed the killed try's orphan upload).

The pause points are tests/celery_faults/sitecustomize.py, on the workers' PYTHONPATH only here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests import factories as f
from tests.invariants import assert_invariants
from tests.test_stack_smoke import Api
from tools import devstack

pytestmark = [pytest.mark.stack, pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[1]
DAG_ID, PURPOSE, UNITS_TASK = "retention_quotes", "quotes", "archive_unconverted_quotes"
WORKERS = ["worker1", "worker2"]
SEED = {"customers": 300, "seed": 7, "reference_date": "2026-06-01"}
# 19 unconverted quotes are due at the reference date: 5 units of 4 ids, 2 batches each.
CONF = {"batch_size": 2, "range_rows": 4, "max_delete_fraction": 1.0}
# Airflow's own settings for the test: only the test's runs (no scheduled run when the DAG is
# unpaused); a task whose heartbeats stop is failed after 30 s (default 300) and retried 5 s
# later (default 300); a task queued to the killed worker (its message reserved, unacknowledged
# until the broker's visibility timeout) is queued again after 60 s (default 600).
TEST_SETTINGS = {
    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "5",
}
RUN_TIMEOUT_S = 600
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def stack():
    started = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="retention-celery-"))
    config = devstack.StackConfig.load_or_create(
        state, devstack.free_port(), devstack.free_port(), devstack.free_port(), devstack.free_port()
    )
    config.executor, config.workers = "celery", len(WORKERS)
    faults = state / "faults"
    faults.mkdir()
    config.extra_env = TEST_SETTINGS | {
        "RETENTION_TEST_FAULT_DIR": str(faults),
        "PYTHONPATH": os.pathsep.join(
            str(p) for p in (REPO_ROOT / "tests" / "celery_faults", REPO_ROOT / "plugins", REPO_ROOT)
        ),
    }
    # The session's key of the archived identifiers' hashes: the objects compare with dag.test()'s.
    config.identifier_key = os.environ["RETENTION_IDENTIFIER_KEY"]
    try:
        devstack.up(config, **SEED)
        TIMINGS["stack up"] = time.monotonic() - started
        yield config
    finally:
        devstack.down(state)


@pytest.fixture(scope="module")
def api(stack) -> Api:
    token = Api(stack.api_url).call(
        "POST", "/auth/token", {"username": devstack.DEMO_USER, "password": stack.demo_password}
    )["access_token"]
    api = Api(stack.api_url, token)
    deadline = time.monotonic() + 300
    while DAG_ID not in {d["dag_id"] for d in api.call("GET", "/api/v2/dags?limit=50")["dags"]}:
        assert time.monotonic() < deadline, "the dag-processor did not parse the DAGs"
        time.sleep(2)
    api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    return api


def trigger(api: Api, logical_date: str) -> str:
    run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": logical_date, "conf": CONF})
    return run["dag_run_id"]


def run_path(run_id: str) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}"


def wait_for_run(api: Api, run_id: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        state = api.call("GET", run_path(run_id))["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    raise AssertionError(f"run {run_id} not finished after {RUN_TIMEOUT_S} s")


def task_instances(api: Api, run_id: str) -> list[dict]:
    return api.call("GET", run_path(run_id) + "/taskInstances?limit=200")["task_instances"]


def unit_tries(api: Api, run_id: str, map_index: int) -> list[dict]:
    return api.call("GET", run_path(run_id) + f"/taskInstances/{UNITS_TASK}/{map_index}/tries")["task_instances"]


def report_summary(api: Api, run_id: str) -> dict:
    value = api.call("GET", run_path(run_id) + "/taskInstances/report/xcomEntries/return_value")["value"]
    return json.loads(value) if isinstance(value, str) else value


def worker_of(hostname: str) -> str:
    (worker,) = [w for w in WORKERS if devstack.celery_node_name(w) == hostname]
    return worker


def result_of(conn, run_id: str) -> dict:
    """What a run did, without its run id: the quotes left, its committed objects (rows, ids,
    SHA-256) and its audit counts per action."""
    objects = conn.execute(
        "SELECT rule, table_name, tier, row_count, record_ids, sha256 FROM retention.archive_manifest"
        " WHERE run_id = %s AND state = 'committed' ORDER BY record_ids[1]",
        (run_id,),
    ).fetchall()
    audit = conn.execute(
        "SELECT action, rule, sum(record_count), count(object_key) FROM retention.audit_log WHERE run_id = %s"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        (run_id,),
    ).fetchall()
    return {
        "quotes left": f.ids(conn, "quotes"),
        "objects": [(r, t, tier, n, sorted(ids), sha) for r, t, tier, n, ids, sha in objects],
        "audit": [(a, r, int(n), int(k)) for a, r, n, k in audit],
    }


def overlap(intervals: list[tuple[str, str]]) -> int:
    """The most intervals open at one instant."""
    events = sorted(
        [(dt.datetime.fromisoformat(s), 1) for s, _ in intervals]
        + [(dt.datetime.fromisoformat(e), -1) for _, e in intervals]
    )
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


# ---------------------------------------------------------------------------------- the run


def test_units_run_on_both_workers_within_the_pool_as_under_dag_test(stack, api, airflow_db, db, s3, storage, policy):
    started = time.monotonic()
    logical_date = "2026-06-01T00:00:00+00:00"
    run_id = trigger(api, logical_date)
    assert wait_for_run(api, run_id) == "success"
    TIMINGS["run on 2 Celery workers (incl. first parse)"] = time.monotonic() - started

    tis = task_instances(api, run_id)
    units = [ti for ti in tis if ti["task_id"] == UNITS_TASK]
    assert len(units) >= 4 and {ti["state"] for ti in units} == {"success"}
    # Airflow's records: every task on the shared queue, the units on both workers, in the pool.
    assert {ti["queue"] for ti in tis} == {devstack.CELERY_QUEUE}
    assert {ti["hostname"] for ti in units} == {devstack.celery_node_name(w) for w in WORKERS}, units
    pool, slots = devstack.SOURCE_WRITERS_POOL
    assert {ti["pool"] for ti in units} == {pool}
    assert overlap([(ti["start_date"], ti["end_date"]) for ti in units]) <= slots

    with psycopg.connect(stack.source_dsn(), autocommit=True) as conn:
        on_celery = result_of(conn, run_id)
    summary = report_summary(api, run_id)
    deleted = sum(n for action, _, n, _ in on_celery["audit"] if action == "archived_and_deleted")
    assert summary["totals"]["deleted"] == deleted == sum(o[3] for o in on_celery["objects"]) >= len(units)

    # The same data and run under dag.test() (the test session's database and S3 server).
    started = time.monotonic()
    from tests.dag_runs import run_dag, task_states
    from tools.seed.load import seed_database

    seed_database(
        os.environ["RETENTION_TEST_SOURCE_DSN"],
        customers=SEED["customers"],
        seed=SEED["seed"],
        reference_date=dt.date.fromisoformat(SEED["reference_date"]),
        s3_client=s3,
        documents_bucket=storage.documents_bucket,
    )
    dag_run = run_dag(PURPOSE, dt.datetime.fromisoformat(logical_date), **CONF)
    assert set(task_states(dag_run).values()) == {"success"}
    TIMINGS["the same run under dag.test()"] = time.monotonic() - started
    reference = result_of(db, dag_run.run_id)
    assert on_celery == reference


# -------------------------------------------------------------------------------- the faults


def kill_worker(stack, worker: str) -> int:
    """SIGKILL to the worker and everything under it (its pool, the supervisors and the task
    processes, which Airflow puts in process groups of their own): the machine is gone."""
    import psutil

    root = psutil.Process(devstack._running_pid(stack, worker))
    processes = [root, *root.children(recursive=True)]
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=15)
    assert not devstack._running_pid(stack, worker)
    return len(processes)


@pytest.mark.parametrize(
    ("step", "logical_date"),
    [
        # the unit's second object uploaded and read back, its rows not yet deleted
        ("after_upload", "2026-06-15T00:00:00+00:00"),
        # the unit's second batch deleted, its manifest and audit written, not committed
        ("after_delete", "2026-06-29T00:00:00+00:00"),
    ],
)
def test_a_worker_killed_mid_unit(stack, api, policy, step, logical_date):
    started = time.monotonic()
    when = dt.datetime.fromisoformat(logical_date)
    with psycopg.connect(stack.source_dsn(), autocommit=True) as conn:
        # due, and archived (their archive period ends in 2027): 4+ units again
        added = {f.quote(conn, issued="2025-03-01") for _ in range(16)}
    faults = Path(stack.extra_env["RETENTION_TEST_FAULT_DIR"])
    (faults / f"{step}.armed").write_text("2")  # the second time a unit reaches the step
    run_id = trigger(api, logical_date)

    paused = faults / f"{step}.paused"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (paused.exists() and paused.read_text()):
        assert time.monotonic() < deadline, f"no unit reached {step}"
        assert api.call("GET", run_path(run_id))["state"] in ("queued", "running")
        time.sleep(1)
    held_by = json.loads(paused.read_text())
    running = [ti for ti in task_instances(api, run_id) if ti["task_id"] == UNITS_TASK and ti["state"] == "running"]
    (killed,) = [ti for ti in running if ti["pid"] == held_by["pid"]] or running[:1]
    worker = worker_of(killed["hostname"])
    assert worker == held_by["worker"]
    kill_worker(stack, worker)
    try:
        assert wait_for_run(api, run_id) == "success"
    finally:
        devstack.start_workers(stack, [worker])  # for the next test; after the run: the retry ran elsewhere
    TIMINGS[f"run with a worker killed {step}"] = time.monotonic() - started

    tries = unit_tries(api, run_id, killed["map_index"])
    assert [(t["try_number"], t["state"], t["hostname"]) for t in tries] == [
        (1, "failed", killed["hostname"]),
        (2, "success", devstack.celery_node_name(next(w for w in WORKERS if w != worker))),
    ]
    with psycopg.connect(stack.source_dsn(), autocommit=True) as conn:
        left = f.ids(conn, "quotes")
        audited = conn.execute(
            "SELECT coalesce(sum(record_count), 0) FROM retention.audit_log"
            " WHERE run_id = %s AND action IN ('archived_and_deleted', 'deleted')",
            (run_id,),
        ).fetchone()[0]
        committed = Counter(
            i
            for (ids,) in conn.execute(
                "SELECT record_ids FROM retention.archive_manifest WHERE run_id = %s AND state = 'committed'",
                (run_id,),
            )
            for i in ids
        )
    # every row once: gone from the source, in one committed object, the audit log and the report
    assert added <= set(committed) and not set(committed) & left
    assert set(committed.values()) == {1}
    assert report_summary(api, run_id)["totals"]["deleted"] == audited >= len(committed)

    # The next run's recovery (its prepare_units, here called directly) removes the killed try's
    # orphan upload; then the invariants of the first promise hold over the whole bucket.
    from retention.archive.engine import RetentionEngine
    from retention.archive.run import RunContext
    from retention.archive.store import ArchiveStore

    storage = policy.storage_settings()
    client = devstack.s3_client(stack.s3_endpoint)
    engine = RetentionEngine(policy, PURPOSE, stack.source_dsn(), ArchiveStore(client, storage))
    engine.archive_and_delete(RunContext(PURPOSE, f"recovery__{step}", when, batch_size=100))
    with psycopg.connect(stack.source_dsn(), autocommit=True) as conn:
        assert_invariants(conn, client, storage, policy, PURPOSE, {"quotes": set(committed)}, {}, when)


def test_timings_are_printed():
    """Not a check: the durations, for docs/scaling.md and the CI budget."""
    for what, seconds in TIMINGS.items():
        print(f"{what}: {seconds:.0f} s")
