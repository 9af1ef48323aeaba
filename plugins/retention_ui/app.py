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

Here the routes; the rest one module a concept: ``source`` (settings, connections, stored counts),
``airflow_runs`` (Airflow's records), ``summary`` (the page's data), ``evidence`` (a run's),
``render`` (HTML), ``subject_form`` (the form), ``recount``, ``data_docs``, ``guard``, ``links``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag, requires_access_view
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from retention_ui.data_docs import data_docs_response, vendored_file
from retention_ui.evidence import evidence, evidence_csv, evidence_filename
from retention_ui.render import render_evidence, render_page
from retention_ui.source import connect
from retention_ui.subject_form import csrf_token, hmac_equal, record_and_trigger, render_request_result
from retention_ui.summary import summary

STATIC = Path(__file__).resolve().parent / "static"


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
    with connect() as conn:
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
            headers={"Content-Disposition": f'attachment; filename="{evidence_filename(ev)}.json"'},
        )

    @app.get("/api/runs/{purpose}/{run_id}/evidence.csv")
    def evidence_csv_route(purpose: str, run_id: str) -> Response:
        ev = evidence(purpose, run_id)
        return Response(
            evidence_csv(ev),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{evidence_filename(ev)}.csv"'},
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
