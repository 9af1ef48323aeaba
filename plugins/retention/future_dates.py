"""A run dated in the future: the one rule, shared by the api-server's guard, the watch, the
Retention page and the engine.

Airflow accepts any logical date (trigger dialog, REST, CLI) but its scheduler does not start
the tasks of a run before its logical date (it logs `Logical date is in future`), and that run
holds the DAG's only active-run slot (``max_active_runs=1``) until someone marks it failed: the
next day's run queues behind it. A retention run also acts as of its logical date, so a future
one would apply cutoffs before their time. Every DAG of the project (ids ``retention_*``: the
purposes, the subject requests, the watch) refuses them.

Stdlib only: the api-server imports this for every trigger it guards.
"""

from __future__ import annotations

import datetime as dt

# A logical date later than now by more than this is "in the future" (clock skew between the
# browser, the api-server and the workers); the scheduler waits out anything below it.
FUTURE_TOLERANCE = dt.timedelta(minutes=5)
DAG_ID_PREFIX = "retention_"


def guarded(dag_id: str) -> bool:
    return dag_id.startswith(DAG_ID_PREFIX)


def is_future(logical_date: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    """A run without a logical date is never in the future: it acts as of its start."""
    if logical_date is None:
        return False
    return logical_date > (now or dt.datetime.now(dt.UTC)) + FUTURE_TOLERANCE


def refusal(dag_id: str, logical_date: dt.datetime, now: dt.datetime) -> str:
    """Why a trigger of a retention DAG at a future logical date is refused (the API's 400)."""
    minutes = int(FUTURE_TOLERANCE.total_seconds() // 60)
    return (
        f"{dag_id}: logical date {logical_date.isoformat()} is in the future "
        f"(now {now.isoformat(timespec='seconds')}; {minutes} minutes of clock skew allowed). "
        "A retention run acts as of its logical date, and Airflow would not start this run's tasks "
        "before that date while the run holds the DAG's only active-run slot. Trigger with a "
        "logical date in the past, or none (the run then acts as of the moment it starts)."
    )


def run_after_refusal(dag_id: str, run_after: dt.datetime, now: dt.datetime) -> str:
    """Why a trigger of a retention DAG to run after a future instant is refused (the API's 400)."""
    minutes = int(FUTURE_TOLERANCE.total_seconds() // 60)
    return (
        f"{dag_id}: run_after {run_after.isoformat()} is in the future "
        f"(now {now.isoformat(timespec='seconds')}; {minutes} minutes of clock skew allowed). "
        "Airflow keeps the run queued until then, and a queued run holds the DAG's only active-run "
        "slot: no daily run is created meanwhile. Trigger without run_after (the run starts now)."
    )
