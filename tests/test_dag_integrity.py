"""DAG integrity: every file in dags/ imports cleanly and every DAG follows the house rules."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from retention.policy import default_policy

REPO_ROOT = Path(__file__).resolve().parents[1]
WATCH_FILE = REPO_ROOT / "dags" / "retention_watch.py"
REQUESTS_FILE = REPO_ROOT / "dags" / "retention_subject_requests.py"  # issue 10, triggered by hand
HOUSEKEEPING_FILE = REPO_ROOT / "dags" / "retention_housekeeping.py"  # issue 23, the own records
DAG_FILES = sorted(
    p for p in (REPO_ROOT / "dags").glob("*.py") if p not in (WATCH_FILE, REQUESTS_FILE, HOUSEKEEPING_FILE)
)  # one per purpose
OTHER_DAG_IDS = {"retention_watch", "retention_subject_requests", "retention_housekeeping"}
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
    assert WATCH_FILE.is_file() and REQUESTS_FILE.is_file() and HOUSEKEEPING_FILE.is_file()


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_exact_dag_ids(dagbag):
    assert set(dagbag.dag_ids) == EXPECTED_DAG_IDS | OTHER_DAG_IDS


@pytest.mark.parametrize("path", [*DAG_FILES, WATCH_FILE, REQUESTS_FILE, HOUSEKEEPING_FILE], ids=lambda p: p.name)
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
def test_the_approval_step_stands_between_the_gate_and_the_archive_step(path):
    """Over the mass-deletion guard, a run waits for a person before anything is archived or
    deleted (retention.approval_tasks): who may answer and how long from the policy file."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = _load(path).dag
    approval = dag.get_task("approve_deletion")
    assert isinstance(approval, ApprovalOperator)
    assert approval.upstream_task_ids == {"check_before"} and approval.downstream_task_ids == {"prepare_units"}
    settings = default_policy().approvals
    assert approval.response_timeout.total_seconds() == settings.wait_hours * 3600
    assert (approval.assigned_users or []) == [{"id": u, "name": u} for u in settings.approvers]


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_a_late_run_raises_airflows_deadline_alert(path):
    from airflow.sdk import DeadlineReference, SyncCallback

    [deadline] = _load(path).dag.deadline
    assert deadline.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert deadline.interval.total_seconds() == default_policy().alerts.run_deadline_hours * 3600
    assert deadline.callback == SyncCallback("retention.alerts.notify_late_run")


def test_an_erasure_previewed_is_approved_then_erased():
    dag = _load(REQUESTS_FILE).dag
    assert dag.get_task("approve_erasure").upstream_task_ids == {"handle_request"}
    assert dag.get_task("erase").upstream_task_ids == {"approve_erasure"}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_archive_units_follow_the_rules_order_in_the_writers_pool(path):
    """One mapped task per rule, in policy order (children before parents), each after the
    recovery and capped by the source writers' pool; the merge waits for the last rule."""
    from retention.airflow_names import SOURCE_WRITERS_POOL
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
    from retention.airflow_names import archive_alias, archive_assets
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
for path in {[str(p) for p in [*DAG_FILES, WATCH_FILE, REQUESTS_FILE, HOUSEKEEPING_FILE]]!r}:
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
    assert {"request_id", "action", "subject_kind", "subject_id", "received_on", "marketing_objection"} <= set(
        dag.params
    )
    # no address through a run's conf (Airflow keeps it): by e-mail, the request is recorded first
    assert "email" not in dag.params and "email" not in dag.params.get_param("subject_kind").schema["enum"]
    from airflow.sdk.exceptions import ParamValidationError

    for refused in (".", "..", "-", "a/b"):
        with pytest.raises(ParamValidationError):
            dag.params.get_param("request_id").resolve(refused)


# Loads the plugins as every Airflow process does (airflow.plugins_manager: each .py file under the
# plugins folder not excluded by plugins/.airflowignore is imported under its bare file name),
# parses the DAG folder, then imports every module of the two packages by name, as the tasks and
# the api-server do. In a subprocess: the plugin loader caches its result and fills sys.modules.
_LOAD_LIKE_AIRFLOW = r"""
import json, pkgutil, sys
from pathlib import Path
from airflow import plugins_manager
from airflow.dag_processing.dagbag import DagBag

plugins, plugin_errors = plugins_manager._get_plugins()
bag = DagBag(dag_folder=sys.argv[2])
plugins_dir = Path(sys.argv[1]).resolve()
for package in ("retention", "retention_ui"):
    __import__(package)
    for info in pkgutil.iter_modules(sys.modules[package].__path__, package + "."):
        __import__(info.name)
loaded = {}
for name, module in list(sys.modules.items()):
    file = getattr(module, "__file__", None)
    if file and Path(file).resolve().is_relative_to(plugins_dir):
        loaded[name] = str(Path(file).resolve().relative_to(plugins_dir))
print(json.dumps({
    "plugins": sorted(p.name for p in plugins),
    "plugin_errors": {str(k): str(v) for k, v in plugin_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "dag_import_errors": {str(k): str(v)[-500:] for k, v in bag.import_errors.items()},
    "loaded": loaded,
}))
"""


def _module_name(relative: Path) -> str:
    """The one name a module file under plugins/ may have in sys.modules: its dotted path."""
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_plugin_loader_imports_each_module_once(tmp_path):
    """With plugins/.airflowignore hiding the packages, the plugin loader imports only
    retention_ui_plugin.py; without it, it would also import retention/tasks.py as a top-level
    `tasks` (alerts.py as `alerts`...): a second copy of every module beside `retention.tasks`,
    with its own module state (caches, locks), and the heavy imports in every Airflow process."""
    plugins_dir = REPO_ROOT / "plugins"
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
    env |= {
        "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_dir),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": f"{plugins_dir}:{REPO_ROOT}",
    }
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_LIKE_AIRFLOW, str(plugins_dir), str(REPO_ROOT / "dags")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["plugin_errors"] == {} and out["dag_import_errors"] == {}
    assert "retention" in out["plugins"]
    assert set(out["dag_ids"]) == EXPECTED_DAG_IDS | OTHER_DAG_IDS

    files = sorted(
        p.relative_to(plugins_dir)
        for package in ("retention", "retention_ui")
        for p in (plugins_dir / package).glob("*.py")
    )
    names_by_file: dict[str, list[str]] = {}
    for name, file in out["loaded"].items():
        names_by_file.setdefault(file, []).append(name)
    for relative in files:
        names = sorted(names_by_file.get(str(relative), []))
        assert names == [_module_name(relative)], f"{relative} is in sys.modules as {names}"
    # Nothing else from plugins/ under another name (a bare `engine`, `checks`, `tasks`, `app`...).
    strays = {name: file for name, file in out["loaded"].items() if name != _module_name(Path(file))}
    assert strays == {}
    assert out["loaded"].get("retention_ui_plugin") == "retention_ui_plugin.py"
