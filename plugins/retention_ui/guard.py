"""The api-server refuses an address in the conf of a data-subject request's run.

Airflow keeps a run's conf in its metadata database for as long as the run exists and shows it
on the run's Details to every reader of the DAG; the REST route that triggers a run also copies
its JSON body into the audit log (``log`` table) before the route itself runs. So a trigger of
``retention_subject_requests`` (``POST /api/v2/dags/retention_subject_requests/dagRuns``, which
the UI's Trigger dialog uses too, and a backfill of it) whose conf holds an address is answered
400 here, before Airflow records anything, naming the route that keeps identifiers out of
Airflow (the Retention page's form, ``python -m retention.rights.requests submit``).

A root middleware of the api-server (plugins/retention_ui_plugin.py), plain ASGI: it reads the
body of those requests only, and hands it on unchanged.
"""

from __future__ import annotations

import json

from retention.airflow_names import SUBJECT_REQUESTS_DAG_ID
from retention.rights.requests import SubjectRequestError, refuse_identifiers_in_conf

TRIGGER_PATH = f"/api/v2/dags/{SUBJECT_REQUESTS_DAG_ID}/dagRuns"
BACKFILL_PATHS = ("/api/v2/backfills", "/api/v2/backfills/dry_run")


class SubjectRequestConfGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/") if scope["type"] == "http" else ""
        guarded = path.endswith(TRIGGER_PATH) or any(path.endswith(p) for p in BACKFILL_PATHS)
        if not guarded or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        refusal = _refusal(path, body)
        if refusal:
            from starlette.responses import JSONResponse

            await JSONResponse({"detail": refusal}, status_code=400)(scope, receive, send)
            return

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _refusal(path: str, body: bytes) -> str | None:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None  # not JSON: Airflow answers 422 itself
    if not isinstance(data, dict):
        return None
    if path.endswith(TRIGGER_PATH):
        conf = data.get("conf")
    elif data.get("dag_id") == SUBJECT_REQUESTS_DAG_ID:
        conf = data.get("dag_run_conf")
    else:
        return None
    try:
        refuse_identifiers_in_conf(conf if isinstance(conf, dict) else None)
    except SubjectRequestError as exc:
        return str(exc)
    return None
