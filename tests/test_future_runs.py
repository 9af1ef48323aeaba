"""A run dated in the future never starts and blocks its DAG (retention.future_dates).

Through the session's real `airflow api-server` (tests/conftest.py) and the plugin's middleware
(retention_ui/future_guard.py): a trigger of a retention DAG with a future logical date is
refused with a 400 naming the date and the rule; a past date and a null one go through;
backfills create no future run. A future run made past the API (the CLI's way) is flagged by
the watch and the Retention page: tests/test_alerts.py."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request

import pytest

USER = "operator"  # an admin of the session's api-server (tests/conftest.py)


def _call(base: str, method: str, path: str, body: dict | None = None, token: str | None = None):
    """(status, JSON body) of one API call."""
    request = urllib.request.Request(
        base + path, method=method, data=json.dumps(body).encode() if body is not None else None
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.mark.integration
def test_api_refuses_a_trigger_dated_in_the_future(api_server):
    from tests.dag_runs import sync_dags

    sync_dags()  # the API triggers only the DAGs it finds in the metadata database
    url = api_server.url
    status, body = _call(url, "POST", "/auth/token", {"username": USER, "password": api_server.passwords[USER]})
    assert status == 201, body
    token = body["access_token"]
    now = dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(microsecond=0)
    created = []
    try:
        for dag_id in ("retention_quotes", "retention_subject_requests", "retention_watch"):
            status, body = _call(
                url, "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": tomorrow.isoformat()}, token
            )
            assert status == 400, (dag_id, status, body)
            detail = body["detail"]
            assert detail.startswith(f"{dag_id}: logical date {tomorrow.isoformat()} is in the future"), detail
            assert "acts as of its logical date" in detail and "only active-run slot" in detail
        # In another zone, the same instant: still refused, named as given.
        paris = tomorrow.astimezone(dt.timezone(dt.timedelta(hours=1)))
        status, body = _call(
            url, "POST", "/api/v2/dags/retention_quotes/dagRuns", {"logical_date": paris.isoformat()}, token
        )
        assert status == 400 and paris.isoformat() in body["detail"], body
        # As Unix time (a number, or a string of digits), which Airflow takes too: still refused.
        for unix_time in (int(tomorrow.timestamp()), str(int(tomorrow.timestamp()))):
            status, body = _call(
                url, "POST", "/api/v2/dags/retention_quotes/dagRuns", {"logical_date": unix_time}, token
            )
            assert status == 400 and tomorrow.isoformat() in body["detail"], (unix_time, status, body)
        # Without a logical date, to run after tomorrow: the run waits, queued, until then, and a
        # queued run counts against max_active_runs (no daily run is created meanwhile). Refused.
        for logical_date in (None, dt.datetime(2021, 3, 4, tzinfo=dt.UTC).isoformat()):
            status, body = _call(
                url,
                "POST",
                "/api/v2/dags/retention_quotes/dagRuns",
                {"logical_date": logical_date, "run_after": tomorrow.isoformat(), "note": "test_future_runs"},
                token,
            )
            if status == 200:
                created.append(body["dag_run_id"])
            assert status == 400, (logical_date, status, body)
            assert body["detail"].startswith(f"retention_quotes: run_after {tomorrow.isoformat()} is in the future")

        # A past date and no date go through (the run waits for a scheduler; removed below).
        past = dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
        for logical_date in (past.isoformat(), None):
            status, body = _call(
                url,
                "POST",
                "/api/v2/dags/retention_quotes/dagRuns",
                {"logical_date": logical_date, "note": "test_future_runs"},
                token,
            )
            assert status == 200, body
            created.append(body["dag_run_id"])
            assert body["logical_date"] == (logical_date.replace("+00:00", "Z") if logical_date else None)

        # Backfills: Airflow creates only runs whose interval has ended (no guard needed).
        status, body = _call(
            url,
            "POST",
            "/api/v2/backfills/dry_run",
            {
                "dag_id": "retention_quotes",
                "from_date": (now - dt.timedelta(days=2)).isoformat(),
                "to_date": (now + dt.timedelta(days=30)).isoformat(),
            },
            token,
        )
        assert status == 200, body
        planned = [dt.datetime.fromisoformat(r["logical_date"]) for r in body["backfills"]]
        assert planned and max(planned) <= dt.datetime.now(dt.UTC), planned
    finally:
        for run_id in created:
            status, _ = _call(
                url,
                "DELETE",
                f"/api/v2/dags/retention_quotes/dagRuns/{urllib.request.quote(run_id)}",
                token=token,
            )
            assert status == 204


def test_guard_reads_only_the_routes_that_create_runs():
    """The routes (Airflow 3.3's api_fastapi): REST and the UI's dialog, a task's
    TriggerDagRunOperator; nothing else, and only the retention DAGs."""
    from retention_ui.future_guard import guarded_dag_id, requested_logical_date

    assert guarded_dag_id("POST", "/api/v2/dags/retention_quotes/dagRuns") == "retention_quotes"
    assert guarded_dag_id("POST", "/airflow/api/v2/dags/retention_aml/dagRuns/") == "retention_aml"
    assert guarded_dag_id("POST", "/execution/dag-runs/retention_fraud/manual__x") == "retention_fraud"
    assert guarded_dag_id("POST", "/api/v2/dags/other_dag/dagRuns") is None
    assert guarded_dag_id("GET", "/api/v2/dags/retention_quotes/dagRuns") is None
    assert guarded_dag_id("POST", "/api/v2/dags/~/dagRuns/list") is None
    assert guarded_dag_id("POST", "/api/v2/dags/retention_quotes/dagRuns/manual__x/clear") is None
    assert guarded_dag_id("POST", "/execution/dag-runs/retention_fraud/manual__x/clear") is None
    assert requested_logical_date(b'{"logical_date": null}') is None
    assert requested_logical_date(b"{}") is None and requested_logical_date(b"not json") is None
    assert requested_logical_date(b'{"logical_date": "2030-01-01T00:00:00"}') == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_tolerance_for_clock_skew():
    from retention.future_dates import FUTURE_TOLERANCE, is_future

    now = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)
    assert not is_future(now + FUTURE_TOLERANCE, now) and is_future(
        now + FUTURE_TOLERANCE + dt.timedelta(seconds=1), now
    )
    assert not is_future(None, now) and not is_future(now - dt.timedelta(days=365), now)


def test_guard_on_the_execution_api_answers_in_its_shape():
    """The execution API (a task's TriggerDagRunOperator) gets the refusal in that API's error
    shape; a past date reaches the app with its body intact."""
    from fastapi.testclient import TestClient
    from retention_ui.future_guard import FutureRunGuard
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def trigger(request):
        return JSONResponse({"received": await request.json()})

    app = Starlette(routes=[Route("/execution/dag-runs/{dag_id}/{run_id}", trigger, methods=["POST"])])
    app.add_middleware(FutureRunGuard)
    client = TestClient(app)
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    refused = client.post("/execution/dag-runs/retention_quotes/r1", json={"logical_date": future})
    assert refused.status_code == 400
    assert refused.json()["detail"]["reason"] == "future_logical_date" and future in refused.json()["detail"]["message"]
    body = {"logical_date": "2024-01-01T00:00:00+00:00", "conf": {"k": "v" * 70_000}}
    assert client.post("/execution/dag-runs/retention_quotes/r2", json=body).json() == {"received": body}
    assert client.post("/execution/dag-runs/other/r3", json={"logical_date": future}).status_code == 200


def test_guard_reads_a_logical_date_given_as_unix_time_as_airflow_does():
    """Airflow's bodies are pydantic models: a logical date may be given as Unix time, a number or
    a string of digits (it makes 2100-01-01 of 4102444800). The guard reads it the same way and
    refuses it, where it used to let it through as unreadable."""
    from airflow.api_fastapi.core_api.datamodels.dag_run import TriggerDAGRunPostBody
    from fastapi.testclient import TestClient
    from retention_ui.future_guard import FutureRunGuard, requested_logical_date
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    year_2100 = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    for body in (b'{"logical_date": 4102444800}', b'{"logical_date": "4102444800"}'):
        assert TriggerDAGRunPostBody.model_validate_json(body).logical_date == year_2100  # what Airflow creates
        assert requested_logical_date(body) == year_2100

    async def trigger(request):
        return JSONResponse({"received": await request.json()})

    app = Starlette(routes=[Route("/api/v2/dags/{dag_id}/dagRuns", trigger, methods=["POST"])])
    app.add_middleware(FutureRunGuard)
    client = TestClient(app)
    assert client.post("/api/v2/dags/retention_quotes/dagRuns", json={"logical_date": 4102444800}).status_code == 400
    assert client.post("/api/v2/dags/retention_quotes/dagRuns", json={"logical_date": 1704067200}).status_code == 200
