"""Who is told, and when: a failure e-mail on every retention task (the SMTP provider's notifier
through the `smtp_default` connection), a late-run e-mail through the same notifier when a
purpose's run is not finished some hours after it was queued (Airflow's deadline alert,
`run_deadline`), and the watch's alarms (overdue records, records waiting past their end without
a decision to wait, no success).

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
# How long a partition's retirement may stay open (its write-ahead record committed, its drop not:
# seconds in a run, up to RETENTION_DETACH_WAIT, at most 4h, behind a backup) before it is an
# alarm: a run interrupted there, not finished since (retention.status.open_retirements).
OPEN_RETIREMENT_AFTER = dt.timedelta(hours=6)
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


LATE_SUBJECT = "[retention] LATE {{ retention_dag_id }} (run {{ retention_run_id }}): not finished"
LATE_BODY = """\
<p><b>{{ retention_dag_id | e }}</b>: run {{ retention_run_id | e }} is not finished
{{ retention_hours | e }} after it was queued ({{ retention_queued_at | e }}); it is
<b>{{ retention_state | e }}</b>.</p>
<ul>
<li>{{ retention_run_date | e }}</li>
<li>deadline: {{ retention_deadline | e }}</li>
<li>run: <a href="{{ retention_run_url | e }}">{{ retention_run_url | e }}</a></li>
</ul>
<p>A run over the mass-deletion guard waits for an approval (Browse &gt; Required Actions); a
running task may be slow or stuck (see its log). Nothing is deleted before the archive is
verified and the gates pass; the next daily run waits for this one.</p>
"""


def run_deadline(hours: float):
    """Airflow's deadline alert of a purpose's DAG: a run not finished ``hours`` after it was
    queued (a scheduled daily run is queued at its scheduled time) calls ``notify_late_run`` on
    an executor. Queued, not the logical date: a backfill or a run dated in the past would
    otherwise be late the moment it is created."""
    from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(hours=hours),
        callback=SyncCallback(notify_late_run),
        name="retention_run_late",
    )


def notify_late_run(context: dict | None = None, **_) -> None:
    """The deadline alert's callback (run by an executor, with the run as the scheduler saw it when
    the deadline passed): the late-run e-mail, unless the run had finished by then (a failed
    run has had its failure e-mail)."""
    dag_run = (context or {}).get("dag_run") or {}
    if dag_run.get("end_date"):
        return
    late_notifier()({**(context or {}), **late_details(context or {})})


def late_details(context: dict) -> dict[str, str]:
    """What the late-run e-mail says, from the deadline callback's context (JSON of the run)."""
    from urllib.parse import quote

    from airflow.sdk import Variable
    from airflow.sdk.configuration import conf

    from retention.policy import default_policy

    policy = default_policy()
    tz = policy.tz
    dag_run = context.get("dag_run") or {}
    deadline = (context.get("deadline") or {}).get("deadline_time")

    def paris(value) -> str:
        if not value:
            return "unknown"
        at = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
        return f"{at.astimezone(tz):%Y-%m-%d %H:%M %Z}"

    logical = dag_run.get("logical_date")
    run_id = str(dag_run.get("dag_run_id"))
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")  # as the task log links
    run_url = f"{base}/dags/{dag_run.get('dag_id')}/runs/{quote(run_id, safe='')}"
    return {
        "retention_to": Variable.get("retention_alert_to", default=DEFAULT_TO),
        "retention_from": Variable.get("retention_alert_from", default=DEFAULT_FROM),
        "retention_dag_id": str(dag_run.get("dag_id")),
        "retention_run_id": run_id,
        "retention_state": str(dag_run.get("state")),
        "retention_queued_at": paris(dag_run.get("queued_at")),
        "retention_hours": f"{policy.alerts.run_deadline_hours:g} h",
        "retention_deadline": paris(deadline),
        "retention_run_date": f"logical date: {paris(logical)}" if logical else "logical date: none (a manual run)",
        "retention_run_url": run_url,
    }


def late_notifier():
    """The SMTP provider's notifier of a late run, through `smtp_default` (recipients: the same
    Variables as the failure e-mail, resolved in ``late_details``)."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(
        to="{{ retention_to }}",
        from_email="{{ retention_from }}",
        subject=LATE_SUBJECT,
        html_content=LATE_BODY,
        smtp_conn_id=ALERT_CONN_ID,
    )


@dataclass(frozen=True)
class Alarm:
    purpose: str
    # "overdue" | "waiting" | "no_success" | "future_run" | "open_retirement" | "archive_past_end"
    # | "policy_refused"
    kind: str
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
        stale = stale_alarm(s.purpose, last_success.get(s.purpose), now, stale_after)
        if stale is not None:
            found.append(stale)
    return found


def stale_alarm(name: str, ended: dt.datetime | None, now: dt.datetime, stale_after: dt.timedelta) -> Alarm | None:
    """'no_success' when the latest successful run (its end; None: never) is older than ``stale_after``."""
    if ended is None:
        return Alarm(name, "no_success", "no successful run on record")
    if now - ended > stale_after:
        hours = int((now - ended).total_seconds() // 3600)
        return Alarm(name, "no_success", f"last success {hours} h ago ({ended.isoformat()})")
    return None


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


def open_retirement_alarms(retirements: list[dict]) -> list[Alarm]:
    """Alarms for partitions left between their table and the archive (retention.status.
    open_retirements): their rows are hidden from the application, and the subject requests that
    may concern that table stop, until a run of the purpose finishes them (enforce mode) or
    attaches them again (preview mode)."""
    return [
        Alarm(
            r["purpose"],
            "open_retirement",
            f"partition {r['partition']} of {r['table']} has been in retirement for {r['hours']} h (run "
            f"{r['run_id']}, interrupted between its write-ahead record and its drop): once detached, its rows "
            "are in neither the table nor the archive, and subject requests that may concern that table stop, "
            "until the purpose's next enforced run finishes it (in preview mode, its next run attaches it again)",
        )
        for r in retirements
    ]


def archive_past_end_alarms(archives: list[dict], overdue_days: int) -> list[Alarm]:
    """Alarms for archive objects stored past their purge date (retention.status.
    archives_past_their_end), per purpose and rule: kept on the safe side, but longer than the
    policy promised, and nobody is told otherwise when the purge of their purpose no longer runs
    (a purpose removed from the policy) or keeps them for a decision (a period lengthened, a
    clock changed since)."""
    found = []
    for a in archives:
        if a["in_policy"]:
            why = (
                "its purge keeps them (a period lengthened or a clock changed since they were archived: "
                "re-date them) or does not run (the purpose in preview, or failing)"
            )
        elif a.get("purpose_in_policy"):
            # Not 'purge them by hand' (found by a review): a rule renamed may keep them longer now.
            why = (
                "the policy no longer names this rule (renamed or removed), so its purpose's purge keeps them, their "
                "period unknown, or does not run (the purpose in preview, or failing): re-date them to the rule "
                "that keeps them now (docs/operating.md)"
            )
        else:
            why = (
                "the policy no longer names this rule, so no purge decides them: move them to the rule that "
                "keeps them now, or purge them by hand"
            )
        if a["owners_not_recorded"]:
            why += (
                f"; {a['owners_not_recorded']} of them archived before owners were recorded, kept as if held until "
                "`python -m retention.archive.backfill_owners` records them"
            )
        found.append(
            Alarm(
                a["purpose"],
                "archive_past_end",
                f"{a['objects']} archive objects of rule {a['rule']} stored more than {overdue_days} days past "
                f"their purge date (the oldest due on {a['oldest_purge_date']}), none under a legal hold: {why}",
            )
        )
    return found
