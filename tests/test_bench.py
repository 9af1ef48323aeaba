"""The benchmark at a small size, through the same code path as `make bench` (no timing asserted).

The bench starts its own PostgreSQL and S3 server, like `make bench` does; what is checked here is
that the three contestants did the same job: archived and deleted exactly the same due ids.
"""

from __future__ import annotations

import json

import pytest

from bench.partitions import TABLES

pytestmark = pytest.mark.bench

ROWS = 5000
DAILY_ROWS = 3000
DOCUMENT_FILES = 40
PAGE_CUSTOMERS = 300
PARTITION_ROWS = 3000


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from bench.run import main

    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = main(
        ["--rows", str(ROWS), "--repeat", "1", "--skip-full-run", "--skip-parse"]
        + ["--documents-files", str(DOCUMENT_FILES), "--page-customers", str(PAGE_CUSTOMERS), "--out", str(out)]
        + ["--partition-rows", str(PARTITION_ROWS), "--daily-rows", str(DAILY_ROWS)]
    )
    assert json.loads(out.read_text())["runs"], "the bench wrote no runs to its JSON report"
    return result


def test_each_contestant_archived_and_deleted_exactly_the_due_rows(report):
    runs = {r["contestant"]: r for r in report["runs"] if r["size"] == str(ROWS)}
    assert set(runs) == {"limit", "pandas", "engine"}
    expected = report["datasets"][str(ROWS)]["due_ids_sha256"]
    for name, run in runs.items():
        checks = run["checks"]
        assert checks["ok"], (name, checks)
        assert checks["archived_rows"] == checks["deleted_rows"] == run["deleted"] == ROWS, (name, checks)
        assert checks["archived_ids_sha256"] == checks["deleted_ids_sha256"] == expected, name
    dataset = report["datasets"][str(ROWS)]
    assert all(r["checks"]["rows_left"] == dataset["held"] + dataset["recent"] for r in runs.values())


def test_all_three_did_the_same_ids(report):
    for size in (str(ROWS), f"{DAILY_ROWS}-daily"):
        archived = {r["checks"]["archived_ids_sha256"] for r in report["runs"] if r["size"] == size}
        deleted = {r["checks"]["deleted_ids_sha256"] for r in report["runs"] if r["size"] == size}
        assert len(archived) == 1 and archived == deleted, size


def test_a_daily_runs_shape_is_measured_beside_the_backlog(report):
    """--daily-rows: the same job on rows all due since one day; their archive periods end on one
    day, so the engine writes a handful of objects where the backlog's rows end on 364 days."""
    daily = [r for r in report["runs"] if r["size"] == f"{DAILY_ROWS}-daily"]
    assert {r["contestant"] for r in daily} == {"limit", "pandas", "engine"}
    assert all(r["checks"]["ok"] and r["deleted"] == DAILY_ROWS for r in daily)
    engine = {r["size"]: r for r in report["runs"] if r["contestant"] == "engine"}
    assert engine[f"{DAILY_ROWS}-daily"]["objects"] <= 3 < 300 < engine[str(ROWS)]["objects"]
    assert "engine_vs_limit_daily" in report["summary"]["targets"]
    from bench.run import markdown

    assert "3,000 (daily run: one day due)" in markdown(report)


def test_the_engine_kept_its_bookkeeping(report):
    engine = next(r for r in report["runs"] if r["contestant"] == "engine" and r["size"] == str(ROWS))
    assert engine["objects"] >= 1 and engine["archive_bytes"] > 0
    assert sum(rule["deleted"] for rule in engine["rules"]) == ROWS
    assert all(rule["held"] == report["datasets"][str(ROWS)]["held"] for rule in engine["rules"])


def test_report_has_the_table(report):
    summary = report["summary"]["by_size"][str(ROWS)]
    assert set(summary["contestants"]) == {"limit", "pandas", "engine"}
    assert {"engine_vs_limit", "engine_vs_pandas"} <= set(summary["throughput_ratios"])
    assert report["machine"]["cores"] and report["versions"]["postgresql"]


def test_document_disposal_moved_every_file_in_each_contestant(report):
    """Serial baseline, the store before fec1c29 and today's store: every file copied into the
    archive with its size, none left in the documents bucket; the table and the ratio reported."""
    docs = report["documents"]
    assert docs["files"] == DOCUMENT_FILES and docs["all_checks_ok"]
    assert {r["contestant"] for r in docs["runs"]} == {"serial", "store_fec1c29^", "store"}
    for run in docs["runs"]:
        assert run["checks"] == {
            "archived": DOCUMENT_FILES,
            "copies_match_sizes": True,
            "sources_left": 0,
            "ok": True,
        }, run["contestant"]
    assert docs["ratios"]["store_vs_serial"] > 0
    from bench.run import markdown

    text = markdown(report)
    assert "Document disposal" in text and "store throughput" in text


def test_the_retention_page_was_measured_from_fresh_counts(report):
    """The summary API and the page in chromium, served by a real api-server (bench/page.py)."""
    page = report["page"]["sizes"][str(PAGE_CUSTOMERS)]
    assert page["customers"] == PAGE_CUSTOMERS and page["history"]["days"] == 30
    assert page["summary_s"] > 0 and page["page_s"] > 0 and page["count_s"] > 0
    assert page["due_total"] > 0, "the seeded data has due records"
    from bench.run import markdown

    assert "Retention page" in markdown(report) and "summary API s" in markdown(report)


def test_the_partition_path_and_the_row_path_did_the_same_job(report):
    """Both monthly-partitioned tables emptied of their due rows by each path, every row audited
    once; the partition path dropped partitions, the row path none (bench/partitions.py)."""
    parts = report["partitions"]
    assert parts["rows"] == PARTITION_ROWS and parts["all_checks_ok"]
    runs = {(r["kind"], r["path"]): r for r in parts["runs"]}
    assert set(runs) == {
        ("archive", "row"),
        ("archive", "partition"),
        ("archive", "row, units"),
        ("archive", "partition, units"),
        ("none", "row"),
        ("none", "partition"),
    }
    for (kind, path), run in runs.items():
        assert run["deleted"] == PARTITION_ROWS and run["rows_left"] == 0, (kind, path)
        assert bool(run["partitions"].get("dropped")) == path.startswith("partition"), (kind, path)
    assert runs[("archive", "row")]["objects"] >= runs[("archive", "partition")]["objects"] > 0
    # Units cut around the partitions: each month retired whole by its unit, the same objects as
    # in one run (the two empty months after them wait for a run in one unit).
    by_units, whole = runs[("archive", "partition, units")], runs[("archive", "partition")]
    months = TABLES["archive"][4]
    assert by_units["units"] == months and by_units["partitions"]["dropped"] == months
    assert whole["partitions"]["dropped"] == months + 2 and by_units["objects"] == whole["objects"]
    # How long the application's writes waited for a partition (its step 2), measured on the partition path.
    assert whole["share_lock_max_ms"] > 0 and runs[("none", "partition")]["share_lock_max_ms"] > 0
    from bench.run import markdown

    assert "row path vs partition path" in markdown(report)
