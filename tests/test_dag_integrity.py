"""DAG integrity: every file in dags/ imports cleanly and every DAG follows the house rules."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from retention.policy import default_policy

REPO_ROOT = Path(__file__).resolve().parents[1]
WATCH_FILE = REPO_ROOT / "dags" / "retention_watch.py"
REQUESTS_FILE = REPO_ROOT / "dags" / "retention_subject_requests.py"  # issue 10, triggered by hand
DAG_FILES = sorted(
    p for p in (REPO_ROOT / "dags").glob("*.py") if p not in (WATCH_FILE, REQUESTS_FILE)
)  # one per purpose
EXPECTED_DAG_IDS = {  # DESIGN.md §5
    "retention_quotes",
    "retention_contracts",
    "retention_prospects",
    "retention_call_recordings",
    "retention_aml",
    "retention_fraud",
    "retention_job_applications",
    # The rest of the policy's schedule (issue 9).
    "retention_subscriber_services",
    "retention_marketing",
    "retention_information_requests",
    "retention_rights_requests",
    "retention_cookie_consents",
}
# boto3 too: the archive task's outlet is an Asset alias, whose s3:// Assets are built in the task (the
# amazon provider normalises an s3:// URI with a module that imports boto3).
HEAVY_MODULES = ("pandas", "pyarrow", "great_expectations", "psycopg", "adbc_driver_postgresql", "boto3")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"dagfile_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dag_files_were_found():
    assert len(DAG_FILES) == len(EXPECTED_DAG_IDS), [p.name for p in DAG_FILES]
    assert WATCH_FILE.is_file() and REQUESTS_FILE.is_file()


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_exact_dag_ids(dagbag):
    assert set(dagbag.dag_ids) == EXPECTED_DAG_IDS | {"retention_watch", "retention_subject_requests"}


@pytest.mark.parametrize("path", [*DAG_FILES, WATCH_FILE, REQUESTS_FILE], ids=lambda p: p.name)
def test_every_task_notifies_its_failure(path):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    from retention.alerts import failure_notifier, notify_failure

    dag = _load(path).dag
    for t in dag.tasks:
        callbacks = t.on_failure_callback if isinstance(t.on_failure_callback, list) else [t.on_failure_callback]
        assert notify_failure in callbacks, t.task_id
    notifier = failure_notifier()
    assert isinstance(notifier, SmtpNotifier) and notifier.smtp_conn_id == "smtp_default"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_house_rules(path):
    dag = _load(path).dag
    assert dag.dag_id == path.stem
    assert dag.owner == "data-protection"
    assert {"retention", dag.dag_id.removeprefix("retention_")} <= set(dag.tags)
    assert len(dag.tags) == 4  # retention, the purpose, the legal basis, the mode
    assert f"mode:{default_policy().purpose(dag.dag_id.removeprefix('retention_')).mode}" in dag.tags
    assert dag.doc_md and "Finalité" in dag.doc_md and "Base légale" in dag.doc_md
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    timetable = dag.timetable
    assert type(timetable).__name__ == "CronTriggerTimetable"
    assert timetable.expression == "0 0 * * *" and str(timetable.timezone) == "Europe/Paris"
    assert dag.start_date is not None
    for t in dag.tasks:
        assert t.retries >= 1, t.task_id
    assert set(dag.params) == {"dry_run", "batch_size", "max_delete_fraction", "range_rows"}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_delete_is_downstream_of_gate_and_plan(path):
    dag = _load(path).dag
    archive = dag.get_task("archive_and_delete")
    upstream = archive.get_flat_relative_ids(upstream=True)
    assert {"check_before", "plan"} <= upstream
    assert "archive_and_delete" in dag.get_task("check_after").get_flat_relative_ids(upstream=True)


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_archive_units_follow_the_rules_order_in_the_writers_pool(path):
    """One mapped task per rule, in policy order (children before parents), each after the
    recovery and capped by the source writers' pool; the merge waits for the last rule."""
    from retention.dag_factory import SOURCE_WRITERS_POOL
    from retention.policy import default_policy

    dag = _load(path).dag
    rules = default_policy().purpose(dag.dag_id.removeprefix("retention_")).rules
    previous = "prepare_units"
    for rule in rules:
        units = dag.get_task(f"archive_{rule.name}")
        assert units.pool == SOURCE_WRITERS_POOL
        assert previous in units.upstream_task_ids and "prepare_units" in units.get_flat_relative_ids(upstream=True)
        previous = units.task_id
    assert previous in dag.get_task("archive_and_delete").upstream_task_ids


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_archive_assets_are_prefixes_only(path):
    from retention.dag_factory import archive_alias, archive_assets
    from retention.policy import default_policy

    dag = _load(path).dag
    purpose = dag.dag_id.removeprefix("retention_")
    # Through an alias: events only for the tiers a run wrote to (tests/test_dags_run.py).
    assert dag.get_task("archive_and_delete").outlets == [archive_alias(purpose)]
    for asset in archive_assets(default_policy(), purpose):
        assert asset.uri.startswith("s3://") and asset.uri.rstrip("/").endswith(f"/{purpose}"), asset.uri


def test_parsing_reads_no_connection_and_imports_nothing_heavy():
    """Parse every DAG file in a fresh interpreter: no connection lookups, no heavy modules."""
    code = f"""
import importlib.util, sys
import airflow.sdk
from airflow.sdk import BaseHook
def forbidden(*a, **k):
    raise AssertionError("get_connection called while parsing")
BaseHook.get_connection = classmethod(forbidden)
for path in {[str(p) for p in [*DAG_FILES, WATCH_FILE, REQUESTS_FILE]]!r}:
    spec = importlib.util.spec_from_file_location("d", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
assert not heavy, heavy
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
    env["PYTHONPATH"] = f"{REPO_ROOT / 'plugins'}:{REPO_ROOT}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_subject_requests_dag_is_triggered_by_hand_and_previews_by_default():
    dag = _load(REQUESTS_FILE).dag
    assert type(dag.timetable).__name__ == "NullTimetable"  # no schedule: one run per request
    assert dag.owner == "data-protection" and dag.max_active_runs == 1
    assert dag.params["preview"] is True
    assert {"request_id", "action", "subject_kind", "subject_id", "email", "received_on", "marketing_objection"} <= set(
        dag.params
    )
