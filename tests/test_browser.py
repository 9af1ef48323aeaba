"""The Retention page in a real browser: Debian's chromium, driven by Playwright, logs in to a
real `airflow api-server` (on loopback, SimpleAuthManager), opens Retention from the navigation,
checks its figures against SQL on the same database, downloads one evidence file, and saves
screenshots under test-artifacts/browser/ (git-ignored).

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it)."""

from __future__ import annotations

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
