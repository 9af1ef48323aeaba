"""Everything the Retention page shows, as data (also served as JSON at /retention/api/summary):
the counts per purpose as stored (each with its freshness), the rest read live.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

from retention_ui.airflow_runs import future_runs, last_runs, queued_on_paused_dags
from retention_ui.source import connect, counted_figures, overdue_days_setting, status_settings

CHART_DAYS = 60


# The audit run id of a data-subject request (retention.rights.subject_rights.SubjectRequest.run_id).
SUBJECT_REQUEST_RUN_PREFIX = "subject_request__"


def purpose_figures(name: str, policy, counted, archives: dict, now: dt.datetime) -> dict:
    """One purpose's row: its counts as stored (None when withheld), how fresh they are, and its
    archive totals (live)."""
    from retention.status import PurposeStatus, RuleStatus, purpose_mode

    purpose = policy.purposes[name]
    row = PurposeStatus(purpose=name, title=purpose.title, mode=purpose_mode(purpose))
    for tier, (objects, size) in sorted(archives.get(name, {}).items()):
        row.archive_objects[tier] = objects
        row.archive_bytes[tier] = size
    if counted.counts is not None:
        c = counted.counts
        row.due, row.held, row.waiting, row.overdue = c["due"], c["held"], c["waiting"], c["overdue"]
        row.deletable = c.get("deletable", row.due - row.held - row.waiting)  # counts stored before it was
        row.rules = [RuleStatus(**r) for r in c["rules"]]
        row.waiting_past_end = c["waiting_past_end"]
        return row.as_dict() | {"counts": counted.freshness(now)}
    # Withheld: no figure a user could act on; the last overdue one is in counts.last_overdue.
    withheld = {"due": None, "deletable": None, "held": None, "waiting": None, "overdue": None, "waiting_alarm": None}
    return row.as_dict() | withheld | {"counts": counted.freshness(now)}


def summary(overdue_days: int | None = None, now: dt.datetime | None = None, fresh: bool = False) -> dict:
    """Everything the page shows, as data (also served as JSON): the counts per purpose as
    stored (each with its freshness), the rest read live."""
    from retention import audit, housekeeping, status
    from retention.airflow_names import SUBJECT_REQUESTS_DAG_ID, dag_id_for
    from retention.alerts import OPEN_RETIREMENT_AFTER
    from retention.policy import PolicyError, default_policy

    policy = default_policy()
    now = now or dt.datetime.now(dt.UTC)
    overdue_days = overdue_days_setting() if overdue_days is None else overdue_days
    ttl, max_age, _ = status_settings()
    with connect() as conn:
        counted, counts_judged_at, recounting, recount_error = counted_figures(conn, policy, now, overdue_days, fresh)
        archives = status.archive_totals(conn)
        purposes = [purpose_figures(name, policy, counted[name], archives, counts_judged_at) for name in counted]
        per_day = status.deletions_per_day(conn, policy.timezone, CHART_DAYS, now)
        by_month = status.archive_by_purge_month(conn)
        holds = status.legal_holds(conn, now)
        runs = status.runs(conn)
        exports = status.access_exports(conn, now)
        retirements_left_open = status.open_retirements(conn, now, OPEN_RETIREMENT_AFTER)
        try:
            past_end, past_end_error = status.archives_past_their_end(conn, policy, now, overdue_days), None
        except PolicyError as exc:  # a table renamed since: named on the page, not a server error
            past_end, past_end_error = [], f"PolicyError: {exc}"
        verification = audit.last_verification(conn)
        cleaned = housekeeping.last_run(conn)
    # Airflow's records of runs before the last enforced housekeeping's cut are gone (the
    # policy's own_records.airflow_dag_runs): the page says so; the evidence (audit) stays.
    airflow_cut = None
    if cleaned and cleaned["mode"] == "enforce":
        airflow_cut = (cleaned["results"].get("airflow_metadata", {}).get("airflow_dag_runs") or {}).get("cut")
    airflow_runs = last_runs([dag_id_for(p["purpose"]) for p in purposes])
    paused_queue = queued_on_paused_dags()
    waiting_runs = {(r["dag_id"], r["run_id"]) for r in paused_queue}
    for p in purposes:
        p["dag_id"] = dag_id_for(p["purpose"])
        p["airflow"] = {"last": None, "last_success": None} | airflow_runs.get(p["dag_id"], {})
        last = p["airflow"]["last"]
        if last:
            last["dag_paused"] = (p["dag_id"], last["run_id"]) in waiting_runs
    for r in runs:
        r["dag_id"] = dag_id_for(r["purpose"])
        r["run_url"] = f"../dags/{r['dag_id']}/runs/{quote(r['run_id'], safe='')}"
        if r["run_id"].startswith(SUBJECT_REQUEST_RUN_PREFIX):
            # A data-subject request's deletions, audited under the purpose they belong to: its
            # Airflow run is one of the requests DAG's (run ids differ), so link that DAG's runs.
            r["dag_id"] = SUBJECT_REQUESTS_DAG_ID
            r["run_url"] = f"../dags/{SUBJECT_REQUESTS_DAG_ID}/runs"
        r["airflow_record_gone"] = bool(airflow_cut) and dt.datetime.fromisoformat(r["last_at"]) < (
            dt.datetime.fromisoformat(airflow_cut)
        )
    return {
        "generated_at": now.isoformat(),
        "timezone": policy.timezone,
        "overdue_days": overdue_days,
        # How fresh each figure is: the counts per purpose say it in purposes[].counts; the rest
        # is read live, at generated_at.
        "freshness": {
            "counts_ttl_s": int(ttl.total_seconds()),
            "counts_max_age_s": int(max_age.total_seconds()),
            "counts_judged_at": counts_judged_at.isoformat(),
            "recounting": recounting,
            "recount_error": recount_error,
            # The purge's checks refused the policy: the archives past their end are not known.
            "archives_past_end_error": past_end_error,
            "live": [
                "archive_bytes",
                "archive_objects",
                "airflow",
                "deleted_per_day",
                "archive_by_purge_month",
                "legal_holds",
                "runs",
                "future_runs",
                "access_exports",
                "open_retirements",
                "archives_past_end",
            ],
        },
        "purposes": purposes,
        "deleted_per_day": per_day,
        "archive_by_purge_month": by_month,
        "legal_holds": holds,
        "runs": runs,
        "future_runs": future_runs(now),
        "queued_on_paused_dags": paused_queue,
        "access_exports": exports,
        "open_retirements": retirements_left_open,
        # Archive objects stored past their purge date, none held (the watch's archive_past_end).
        "archives_past_end": past_end,
        # The audit chain's last verification (docs/audit.md).
        "audit_verification": verification and verification | {"checked_at": verification["checked_at"].isoformat()},
        # The last housekeeping (docs/housekeeping.md): its mode, when, and Airflow's cut.
        "housekeeping": cleaned
        and {"mode": cleaned["mode"], "ran_at": cleaned["ran_at"].isoformat(), "airflow_runs_cut": airflow_cut},
    }
