"""The Retention page (plugins/retention_ui): Airflow's own api-server app, built in-process with
the plugin mounted, over the real PostgreSQL and S3 servers and one real DAG run.

Its figures are checked against what the test put in the database (due, overdue, held) and
against SQL on the bookkeeping tables (archive bytes, evidence objects); without a token every
route answers 401, with a forged one 403."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import secrets
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest

from tests import factories as f
from tests.dag_runs import run_dag, task_states

pytestmark = pytest.mark.integration
PARIS = ZoneInfo("Europe/Paris")
PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
PERSONAL_VALUES = ("Camille", "Martin", "example.fr", "lea.dubois", "+336")
ROUTES = [
    "/retention/",
    "/retention/api/summary",
    "/retention/static/chart.umd.min.js",
    "/retention/data-docs/index.html",
    "/retention/static/data-docs/jquery@3.7.1/dist/jquery.min.js",
    "/retention/register",
    "/retention/api/register.csv",
]


@pytest.fixture(scope="module")
def api(airflow_db, tmp_path_factory):
    """Airflow's api-server app (SimpleAuthManager) with the plugins folder loaded."""
    home = tmp_path_factory.mktemp("api")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": "admin-pw", "viewer": "viewer-pw"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "AIRFLOW__CORE__AUTH_MANAGER",
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        )
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(48))
        mp.setenv("AIRFLOW__API__SECRET_KEY", secrets.token_urlsafe(32))
        from airflow.api_fastapi.app import create_app, get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from fastapi.testclient import TestClient

        client = TestClient(create_app("core"), base_url="http://127.0.0.1")
        manager = get_auth_manager()
        tokens = {
            role: manager.generate_jwt(SimpleAuthManagerUser(username=role, role=role)) for role in ("admin", "viewer")
        }
        yield client, tokens


def _get(api, path, role="viewer", **params):
    client, tokens = api
    return client.get(path, params=params, headers={"Authorization": f"Bearer {tokens[role]}"})


def test_plugin_loader_imports_only_the_plugin_file():
    """.airflowignore keeps the loader from importing retention/*.py a second time as top-level
    modules (`policy`, `engine`, ...)."""
    from airflow._shared.module_loading import find_path_from_directory

    files = sorted(
        Path(p).relative_to(PLUGINS).as_posix()
        for p in find_path_from_directory(str(PLUGINS), ".airflowignore", "glob")
    )
    assert [p for p in files if p.endswith(".py")] == ["retention_ui_plugin.py"]


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_needs_a_valid_token(api, path):
    client, _ = api
    assert client.get(path).status_code == 401
    forged = client.get(path, headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 403
    import jwt

    other = jwt.encode(
        {"sub": "admin", "role": "admin", "aud": "apache-airflow"}, "another-secret-" * 5, algorithm="HS512"
    )
    assert client.get(path, headers={"Authorization": f"Bearer {other}"}).status_code in (401, 403)


def test_plugin_is_listed_with_its_external_view(api):
    response = _get(api, "/api/v2/plugins", role="admin")
    assert response.status_code == 200, response.text
    plugin = next(p for p in response.json()["plugins"] if p["name"] == "retention")
    assert [v["href"] for v in plugin["external_views"]] == ["/retention/"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/retention"
    assert response.json().get("import_errors", {}) in ({}, None) or not any(
        "retention" in k for k in response.json()["import_errors"]
    )


@pytest.fixture(scope="module")
def ran_quotes(airflow_db, source_dsn, s3_endpoint, tmp_path_factory):
    """One real run of retention_quotes five days ago (archives two quotes), then quotes that are
    overdue, due today, held and not yet due."""
    import psycopg
    from retention.policy.periods import Period

    from tools import devstack

    suffix = secrets.token_hex(4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETENTION_ARCHIVE_BUCKET", f"archive-{suffix}")
        mp.setenv("RETENTION_DOCUMENTS_BUCKET", f"documents-{suffix}")
        mp.setenv("RETENTION_DATA_DOCS_DIR", str(tmp_path_factory.mktemp("data_docs")))
        client = devstack.s3_client(s3_endpoint)
        devstack.ensure_buckets(client, f"archive-{suffix}", f"documents-{suffix}")
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname IN ('app', 'retention')"
            ).fetchall()
            conn.execute("TRUNCATE " + ", ".join(t[0] for t in tables) + " RESTART IDENTITY CASCADE")
            today = dt.datetime.now(PARIS).date()
            year = Period(months=12)
            archived = [f.quote(conn, issued=today - dt.timedelta(days=430)) for _ in range(2)]
            dag_run = run_dag("quotes", f.midnight(today - dt.timedelta(days=5)))
            assert set(task_states(dag_run).values()) == {"success"}, task_states(dag_run)
            assert not f.ids(conn, "quotes") & set(archived)
            overdue = [f.quote(conn, issued=year.latest_start(today) - dt.timedelta(days=20)) for _ in range(2)]
            due_today = f.quote(conn, issued=year.latest_start(today))
            held = f.quote(conn, issued=today - dt.timedelta(days=500))
            f.legal_hold(conn, "quotes", held, reason="litigation 2026-17")
            f.quote(conn, issued=today - dt.timedelta(days=30))  # not due
            yield {"dag_run": dag_run, "overdue": overdue, "due_today": due_today, "held": held, "dsn": source_dsn}


def _quotes_row(summary):
    return next(p for p in summary["purposes"] if p["purpose"] == "quotes")


def test_summary_figures_equal_the_database(api, ran_quotes):
    import psycopg

    response = _get(api, "/retention/api/summary")
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["overdue_days"] == 3
    quotes = _quotes_row(summary)
    # 2 overdue (due 20 days ago) + 1 due today, deletable; the held one is due and held; the
    # recent one is not due.
    assert (quotes["due"], quotes["deletable"], quotes["overdue"], quotes["held"], quotes["waiting"]) == (4, 3, 2, 1, 0)
    assert quotes["mode"] == "enforce"
    with psycopg.connect(ran_quotes["dsn"]) as conn:
        objects, size = conn.execute(
            "SELECT count(*), sum(byte_size) FROM retention.archive_manifest WHERE purpose = 'quotes' AND state = 'committed'"
        ).fetchone()
        deleted = conn.execute(
            "SELECT sum(record_count) FROM retention.audit_log WHERE purpose = 'quotes' AND action = 'archived_and_deleted'"
        ).fetchone()[0]
    assert objects >= 1 and size > 0
    assert quotes["archive_bytes"] == {"intermediate": size}
    assert quotes["archive_objects"] == {"intermediate": objects}
    assert sum(r["records"] for r in summary["deleted_per_day"] if r["purpose"] == "quotes") == deleted == 2
    assert sum(m["bytes"] for m in summary["archive_by_purge_month"]) == size
    assert quotes["airflow"]["last"]["state"] == "success"
    assert quotes["airflow"]["last"]["run_id"] == ran_quotes["dag_run"].run_id
    assert quotes["airflow"]["last_success"]
    [hold] = summary["legal_holds"]
    assert (hold["table"], hold["record_id"], hold["age_days"]) == ("quotes", ran_quotes["held"], 1)
    others = [p for p in summary["purposes"] if p["purpose"] != "quotes"]
    assert all(p["due"] == p["deletable"] == p["overdue"] == p["held"] == 0 for p in others)
    assert not [v for v in PERSONAL_VALUES if v in response.text]


def test_overdue_threshold_is_configurable(api, ran_quotes, monkeypatch):
    assert _quotes_row(_get(api, "/retention/api/summary", overdue_days=30).json())["overdue"] == 0
    assert _quotes_row(_get(api, "/retention/api/summary", overdue_days=0).json())["overdue"] == 3
    monkeypatch.setenv("AIRFLOW__RETENTION__OVERDUE_DAYS", "25")
    summary = _get(api, "/retention/api/summary").json()
    assert summary["overdue_days"] == 25 and _quotes_row(summary)["overdue"] == 0
    assert _get(api, "/retention/api/summary", overdue_days=-1).status_code == 422


def test_page_shows_the_figures_and_bundles_its_chart_library(api, ran_quotes):
    response = _get(api, "/retention/")
    assert response.status_code == 200
    html = response.text
    assert 'data-testid="due-quotes">4<' in html
    assert 'data-testid="deletable-quotes">3<' in html
    assert 'data-testid="overdue-quotes">2<' in html
    assert 'data-testid="held-quotes">1<' in html
    assert 'data-testid="overdue-alarm"' in html
    assert '<script src="static/chart.umd.min.js">' in html
    assert "http://" not in html and "https://" not in html, "no external resource"
    assert "litigation 2026-17" in html
    assert f"api/runs/quotes/{ran_quotes['dag_run'].run_id}".replace(":", "%3A").replace("+", "%2B") in html
    assert not [v for v in PERSONAL_VALUES if v in html]
    js = _get(api, "/retention/static/chart.umd.min.js")
    assert js.status_code == 200 and "Chart.js v4" in js.text[:200]


def test_evidence_json_and_csv_match_the_manifest(api, ran_quotes):
    import psycopg

    run_id = ran_quotes["dag_run"].run_id
    response = _get(api, f"/retention/api/runs/quotes/{run_id}/evidence.json")
    assert response.status_code == 200, response.text
    assert "attachment" in response.headers["content-disposition"]
    ev = response.json()
    with psycopg.connect(ran_quotes["dsn"]) as conn:
        manifest = conn.execute(
            "SELECT object_key, sha256, version_id, byte_size, row_count FROM retention.archive_manifest "
            "WHERE run_id = %s AND purpose = 'quotes' ORDER BY id",
            (run_id,),
        ).fetchall()
    assert manifest
    assert [(o["key"], o["sha256"], o["version_id"], o["bytes"], o["rows"]) for o in ev["objects"]] == manifest
    assert {c["action"]: c["records"] for c in ev["counts"]}["archived_and_deleted"] == 2
    assert [r["rule"] for r in ev["rules"]] == ["unconverted_quotes"]
    assert set(ev["gates"]) == {"check_before", "check_after"}
    assert ev["mode"] == "enforce" and ev["purpose"] == "quotes"

    as_csv = _get(api, f"/retention/api/runs/quotes/{run_id}/evidence.csv")
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["sha256"] for r in rows if r["section"] == "object"] == [m[1] for m in manifest]
    assert any(r["section"].startswith("gate:check_before") for r in rows)
    assert not [v for v in PERSONAL_VALUES if v in as_csv.text + response.text]
    assert _get(api, "/retention/api/runs/quotes/no-such-run/evidence.json").status_code == 404


def test_the_register_answers_csv_and_html(api, ran_quotes, policy):
    """The register of the schedule (retention.register) through the page's read-only connection:
    the CSV and the printable page, this month's counts as in the audit; bad dates a 400 saying why."""
    import psycopg

    month_start = dt.datetime.now(PARIS).date().replace(day=1)
    as_csv = _get(api, "/retention/api/register.csv", **{"from": month_start.isoformat()})
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["content-disposition"].startswith('attachment; filename="register-')
    activity = list(csv.DictReader(io.StringIO(as_csv.text.split("section,activity")[1].lstrip())))
    assert [r["purpose"] for r in activity] == list(policy.purposes)  # one month: one row each
    with psycopg.connect(ran_quotes["dsn"]) as conn:
        archived = conn.execute(
            "SELECT sum(record_count) FROM retention.audit_log WHERE purpose = 'quotes'"
            " AND action = 'archived_and_deleted' AND at >= %s",
            (dt.datetime.combine(month_start, dt.time(0), tzinfo=PARIS),),
        ).fetchone()[0]
    quotes = next(r for r in activity if r["purpose"] == "quotes")
    assert int(quotes["archived_and_deleted"]) == archived == 2 and quotes["runs"] == "1"

    page = _get(api, "/retention/register")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "What was done" in page.text and "@media print" in page.text
    assert "<script" not in page.text and "http" not in page.text, "self-contained"
    download = _get(api, "/retention/register", download="true")
    assert download.headers["content-disposition"].endswith('.html"') and download.text.startswith("<!doctype html>")
    bad = _get(api, "/retention/register", **{"from": "2026-05-01", "to": "2026-04-01"})
    assert bad.status_code == 400 and "from 2026-05-01 is after to 2026-04-01" in bad.text
    not_a_date = _get(api, "/retention/api/register.csv", to="31/12/2026")
    assert not_a_date.status_code == 400 and "is not a date (expected YYYY-MM-DD)" in not_a_date.text
    assert not [v for v in PERSONAL_VALUES if v in as_csv.text + page.text]
    assert 'data-testid="register-form"' in _get(api, "/retention/").text


def test_mode_is_read_defensively():
    from types import SimpleNamespace

    from retention.status import purpose_mode

    assert purpose_mode(SimpleNamespace()) == "enforce"
    assert purpose_mode(SimpleNamespace(mode="preview")) == "preview"


def test_page_links_the_gates_data_docs(api, ran_quotes):
    """The gates' Checkpoints of the quotes run built the Data Docs the page links to."""
    page = _get(api, "/retention/").text
    assert 'href="data-docs/index.html"' in page
    index = _get(api, "/retention/data-docs/index.html")
    assert index.status_code == 200 and "quotes.before.app.quotes" in index.text
    assert _get(api, "/retention/data-docs/static/styles/data_docs_default_styles.css").status_code == 200
    assert _get(api, "/retention/data-docs/%2e%2e/%2e%2e/passwords.json").status_code == 404
    # Served with no internet: the CDN addresses point to the vendored copies, which are there.
    assert "https://unpkg.com" not in index.text and "https://cdn" not in index.text
    assert 'href="../static/data-docs/bootstrap@4.3.1/dist/css/bootstrap.min.css"' in index.text
    css = _get(api, "/retention/static/data-docs/bootstrap@4.3.1/dist/css/bootstrap.min.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert _get(api, "/retention/static/data-docs/%2e%2e/%2e%2e/app.py").status_code == 404


def test_data_docs_before_the_first_gate_say_so(api, tmp_path, monkeypatch):
    """Before any gate has built the site, the page's Data Docs link opens a page that says
    so (HTML, not the JSON of an error)."""
    monkeypatch.setenv("RETENTION_DATA_DOCS_DIR", str(tmp_path / "docs"))
    index = _get(api, "/retention/data-docs/index.html")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "No gate has run yet" in index.text and "check_before" in index.text
    assert _get(api, "/retention/data-docs/validations/x.html").status_code == 404


def test_a_subject_requests_deletions_link_to_the_requests_dag(api, ran_quotes):
    """Deletions by an erasure request are audited under the purpose, with the request's own run
    id (not an Airflow run of the purpose's DAG): the page links the requests DAG's runs."""
    import psycopg

    with psycopg.connect(ran_quotes["dsn"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count)"
            " VALUES ('subject_request__ui-test', now(), 'quotes', 'unconverted_quotes', 'quotes', 'deleted', 1)"
        )
        try:
            runs = {r["run_id"]: r for r in _get(api, "/retention/api/summary").json()["runs"]}
            html = _get(api, "/retention/").text
        finally:
            conn.execute("DELETE FROM retention.audit_log WHERE run_id = 'subject_request__ui-test'")
    request = runs["subject_request__ui-test"]
    assert request["dag_id"] == "retention_subject_requests"
    assert request["run_url"] == "../dags/retention_subject_requests/runs"
    assert 'href="../dags/retention_subject_requests/runs">subject_request__ui-test<' in html
    scheduled = runs[ran_quotes["dag_run"].run_id]
    assert scheduled["run_url"].startswith("../dags/retention_quotes/runs/") and ":" not in scheduled["run_url"]


def test_page_shows_what_waits_past_its_end_and_the_exports_still_held(api, ran_quotes):
    """A former customer kept by a pending identity check (the policy: keep_parent_and_alert)
    and an access request's export: on the page and in the JSON, counts and ids only."""
    import psycopg
    from retention.policy import default_policy
    from retention.rights.exports import record_produced

    from tests import factories_policy as fp

    with psycopg.connect(ran_quotes["dsn"], autocommit=True) as conn:
        customer = f.customer(conn, ended="2020-01-10")
        document = fp.identity_document(conn, customer_id=customer)
        record_produced(
            conn, default_policy(), "DSR-ui-1", {"bucket": "archive-ui", "key": "exports/DSR-ui-1/export.zip"}
        )
        try:
            summary = _get(api, "/retention/api/summary").json()
            html = _get(api, "/retention/").text
        finally:
            conn.execute("DELETE FROM app.identity_documents WHERE id = %s", (document,))
            conn.execute("DELETE FROM app.customers WHERE id = %s", (customer,))
            conn.execute("DELETE FROM retention.access_exports WHERE request_id = 'DSR-ui-1'")
    prospects = next(p for p in summary["purposes"] if p["purpose"] == "prospects")
    [wait] = prospects["waiting_past_end"]
    assert (wait["rule"], wait["waiting_on"], wait["decision"], wait["records"], wait["alarm"]) == (
        "former_customers",
        "identity_documents",
        "keep_parent_and_alert",
        1,
        True,
    )
    assert wait["oldest_days"] > 365 and prospects["waiting_alarm"] == 1
    assert 'data-testid="waiting-alarm"' in html
    assert 'data-waiting="former_customers:identity_documents"' in html and "keep_parent_and_alert" in html
    [export] = summary["access_exports"]
    assert (export["request_id"], export["held"]) == ("DSR-ui-1", True)
    produced = dt.datetime.fromisoformat(export["produced_at"]).astimezone(PARIS).date()
    goes = dt.datetime.fromisoformat(export["deleted_on"]).astimezone(PARIS).date()
    assert goes - produced == dt.timedelta(days=30)
    assert '<tr data-request="DSR-ui-1"><td>DSR-ui-1</td>' in html and f"<td>{goes.isoformat()}</td>" in html
    assert not [v for v in PERSONAL_VALUES if v in html + json.dumps(summary)]


def test_counts_say_how_fresh_they_are_and_are_withheld_when_outdated_but_the_alarm_stays(api, ran_quotes, monkeypatch):
    """The summary and the page serve stored counts (retention.status_counts) with their age; a
    legal hold placed since withholds them (no figure a user could act on) while they are counted
    again, and the overdue alarm keeps the figure they had. Counting is held back here by taking
    the recount's advisory lock, as another api-server worker counting would."""
    import psycopg
    from retention_ui.recount import ADVISORY_KEY

    summary = _get(api, "/retention/api/summary", fresh="true").json()
    quotes = _quotes_row(summary)
    assert (quotes["due"], quotes["deletable"], quotes["overdue"], quotes["held"]) == (4, 3, 2, 1)
    assert quotes["counts"]["state"] == "fresh" and quotes["counts"]["counted_by"] == "page"
    assert 0 <= quotes["counts"]["age_s"] < 60 and quotes["counts"]["counted_at"]
    assert summary["freshness"]["counts_ttl_s"] == 60 and "legal_holds" in summary["freshness"]["live"]
    html = _get(api, "/retention/").text
    assert 'data-testid="counted-quotes" data-state="fresh"' in html and 'data-testid="recounting"' not in html

    monkeypatch.setenv("AIRFLOW__RETENTION__STATUS_WAIT_SECONDS", "0.2")
    with psycopg.connect(ran_quotes["dsn"], autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (ADVISORY_KEY,))
        hold = f.legal_hold(conn, "quotes", ran_quotes["due_today"], reason="ui-test")
        try:
            withheld = _get(api, "/retention/api/summary").json()
            page = _get(api, "/retention/").text
        finally:
            conn.execute("DELETE FROM retention.legal_holds WHERE id = %s", (hold,))
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (ADVISORY_KEY,))
    quotes = _quotes_row(withheld)
    assert (quotes["due"], quotes["deletable"], quotes["overdue"], quotes["held"], quotes["waiting"]) == (None,) * 5
    assert quotes["counts"]["state"] == "outdated" and quotes["counts"]["last_overdue"] == 2
    assert quotes["counts"]["reason"] == "legal holds were placed or released since"
    assert withheld["freshness"]["recounting"] is True
    assert 'data-testid="due-quotes">…<' in page and 'data-testid="counted-quotes" data-state="outdated"' in page
    assert 'data-testid="recounting"' in page and "api/summary?overdue_days=3" in page  # reloads when counted
    alarm = page[page.index('data-testid="overdue-alarm"') :].split("</p>")[0]
    assert "quotes: 2 when counted at" in alarm and "being counted again" in alarm

    again = _quotes_row(_get(api, "/retention/api/summary", fresh="true").json())
    assert (again["due"], again["overdue"], again["held"], again["counts"]["state"]) == (4, 2, 1, "fresh")


def test_a_policy_the_database_refuses_is_named_on_the_page(api, ran_quotes):
    """A legal hold naming a table renamed since refuses every count (a hold that would keep
    nothing: retention.planner.check_holds_name_tables). The page said "Counting failed
    (PolicyError, in the api-server's log)"; it now gives the error's own words (tables and
    columns only) and what to correct, where the DPO looks (found by a review)."""
    import psycopg

    with psycopg.connect(ran_quotes["dsn"], autocommit=True) as conn:
        hold = f.legal_hold(conn, "job_applications", 1, reason="ui-test")
        conn.execute("ALTER TABLE app.job_applications RENAME TO candidates")
        try:
            summary = _get(api, "/retention/api/summary", fresh="true").json()
            page = _get(api, "/retention/").text
        finally:
            conn.execute("ALTER TABLE app.candidates RENAME TO job_applications")
            conn.execute("DELETE FROM retention.legal_holds WHERE id = %s", (hold,))
    assert summary["freshness"]["recount_error"].startswith("PolicyError: active legal holds name job_applications")
    assert "Set their table_name to the table the record is in now" in page


def test_a_clock_table_renamed_since_is_named_on_the_page_not_a_server_error(api, ran_quotes):
    """customers (a clock table and a parent of the hold coverage) renamed clients by a migration,
    the policy not following: the counts are refused (PolicyError, named), but the page's live look
    at the archives past their end read app.customers and failed with UndefinedTable: the summary
    and the page answered 500 (found by a review of who calls Planner.load). That look now runs the
    purge's checks first, and the page names their refusal instead."""
    import psycopg

    with psycopg.connect(ran_quotes["dsn"], autocommit=True) as conn:
        conn.execute("ALTER TABLE app.customers RENAME TO clients")
        try:
            summary = _get(api, "/retention/api/summary", fresh="true")
            page = _get(api, "/retention/")
        finally:
            conn.execute("ALTER TABLE app.clients RENAME TO customers")
    assert (summary.status_code, page.status_code) == (200, 200)
    refused = "PolicyError: legal_holds.covers.customers: prospects.customer_id"
    assert summary.json()["freshness"]["archives_past_end_error"].startswith(refused)
    assert 'data-testid="archives-past-end-refused"' in page.text and "legal_holds.covers.customers" in page.text


def _row_cells(html: str, attribute: str, value: str) -> list[str]:
    """The text of each cell of the table row with ``attribute="value"``."""
    from html.parser import HTMLParser

    class Row(HTMLParser):
        def __init__(self):
            super().__init__()
            self.depth, self.cells, self.cell = 0, [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr" and (attribute, value) in attrs:
                self.depth = 1
            elif self.depth and tag == "td":
                self.cell = ""

        def handle_endtag(self, tag):
            if self.depth and tag == "td" and self.cell is not None:
                self.cells.append(" ".join(self.cell.split()))
                self.cell = None
            elif tag == "tr":
                self.depth = 0

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Row()
    parser.feed(html)
    return parser.cells


def test_run_evidence_page_renders_the_report_as_a_table(api, ran_quotes):
    """The page the run's note and the tasks' extra link point to: the report's figures per rule
    (as the audit log and the manifest have them), every object with its SHA-256, the gates."""
    import psycopg

    run_id = ran_quotes["dag_run"].run_id
    response = _get(api, f"/retention/runs/quotes/{quote(run_id, safe='')}")
    assert response.status_code == 200, response.text
    html = response.text
    with psycopg.connect(ran_quotes["dsn"]) as conn:
        deleted = conn.execute(
            "SELECT sum(record_count) FROM retention.audit_log WHERE run_id = %s AND action = 'archived_and_deleted'",
            (run_id,),
        ).fetchone()[0]
        manifest = conn.execute(
            "SELECT object_key, sha256, row_count FROM retention.archive_manifest WHERE run_id = %s", (run_id,)
        ).fetchall()
    # rule, table, tier, due, deleted, held, waiting, objects, archived until, bytes, files
    cells = _row_cells(html, "data-rule", "unconverted_quotes")
    assert cells[:8] == [
        "unconverted_quotes",
        "quotes",
        "intermediate",
        "2",
        str(deleted),
        "0",
        "0",
        str(len(manifest)),
    ]
    assert _row_cells(html, "data-rule", "total")[1:4] == ["2", str(deleted), "0"]
    assert deleted == 2 and all(key in html and sha in html for key, sha, _ in manifest)
    assert f'href="../../../dags/retention_quotes/runs/{quote(run_id, safe="")}"' in html
    assert 'data-testid="gate-check_before"' in html and 'data-testid="gate-check_after"' in html
    assert "would archive" not in html and not [v for v in PERSONAL_VALUES if v in html]
    assert _get(api, "/retention/runs/quotes/no-such-run").status_code == 404


def test_a_preview_runs_evidence_page_says_what_it_would_do(api, ran_quotes, s3, storage, monkeypatch):
    """A preview run leaves no audit trace: its report is its evidence. Due = past the schedule;
    of which would archive / delete, held, waiting; no 'deleted 0'."""
    from retention.paths import POLICY_FILE

    monkeypatch.setenv("RETENTION_POLICY_FILE", str(POLICY_FILE))  # the shipped policy: preview
    yesterday = dt.datetime.now(PARIS).date() - dt.timedelta(days=1)
    # At yesterday's date: the two overdue quotes and the held one are due; today's is not yet.
    dag_run = run_dag("quotes", f.midnight(yesterday))
    assert set(task_states(dag_run).values()) == {"success"}, task_states(dag_run)
    monkeypatch.delenv("RETENTION_POLICY_FILE")
    html = _get(api, f"/retention/runs/quotes/{quote(dag_run.run_id, safe='')}").text
    assert 'data-testid="preview-note"' in html and "nothing committed" in html
    # rule, table, tier, due, would archive / delete, held, waiting
    assert _row_cells(html, "data-rule", "unconverted_quotes") == [
        "unconverted_quotes",
        "quotes",
        "intermediate",
        "3",
        "2",
        "1",
        "0",
    ]
    assert ">would archive / delete</th>" in html and ">deleted</th>" not in html
    ev = _get(api, f"/retention/api/runs/quotes/{quote(dag_run.run_id, safe='')}/evidence.json").json()
    assert ev["report"]["previewed"] and ev["mode"] == "preview" and ev["counts"] == [] and ev["objects"] == []
    totals = ev["report"]["totals"]
    assert (totals["due"], totals["deletable"], totals["held"], totals["waiting"], totals["deleted"]) == (3, 2, 1, 0, 0)


def test_the_tasks_extra_link_opens_the_runs_evidence(api, ran_quotes):
    run_id = ran_quotes["dag_run"].run_id
    path = f"/api/v2/dags/retention_quotes/dagRuns/{quote(run_id, safe='')}/taskInstances/report/links"
    response = _get(api, path)
    assert response.status_code == 200, response.text
    assert response.json()["extra_links"] == {"Run evidence": f"/retention/runs/quotes/{quote(run_id, safe='')}"}
    from airflow.models.taskinstancekey import TaskInstanceKey
    from retention_ui.links import RunEvidenceLink

    elsewhere = TaskInstanceKey("retention_watch", "watch", "scheduled__x", 1)
    assert RunEvidenceLink().get_link(None, ti_key=elsewhere) == "", "no button outside the purposes' DAGs"


def test_empty_charts_say_so_and_bytes_take_the_unit_of_the_data():
    from retention_ui.render import bytes_unit, render_page

    empty = {
        "generated_at": "2026-01-01T00:00:00+00:00",
        "timezone": "Europe/Paris",
        "overdue_days": 3,
        "purposes": [],
        "deleted_per_day": [],
        "archive_by_purge_month": [],
        "legal_holds": [],
        "runs": [],
        "future_runs": [],
        "queued_on_paused_dags": [],
        "access_exports": [],
        "open_retirements": [],
        "archives_past_end": [],
        "audit_verification": None,
        "housekeeping": None,
        "freshness": {
            "recounting": False,
            "counts_ttl_s": 60,
            "counts_max_age_s": 900,
            "recount_error": None,
            "archives_past_end_error": None,
        },
    }
    html = render_page(empty)
    assert 'data-testid="per-day-empty"' in html and 'data-testid="by-month-empty"' in html
    assert "<canvas" not in html and "No data yet" in html
    assert [bytes_unit(n)["name"] for n in (0, 900, 14_000, 5 * 1024**2, 3 * 1024**3)] == [
        "B",
        "B",
        "KiB",
        "MiB",
        "GiB",
    ]
    month = {"tier": "intermediate", "purge_month": "2027-10", "objects": 2, "records": 9}
    filled = render_page(empty | {"archive_by_purge_month": [month | {"bytes": 7_000}, month | {"bytes": 7_400}]})
    assert '"bytes_unit": {"name": "KiB", "size": 1024}' in filled and 'id="by-month"' in filled


def test_a_run_queued_on_a_paused_dag_says_so(api, ran_quotes):
    """A REST trigger on a paused DAG is queued and never starts: the page says why."""
    client, tokens = api
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    assert client.patch("/api/v2/dags/retention_quotes", json={"is_paused": True}, headers=admin).status_code == 200
    triggered = client.post("/api/v2/dags/retention_quotes/dagRuns", json={"logical_date": None}, headers=admin)
    assert triggered.status_code == 200, triggered.text
    run_id = triggered.json()["dag_run_id"]
    try:
        summary = _get(api, "/retention/api/summary").json()
        html = _get(api, "/retention/").text
    finally:
        client.delete(f"/api/v2/dags/retention_quotes/dagRuns/{quote(run_id, safe='')}", headers=admin)
    # (runs other tests left queued on other paused DAGs, e.g. the subject requests', are not this test's)
    queued = [(r["dag_id"], r["run_id"]) for r in summary["queued_on_paused_dags"] if r["dag_id"] == "retention_quotes"]
    assert queued == [("retention_quotes", run_id)]
    quotes = _quotes_row(summary)["airflow"]["last"]
    assert (quotes["run_id"], quotes["state"], quotes["dag_paused"]) == (run_id, "queued", True)
    assert 'data-testid="queued-paused"' in html and "airflow dags unpause" in html
    assert 'data-testid="state-quotes">queued: DAG paused<' in html
