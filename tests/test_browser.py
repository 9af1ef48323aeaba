"""The Retention page in a real browser: Debian's chromium, driven by Playwright, logs in to a
real `airflow api-server` (on loopback, SimpleAuthManager), opens Retention from the navigation,
checks its figures against SQL on the same database, downloads one evidence file; follows a run's
note to its evidence page and finds the tasks' "Run evidence" button; sees empty charts say so.
Screenshots under test-artifacts/browser/ (git-ignored): 01 home, 02 the page in Airflow, 03 the
page alone, 04 a run's note on its page (04b opened), 05 the run's evidence page, 06 a task's
extra link, 07 empty charts.

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests import factories as f

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("RETENTION_TEST_CHROMIUM", "/usr/bin/chromium"))
PARIS = ZoneInfo("Europe/Paris")
USER = "dpo"  # a viewer of the session's api-server (tests/conftest.py)
PERSONAL_VALUES = ("lea.dubois", "example.fr", "Camille", "Martin")


@pytest.fixture
def data(db, s3, storage, policy):
    """Quotes overdue, due today, held and not due; one engine run that archived two of them."""
    from retention.archive.engine import RetentionEngine
    from retention.archive.run import RunContext
    from retention.archive.store import ArchiveStore
    from retention.policy.periods import Period

    today = dt.datetime.now(PARIS).date()
    for _ in range(2):
        f.quote(db, issued=today - dt.timedelta(days=430))
    run_id = "scheduled__browser-test"
    engine = RetentionEngine(policy, "quotes", os.environ["RETENTION_TEST_SOURCE_DSN"], ArchiveStore(s3, storage))
    logical = dt.datetime.combine(today - dt.timedelta(days=5), dt.time(0), tzinfo=PARIS)
    engine.archive_and_delete(RunContext("quotes", run_id, logical))
    year = Period(months=12)
    for _ in range(3):
        f.quote(db, issued=year.latest_start(today) - dt.timedelta(days=10))
    f.quote(db, issued=year.latest_start(today))
    held = f.quote(db, issued=today - dt.timedelta(days=600))
    f.legal_hold(db, "quotes", held, reason="regulator request")
    f.quote(db, issued=today - dt.timedelta(days=3))
    return {"run_id": run_id, "today": today}


def _sql_figures(conn, today: dt.date, overdue_days: int) -> dict:
    """Quotes due / deletable / overdue / held, written straight from the policy's words (12 months after
    issue, Paris calendar), independently of the rule SQL and of retention.status."""
    held_clause = (
        "EXISTS (SELECT 1 FROM retention.legal_holds h WHERE h.released_at IS NULL AND "
        "((h.table_name = 'quotes' AND h.record_id = q.id) OR (h.table_name = 'customers' AND h.record_id = q.customer_id)"
        " OR (h.table_name = 'prospects' AND h.record_id = q.prospect_id)))"
    )
    due_on = "((q.issued_at AT TIME ZONE 'Europe/Paris')::date + interval '12 months')::date"

    def count(where: str, params: tuple) -> int:
        return conn.execute(
            f"SELECT count(*) FROM app.quotes q WHERE q.contract_id IS NULL AND {where}", params
        ).fetchone()[0]

    return {
        "due": count(f"{due_on} <= %s", (today,)),
        "deletable": count(f"{due_on} <= %s AND NOT {held_clause}", (today,)),
        "overdue": count(f"{due_on} <= %s AND NOT {held_clause}", (today - dt.timedelta(days=overdue_days),)),
        "held": count(f"{due_on} <= %s AND {held_clause}", (today,)),
        "bytes": conn.execute(
            "SELECT coalesce(sum(byte_size), 0) FROM retention.archive_manifest WHERE purpose = 'quotes' AND tier = 'intermediate' AND state = 'committed'"
        ).fetchone()[0],
        "holds": conn.execute("SELECT count(*) FROM retention.legal_holds WHERE released_at IS NULL").fetchone()[0],
    }


def test_retention_page_in_chromium(api_server, data, db):
    url = api_server.url
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")
    from playwright.sync_api import expect, sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    expected = _sql_figures(db, data["today"], overdue_days=3)
    assert (expected["due"], expected["deletable"], expected["overdue"], expected["held"]) == (5, 4, 3, 1)  # as built
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(30_000)
        page = context.new_page()
        try:
            # Not logged in: the page itself refuses.
            assert page.goto(f"{url}/retention/").status == 401
            page.goto(f"{url}/")
            page.get_by_label("Username").fill(USER)
            page.get_by_label("Password").fill(api_server.passwords[USER])
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("link", name="Retention").first.wait_for()
            page.screenshot(path=ARTIFACTS / "01-home.png")

            page.get_by_role("link", name="Retention").first.click()
            frame = page.frame_locator("iframe").first
            table = frame.get_by_test_id("purposes")
            expect(table).to_be_visible()
            expect(frame.locator("body[data-charts-ready=true]")).to_have_count(1)
            page.screenshot(path=ARTIFACTS / "02-retention-in-airflow.png", full_page=True)

            def figure(testid: str) -> str:
                return frame.get_by_test_id(testid).inner_text().strip()

            assert figure("due-quotes") == str(expected["due"])
            assert figure("deletable-quotes") == str(expected["deletable"])
            assert figure("overdue-quotes") == str(expected["overdue"])
            assert figure("held-quotes") == str(expected["held"])
            assert (
                int(frame.get_by_test_id("bytes-quotes-intermediate").get_attribute("data-bytes")) == expected["bytes"]
            )
            assert frame.get_by_test_id("legal-holds").locator("tbody tr").count() == expected["holds"]
            expect(frame.get_by_test_id("overdue-alarm")).to_contain_text("quotes: 3")

            # The page on its own, for a full-length screenshot, and one evidence download.
            page.goto(f"{url}/retention/")
            page.locator("body[data-charts-ready=true]").wait_for()
            page.screenshot(path=ARTIFACTS / "03-retention-page.png", full_page=True)
            with page.expect_download() as info:
                page.get_by_test_id("runs").get_by_role("link", name="JSON").first.click()
            download = info.value
            target = ARTIFACTS / download.suggested_filename
            download.save_as(target)
            evidence = json.loads(target.read_text())
            assert evidence["run_id"] == data["run_id"] and evidence["purpose"] == "quotes"
            keys = {
                r[0]
                for r in db.execute(
                    "SELECT object_key FROM retention.archive_manifest WHERE run_id = %s", (data["run_id"],)
                )
            }
            assert {o["key"] for o in evidence["objects"]} == keys and keys
            html = page.content()
            assert not [v for v in PERSONAL_VALUES if v in html + target.read_text()]
        except Exception:
            page.screenshot(path=ARTIFACTS / "failure.png", full_page=True)
            raise
        finally:
            browser.close()


APPROVER = "approver"  # a `user` of the session's api-server: may act on DAGs (tests/conftest.py)


def _rest_reject(url: str, password: str, question: dict) -> None:
    """Ends a run left waiting (a failed browser step): Reject through the REST API."""
    import urllib.request

    login = urllib.request.Request(
        f"{url}/auth/token",
        data=json.dumps({"username": APPROVER, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(login, timeout=10) as resp:
        token = json.loads(resp.read())["access_token"]
    patch = urllib.request.Request(
        f"{url}/api/v2/dags/{question['dag_id']}/dagRuns/{question['run_id']}/taskInstances/"
        f"{question['task_id']}/-1/hitlDetails",
        data=json.dumps({"chosen_options": ["Reject"], "params_input": {}}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="PATCH",
    )
    urllib.request.urlopen(patch, timeout=10).close()


def test_approve_a_deletion_in_the_airflow_ui(api_server, db, s3, storage):
    """A run over the mass-deletion guard waits; the approver opens its required action in the
    Airflow UI, reads the plan's figures and clicks Approve; the same run then deletes."""
    import concurrent.futures

    from playwright.sync_api import expect, sync_playwright

    from tests.dag_runs import load_dag, task_states
    from tests.test_approvals import over_the_guard, waiting_question

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = api_server.url
    quotes = over_the_guard(db)
    dag = load_dag("quotes")
    for task in dag.tasks:
        task.retries = 0

    def approve_in_the_browser() -> None:
        question = waiting_question("retention_quotes", "approve_deletion")
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
                page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
                page.set_default_timeout(30_000)
                try:
                    page.goto(f"{url}/")
                    page.get_by_label("Username").fill(APPROVER)
                    page.get_by_label("Password").fill(api_server.passwords[APPROVER])
                    page.get_by_role("button", name="Sign in").click()
                    page.get_by_role("link", name="Retention").first.wait_for()
                    page.goto(
                        f"{url}/dags/retention_quotes/runs/{question['run_id']}/tasks/approve_deletion/required_actions"
                    )
                    expect(page.get_by_text(question["subject"]).first).to_be_visible()
                    expect(page.get_by_role("cell", name="quotes (over the guard)")).to_be_visible()
                    expect(page.get_by_role("cell", name="60%")).to_be_visible()
                    page.screenshot(path=ARTIFACTS / "10-approval-asked.png", full_page=True)
                    page.get_by_role("button", name="Approve").click()
                    expect(page.get_by_text(f"from {APPROVER}").first).to_be_visible()  # "Response received at ..."
                    page.screenshot(path=ARTIFACTS / "11-approval-given.png", full_page=True)
                except Exception:
                    page.screenshot(path=ARTIFACTS / "approval-failure.png", full_page=True)
                    raise
                finally:
                    browser.close()
        except BaseException:
            with contextlib.suppress(OSError):  # answered already: 409
                _rest_reject(url, api_server.passwords[APPROVER], question)
            raise

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        browsing = pool.submit(approve_in_the_browser)
        dag_run = dag.test(logical_date=f.midnight("2025-03-01"), run_conf={"max_delete_fraction": 0.5})
        browsing.result(timeout=60)
    assert set(task_states(dag_run).values()) == {"success"}, task_states(dag_run)
    assert f.ids(db, "quotes") == quotes["kept"]
    recorded = db.execute("SELECT decision, decided_by FROM retention.approvals WHERE run_id = %s", (dag_run.run_id,))
    assert recorded.fetchall() == [("approved", APPROVER)]


def _login(page, url: str, api_server) -> None:
    page.goto(f"{url}/")
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill(api_server.passwords[USER])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Retention").first.wait_for()


def test_run_note_links_the_runs_evidence_page(api_server, db, s3, storage, monkeypatch):
    """A real run of retention_quotes (dag.test()) whose report task writes the run's note through
    the api-server; in chromium, as the viewer `dpo`: the note on the run's page with its figures,
    its link to the evidence page, the report there as a table (checked against SQL), and the
    tasks' "Run evidence" button."""
    from urllib.parse import quote

    from tests.dag_runs import run_dag, task_states

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    today = dt.datetime.now(PARIS).date()
    for _ in range(2):
        f.quote(db, issued=today - dt.timedelta(days=430))
    held = f.quote(db, issued=today - dt.timedelta(days=600))
    f.legal_hold(db, "quotes", held, reason="regulator request")
    connection = {"conn_type": "http", "host": api_server.url, "login": "reporter"}
    connection["password"] = api_server.passwords["reporter"]
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_AIRFLOW_API", json.dumps(connection))
    dag_run = run_dag("quotes", dt.datetime.combine(today, dt.time(0), tzinfo=PARIS))
    assert set(task_states(dag_run).values()) == {"success"}, task_states(dag_run)
    run_path = f"/dags/retention_quotes/runs/{quote(dag_run.run_id, safe='')}"
    evidence_path = f"/retention/runs/quotes/{quote(dag_run.run_id, safe='')}"
    deleted = db.execute(
        "SELECT sum(record_count) FROM retention.audit_log WHERE run_id = %s AND action = 'archived_and_deleted'",
        (dag_run.run_id,),
    ).fetchone()[0]
    objects = db.execute(
        "SELECT object_key, sha256, version_id FROM retention.archive_manifest WHERE run_id = %s AND state = 'committed'",
        (dag_run.run_id,),
    ).fetchall()
    assert deleted == 2 and objects
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(30_000)
        page = context.new_page()
        try:
            _login(page, api_server.url, api_server)
            page.goto(f"{api_server.url}{run_path}")
            # The run's page shows the note's first line: the link, the run's state and figures.
            link = page.get_by_role("link", name="Run evidence").first
            expect(link).to_be_visible()
            assert link.get_attribute("href") == evidence_path
            first_line = link.locator("xpath=..").inner_text()
            assert "retention_quotes enforced: due 3, deleted 2, held 1, waiting 0; gates " in first_line, first_line
            page.screenshot(path=ARTIFACTS / "04-run-note.png")
            # The whole note, behind its button.
            page.get_by_role("button", name="Note").first.click()
            expect(page.get_by_text("quality gates: before")).to_be_visible()
            page.screenshot(path=ARTIFACTS / "04b-run-note-open.png")
            page.keyboard.press("Escape")

            link = page.get_by_role("link", name="Run evidence").first
            if link.get_attribute("target") == "_blank":
                with context.expect_page() as opened:
                    link.click()
                page = opened.value
            else:
                link.click()
            page.wait_for_url(f"**{evidence_path}")
            report = page.get_by_test_id("report")
            expect(report).to_be_visible()
            row = report.locator('tr[data-rule="unconverted_quotes"] td')
            # rule, table, tier, due, deleted, held, waiting, objects
            assert [c.strip() for c in row.all_inner_texts()[:8]] == [
                "unconverted_quotes",
                "quotes",
                "intermediate",
                "3",
                str(deleted),
                "1",
                "0",
                str(len(objects)),
            ]
            listed = page.get_by_test_id("objects").inner_text()
            assert all(key in listed and sha in listed and version in listed for key, sha, version in objects)
            page.screenshot(path=ARTIFACTS / "05-run-evidence.png", full_page=True)
            assert not [v for v in PERSONAL_VALUES if v in page.content()]

            # Every task's Details tab: the "Run evidence" button (a global operator extra link).
            page.goto(f"{api_server.url}{run_path}/tasks/report/details")
            button = page.get_by_role("link", name="Run evidence")
            expect(button).to_be_visible()
            assert button.get_attribute("href") == evidence_path
            page.screenshot(path=ARTIFACTS / "06-task-extra-link.png", full_page=True)
        except Exception:
            page.screenshot(path=ARTIFACTS / "failure-run-note.png", full_page=True)
            raise
        finally:
            browser.close()


def test_empty_charts_say_no_data_yet(api_server, db):
    """Nothing archived or deleted yet (an empty database): each chart says so, no bare axes."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(30_000)
        try:
            _login(page, api_server.url, api_server)
            page.goto(f"{api_server.url}/retention/")
            page.locator("body[data-charts-ready=true]").wait_for()
            expect(page.get_by_test_id("per-day-empty")).to_contain_text("No data yet")
            expect(page.get_by_test_id("by-month-empty")).to_contain_text("No data yet")
            assert page.locator("canvas").count() == 0
            page.get_by_test_id("per-day-empty").scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "07-empty-charts.png")
        except Exception:
            page.screenshot(path=ARTIFACTS / "failure-empty-charts.png", full_page=True)
            raise
        finally:
            browser.close()
