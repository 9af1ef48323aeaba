"""The benchmark at a small size, through the same code path as `make bench` (no timing asserted).

The bench starts its own PostgreSQL and S3 server, like `make bench` does; what is checked here is
that the three contestants did the same job: archived and deleted exactly the same due ids.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.bench

ROWS = 5000


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from bench.run import main

    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = main(["--rows", str(ROWS), "--repeat", "1", "--skip-full-run", "--skip-parse", "--out", str(out)])
    assert json.loads(out.read_text())["runs"], "the bench wrote no runs to its JSON report"
    return result


def test_each_contestant_archived_and_deleted_exactly_the_due_rows(report):
    runs = {r["contestant"]: r for r in report["runs"]}
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
    archived = {r["checks"]["archived_ids_sha256"] for r in report["runs"]}
    deleted = {r["checks"]["deleted_ids_sha256"] for r in report["runs"]}
    assert len(archived) == 1 and archived == deleted


def test_the_engine_kept_its_bookkeeping(report):
    engine = next(r for r in report["runs"] if r["contestant"] == "engine")
    assert engine["objects"] >= 1 and engine["archive_bytes"] > 0
    assert sum(rule["deleted"] for rule in engine["rules"]) == ROWS
    assert all(rule["held"] == report["datasets"][str(ROWS)]["held"] for rule in engine["rules"])


def test_report_has_the_table(report):
    summary = report["summary"]["by_size"][str(ROWS)]
    assert set(summary["contestants"]) == {"limit", "pandas", "engine"}
    assert {"engine_vs_limit", "engine_vs_pandas"} <= set(summary["throughput_ratios"])
    assert report["machine"]["cores"] and report["versions"]["postgresql"]
