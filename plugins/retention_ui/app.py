"""The Retention page: a FastAPI app served by Airflow's api-server under /retention, read-only
but for one form (a data-subject request, below).

Every route is behind Airflow's auth manager (the UI's JWT, as a bearer token or the UI's
cookie): no token is 401, an invalid one 403. Figures come from the bookkeeping schema
`retention` and the rule SQL through the `source_postgres_reader` connection (retention.status), run
states and gate results from Airflow's metadata database; counts, keys and ids only. The chart
library (Chart.js, MIT) is served from this folder: the page needs no internet.

The gates' Great Expectations Data Docs (retention.gates.data_docs) are served under
/retention/data-docs/, their CDN assets from this folder too (retention_ui.data_docs).

The register of the schedule (retention.register, docs/register.md): GET /retention/register
(the printable page; ?download=true as a file) and /retention/api/register.csv, ?from=&to= dates.

The form "Data-subject request" (POST /retention/subject-requests) records a request in the
project's own table (retention.rights.requests.submit: the address stays out of Airflow) and
triggers `retention_subject_requests` with its request id alone. Only for a user allowed to
trigger that DAG (Airflow's auth manager: DAG run, POST); CSRF-safe: the form carries a token
only a page served to that user holds (an HMAC of the user's id with the api-server's secret
key), and a cross-site request (Sec-Fetch-Site) is refused.

The counts per purpose (due, held, waiting, overdue) are read from retention.status_counts and
counted again in the background (retention_ui.recount) when not fresh: each purpose says when its
figures were counted and whether they are fresh, aged (shown, being recounted) or outdated
(withheld: a run, a delete, a legal hold, a truncate, the policy or the date changed them; the
overdue figure they had stays in the alarm). Everything else is read live at `generated_at`.
`?fresh=true` waits for counts made after the request.

Settings ([retention] section of airflow.cfg, or AIRFLOW__RETENTION__<KEY>):
  overdue_days          a record deletable for more than this many days and still there is an alarm (3)
  reader_conn_id        the page's connection, as retention_reader (source_postgres_reader)
  rights_conn_id        the form's connection, as retention_rights (source_postgres_rights)
  counter_conn_id       the recount's connection, as retention_counter (source_postgres_counter)
  status_ttl_seconds    counts younger than this are served as they are (60)
  status_max_age_seconds  older counts are withheld, not shown while recounting (900)
  status_wait_seconds   how long a request waits for withheld counts before answering without them (5)
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import io
import json
import threading
import time
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag, requires_access_view
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from retention_ui.data_docs import data_docs_response, vendored_file

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
PARIS = ZoneInfo("Europe/Paris")
CHART_DAYS = 60
GATE_TASKS = ("check_before", "check_after")


def overdue_days_setting() -> int:
    from airflow.configuration import conf
    from retention.alerts import DEFAULT_OVERDUE_DAYS

    return conf.getint("retention", "overdue_days", fallback=DEFAULT_OVERDUE_DAYS)


def status_settings() -> tuple[dt.timedelta, dt.timedelta, float]:
    """(ttl, max_age, wait) of the stored counts (module docstring)."""
    from airflow.configuration import conf

    ttl = conf.getint("retention", "status_ttl_seconds", fallback=60)
    max_age = conf.getint("retention", "status_max_age_seconds", fallback=900)
    wait = conf.getfloat("retention", "status_wait_seconds", fallback=5.0)
    return dt.timedelta(seconds=ttl), dt.timedelta(seconds=max(max_age, ttl)), wait


def source_dsn(setting: str = "reader_conn_id") -> str:
    """libpq connection string of the page's connection (as retention_reader), of the subject
    requests' (``rights_conn_id``, the form) or of the recount's (``counter_conn_id``, as
    retention_counter: the one that stores the counts), read the server's way (secrets backends, then the
    metadata database), every extra applied (retention.connections)."""
    from airflow.configuration import conf
    from airflow.models.connection import Connection
    from retention.connections import COUNTER_CONN_ID, READER_CONN_ID, RIGHTS_CONN_ID, conninfo

    default = {"reader_conn_id": READER_CONN_ID, "rights_conn_id": RIGHTS_CONN_ID, "counter_conn_id": COUNTER_CONN_ID}[
        setting
    ]
    conn_id = conf.get("retention", setting, fallback=default)
    return conninfo(connection=Connection.get_connection_from_secrets(conn_id))


# Opening a connection costs ~50 ms here (the provider's hook opens one to read its parameters,
# then the SCRAM handshake), more than the page's queries: the parameters are read at most once a
# minute (an RDS IAM token in them lives 15 minutes) and a few read-only connections are kept
# between requests, for IDLE_SECONDS at most.
DSN_SECONDS = 60
IDLE_SECONDS = 300
MAX_IDLE = 4
_dsn_lock = threading.Lock()
_dsn: tuple[float, str] | None = None
_idle_lock = threading.Lock()
_idle: list[tuple[float, object]] = []


def cached_source_dsn() -> str:
    global _dsn
    with _dsn_lock:
        if _dsn is None or time.monotonic() - _dsn[0] > DSN_SECONDS:
            _dsn = (time.monotonic(), source_dsn())
        return _dsn[1]


def _open_read_only():
    import psycopg

    conn = psycopg.connect(cached_source_dsn(), autocommit=True, application_name="retention:ui")
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("SET default_transaction_read_only = on")
    return conn


def _checkout():
    """A kept connection that still answers, or a new one."""
    while True:
        with _idle_lock:
            if not _idle:
                break
            since, conn = _idle.pop()
        if time.monotonic() - since > IDLE_SECONDS:
            conn.close()
            continue
        try:
            conn.execute("SELECT 1")  # the server may have ended it (a restart, pg_terminate_backend)
            return conn
        except Exception:
            conn.close()
    return _open_read_only()


@contextlib.contextmanager
def _connect():
    """A read-only connection to the source database for the duration of the block."""
    from psycopg.pq import TransactionStatus

    conn = _checkout()
    try:
        yield conn
    except BaseException:
        conn.close()
        raise
    with _idle_lock:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE and len(_idle) < MAX_IDLE:
            _idle.append((time.monotonic(), conn))
            return
    conn.close()


def _connect_for_counting():
    """The recount's connection, as retention_counter: the page's reads, and writing its counts
    into retention.status_counts (the only table that role may write)."""
    import psycopg

    return psycopg.connect(source_dsn("counter_conn_id"), autocommit=True, application_name="retention:ui-recount")


_recounter = None


def recounter():
    """The process's Recounter (created on first use: the plugin is imported at parse time too)."""
    global _recounter
    if _recounter is None:
        from retention_ui.recount import Recounter

        _recounter = Recounter(_connect_for_counting, lambda: status_settings()[:2])
    return _recounter


# How long ?fresh=true waits for its counts at most.
FRESH_WAIT_SECONDS = 300


def counted_figures(conn, policy, now: dt.datetime, overdue_days: int, fresh: bool = False):
    """The stored counts judged at the end (status_counts.read); a recount started when some are
    not fresh, waited for a little when some are withheld (all the way with ``fresh``). Returns
    (the counts, the instant they were judged at, whether a recount is running, its last error)."""
    from retention import status_counts

    ttl, max_age, wait = status_settings()
    counted = status_counts.read(conn, policy, now, overdue_days, ttl, max_age)
    if fresh or any(c.state != "fresh" for c in counted.values()):
        job = recounter().ensure(overdue_days, since=now if fresh else None)
        withheld = any(c.state == "outdated" for c in counted.values())
        if (fresh or withheld) and job.done.wait(FRESH_WAIT_SECONDS if fresh else wait):
            now = dt.datetime.now(dt.UTC)
            counted = status_counts.read(conn, policy, now, overdue_days, ttl, max_age)
    return counted, now, recounter().running(overdue_days), recounter().last_error(overdue_days)


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


def paris(value: str | None, with_time: bool = True) -> str:
    if not value:
        return "—"
    instant = dt.datetime.fromisoformat(value).astimezone(PARIS)
    return instant.strftime("%Y-%m-%d %H:%M") if with_time else instant.strftime("%Y-%m-%d")


def human_bytes(n: int | None) -> str:
    if not n:
        return "0 B"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


BYTE_UNITS = (("B", 1), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3), ("TiB", 1024**4))


def bytes_unit(peak: int) -> dict:
    """The unit of a bytes axis whose highest bar is ``peak`` bytes: the largest in which it is
    at least 1 (14 KiB on a KiB axis, not 0.014 MiB)."""
    name, size = next(((n, s) for n, s in reversed(BYTE_UNITS) if peak >= s), BYTE_UNITS[0])
    return {"name": name, "size": size}


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
    from retention.policy import default_policy

    policy = default_policy()
    now = now or dt.datetime.now(dt.UTC)
    overdue_days = overdue_days_setting() if overdue_days is None else overdue_days
    ttl, max_age, _ = status_settings()
    with _connect() as conn:
        counted, counts_judged_at, recounting, recount_error = counted_figures(conn, policy, now, overdue_days, fresh)
        archives = status.archive_totals(conn)
        purposes = [purpose_figures(name, policy, counted[name], archives, counts_judged_at) for name in counted]
        per_day = status.deletions_per_day(conn, policy.timezone, CHART_DAYS, now)
        by_month = status.archive_by_purge_month(conn)
        holds = status.legal_holds(conn, now)
        runs = status.runs(conn)
        exports = status.access_exports(conn, now)
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
        # The audit chain's last verification (docs/audit.md).
        "audit_verification": verification and verification | {"checked_at": verification["checked_at"].isoformat()},
        # The last housekeeping (docs/housekeeping.md): its mode, when, and Airflow's cut.
        "housekeeping": cleaned
        and {"mode": cleaned["mode"], "ran_at": cleaned["ran_at"].isoformat(), "airflow_runs_cut": airflow_cut},
    }


def evidence(purpose: str, run_id: str) -> dict:
    """A run's evidence: what it committed (audit log, manifest), its gates, and its report (the
    `report` task's summary; a preview run's only trace)."""
    from retention import status
    from retention.airflow_names import dag_id_for
    from retention.policy import default_policy

    policy = default_policy()
    dag_id = dag_id_for(purpose)
    report = report_summary(dag_id, run_id) if purpose in policy.purposes else None
    with _connect() as conn:
        found = status.run_evidence(conn, policy, purpose, run_id, always=report is not None)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no retention trace for run {run_id!r} of {purpose!r}")
    if report is not None:
        found["logical_date"] = found["logical_date"] or report.get("logical_date")
        found["mode"] = report.get("mode", found["mode"])
    found["dag_id"] = dag_id
    found["gates"] = gate_results(found["dag_id"], run_id)
    found["report"] = report
    found["generated_at"] = dt.datetime.now(dt.UTC).isoformat()
    return found


EVIDENCE_CSV_COLUMNS = (
    "section",
    "rule",
    "table",
    "action_or_tier",
    "records",
    "bytes",
    "key",
    "sha256",
    "version_id",
    "state",
    "purge_date",
    "detail",
)


def evidence_csv(ev: dict) -> str:
    """One flat table: the rules, the counts, the objects and the gates of a run."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EVIDENCE_CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    head = f"run_id={ev['run_id']}; purpose={ev['purpose']}; mode={ev['mode']}; logical_date={ev['logical_date']}"
    writer.writerow({"section": "run", "detail": head})
    for r in ev["rules"]:
        writer.writerow(
            {
                "section": "rule",
                "rule": r["rule"],
                "table": r["table"],
                "action_or_tier": r["tier"],
                "detail": f"clock={r['clock']}; live={r['live']}; archive={r['archive']}; sql={r['sql']}",
            }
        )
    for c in ev["counts"]:
        writer.writerow(
            {
                "section": "count",
                "rule": c["rule"],
                "table": c["table"],
                "action_or_tier": c["action"],
                "records": c["records"],
                "bytes": c["bytes"],
            }
        )
    for o in ev["objects"]:
        writer.writerow(
            {
                "section": "object",
                "rule": o["rule"],
                "table": o["table"],
                "action_or_tier": o["tier"],
                "records": o["rows"],
                "bytes": o["bytes"],
                "key": f"s3://{o['bucket']}/{o['key']}",
                "sha256": o["sha256"],
                "version_id": o["version_id"],
                "state": o["state"],
                "purge_date": o["purge_date"],
                "detail": o["event"],
            }
        )
    for a in ev.get("approvals", []):  # who approved (or refused) the plan, on which figures
        writer.writerow(
            {
                "section": f"approval:{a['kind']}",
                "sha256": a["plan_sha256"],
                "state": a["decision"],
                "detail": f"by={a['decided_by'] or '-'}; at={a['decided_at']}; "
                + json.dumps(a["figures"].get("tables", {}), sort_keys=True),
            }
        )
    report = ev.get("report") or {}
    for r in report.get("rules", []):
        waiting = r.get("waiting", 0)
        waiting = sum(waiting.values()) if isinstance(waiting, dict) else waiting
        figures = f"due={r.get('due', '')}; deletable={r.get('deletable', '')}; held={r.get('held', 0)}"
        writer.writerow(
            {
                "section": "report",
                "rule": r["rule"],
                "table": r["table"],
                "action_or_tier": r.get("tier", ""),
                "records": r.get("deleted", 0),
                "bytes": r.get("archive_bytes", 0),
                "state": "would" if report.get("previewed") else "done",
                "detail": f"{figures}; waiting={waiting}; deleted={r.get('deleted', 0)}",
            }
        )
    for task_id, gate in sorted(ev.get("gates", {}).items()):
        results = gate.get("results", []) if isinstance(gate, dict) else []
        for g in results:
            writer.writerow(
                {
                    "section": f"gate:{task_id}",
                    "rule": g.get("rule") or "",
                    "table": g.get("table"),
                    "action_or_tier": g.get("expectation"),
                    "state": {True: "ok", False: "failed", None: "skipped"}.get(g.get("success")),
                    "detail": json.dumps(g.get("observed", {}), sort_keys=True, default=str),
                }
            )
    return out.getvalue()


def csrf_token(user_id: str) -> str:
    """The form's token for one user: an HMAC of their id with the api-server's secret key, so
    only a page the api-server served to them holds it (a cross-site form cannot)."""
    import hashlib
    import hmac

    from airflow.configuration import conf

    secret = conf.get("api", "secret_key", fallback="") or ""
    return hmac.new(secret.encode(), f"retention-subject-request:{user_id}".encode(), hashlib.sha256).hexdigest()


def record_and_trigger(form: dict[str, str], user_name: str) -> dict:
    """Record the request (refused: SubjectRequestError, nothing written), then trigger its run
    with the request id alone. Returns the run id, and whether the DAG is paused."""
    import datetime as dt

    import psycopg
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.models.dag import DagModel
    from airflow.utils.types import DagRunTriggeredByType
    from retention.airflow_names import SUBJECT_REQUESTS_DAG_ID
    from retention.rights import requests as subject_requests
    from retention.rights.requests import SubjectRequestError

    kind = form.get("subject_kind", "")
    subject = form.get("subject", "")
    if kind in subject_requests.ID_KINDS and not subject.strip().isdigit():
        raise SubjectRequestError(f"a request for a {kind} needs its id (a positive integer)")
    try:
        received_on = dt.date.fromisoformat(form["received_on"]) if form.get("received_on") else None
    except ValueError as exc:
        raise SubjectRequestError("received_on must be a date (YYYY-MM-DD)") from exc
    with psycopg.connect(source_dsn("rights_conn_id"), autocommit=True, application_name="retention:ui") as conn:
        received = subject_requests.submit(
            conn,
            request_id=form.get("request_id", ""),
            action=form.get("action", ""),
            kind=kind,
            subject_id=int(subject) if kind in subject_requests.ID_KINDS else None,
            email=subject if kind == "email" else None,
            received_on=received_on,
            marketing_objection=form.get("marketing_objection") == "on",
            submitted_by=user_name,
        )
    preview = form.get("preview") == "on"
    result = {"request_id": received.request_id, "action": received.action, "kind": received.kind, "preview": preview}
    try:
        run = trigger_dag(
            SUBJECT_REQUESTS_DAG_ID,
            triggered_by=DagRunTriggeredByType.UI,
            triggering_user_name=user_name,
            conf={"request_id": received.request_id, "preview": preview},
            logical_date=None,
        )
    except Exception as exc:  # the request stays recorded: it can be triggered by its id
        return result | {"run_id": None, "trigger_error": type(exc).__name__}
    dag = DagModel.get_dagmodel(SUBJECT_REQUESTS_DAG_ID)
    return result | {"run_id": run.run_id, "paused": bool(dag and dag.is_paused)}


def _preview_next(result: dict) -> str:
    """What follows a request triggered in preview."""
    if not result["preview"]:
        return ""
    if result["action"] == "erasure":
        return " in preview: it waits for an approval (Browse &rarr; Required Actions), then erases in the same run"
    return " in preview: read its report, then submit the same request with preview off"


def render_request_result(result: dict | None, error: str | None = None) -> str:
    """The form's answer: what was recorded and the run triggered (never the address)."""
    from html import escape

    from retention.airflow_names import SUBJECT_REQUESTS_DAG_ID

    if error is not None:
        body = f'<p class="refused" data-testid="refused">Refused, nothing recorded: {escape(error)}</p>'
    elif result["run_id"] is None:
        body = (
            f'<p data-testid="recorded">Request <strong>{escape(result["request_id"])}</strong> recorded, but its run '
            f"could not be triggered ({escape(result['trigger_error'])}): trigger {SUBJECT_REQUESTS_DAG_ID} with "
            f'{{"request_id": "{escape(result["request_id"])}"}} (docs/subject-requests.md), or submit the same request again.</p>'
        )
    else:
        runs = f"../dags/{SUBJECT_REQUESTS_DAG_ID}/runs/{quote(result['run_id'], safe='')}"
        paused = (
            f"<p><strong>{SUBJECT_REQUESTS_DAG_ID} is paused</strong>: unpause it (it has no schedule) for the run "
            "to start.</p>"
            if result["paused"]
            else ""
        )
        body = (
            f'<p data-testid="recorded">Request <strong>{escape(result["request_id"])}</strong> recorded '
            f"({escape(result['action'])}, by {escape(result['kind'])}); run "
            f'<a target="_top" href="{escape(runs)}">{escape(result["run_id"])}</a> triggered'
            f"{_preview_next(result)}.</p>"
            f"{paused}"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Data-subject request</title></head>'
        f'<body style="font: 14px system-ui, sans-serif; margin: 16px 24px">{body}<p><a href="./">Back</a></p></body></html>'
    )


def counted(value: int | None) -> str:
    """A count, or an ellipsis while it is withheld (being counted again)."""
    return "…" if value is None else str(value)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(seconds, 0)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


@functools.cache
def _templates():
    """The Jinja environment, built once (it compiles the template once, and again if the file changes)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["paris"] = paris
    env.filters["bytes"] = human_bytes
    env.filters["counted"] = counted
    env.filters["age"] = age
    return env


def render_page(data: dict, csrf: str = "") -> str:
    env = _templates()
    per_month: dict[str, int] = {}
    for r in data["archive_by_purge_month"]:
        per_month[r["purge_month"]] = per_month.get(r["purge_month"], 0) + r["bytes"]
    charts = {
        "per_day": data["deleted_per_day"],
        "by_month": data["archive_by_purge_month"],
        "bytes_unit": bytes_unit(max(per_month.values(), default=0)),
        "purposes": [p["purpose"] for p in data["purposes"]],
    }
    from retention.rights.requests import REQUEST_ID_PATTERN

    return env.get_template("retention.html").render(
        data=data,
        charts_json=json.dumps(charts).replace("<", "\\u003c"),
        any_overdue=any(p["overdue"] or p["counts"]["last_overdue"] for p in data["purposes"]),
        withheld=[p["purpose"] for p in data["purposes"] if p["counts"]["state"] == "outdated"],
        csrf_token=csrf,
        request_id_pattern=REQUEST_ID_PATTERN.strip("^$"),
        waiting=[w | {"purpose": p["purpose"]} for p in data["purposes"] for w in p["waiting_past_end"]],
    )


def count_of(value) -> int:
    """A rule's waiting count: per blocking table in a run's outcome, one number in the audit's."""
    if isinstance(value, dict):
        return sum(value.values())
    return int(value) if isinstance(value, int) else 0


def end_days(days) -> str:
    """When a run's archived rows go (each on its own end day): one date, or the first and last."""
    if not isinstance(days, dict) or not days:
        return "-"
    first, last = min(days), max(days)
    return first if first == last else f"{first} .. {last} ({len(days)} days)"


def render_evidence(ev: dict) -> str:
    """A run's evidence as a page: its report as a table, then what it committed, its archive
    objects and its gates. Tolerant of summaries written by older versions of the report."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.ChainableUndefined
    )
    env.filters["paris"] = paris
    env.filters["bytes"] = human_bytes
    env.filters["count_of"] = count_of
    env.filters["days"] = end_days
    report = ev.get("report")
    would = bool(report) and bool(report.get("previewed", report.get("mode") == "preview" or report.get("dry_run")))
    return env.get_template("evidence.html").render(ev=ev, report=report, would=would)


def register_for(period_from: str | None, period_to: str | None):
    """The register of the schedule for the period asked (retention.register), read through the
    page's read-only connection; a period it refuses is a 400 saying why."""
    from retention import register
    from retention.policy import default_policy

    policy = default_policy()
    today = dt.datetime.now(ZoneInfo(policy.timezone)).date()
    try:
        start, end = register.parse_period(period_from, period_to, today)
    except register.RegisterError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    with _connect() as conn:
        return register.build_register(conn, policy, start, end)


def create_app() -> FastAPI:
    from retention.airflow_names import SUBJECT_REQUESTS_DAG_ID

    app = FastAPI(
        title="Retention",
        description="Read-only view of the GDPR retention schedule: due, overdue, held, archived; run evidence.",
        dependencies=[Depends(requires_access_view(AccessView.WEBSITE))],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    days_query = Query(None, ge=0, le=3650, description="overrides [retention] overdue_days")
    fresh_query = Query(False, description="wait for counts made after the request")

    @app.get("/", response_class=HTMLResponse)
    def page(user: GetUserDep, overdue_days: int | None = days_query, fresh: bool = fresh_query) -> HTMLResponse:
        return HTMLResponse(
            render_page(summary(overdue_days, fresh=fresh), csrf_token(user.get_id())),
            headers={"Cache-Control": "no-store"},
        )

    @app.post(
        "/subject-requests",
        response_class=HTMLResponse,
        dependencies=[
            Depends(
                requires_access_dag(
                    method="POST", access_entity=DagAccessEntity.RUN, param_dag_id=SUBJECT_REQUESTS_DAG_ID
                )
            )
        ],
    )
    async def subject_request(request: Request, user: GetUserDep) -> HTMLResponse:
        """Record a data-subject request and trigger its run with the request id alone."""
        from urllib.parse import parse_qs

        from retention.rights.requests import SubjectRequestError

        if request.headers.get("sec-fetch-site") == "cross-site":
            raise HTTPException(403, "cross-site request refused")
        body = (await request.body()).decode("utf-8", errors="replace")
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        if not hmac_equal(form.get("csrf_token", ""), csrf_token(user.get_id())):
            raise HTTPException(403, "the form's token is missing or stale: reload the Retention page")
        try:
            result = await run_in_threadpool(record_and_trigger, form, user.get_name())
        except SubjectRequestError as exc:
            return HTMLResponse(render_request_result(None, str(exc)), status_code=400)
        return HTMLResponse(render_request_result(result), headers={"Cache-Control": "no-store"})

    @app.get("/api/summary")
    def summary_json(overdue_days: int | None = days_query, fresh: bool = fresh_query) -> JSONResponse:
        return JSONResponse(summary(overdue_days, fresh=fresh), headers={"Cache-Control": "no-store"})

    @app.get("/runs/{purpose}/{run_id}", response_class=HTMLResponse)
    def evidence_page(purpose: str, run_id: str) -> HTMLResponse:
        """One run's evidence as a page (the run's note and the tasks' extra link point here)."""
        return HTMLResponse(render_evidence(evidence(purpose, run_id)), headers={"Cache-Control": "no-store"})

    @app.get("/api/runs/{purpose}/{run_id}/evidence.json")
    def evidence_json(purpose: str, run_id: str) -> Response:
        ev = evidence(purpose, run_id)
        return Response(
            json.dumps(ev, indent=2, default=str),
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{_filename(ev)}.json"'},
        )

    @app.get("/api/runs/{purpose}/{run_id}/evidence.csv")
    def evidence_csv_route(purpose: str, run_id: str) -> Response:
        ev = evidence(purpose, run_id)
        return Response(
            evidence_csv(ev),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{_filename(ev)}.csv"'},
        )

    from_query = Query(None, alias="from", description="first day, YYYY-MM-DD (default: 11 months before `to`, 1st)")
    to_query = Query(None, alias="to", description="last day, YYYY-MM-DD, included (default: today)")

    @app.get("/register", response_class=HTMLResponse)
    def register_page(
        period_from: str | None = from_query,
        period_to: str | None = to_query,
        download: bool = Query(False, description="as a file to keep"),
    ) -> HTMLResponse:
        """The register of the schedule as a printable page (docs/register.md)."""
        from retention.register import to_html

        reg = register_for(period_from, period_to)
        headers = {"Cache-Control": "no-store"}
        if download:
            name = f"register-{reg.period_from.isoformat()}-{reg.period_to.isoformat()}.html"
            headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return HTMLResponse(to_html(reg), headers=headers)

    @app.get("/api/register.csv")
    def register_csv(period_from: str | None = from_query, period_to: str | None = to_query) -> Response:
        from retention.register import to_csv

        reg = register_for(period_from, period_to)
        name = f"register-{reg.period_from.isoformat()}-{reg.period_to.isoformat()}.csv"
        return Response(
            to_csv(reg),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
        )

    @app.get("/static/chart.umd.min.js")
    def chart_js() -> FileResponse:
        return FileResponse(STATIC / "chart.umd.min.js", media_type="text/javascript")

    @app.get("/static/icon.svg")
    def icon() -> FileResponse:
        return FileResponse(STATIC / "icon.svg", media_type="image/svg+xml")

    @app.get("/static/data-docs/{path:path}")
    def data_docs_asset(path: str) -> FileResponse:
        """The Data Docs' CSS and JavaScript, vendored (static/data-docs/README.md)."""
        return vendored_file(path)

    @app.get("/data-docs/{path:path}")
    def data_docs(path: str) -> Response:
        """The quality gates' Great Expectations Data Docs (counts only), behind the same auth,
        loading nothing from the internet (retention_ui.data_docs)."""
        return data_docs_response(path)

    return app


def hmac_equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _filename(ev: dict) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ev["run_id"])
    return f"evidence-{ev['purpose']}-{safe}"
