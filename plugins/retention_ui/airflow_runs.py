"""What Airflow's metadata database says for the Retention page: the DAGs' latest and latest
successful runs, runs dated in the future, runs queued on paused DAGs, a run's gate results and
report (XCom: counts, keys and ids only).
"""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import quote

GATE_TASKS = ("check_before", "check_after")


def last_runs(dag_ids: list[str]) -> dict[str, dict]:
    """Per DAG: its latest run (state, id, dates) and its latest successful run."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    result: dict[str, dict] = {d: {} for d in dag_ids}
    with create_session() as session:
        latest = (
            select(DagRun.dag_id, func.max(DagRun.run_after).label("at"))
            .where(DagRun.dag_id.in_(dag_ids))
            .group_by(DagRun.dag_id)
            .subquery()
        )
        for run in session.scalars(
            select(DagRun).join(latest, (DagRun.dag_id == latest.c.dag_id) & (DagRun.run_after == latest.c.at))
        ):
            result[run.dag_id]["last"] = {
                "run_id": run.run_id,
                "state": str(run.state),
                "logical_date": _iso(run.logical_date),
                "end_date": _iso(run.end_date),
            }
        for dag_id, at in session.execute(
            select(DagRun.dag_id, func.max(DagRun.end_date))
            .where(DagRun.dag_id.in_(dag_ids), DagRun.state == "success")
            .group_by(DagRun.dag_id)
        ):
            result[dag_id]["last_success"] = _iso(at)
    return result


def future_runs(now: dt.datetime) -> list[dict]:
    """Queued or running runs of the retention DAGs dated in the future (retention.future_dates):
    their tasks do not start before that date and they block their DAG meanwhile. The API refuses
    such triggers; these came
    some other way (the CLI, an older trigger)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from retention.future_dates import DAG_ID_PREFIX, FUTURE_TOLERANCE
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(
            select(DagRun)
            .where(
                DagRun.dag_id.startswith(DAG_ID_PREFIX, autoescape=True),
                DagRun.state.in_(("queued", "running")),
                DagRun.logical_date > now + FUTURE_TOLERANCE,
            )
            .order_by(DagRun.dag_id, DagRun.logical_date)
        )
        return [
            {
                "dag_id": run.dag_id,
                "run_id": run.run_id,
                "state": str(run.state),
                "logical_date": _iso(run.logical_date),
                "run_url": f"../dags/{run.dag_id}/runs/{quote(run.run_id, safe='')}",
            }
            for run in runs
        ]


def queued_on_paused_dags() -> list[dict]:
    """Queued runs of paused retention DAGs: Airflow starts none while the DAG is paused (a REST
    trigger does not unpause it), and nothing else says why they wait."""
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from retention.future_dates import DAG_ID_PREFIX
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(
            select(DagRun)
            .join(DagModel, DagModel.dag_id == DagRun.dag_id)
            .where(
                DagRun.dag_id.startswith(DAG_ID_PREFIX, autoescape=True),
                DagRun.state == "queued",
                DagModel.is_paused.is_(True),
            )
            .order_by(DagRun.dag_id, DagRun.run_after)
        )
        return [
            {
                "dag_id": run.dag_id,
                "run_id": run.run_id,
                "queued_at": _iso(run.queued_at),
                "run_url": f"../dags/{run.dag_id}/runs/{quote(run.run_id, safe='')}",
            }
            for run in runs
        ]


def gate_results(dag_id: str, run_id: str) -> dict:
    """The quality gates' XCom of one run (counts only), by task."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(XComModel.task_id, XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.key == "return_value",
                XComModel.task_id.in_(GATE_TASKS),
            )
        ).all()
    gates = {}
    for task_id, value in rows:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "summary"}
        gates[task_id] = value
    return gates


def report_summary(dag_id: str, run_id: str) -> dict | None:
    """The `report` task's summary of one run (XCom key `summary`: counts, keys and ids only),
    None before the task ran."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == "report",
                XComModel.key == "summary",
                XComModel.map_index == -1,
            )
        )
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
