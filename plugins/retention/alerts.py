"""Who is told, and when: a failure e-mail on every retention task (the SMTP provider's notifier
through the `smtp_default` connection) and the watch's alarms (overdue records, records waiting
past their end without a decision to wait, no success).

Light at parse time: the DAGs name a function; the notifier is built, and its template fields
rendered, when a task fails. Recipients and sender come from Airflow Variables read at that moment
(`retention_alert_to`, comma-separated, and `retention_alert_from`), or the connection's
`from_email`. Messages hold DAG, task and run ids, counts, the error's class and text: no
personal data.

Every run shape gets its e-mail: a manual run may have no logical date (REST `"logical_date":
null`), and Airflow then leaves `logical_date`, `ds`, `ts` and the data interval out of the
context, where the DAGs' StrictUndefined would fail the rendering (and no e-mail would go). So
the templates use only keys every run has; what depends on the date is computed here
(`failure_details`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

ALERT_CONN_ID = "smtp_default"
DEFAULT_TO = "dpo@localhost"
DEFAULT_FROM = "airflow-retention@localhost"
STALE_AFTER = dt.timedelta(days=2)
# Days a record may stay past its due date before the watch (and the Retention page) calls it
# overdue. Here, not in retention.status, so that the watch DAG's file does not import the status
# and planner modules at parse time for one number.
DEFAULT_OVERDUE_DAYS = 3

FAILURE_SUBJECT = "[retention] FAILED {{ ti.dag_id }}.{{ ti.task_id }} (run {{ run_id }})"
FAILURE_BODY = """\
<p><b>{{ ti.dag_id }}</b>: task <b>{{ ti.task_id }}</b> failed (try {{ ti.try_number }}).</p>
<ul>
<li>run: {{ run_id }}</li>
<li>{{ retention_run_date | e }}</li>
<li>error: {{ retention_error_class | e }}: {{ retention_error | e }}</li>
<li>log: <a href="{{ ti.log_url }}">{{ ti.log_url }}</a></li>
</ul>
<p>Nothing is deleted before the archive is verified and the gates pass: a failed run leaves the
rows it did not finish in place. The next run resumes; see the Retention page for what is due.</p>
"""


def notify_failure(context) -> None:
    """`on_failure_callback` of every retention task: the SMTP provider's notifier, built when a
    task fails. Imported here, not at parse time: the provider pulls in aiosmtplib (~0.3 s of
    every DAG file's parse). A new notifier per call, since a notifier renders its template
    fields onto itself (a second task's e-mail would go out with the first one's subject)."""
    failure_notifier()({**context, **failure_details(context)})


def failure_details(context) -> dict[str, str]:
    """What the e-mail says about the run's date and the error, for every run shape: a run
    without a logical date acts as of its start (retention.tasks.run_context)."""
    from retention.policy import default_policy

    tz = default_policy().tz
    dag_run = context.get("dag_run")
    logical_date = getattr(dag_run, "logical_date", None)
    if logical_date is not None:
        run_date = f"logical date: {logical_date.astimezone(tz):%Y-%m-%d %H:%M %Z} ({tz.key})"
    else:
        started = getattr(dag_run, "run_after", None)
        at = f"{started.astimezone(tz):%Y-%m-%d %H:%M %Z}" if started is not None else "unknown"
        run_date = f"logical date: none (a manual run; it acts as of its start, {at}, {tz.key})"
    return {
        "retention_run_date": run_date,
        "retention_error_class": error_class(context.get("exception")),
        "retention_error": str(context.get("exception") or "(no exception in the context)"),
    }


def error_class(exc: BaseException | None) -> str:
    """The error's class, and its cause's when a task re-raised it as another (a gate failure as
    AirflowFailException, so that it is not retried): e.g. "AirflowFailException (from
    QualityGateError)"."""
    if exc is None:
        return "unknown"
    causes = []
    cause = exc.__cause__
    while cause is not None and len(causes) < 3:
        causes.append(type(cause).__name__)
        cause = cause.__cause__
    return type(exc).__name__ + "".join(f" (from {c})" for c in causes)


def failure_notifier():
    """The SMTP provider's notifier of a task failure, through `smtp_default`."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(
        to="{{ var.value.get('retention_alert_to', '" + DEFAULT_TO + "') }}",
        from_email="{{ var.value.get('retention_alert_from', '" + DEFAULT_FROM + "') }}",
        subject=FAILURE_SUBJECT,
        html_content=FAILURE_BODY,
        smtp_conn_id=ALERT_CONN_ID,
    )


@dataclass(frozen=True)
class Alarm:
    purpose: str
    kind: str  # "overdue" | "waiting" | "no_success" | "future_run"
    detail: str

    def __str__(self) -> str:
        return f"{self.purpose}: {self.kind}: {self.detail}"


def alarms(
    statuses: list,
    last_success: dict[str, dt.datetime | None],
    now: dt.datetime,
    overdue_days: int,
    stale_after: dt.timedelta = STALE_AFTER,
) -> list[Alarm]:
    """Alarms from the purposes' status (retention.status.PurposeStatus) and the end of each
    purpose's latest successful run (None: never succeeded)."""
    found = []
    for s in statuses:
        if s.overdue:
            rules = ", ".join(f"{r.rule}={r.overdue}" for r in s.rules if r.overdue)
            found.append(
                Alarm(
                    s.purpose,
                    "overdue",
                    f"{s.overdue} deletable records due for more than {overdue_days} days ({rules})",
                )
            )
        waiting = [w for w in s.waiting_past_end if w["alarm"]]
        if waiting:
            links = ", ".join(
                f"{w['rule']} on {w['waiting_on']} ({w['decision']}): {w['past_grace']}, oldest {w['oldest_days']} days"
                for w in waiting
            )
            found.append(
                Alarm(
                    s.purpose,
                    "waiting",
                    f"{sum(w['past_grace'] for w in waiting)} records waiting past their end for more than "
                    f"{overdue_days} days with no decision to let them wait ({links})",
                )
            )
        ended = last_success.get(s.purpose)
        if ended is None:
            found.append(Alarm(s.purpose, "no_success", "no successful run on record"))
        elif now - ended > stale_after:
            hours = int((now - ended).total_seconds() // 3600)
            found.append(Alarm(s.purpose, "no_success", f"last success {hours} h ago ({ended.isoformat()})"))
    return found


def future_run_alarms(future_runs: dict[str, list[tuple[str, dt.datetime]]]) -> list[Alarm]:
    """Alarms for runs dated in the future (retention.future_dates), by DAG id: their tasks do not
    start before that date and they hold the DAG's only active-run slot, so the schedule stops
    behind them."""
    return [
        Alarm(
            dag_id.removeprefix("retention_"),
            "future_run",
            f"run {run_id} has logical date {logical_date.isoformat()}, in the future: Airflow will not "
            f"start it and {dag_id} runs nothing else meanwhile; mark it failed (a retention run acts as "
            "of its logical date: trigger again with a past one, or none)",
        )
        for dag_id, runs in sorted(future_runs.items())
        for run_id, logical_date in runs
    ]
