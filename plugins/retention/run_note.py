"""The run's note: the few figures an engineer scans, on the DAG run's page, and the link to the
run's evidence on the Retention page, where the whole report is one table.

A task cannot write its run's note through the Task SDK (Airflow 3.3's execution API takes a
note only when a run is triggered), so the `report` task sets it through Airflow's public REST
API, ``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}`` (``note``), the way any client does: with
the connection ``retention_airflow_api`` (host: the api-server's base URL; login and password of
a user allowed to edit the DAG's runs, e.g. SimpleAuthManager's role ``user``). That works from
any worker that reaches the api-server (LocalExecutor, Celery). Without the connection, or when
the API refuses, the report logs why and goes on: the report is in XCom and on the Retention
page either way, and the tasks' extra link "Run evidence" (retention_ui_plugin) needs no API.

A note someone wrote on the run before the report is kept above the report's.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit

log = logging.getLogger(__name__)

API_CONN_ID = "retention_airflow_api"
NOTE_MAX_CHARS = 1000  # Airflow's dag_run_note.content
RULER = "\n\n---\n\n"
TIMEOUT_S = 10


def evidence_path(purpose: str, run_id: str, base_url: str | None = "") -> str:
    """The run's evidence page on the Retention page, as a path on the api-server (under the
    path of ``[api] base_url`` when Airflow is served below a prefix)."""
    prefix = urlsplit(base_url or "").path.rstrip("/")
    return f"{prefix}/retention/runs/{quote(purpose, safe='')}/{quote(run_id, safe='')}"


LINK = "[Run evidence]("  # how the report's note begins


def _state(summary: dict) -> str:
    if summary["outcome"] == "failed":
        return f"RUN FAILED at {(summary['failed_tasks'] or summary['not_run'] or ['?'])[0]}"
    if summary["mode"] == "preview":
        return "PREVIEW, nothing changed"
    return "DRY RUN, nothing changed" if summary["dry_run"] else "enforced"


def _gate(result: str) -> str:
    """'10/10 expectations passed' -> '10/10'; anything else as it is."""
    return result.split(" ")[0] if result.endswith("expectations passed") else result


def note_text(summary: dict, evidence: str) -> str:
    """The note. Its first line is what the run's page shows (one line, the rest behind the note's
    button): the link to the evidence, the DAG and its state, due and of which would archive /
    delete (a preview, a dry run) or deleted, held and waiting, the gates. Below: the date, the
    archive written and purged, what a failure left unchanged, the gates in full."""
    totals, purge, gates = summary["totals"], summary.get("purge") or {}, summary["gates"]
    held_waiting = f"held {totals['held']:,}, waiting {totals['waiting']:,}"
    if summary["outcome"] == "failed":
        figures = f"committed: deleted {totals['deleted']:,}, {held_waiting}"
    elif summary["previewed"]:
        figures = f"due {totals['due']:,}, would archive / delete {totals['deletable']:,}, {held_waiting}"
    else:
        figures = f"due {totals['due']:,}, deleted {totals['deleted']:,}, {held_waiting}"
    dag_id = f"retention_{summary['purpose']}"
    lines = [
        f"{LINK}{evidence}) · **{dag_id} {_state(summary)}**: {figures}; "
        f"gates {_gate(gates['before'])}, {_gate(gates['after'])}",
        "",
        f"- as of {summary['logical_date_paris']}",
    ]
    if summary["outcome"] == "failed":
        lines.append(f"- left unchanged: {summary['left_unchanged']}")
    elif summary["previewed"]:
        lines.append(
            f"- archive purge: would purge {purge.get('purged_objects', 0):,} objects "
            f"({purge.get('purged_records', 0):,} records)"
        )
    else:
        purged = "would purge (the purpose is in preview now)" if purge.get("dry_run") else "purged"
        lines.append(
            f"- archived: {totals['objects']:,} objects, {totals['archive_bytes']:,} bytes; {purged} "
            f"{purge.get('purged_objects', 0):,} objects ({purge.get('purged_records', 0):,} records)"
        )
    lines.append(f"- quality gates: before {gates['before']}; after {gates['after']}")
    lines += [f"- {finished_retirement_text(r)}" for r in summary.get("finished_retirements", [])]
    return "\n".join(lines)


def finished_retirement_text(finished: dict) -> str:
    """A partition an interrupted run left detached that this run finished (the report's summary
    ``finished_retirements``: table, partition, state, left_by), as the note and the report say it."""
    done = "dropped (rows archived, audited under that run)" if finished["state"] == "dropped" else "attached again"
    return f"partition {finished['partition']}, left detached by the interrupted run {finished['left_by']}: {done}"


def merged_with(existing: str | None, ours: str) -> str | None:
    """The note to write: ours, below what someone else wrote on the run (kept as it was); an
    earlier try's report is replaced. None when both do not fit in a note."""
    theirs = (existing or "").split(RULER + LINK)[0]
    if theirs.startswith(LINK):
        theirs = ""
    note = f"{theirs.rstrip()}{RULER}{ours}" if theirs.strip() else ours
    return note if len(note) <= NOTE_MAX_CHARS else None


def _base_url(conn) -> str:
    host = (conn.host or "").rstrip("/")
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
    return host


def publish(dag_id: str, run_id: str, ours: str) -> str:
    """Set the report's note on the run through the REST API (connection
    ``retention_airflow_api``), below the note the run has now (read through the API: the task's
    context does not carry it). Never raises: returns what happened (``set``, or why not), which
    the report logs."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(API_CONN_ID)
    except AirflowNotFoundException:
        return f"not set: no connection {API_CONN_ID!r} (see docs/run_reports.md)"
    import httpx

    base = _base_url(conn)
    try:
        with httpx.Client(base_url=base, timeout=TIMEOUT_S) as client:
            login = client.post("/auth/token", json={"username": conn.login, "password": conn.password})
            login.raise_for_status()
            auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
            run_path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
            run = client.get(run_path, headers=auth)
            run.raise_for_status()
            note = merged_with(run.json().get("note"), ours)
            if note is None:
                return "not set: the note already on the run leaves no room for the report's"
            answer = client.patch(run_path, params={"update_mask": "note"}, json={"note": note}, headers=auth)
            answer.raise_for_status()
    except httpx.HTTPStatusError as exc:
        return f"not set: {exc.request.method} {exc.request.url.path} answered {exc.response.status_code}"
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return f"not set: {type(exc).__name__} talking to {base}"
    return "set"
