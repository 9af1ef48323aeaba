"""Running a retention DAG with dag.test() and reading back what Airflow recorded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DAGS = Path(__file__).resolve().parents[1] / "dags"


def load_dag(purpose: str):
    spec = importlib.util.spec_from_file_location(f"dag_{purpose}", DAGS / f"retention_{purpose}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    # dag.test() of Airflow 3.3.2 fails a successful run of a DAG that has a deadline alert: its
    # in-memory scheduler DAG holds the alerts, not their ids (apache/airflow#73428). The alert is
    # the scheduler's business, tested on its own (tests/test_alerts.py); dag.test() runs without.
    dag.deadline = None
    return dag


def sync_dags() -> None:
    """Write the DAG folder's DAGs to the metadata database as the dag-processor does (what
    dag.test() also does first): the API serves and triggers only the DAGs it finds there."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        assert not bag.import_errors, bag.import_errors
        sync_bag_to_db(bag, bundle.name, bundle.version)


def run_dag(purpose: str, logical_date, **conf):
    """Crafted scenarios are tiny: most of a table is due, so the mass-deletion guard (tested on
    its own) is opened unless a test sets it."""
    conf.setdefault("max_delete_fraction", 1.0)
    dag = load_dag(purpose)
    for task in dag.tasks:  # dag.test() would sit out the 5-minute retry delay of a failed task
        task.retries = 0
    return dag.test(logical_date=logical_date, run_conf=conf)


def task_states(dag_run) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id)
            .all()
        )
        return {ti.task_id: str(ti.state) for ti in tis}


def xcoms(dag_run) -> dict[str, object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id)
            .filter(XComModel.key == "return_value")
            .all()
        )
        return {row.task_id: row.value for row in rows}


def asset_events(dag_run) -> dict[str, dict]:
    """The Asset events a run emitted, by asset URI: their extra."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetModel.uri, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetEvent.source_dag_id == dag_run.dag_id, AssetEvent.source_run_id == dag_run.run_id)
            .all()
        )
        return {uri: extra for uri, extra in rows}
