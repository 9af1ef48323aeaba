"""The gates' Data Docs in a real browser with the internet cut off: Debian's chromium, driven by
Playwright, every request to a host other than 127.0.0.1 aborted, logs in to the session's
`airflow api-server` (tests/api_server.py, which serves the Data Docs of an empty folder), sees
"no gate has run yet", lets two gates build the site, then opens its index and a failed
result: styled by Bootstrap, tables driven by jQuery and bootstrap-table, Font Awesome's icons,
every stylesheet, script, font and image served by the api-server. Screenshots under
test-artifacts/browser/ (git-ignored), named data-docs-*.png.

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import factories as f

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("RETENTION_TEST_CHROMIUM", "/usr/bin/chromium"))
USER = "dpo"  # a viewer of the session's api-server (tests/conftest.py)
LOOPBACK = ("127.0.0.1", "localhost")
ASSET_TYPES = ("stylesheet", "script", "font", "image")


def _build_data_docs(db, policy, source_dsn, docs: Path) -> None:
    """The quotes purpose's before-gate twice, in this process, writing the Data Docs the
    api-server serves: once passing, once failed by a quote issued in the future."""
    from retention import gates
    from retention.archive.run import RunContext
    from retention.gates import QualityGateError

    logical = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    for issued in ("2023-06-01", "2023-06-01", "2024-12-01"):
        f.quote(db, issued=issued)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETENTION_DATA_DOCS_DIR", str(docs))
        gates.run_before_gates(policy, "quotes", source_dsn, RunContext("quotes", "manual__docs_passed", logical), 1.0)
        f.quote(db, issued=dt.datetime.now(dt.UTC) + dt.timedelta(days=400))
        with pytest.raises(QualityGateError):
            gates.run_before_gates(
                policy, "quotes", source_dsn, RunContext("quotes", "manual__docs_failed", logical), 1.0
            )
    assert (docs / "site" / "index.html").is_file()


def _is_styled(page) -> dict:
    """What the vendored files do to a Data Docs page, as the browser sees it."""
    return page.evaluate(
        """async () => {
            await document.fonts.ready;
            const navbar = document.querySelector('nav.navbar');
            return {
                bootstrap_css: getComputedStyle(navbar).display,          // 'flex' from bootstrap.min.css
                jquery: typeof window.jQuery,                             // jquery.min.js ran
                bootstrap_table: document.querySelectorAll('.bootstrap-table').length,  // its JS ran, per table
                font_awesome: document.fonts.check('900 16px "Font Awesome 6 Free"'),   // its font loaded
            };
        }"""
    )


def test_data_docs_offline_in_chromium(api_server, db, policy, source_dsn):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")
    from playwright.sync_api import expect, sync_playwright

    docs = api_server.data_docs
    for built in ("site", "validations"):
        shutil.rmtree(docs / built, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    blocked: list[str] = []
    assets: list[tuple[str, str, int | None]] = []  # (resource type, url, status) of every asset loaded

    def loopback_only(route) -> None:
        if urlsplit(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    def record(request) -> None:
        if request.resource_type in ASSET_TYPES:
            response = request.response()
            assets.append((request.resource_type, request.url, response.status if response else None))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(30_000)
        context.route("**/*", loopback_only)
        page = context.new_page()
        page.on("requestfinished", record)
        page.on("requestfailed", lambda request: assets.append((request.resource_type, request.url, None)))
        try:
            page.goto(f"{api_server.url}/")
            page.get_by_label("Username").fill(USER)
            page.get_by_label("Password").fill(api_server.passwords[USER])
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("link", name="Retention").first.wait_for()

            # Before any gate: a page that says so, not the JSON of an error.
            page.goto(f"{api_server.url}/retention/data-docs/index.html")
            expect(page.get_by_test_id("data-docs-none")).to_contain_text("No gate has run yet")
            page.screenshot(path=ARTIFACTS / "data-docs-01-no-gate-yet.png", full_page=True)

            _build_data_docs(db, policy, source_dsn, docs)
            assets.clear()  # the Airflow UI's own; from here on, the Data Docs'
            page.goto(f"{api_server.url}/retention/data-docs/index.html", wait_until="networkidle")
            # bootstrap-table (jQuery) draws the results' rows from the page's data: two runs, two suites.
            rows = page.get_by_role("tabpanel", name="Validation Results").locator("tbody tr")
            expect(rows).to_have_count(4)
            expect(rows.filter(has=page.locator(".ge-failed-icon"))).to_have_count(1)
            styled = _is_styled(page)
            assert styled == {"bootstrap_css": "flex", "jquery": "function", "bootstrap_table": 2, "font_awesome": True}
            page.screenshot(path=ARTIFACTS / "data-docs-02-index.png", full_page=True)

            # The failed result: a click on its row (its Run Time cell) opens it.
            with page.expect_navigation(wait_until="networkidle"):
                rows.filter(has=page.locator(".ge-failed-icon")).locator("td").nth(1).click()
            assert "/retention/data-docs/validations/quotes/before/app/quotes/" in page.url
            expect(page.get_by_text("Status: Failed")).to_be_visible()
            expect(page.get_by_text("1 unexpected values found")).to_be_visible()
            styled = _is_styled(page)
            assert styled["bootstrap_css"] == "flex" and styled["jquery"] == "function" and styled["font_awesome"]
            page.screenshot(path=ARTIFACTS / "data-docs-03-failed-result.png", full_page=True)
        except Exception:
            page.screenshot(path=ARTIFACTS / "data-docs-failure.png", full_page=True)
            raise
        finally:
            browser.close()

    assert not blocked, f"the Data Docs asked the internet for {blocked}"
    # GX's own favicon link climbs one folder too few on result pages: a local 404, harmless.
    missing = [a for a in assets if a[2] != 200 and not a[1].endswith("favicon.ico")]
    assert not missing, missing
    kinds = {kind for kind, _, _ in assets}
    assert kinds >= {"stylesheet", "script", "font", "image"}, kinds
    assert all(urlsplit(url).hostname in LOOPBACK for _, url, _ in assets)
