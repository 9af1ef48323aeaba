"""The api-server refuses to create a run of a retention DAG dated in the future (an ASGI
middleware the plugin adds to the api-server's root app: retention_ui_plugin.py).

Why: Airflow's scheduler does not start the tasks of such a run before its date; the run sits
"running" and holds the DAG's only active-run slot, so the daily runs queue behind it
(retention.future_dates).

The routes that create a run with a caller's logical date, read in Airflow 3.3's
api_fastapi/ (core_api/routes/public, core_api/routes/ui, execution_api/routes):
- ``POST /api/v2/dags/{dag_id}/dagRuns``: REST, and the UI's trigger dialog (its only route;
  the UI's private ``/ui/`` routes create no run);
- ``POST /execution/dag-runs/{dag_id}/{run_id}``: a task's TriggerDagRunOperator.
Backfills (``POST /api/v2/backfills``, and ``airflow backfill create``) need no guard: Airflow
creates only the runs whose data interval has ended (models/backfill.py ``_get_info_list``);
tests/test_future_runs.py keeps an eye on it. The CLI's ``airflow dags trigger`` writes to the
metadata database directly: the watch DAG and the Retention page flag what it leaves.

The body is read here (these requests are small JSON) and handed on unchanged. A body this
guard cannot read (not JSON, a date Airflow will refuse anyway) goes on to Airflow's own
validation.
"""

from __future__ import annotations

import datetime as dt
import json
import re

from pydantic import TypeAdapter
from retention.future_dates import guarded, is_future, refusal, run_after_refusal

# Airflow's bodies are pydantic models: its logical date is read by the same parser (ISO 8601
# text, or Unix time as a number or a string of digits: 4102444800 is 2100-01-01).
_DATETIME = TypeAdapter(dt.datetime)

# The path may carry the api-server's base path in front (a base_url with a path).
_TRIGGER_ROUTES = (
    re.compile(r"/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?$"),
    re.compile(r"/execution/dag-runs/(?P<dag_id>[^/]+)/[^/]+/?$"),
)


def guarded_dag_id(method: str, path: str) -> str | None:
    """The retention DAG a request would create a run of, or None."""
    if method != "POST":
        return None
    for route in _TRIGGER_ROUTES:
        found = route.search(path)
        if found and guarded(found["dag_id"]):
            return found["dag_id"]
    return None


def requested_logical_date(body: bytes, field: str = "logical_date") -> dt.datetime | None:
    """The body's logical date (or ``field``: run_after), read as Airflow reads it; None when there
    is none (a null logical date: the run acts as of its start) or when it cannot be read
    (Airflow's own validation answers). A date without a time zone is taken as UTC, as the
    execution API does."""
    try:
        value = json.loads(body or b"{}").get(field)
        when = None if value is None else _DATETIME.validate_python(value)
    except (ValueError, AttributeError):  # pydantic's ValidationError is a ValueError
        return None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when


class FutureRunGuard:
    """Answers 400, naming the date and the rule, to a trigger of a ``retention_*`` DAG whose
    logical date, or run_after, is in the future; every other request passes untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        dag_id = guarded_dag_id(scope.get("method", ""), scope.get("path", "")) if scope["type"] == "http" else None
        if dag_id is None:
            await self.app(scope, receive, send)
            return
        received, body = [], b""
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        now = dt.datetime.now(dt.UTC)
        logical_date = requested_logical_date(body)
        if is_future(logical_date, now):
            await self._refuse(scope, send, refusal(dag_id, logical_date, now))
            return
        # A run to start after a future instant waits queued, and a queued run counts against
        # max_active_runs: the DAG's daily runs are not created until it has run.
        run_after = requested_logical_date(body, "run_after")
        if is_future(run_after, now):
            await self._refuse(scope, send, run_after_refusal(dag_id, run_after, now))
            return

        async def replay():
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, send, message: str) -> None:
        # The shape of Airflow's own errors on each API, so the UI's dialog shows the message.
        if "/execution/" in scope["path"]:
            detail = {"reason": "future_logical_date", "message": message}
        else:
            detail = message
        payload = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
