"""The watch DAG: every morning, an alarm when a purpose has overdue records, records waiting
past their end with no decision to let them wait, or has not succeeded for two days. The alarm
is the task failing (red in the grid) with one line per purpose, and the failure e-mail of
retention.alerts. Beside it, the daily deletion of expired access-request exports
(retention.rights.exports).

Wiring here (light at parse time); the check itself, `run_watch`, imports the rest inside.
"""

from __future__ import annotations

import datetime as dt
import logging
from zoneinfo import ZoneInfo

from airflow.sdk import DAG, CronTriggerTimetable, Param, dag, task

from retention.airflow_names import OWNER, START_DATE, dag_id_for
from retention.alerts import DEFAULT_OVERDUE_DAYS, STALE_AFTER, notify_failure

log = logging.getLogger(__name__)
WATCH_DAG_ID = "retention_watch"

DOC = """# Retention watch

Every morning at 07:00 (Europe/Paris), after the nightly retention runs: fails, and e-mails
through `smtp_default` (Variable `retention_alert_to`), when a purpose

- has **overdue** records: deletable for more than `overdue_days` days and still in the
  database (due, and neither under a legal hold nor waiting for a child kept by another purpose),
- has records **waiting past their end** for more than `overdue_days` days on a child table for
  which the policy's `dependents` decide `keep_parent_and_alert`, or decide nothing, or
- has **no successful run** in the last `stale_after_hours` hours (a failing, paused or
  never-run retention DAG), or
- (when it watches every purpose, as scheduled) the **housekeeping** DAG has no successful run
  in the last `stale_after_hours` hours: the audit chain is then neither verified nor anchored
  under Object Lock, and the own records and Airflow's metadata are no longer pruned, or
- has **archive objects past their purge date** for more than `overdue_days` days, none of their
  records under a legal hold: its purge keeps them for a decision (a period lengthened or a clock
  changed since they were archived) or does not run (preview, failing); when it watches every
  purpose, also the objects of a purpose or rule the policy no longer names, which no purge
  decides any more, or
- has a **run dated in the future** (queued or running; also the subject requests' DAG):
  Airflow does not start it before its date and the DAG runs nothing else meanwhile. The API
  refuses such a trigger; one made otherwise (the CLI, an older trigger) is to be marked failed.

Its log lists every alarm, one line per purpose, counts only. The Retention page shows the same
figures (the watch's counts are stored for it in `retention.status_counts`).

`delete_expired_exports` (independent of the alarms) deletes, every version, the exports of
access requests older than the policy's `access_exports.kept_for` (30 days) and records each
deletion in `retention.access_exports`; it fails, naming the requests, when S3 does not confirm.
"""


def build_watch_dag() -> DAG:
    @dag(
        dag_id=WATCH_DAG_ID,
        description="Alarm on overdue records and on purposes without a recent successful run",
        doc_md=DOC,
        schedule=CronTriggerTimetable("0 7 * * *", timezone="Europe/Paris"),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["retention", "watch"],
        default_args={"owner": OWNER, "retries": 0, "on_failure_callback": notify_failure},
        params={
            "overdue_days": Param(
                DEFAULT_OVERDUE_DAYS, type="integer", minimum=0, description="Days past due before an alarm."
            ),
            "stale_after_hours": Param(
                int(STALE_AFTER.total_seconds() // 3600),
                type="integer",
                minimum=1,
                description="Hours without a successful run before an alarm.",
            ),
            "purposes": Param(
                [], type="array", items={"type": "string"}, description="Purposes to watch (empty: all)."
            ),
        },
    )
    def retention_watch():
        @task
        def watch(**context) -> dict:
            """Overdue records and stale purposes; fails with one line per alarm."""
            return run_watch(context)

        @task
        def delete_expired_exports(**context) -> dict:
            """Exports of access requests past `access_exports.kept_for`: every version deleted."""
            return run_export_deletion(context)

        watch()
        delete_expired_exports()

    return retention_watch()


def last_success_end(dag_id: str, now: dt.datetime) -> dt.datetime | None:
    """End of the DAG's latest successful run, asked of the API server through the task's
    supervisor (a task has no metadata-database access in Airflow 3)."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetPreviousDagRun

    response = task_runner.SUPERVISOR_COMMS.send(
        GetPreviousDagRun(dag_id=dag_id, logical_date=now + dt.timedelta(days=1), state="success")
    )
    run = getattr(response, "dag_run", None)
    if run is None:
        return None
    return run.end_date or run.run_after


# The latest queued or running run before this date is the one with the latest logical date.
_END_OF_TIME = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)


def future_runs(dag_id: str, now: dt.datetime) -> list[tuple[str, dt.datetime]]:
    """The DAG's queued and running runs dated in the future (the latest of each state), asked
    of the API server like ``last_success_end``."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetPreviousDagRun

    from retention.future_dates import is_future

    found = []
    for state in ("running", "queued"):
        response = task_runner.SUPERVISOR_COMMS.send(
            GetPreviousDagRun(dag_id=dag_id, logical_date=_END_OF_TIME, state=state)
        )
        run = getattr(response, "dag_run", None)
        if run is not None and is_future(run.logical_date, now):
            found.append((run.run_id, run.logical_date))
    return found


def _count(conn, policy, now: dt.datetime, overdue_days: int, wanted: set[str], count_and_store) -> tuple[list, list]:
    """The purposes' counts (stored for the Retention page), and a ``policy_refused`` alarm for each
    purpose whose policy the database refuses (Planner.load: a legal hold naming a table renamed
    since, a hold coverage entry naming no link): that PolicyError failed the whole watch, and its
    other alarms went unsent for as long as the policy stayed refused (found by a review). Counted
    together first; purpose by purpose only once one is refused."""
    from retention.alerts import Alarm
    from retention.policy import PolicyError

    def counted(names):
        return count_and_store(conn, policy, now, overdue_days, names=names, counted_by="watch", best_effort=True)

    try:
        return counted(wanted), []
    except PolicyError:
        statuses, refused = [], []
        for name in (n for n in policy.purposes if n in wanted):
            try:
                statuses += counted({name})
            except PolicyError as exc:
                refused.append(Alarm(name, "policy_refused", f"{exc}"))
        return statuses, refused


def run_watch(context: dict) -> dict:
    import psycopg
    from airflow.sdk.exceptions import AirflowFailException

    from retention.airflow_names import SUBJECT_REQUESTS_DAG_ID
    from retention.alerts import (
        OPEN_RETIREMENT_AFTER,
        Alarm,
        alarms,
        archive_past_end_alarms,
        future_run_alarms,
        open_retirement_alarms,
        stale_alarm,
    )
    from retention.housekeeping_dag import HOUSEKEEPING_DAG_ID
    from retention.policy import PolicyError, default_policy
    from retention.status import archives_past_their_end, open_retirements
    from retention.status_counts import count_and_store
    from retention.tasks import source_dsn

    params = context["params"]
    policy = default_policy()
    wanted = set(params.get("purposes") or policy.purposes)
    unknown = wanted - set(policy.purposes)
    if unknown:
        raise AirflowFailException(f"unknown purposes {sorted(unknown)}; known: {sorted(policy.purposes)}")
    now = dt.datetime.now(dt.UTC)
    overdue_days = int(params["overdue_days"])
    with psycopg.connect(source_dsn(), autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        # Counted live, and kept for the Retention page (which then need not count them again).
        statuses, refused = _count(conn, policy, now, overdue_days, wanted, count_and_store)
        unread = []
        left_open = [r for r in open_retirements(conn, now, OPEN_RETIREMENT_AFTER) if r["purpose"] in wanted]
        # Every purpose of the manifest when all are watched: those the policy no longer names too.
        try:
            past_end = archives_past_their_end(
                conn, policy, now, overdue_days, purposes=wanted if params.get("purposes") else None
            )
        except PolicyError as exc:  # refused as the purge refuses it: reported, the other alarms sent
            past_end = []
            if not refused:  # the counts' alarms say it already
                unread = [Alarm("archives", "policy_refused", f"{exc}")]
    stale_after = dt.timedelta(hours=int(params["stale_after_hours"]))
    watched = [s.purpose for s in statuses] + [a.purpose for a in refused]
    last = {name: last_success_end(dag_id_for(name), now) for name in watched}
    found = refused + alarms(statuses, last, now, overdue_days, stale_after)
    found += [s for r in refused if (s := stale_alarm(r.purpose, last[r.purpose], now, stale_after))]
    watched_dags = [dag_id_for(name) for name in watched] + [SUBJECT_REQUESTS_DAG_ID]
    housekeeping = None
    if not params.get("purposes"):  # every purpose watched: the housekeeping too
        housekeeping = last_success_end(HOUSEKEEPING_DAG_ID, now)
        if stale := stale_alarm("housekeeping", housekeeping, now, stale_after):
            found.append(stale)
        watched_dags.append(HOUSEKEEPING_DAG_ID)
    future = {dag_id: runs for dag_id in watched_dags if (runs := future_runs(dag_id, now))}
    found += future_run_alarms(future)
    found += open_retirement_alarms(left_open)
    found += archive_past_end_alarms(past_end, overdue_days) + unread
    paris = ZoneInfo(policy.timezone)
    summary = {
        "checked_at": now.astimezone(paris).isoformat(),
        "overdue_days": overdue_days,
        "purposes": {
            s.purpose: {
                "due": s.due,
                "deletable": s.deletable,
                "overdue": s.overdue,
                "held": s.held,
                "waiting_past_end": s.waiting_past_end,
                "last_success": last[s.purpose].astimezone(paris).isoformat() if last[s.purpose] else None,
            }
            for s in statuses
        },
        "housekeeping_last_success": housekeeping.astimezone(paris).isoformat() if housekeeping else None,
        "future_runs": {
            d: [{"run_id": r, "logical_date": at.isoformat()} for r, at in runs] for d, runs in future.items()
        },
        "open_retirements": left_open,
        "archives_past_end": past_end,
        "alarms": [str(a) for a in found],
    }
    for line in summary["alarms"]:
        log.error("ALARM %s", line)
    if found:
        raise AirflowFailException(f"{len(found)} retention alarm(s): " + "; ".join(summary["alarms"]))
    log.info("no alarm: %d purposes watched", len(statuses))
    return summary


def run_export_deletion(context: dict) -> dict:
    from retention.policy import default_policy
    from retention.rights.exports import delete_expired
    from retention.tasks import archive_store, source_dsn

    return delete_expired(default_policy(), source_dsn(), archive_store(), dt.datetime.now(dt.UTC), context["run_id"])
