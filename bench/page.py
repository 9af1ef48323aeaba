"""The Retention page's speed (issue 19): ``/retention/api/summary`` and the page drawn in a
browser, served by a real ``airflow api-server`` (uvicorn, the plugin loaded, SimpleAuthManager)
on loopback, at 20,000 and 100,000 customers with 30 days of history.

    PYTHONPATH=plugins:. .venv/bin/python -m bench.page [--customers 20000 100000] [--history-days 30]

(``make bench`` runs it too: ``--skip-page`` leaves it out, ``--page-customers`` sets the sizes.)

For each size, one source database is seeded by tools/seed.py without documents (the page reads
no S3 object; 100,000 customers take ~95 s on 2 cores), then given ``history_days`` days of a
daily run's bookkeeping: per day and rule, the audit rows (archived and deleted or deleted,
held, waiting) and one committed archive object whose id list holds that day's rows
(``customers / 1,000`` rows per rule and day). Measured, after one request that waits for the
counts (``?fresh=true``, the counting time reported as ``count_s``):

- ``summary_s``: ``GET /retention/api/summary``, median of ``repeat`` requests (warm: the counts
  are fresh, which every answer is checked to say);
- ``page_s``: chromium (Debian's, driven by Playwright) loads ``/retention/`` until its charts are
  drawn (``body[data-charts-ready=true]``), median of ``repeat`` loads after one warm-up;
  ``page_server_s`` is the HTML's own response time from the browser's navigation timing.

Targets: summary <= 0.3 s and page <= 1 s, at every size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = (20_000, 100_000)
HISTORY_DAYS = 30
REPEAT = 9
TARGETS = {"summary_s": 0.3, "page_s": 1.0}
CHROMIUM = Path(os.environ.get("RETENTION_TEST_CHROMIUM", "/usr/bin/chromium"))
SOURCE_DB = "page_source"
AIRFLOW_DB = "page_airflow"
USER = "dpo"

# One day of a daily run's bookkeeping, for every rule of the policy: (purpose, rule, table, tier)
# rows in %(rules)s; %(day)s the logical date; %(rows)s the rows a rule archives or deletes a day.
_HISTORY_SQL = """
WITH rules AS (
    SELECT v->>0 AS purpose, v->>1 AS rule, v->>2 AS table_name, v->>3 AS tier, n
    FROM jsonb_array_elements(%(rules)s::jsonb) WITH ORDINALITY AS r(v, n)
), manifest AS (
    INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,
        object_key, state, purge_month, purge_after, row_count, byte_size, sha256, version_id, record_ids,
        committed_at, created_at)
    SELECT 'scheduled__' || %(day)s::date, %(day)s, purpose, rule, table_name, tier, 'bench-archive',
        tier || '/' || purpose || '/' || rule || '/purge_date=' || (%(day)s::date + 365) || '/part-0.parquet',
        'committed', to_char(%(day)s::date + 365, 'YYYY-MM'), %(day)s::date + 365, %(rows)s, %(rows)s * 180,
        md5(rule || %(day)s), md5(rule), array(SELECT n * 10000000 + g FROM generate_series(1, %(rows)s) AS g),
        %(day)s::timestamptz + interval '1 hour', %(day)s::timestamptz + interval '1 hour'
    FROM rules WHERE tier <> 'none'
    RETURNING 1
)
INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count, byte_count,
    record_ids, at)
SELECT 'scheduled__' || %(day)s::date, %(day)s, purpose, rule, table_name, action, count, 0,
    array(SELECT n * 10000000 + g FROM generate_series(1, count) AS g), %(day)s::timestamptz + interval '1 hour'
FROM rules, LATERAL (VALUES
    (CASE WHEN tier = 'none' THEN 'deleted' ELSE 'archived_and_deleted' END, %(rows)s),
    ('held', 1), ('waiting', 2)) AS a(action, count)
"""


def log(message: str) -> None:
    print(f"[bench page {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def add_history(dsn: str, customers: int, days: int, today: dt.date) -> dict:
    """``days`` daily runs' worth of audit rows and archive objects, ending yesterday."""
    import psycopg
    from retention.policy import default_policy

    policy = default_policy()
    rules = [[p, r.name, r.table, r.tier] for p, purpose in policy.purposes.items() for r in purpose.rules]
    rows = max(1, customers // 1000)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for back in range(days, 0, -1):
            conn.execute(
                _HISTORY_SQL, {"rules": json.dumps(rules), "day": today - dt.timedelta(days=back), "rows": rows}
            )
        audit, objects = conn.execute(
            "SELECT (SELECT count(*) FROM retention.audit_log), (SELECT count(*) FROM retention.archive_manifest)"
        ).fetchone()
        conn.execute("VACUUM ANALYZE retention.audit_log, retention.archive_manifest")
    return {"days": days, "audit_rows": audit, "archive_objects": objects, "rows_per_rule_and_day": rows}


def airflow_env(stack, home: Path, passwords_file: Path, url: str, role_passwords: dict[str, str]) -> dict[str, str]:
    """The api-server's environment: the caller's without its Airflow settings, plus the bench's
    (the page connects as its roles, as deployed: the reader, and the counter for its recount)."""
    from tools import devstack

    pg = stack.pg
    roles = devstack.role_connections("127.0.0.1", pg.port, role_passwords, database=SOURCE_DB)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    return inherited | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.dsn(AIRFLOW_DB).replace("postgresql://", "postgresql+psycopg://"),
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__BASE_URL": url,
        **{f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in roles.items()},
        "RETENTION_DATA_DOCS_DIR": "off",
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONPATH": f"{REPO_ROOT / 'plugins'}:{REPO_ROOT}",
    }


def _request(url: str, token: str | None = None, body: dict | None = None) -> tuple[float, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        content = response.read()
    return time.perf_counter() - started, content


def measure_size(url: str, token: str, repeat: int) -> dict:
    """The counting (one ?fresh=true request), then the warm summary and the page."""
    count_s, content = _request(f"{url}/retention/api/summary?fresh=true", token)
    first = json.loads(content)
    took = [p["counts"]["took_s"] for p in first["purposes"]]
    summary_times = []
    for _ in range(repeat):
        seconds, content = _request(f"{url}/retention/api/summary", token)
        states = {p["counts"]["state"] for p in json.loads(content)["purposes"]}
        if states != {"fresh"}:
            raise RuntimeError(f"the summary was not served from fresh counts ({states}): not a warm measure")
        summary_times.append(seconds)
    html_times = [_request(f"{url}/retention/", token)[0] for _ in range(repeat)]
    result = {
        "count_s": count_s,
        "count_took_s": max(took) if took else None,
        "due_total": sum(p["due"] for p in first["purposes"]),
        "overdue_total": sum(p["overdue"] for p in first["purposes"]),
        "summary_s": statistics.median(summary_times),
        "summary_all_s": summary_times,
        "html_s": statistics.median(html_times),
        "summary_bytes": len(content),
    }
    result.update(measure_page(url, token, repeat))
    return result


def measure_page(url: str, token: str, repeat: int) -> dict:
    """The page in chromium until its charts are drawn: median of ``repeat`` loads after one."""
    if not CHROMIUM.exists():
        return {"page_s": None, "page_note": f"{CHROMIUM} is missing: page not measured in a browser"}
    from playwright.sync_api import sync_playwright

    walls, server = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            context = browser.new_context(
                extra_http_headers={"Authorization": f"Bearer {token}"}, viewport={"width": 1400, "height": 1000}
            )
            page = context.new_page()
            for attempt in range(repeat + 1):
                started = time.perf_counter()
                page.goto(f"{url}/retention/")
                page.locator("body[data-charts-ready=true]").wait_for(timeout=60_000)
                wall = time.perf_counter() - started
                timing = page.evaluate(
                    "() => { const n = performance.getEntriesByType('navigation')[0];"
                    " return {request: n.requestStart, response: n.responseEnd}; }"
                )
                if attempt:  # the first load warms the browser's cache (Chart.js)
                    walls.append(wall)
                    server.append((timing["response"] - timing["request"]) / 1000)
        finally:
            browser.close()
    return {"page_s": statistics.median(walls), "page_all_s": walls, "page_server_s": statistics.median(server)}


def start_api_server(env: dict[str, str], home: Path, port: int) -> subprocess.Popen:
    from tools import devstack

    airflow = str(Path(sys.executable).parent / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, cwd=home)
    if migrate.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed: {migrate.stderr[-3000:]}")
    log_file = home / "api-server.log"
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
        )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"api-server exited: {log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        devstack.wait_until(healthy, 180, "the Airflow api-server", log_file)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(stack, sizes=SIZES, history_days: int = HISTORY_DAYS, repeat: int = REPEAT, log=log) -> dict:
    """Measure the page at each size on the bench's PostgreSQL (a database of its own)."""
    import psycopg
    from retention.policy import default_policy
    from retention.schema import apply_schema

    from tools import devstack
    from tools.seed.load import seed_database

    home = stack.root / "page-airflow-home"
    home.mkdir(exist_ok=True)
    stack.pg.ensure_database(SOURCE_DB)
    stack.pg.ensure_database(AIRFLOW_DB)
    dsn = stack.database_dsn(SOURCE_DB)
    apply_schema(dsn)
    role_passwords = devstack.new_role_passwords()
    devstack.ensure_role_users(dsn, role_passwords)
    password = secrets.token_urlsafe(12)
    passwords_file = home / "passwords.json"
    passwords_file.write_text(json.dumps({USER: password}))
    port = devstack.free_port()
    url = f"http://127.0.0.1:{port}"
    log("page: migrating Airflow's metadata database and starting the api-server")
    proc = start_api_server(airflow_env(stack, home, passwords_file, url, role_passwords), home, port)
    today = dt.datetime.now(ZoneInfo(default_policy().timezone)).date()
    results = {}
    try:
        token = json.loads(_request(f"{url}/auth/token", body={"username": USER, "password": password})[1])[
            "access_token"
        ]
        for customers in sizes:
            log(f"page: seeding {customers:,} customers (no documents), reference date {today}")
            started = time.perf_counter()
            counts = seed_database(dsn, customers=customers, seed=42, reference_date=today, reset=True)
            seed_s = time.perf_counter() - started
            history = add_history(dsn, customers, history_days, today)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
            log(f"page: seeded {sum(counts.values()):,} rows in {seed_s:.0f} s; {history}")
            measured = measure_size(url, token, repeat)
            results[str(customers)] = {
                "customers": customers,
                "rows": sum(counts.values()),
                "seed_s": seed_s,
                "history": history,
                **measured,
                "met": {
                    "summary_s": measured["summary_s"] <= TARGETS["summary_s"],
                    "page_s": measured["page_s"] is not None and measured["page_s"] <= TARGETS["page_s"],
                },
            }
            log(
                f"page: {customers:,} customers: summary {measured['summary_s']:.3f} s (median of {repeat}), "
                f"page drawn {_fmt(measured['page_s'])} s, counting {measured['count_s']:.1f} s"
            )
    finally:
        stop(proc)
    return {"repeat": repeat, "history_days": history_days, "targets": TARGETS, "sizes": results}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(page: dict) -> list[str]:
    lines = [
        "",
        f"Retention page, served by `airflow api-server` on loopback, {page['history_days']} days of history, "
        f"median of {page['repeat']} (bench/page.py):",
        "",
        "| customers | rows | summary API s (target <= 0.3) | page drawn s (target <= 1) | HTML s (browser) "
        "| counting s (in the background) | due / overdue |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in page["sizes"].values():
        met = size["met"]
        lines.append(
            f"| {size['customers']:,} | {size['rows']:,} | {size['summary_s']:.3f} "
            f"({'met' if met['summary_s'] else 'NOT met'}) | {_fmt(size['page_s'])} "
            f"({'met' if met['page_s'] else 'NOT met'}) | {_fmt(size.get('page_server_s'))} "
            f"| {size['count_s']:.1f} | {size['due_total']:,} / {size['overdue_total']:,} |"
        )
    notes = {s.get("page_note") for s in page["sizes"].values()} - {None}
    lines += [f"- {n}" for n in sorted(notes)]
    lines.append(
        "- the summary and the page are served from the stored counts (retention.status_counts); "
        "counting is what a recount costs, in the api-server's background, after a run or a hold changed them"
    )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.page", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--history-days", type=int, default=HISTORY_DAYS)
    parser.add_argument("--repeat", type=int, default=REPEAT)
    args = parser.parse_args(argv)
    from bench import stack as bench_stack

    stack = bench_stack.start()
    try:
        page = run(stack, args.customers, args.history_days, args.repeat)
    finally:
        bench_stack.stop(stack)
    print("\n".join(markdown(page)))
    return page


if __name__ == "__main__":
    main()
