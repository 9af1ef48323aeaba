"""Archive-and-delete benchmark (issue 5): the engine against the machine's limit and the pandas peer.

    PYTHONPATH=plugins:. .venv/bin/python -m bench.run [--rows 100000 1000000] [--repeat 3]
        [--out bench/results/latest.json] [--batch-size N] [--full-run-customers N]
        [--skip-full-run] [--skip-parse] [--documents-files N] [--skip-documents] [--profile]
        [--page-customers N ...] [--skip-page] [--candidate NAME=PLUGINS_DIR ...]

Starts its own PostgreSQL and S3 server (moto) on free loopback ports, state in a temporary
folder, both stopped at the end. For each size N it builds N expired quotes once into a template
table (bench/data.py); then, for each repeat and each contestant (order rotated per repeat), it
restores an identical fresh copy, creates fresh buckets and runs the contestant in a process of
its own (bench/contestants.py), which reports its wall time and peak RSS. After each run it
checks, from the database and from the archive objects themselves, that exactly the N due rows
were archived and deleted. It prints one table (medians of the repeats) and writes the same
figures, the machine and the versions to a JSON file (and the Markdown beside it).

``--candidate NAME=DIR`` (repeatable) adds a contestant NAME: the engine imported from another
plugins folder, e.g. ``<worktree>/plugins`` of a branch with a proposed engine change (its rule
SQL comes from that tree's include/), run interleaved with the others under the same noise, so
a change is measured side by side with the engine it would replace.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from zoneinfo import ZoneInfo

from retention.policy import DEFAULT_BATCH_SIZE

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "latest.json"
CONTESTANTS = ("limit", "pandas", "engine")
LOGICAL_DATE = dt.datetime(2026, 3, 1, tzinfo=ZoneInfo("Europe/Paris"))
# The full run's default size. The generator uploads every document of the dataset to the S3
# server (moto answers ~390 puts/s on this 2-core machine): 10,000 customers seed in 78 s, 50,000
# in 357 s (2.9 s for 10,000 without documents), so 1,000,000 would take about two hours. 20,000
# (about 150 s) is the largest that keeps the whole bench under its 15 minutes.
FULL_RUN_CUSTOMERS = 20_000
DOCUMENT_FILES = 10_000  # issue 11: document disposal measured on 10,000 files
PAGE_SIZES = (20_000, 100_000)  # issue 19: the Retention page at these sizes (bench/page.py)
PARTITION_ROWS = 10_000_000  # issue 20: a monthly-partitioned table retired whole, at 10M rows
# A daily run's shape (bench.data.build_template): the quotes due since the day before the cutoff.
DAILY_ROWS = 100_000
TARGETS = {
    "engine_vs_limit": 0.7,
    "engine_vs_limit_daily": 0.7,
    "engine_vs_pandas": 1.5,
    "rss_growth": 1.2,
    "parse_s": 0.3,
    "bench_s": 900,
}


class BenchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def has_engine(plugins: Path) -> bool:
    """A plugins folder holding the engine: this layout, or the one before retention/archive/."""
    return any((plugins / "retention" / rel).is_file() for rel in ("archive/engine.py", "engine.py"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="sizes N (expired rows)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each contestant per size (median reported)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (a .md is written beside it)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="the engine's batch size")
    parser.add_argument("--contestants", nargs="+", choices=CONTESTANTS, default=list(CONTESTANTS))
    parser.add_argument(
        "--full-run-customers",
        type=int,
        default=FULL_RUN_CUSTOMERS,
        help=f"customers generated (tools/seed) for the full daily run of every purpose "
        f"(default {FULL_RUN_CUSTOMERS:,}: see FULL_RUN_CUSTOMERS)",
    )
    parser.add_argument("--skip-full-run", action="store_true")
    parser.add_argument("--skip-parse", action="store_true", help="skip the DAG parse-time measure")
    parser.add_argument(
        "--documents-files",
        type=int,
        default=DOCUMENT_FILES,
        help=f"files (20-200 KB) of the document-disposal measure (default {DOCUMENT_FILES:,}; bench/documents.py)",
    )
    parser.add_argument("--skip-documents", action="store_true", help="skip the document-disposal measure")
    parser.add_argument(
        "--page-customers",
        type=int,
        nargs="+",
        default=list(PAGE_SIZES),
        help="customers of the Retention page measure (bench/page.py; default 20,000 and 100,000)",
    )
    parser.add_argument("--skip-page", action="store_true", help="skip the Retention page measure")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more engine run at the largest size under cProfile, with step timings",
    )
    parser.add_argument(
        "--engine-plugins",
        type=Path,
        help="plugins folder the 'engine' contestant imports (default: this repository's); the rule SQL "
        "of all contestants comes from the include/ beside it",
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also run the engine from plugins folder DIR as contestant NAME (repeatable)",
    )
    parser.add_argument(
        "--partition-rows",
        type=int,
        default=PARTITION_ROWS,
        help="expired rows a table for the row path vs partition path comparison (bench/partitions.py)",
    )
    parser.add_argument("--skip-partitions", action="store_true", help="skip the partitioned tables' measure")
    parser.add_argument(
        "--daily-rows",
        type=int,
        default=DAILY_ROWS,
        help="also N rows of a daily run's shape, all due since one day (0: skip); the sizes above are a backlog's",
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.engine_plugins:
        args.engine_plugins = args.engine_plugins.resolve()
        if not has_engine(args.engine_plugins):
            parser.error(f"--engine-plugins: {args.engine_plugins} has no retention/archive/engine.py")
    args.candidates = {}
    for item in args.candidate:
        name, _, folder = item.partition("=")
        plugins = Path(folder).resolve()
        if not name.isidentifier() or name in (*CONTESTANTS, *args.candidates) or not folder:
            parser.error(f"--candidate {item!r}: expected a new NAME=DIR")
        if not has_engine(plugins):
            parser.error(f"--candidate {item!r}: {plugins} has no retention/archive/engine.py")
        args.candidates[name] = str(plugins)
    args.contestants = [*args.contestants, *args.candidates]
    if any(n < 1 for n in args.rows + args.page_customers) or args.repeat < 1 or args.documents_files < 1:
        parser.error("--rows and --repeat must be positive")
    return args


# ---------------------------------------------------------------------------- children


def child_env(spec: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([spec.get("plugins") or str(REPO_ROOT / "plugins"), str(REPO_ROOT)]),
            "NO_PROXY": "127.0.0.1,localhost",
            "RETENTION_ARCHIVE_BUCKET": spec["archive_bucket"],
            "RETENTION_DOCUMENTS_BUCKET": spec["documents_bucket"],
        }
    )
    env.update(spec.get("env", {}))
    return env


def run_child(spec: dict) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.contestants", json.dumps(spec)],
        env=child_env(spec),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise BenchError(f"{spec['contestant']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------- checks


def verify(stack, spec: dict, result: dict, expected: dict) -> dict:
    """Exactly the N due ids archived (read from the objects) and deleted (read from the table)."""
    import psycopg
    import pyarrow.parquet as pq

    from bench import data

    client = stack.s3_client()
    bucket, contestant = spec["archive_bucket"], spec["contestant"]
    if contestant == "limit":
        body = client.get_object(Bucket=bucket, Key=result["keys"][0])["Body"].read()
        archived = [int(line[: line.index(b"\t")]) for line in body.splitlines()]
        archived_rows = len(archived)
    elif contestant == "pandas":
        body = client.get_object(Bucket=bucket, Key=result["keys"][0])["Body"].read()
        parquet = pq.ParquetFile(io.BytesIO(body))
        archived_rows = parquet.metadata.num_rows
        archived = parquet.read(columns=["id"]).column("id").to_pylist()
    else:
        with psycopg.connect(spec["dsn"]) as conn:
            manifest = conn.execute(
                "SELECT object_key, row_count FROM retention.archive_manifest WHERE run_id = %s AND state = 'committed'"
                " ORDER BY id",
                (spec["run_id"],),
            ).fetchall()
            audited = conn.execute(
                "SELECT coalesce(sum(record_count), 0) FROM retention.audit_log WHERE run_id = %s"
                " AND action = 'archived_and_deleted'",
                (spec["run_id"],),
            ).fetchone()[0]
        archived_rows = sum(count for _, count in manifest)
        archived = []
        for key, _ in manifest:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            archived += pq.read_table(io.BytesIO(body), columns=["id"]).column("id").to_pylist()
        if audited != archived_rows:
            raise BenchError(f"engine: audit log says {audited} rows archived, manifest {archived_rows}")
    archived.sort()
    gone, left = data.deleted_ids(spec["dsn"])
    checks = {
        "archived_rows": archived_rows,
        "archived_ids": len(archived),
        "archived_ids_sha256": data.ids_digest(archived),
        "deleted_rows": len(gone),
        "deleted_ids_sha256": data.ids_digest(gone),
        "rows_left": left,
        "reported_deleted": result["deleted"],
    }
    n = expected["rows"]
    checks["ok"] = (
        archived_rows == n
        and len(archived) == n
        and len(gone) == n
        and result["deleted"] == n
        and checks["archived_ids_sha256"] == expected["ids_sha256"] == checks["deleted_ids_sha256"]
        and left == expected["total"] - n
    )
    return checks


# ---------------------------------------------------------------------------- report


def machine() -> dict:
    info = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kib = int(next(line for line in meminfo.splitlines() if line.startswith("MemTotal:")).split()[1])
        info["memory_gib"] = round(kib / 1024 / 1024, 1)
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "unknown"
        )
    except (OSError, StopIteration, ValueError):
        pass
    return info


def versions(dsn: str | None) -> dict:
    found = {}
    for dist in (
        "apache-airflow",
        "pyarrow",
        "pandas",
        "psycopg",
        "adbc-driver-postgresql",
        "SQLAlchemy",
        "boto3",
        "moto",
    ):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    if dsn:
        import psycopg

        with psycopg.connect(dsn) as conn:
            found["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    return found


def source_state() -> dict:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    engine_files = ["plugins/retention/archive/engine.py", "plugins/retention/archive/store.py"]
    return {
        "commit": git("rev-parse", "HEAD"),
        "engine_changed_since_commit": bool(git("status", "--porcelain", "--", *engine_files)),
        "engine_sha256": {f: hashlib.sha256((REPO_ROOT / f).read_bytes()).hexdigest()[:16] for f in engine_files},
    }


def size_label(n: int, daily: bool = False) -> str:
    """A measured size's key: its rows, and whether they are a daily run's shape."""
    return f"{n}-daily" if daily else str(n)


def size_text(label: str) -> str:
    n, _, daily = label.partition("-")
    return f"{int(n):,}" + (" (daily run: one day due)" if daily else "")


def summarize(runs: list[dict], sizes: list[int], contestants: list[str], daily_rows: int = 0) -> dict:
    """Medians per size and contestant, the throughput ratios, and the targets: at the largest
    backlog size, and engine vs limit at the daily run's shape."""
    summary: dict = {"by_size": {}, "targets": {}}
    labels = [(size_label(n), n) for n in sizes] + ([(size_label(daily_rows, True), daily_rows)] if daily_rows else [])
    for label, n in labels:
        row = {}
        for c in contestants:
            mine = [r for r in runs if r["size"] == label and r["contestant"] == c]
            if not mine:
                continue
            wall = statistics.median(r["wall_s"] for r in mine)
            row[c] = {
                "rows": n,
                "runs": len(mine),
                "median_wall_s": wall,
                "rows_per_s": n / wall if wall else None,
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in mine),
                "max_peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                "archive_bytes": int(statistics.median(r["archive_bytes"] for r in mine)),
                "objects": int(statistics.median(r["objects"] for r in mine)),
                "median_cpu_s": statistics.median(r["cpu_s"] for r in mine),
                "walls_s": [round(r["wall_s"], 3) for r in mine],
                "all_checks_ok": all(r["checks"]["ok"] for r in mine),
            }
            sources = {json.dumps(r["engine_source"], sort_keys=True) for r in mine if "engine_source" in r}
            if len(sources) > 1:
                row[c]["warning"] = f"the engine code changed during the bench: {len(sources)} versions measured"
            if all("steps" in r for r in mine):
                row[c]["median_steps_s"] = {k: statistics.median(r["steps"][k] for r in mine) for k in mine[0]["steps"]}
        ratios = {}
        for mine in [c for c in contestants if c not in ("limit", "pandas")]:
            for peer in ("limit", "pandas", "engine"):
                if mine in row and peer in row and peer != mine:
                    ratios[f"{mine}_vs_{peer}"] = row[peer]["median_wall_s"] / row[mine]["median_wall_s"]
        summary["by_size"][label] = {"contestants": row, "throughput_ratios": ratios}
    targets = summary["targets"]
    measured = [(key, key, max(sizes, default=0)) for key in ("engine_vs_limit", "engine_vs_pandas")]
    measured += [("engine_vs_limit_daily", "engine_vs_limit", daily_rows)] if daily_rows else []
    for target, ratio, n in measured:
        value = (
            summary["by_size"].get(size_label(n, target.endswith("_daily")), {}).get("throughput_ratios", {}).get(ratio)
        )
        if value is not None:
            targets[target] = {
                "value": value,
                "target": f">= {TARGETS[target]}",
                "met": value >= TARGETS[target],
                "at_rows": n,
            }
    engine_rss = {n: summary["by_size"][str(n)]["contestants"].get("engine", {}).get("max_peak_rss_mb") for n in sizes}
    if len(sizes) > 1 and all(engine_rss.values()):
        small, large = min(sizes), max(sizes)
        value = engine_rss[large] / engine_rss[small]
        targets["engine_rss_growth"] = {
            "value": value,
            "target": f"<= {TARGETS['rss_growth']}",
            "met": value <= TARGETS["rss_growth"],
            "sizes": [small, large],
        }
    return summary


def _fmt_int(value) -> str:
    return f"{value:,.0f}" if value is not None else "-"


def _gate_text(gates: dict) -> str:
    """'22/22, 31/31' for passed gates; the first line of a failure otherwise."""
    texts = []
    for name in ("before_gate", "after_gate"):
        status = gates[name]
        if status.startswith(("FAILED", "not run")):
            texts.append(f"{name} {status.splitlines()[0][:160]}")
        else:
            texts.append(status.split(" ")[0])
    if "before_gate_refused" in gates:
        texts.append("first refused by the mass-deletion guard, re-run with max_delete_fraction 1")
    return ", ".join(texts).replace("|", "/")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Bench of {report['date']} on {m.get('cores')} cores, {m.get('memory_gib')} GiB ({m.get('cpu', '?')}); "
        f"PostgreSQL {report['versions'].get('postgresql')}, S3 = moto {report['versions'].get('moto')} on loopback; "
        f"engine batch size {report['config']['batch_size']}; median of {report['config']['repeat']} runs.",
        "",
        "| contestant | rows | median wall s | rows/s | peak RSS MiB | archive bytes | objects | CPU s (client) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratio_lines = []
    for label, size in report["summary"]["by_size"].items():
        n = size_text(label)
        for c, s in size["contestants"].items():
            lines.append(
                f"| {c} | {n} | {s['median_wall_s']:.2f} | {_fmt_int(s['rows_per_s'])} | {s['peak_rss_mb']:.0f} "
                f"| {s['archive_bytes']:,} | {s['objects']} | {s['median_cpu_s']:.1f} |"
            )
        r = size["throughput_ratios"]
        for mine in [c for c in size["contestants"] if c not in ("limit", "pandas")]:
            mine_ratios = {k.split("_vs_")[1]: v for k, v in r.items() if k.startswith(mine + "_vs_")}
            if mine_ratios:
                ratio_lines.append(
                    f"- {n} rows: {mine} throughput = "
                    + ", ".join(f"{v:.2f} x {peer}" for peer, v in mine_ratios.items())
                )
        for c, s in size["contestants"].items():
            if "warning" in s:
                ratio_lines.append(f"- WARNING {n} rows, {c}: {s['warning']}")
            if "median_steps_s" in s:
                ratio_lines.append(
                    f"- {n} rows: {c} steps (median s): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in s["median_steps_s"].items())
                )
    lines += ["", *ratio_lines]
    targets = report["summary"]["targets"]
    if targets:
        lines += [
            "",
            "Targets: "
            + "; ".join(
                f"{k} {v['value']:.2f} ({v['target']}: {'met' if v['met'] else 'NOT met'})" for k, v in targets.items()
            ),
        ]
    parse = report.get("parse_time")
    if parse:
        lines += [
            "",
            "DAG parse time, as the dag-processor parses: `import airflow.sdk`, `gc.freeze()`, a forked "
            f"child per file (median of {parse['repeat']}; `import airflow.sdk` {parse['airflow_sdk_import_s']:.2f} s, "
            f"load average {parse['load_average'][0]:.1f}-{parse['load_average'][1]:.1f}, "
            f"bytecode {'cached' if parse['bytecode_cached'] else 'compiled from source'}):",
            "",
            "| DAG file | parse s | CPU s | without gc.freeze() s | CPU s | target < 0.3 s |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, f in parse["files"].items():
            lines.append(
                f"| {name} | {f['parse_s']:.3f} | {f['parse_cpu_s']:.3f} | {f['parse_no_freeze_s']:.3f} "
                f"| {f['parse_no_freeze_cpu_s']:.3f} | {'met' if f['parse_s'] < TARGETS['parse_s'] else 'NOT met'} |"
            )
        lines += [""] + [f"- import {k}: {v:.3f} s" for k, v in parse["modules"].items()]
        if parse.get("slowest_file_heaviest_imports_s"):
            lines.append(
                f"- heaviest imports of {parse['slowest_file']} after airflow.sdk (cumulative s): "
                + ", ".join(f"{mod} {s:.3f}" for mod, s in parse["slowest_file_heaviest_imports_s"][:6])
            )
    docs = report.get("documents")
    if docs:
        lines += [
            "",
            f"Document disposal, {docs['files']:,} files of {docs['sizes'][0] // 1000}-{docs['sizes'][1] // 1000} KB "
            f"({docs['bytes'] / 1e6:,.0f} MB) copied into the archive then deleted, fresh buckets each run, median of "
            f"{docs['repeat']} (bench/documents.py):",
            "",
            "| contestant | median wall s | files/s | client CPU s | S3 server CPU s | walls s | load avg (1 min) |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for name, d in docs["summary"].items():
            lines.append(
                f"| {name} | {d['median_wall_s']:.2f} | {d['files_per_s']:,.0f} | {d['median_client_cpu_s']:.1f} "
                f"| {d['median_server_cpu_s']:.1f} | {', '.join(f'{w:.1f}' for w in d['walls_s'])} "
                f"| {', '.join(f'{x:.1f}' for x in d['load_average_1m'])} |"
            )
        lines += [
            "",
            "- store throughput = "
            + ", ".join(f"{v:.2f} x {k.split('_vs_')[1]}" for k, v in docs["ratios"].items())
            + f" (target >= 5 x serial: {'met' if docs['target']['met'] else 'NOT met'}); "
            + f"checks {'ok' if docs['all_checks_ok'] else 'FAILED'}",
        ]
    if report.get("page"):
        from bench import page as page_bench

        lines += page_bench.markdown(report["page"])
    full = report.get("full_run")
    if full:
        lines.append("")
        if "skipped" in full:
            lines.append(f"Full daily run: skipped ({full['skipped']}).")
        else:
            lines += [
                f"Full daily run, {full['customers']:,} customers generated by tools/seed "
                f"({sum(full['seeded_rows'].values()):,} rows, seeded in {full['seed_s']:.0f} s), "
                f"logical date {full['logical_date']}:",
                "",
                "| purpose | wall s | plan s | before gate s | archive_and_delete s | purge s | after gate s "
                "| gates share | rows deleted | objects | archive bytes | peak RSS MiB | gates |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
            for p in full["purposes"]:
                st = p["steps_s"]
                lines.append(
                    f"| {p['purpose']} | {p['wall_s']:.1f} | {st.get('plan', 0):.1f} | {st.get('before_gate', 0):.1f} "
                    f"| {st.get('archive_and_delete', 0):.1f} | {st.get('purge', 0):.1f} | {st.get('after_gate', 0):.1f} "
                    f"| {p['gates_share']:.0%} | {p['deleted']:,} | {p['objects']} | {p['archive_bytes']:,} "
                    f"| {p['peak_rss_mb']:.0f} | {_gate_text(p['gates'])} |"
                )
            lines.append(
                f"| **total** | {full['total_s']:.1f} | | | | | | {full['gates_share']:.0%} "
                f"| {full['total_deleted']:,} | | | | |"
            )
            imports = [p["gates_import_s"] for p in full["purposes"]]
            lines += [
                "",
                f"- seeding: {full['seed_s']:.0f} s for {full['customers']:,} customers "
                f"({full['seed_customers_per_s']:.0f} customers/s, documents uploaded to moto included), "
                "not in the run times;",
                f"- not in the run times either: importing Airflow's task SDK and the gates (GX) in each "
                f"purpose's process, {min(imports):.1f}-{max(imports):.1f} s (an Airflow task process has the "
                "SDK loaded before its code runs; a gate task pays GX once per task);",
                f"- gates passed: {'all' if full['all_gates_passed'] else 'NOT all (see the gates column)'}.",
            ]
    profile = report.get("profile")
    if profile:
        lines += [
            "",
            f"Engine profile at {profile['rows']:,} rows ({profile['wall_s']:.1f} s under cProfile; "
            f"{profile['stats_file']}), time per step:",
            "",
        ]
        lines += [
            f"- {k}: {v['s']:.2f} s in {v['calls']} calls"
            for k, v in sorted(profile["phases"].items(), key=lambda kv: -kv[1]["s"])
        ]
    if report.get("partitions"):
        from bench import partitions as partitions_bench

        lines += partitions_bench.markdown(report["partitions"])
    lines += ["", f"Whole bench: {report['bench_s']:.0f} s (target < {TARGETS['bench_s']} s)."]
    return "\n".join(lines)


def profile_summary(stats_file: Path, top: int = 25) -> str:
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(stats_file), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    import psycopg
    from retention.planner import Planner
    from retention.policy import default_policy
    from retention.policy.periods import cutoff
    from retention.schema import apply_schema

    from bench import data, full_run, parse_time
    from bench import documents as documents_bench
    from bench import stack as bench_stack

    policy = default_policy()
    rule = policy.purpose("quotes").rules[0]
    engine_plugins = str(args.engine_plugins) if args.engine_plugins else None
    logical_date = LOGICAL_DATE.astimezone(dt.UTC)
    quotes_cutoff = cutoff(logical_date, rule.live, policy.tz)
    runs: list[dict] = []
    datasets: dict = {}
    report: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "rows": args.rows,
            "repeat": args.repeat,
            "batch_size": args.batch_size,
            "contestants": args.contestants,
            "logical_date": logical_date.isoformat(),
            "cutoff": quotes_cutoff.isoformat(),
            "seed": args.seed,
            "daily_rows": args.daily_rows,
        },
        "source": source_state(),
    }
    log("starting PostgreSQL and the S3 server")
    stack = bench_stack.start()
    try:
        apply_schema(stack.dsn)
        report["versions"] = versions(stack.dsn)
        with psycopg.connect(stack.dsn) as conn:  # the select the engine runs, for all three
            rule_sql = Planner.load(conn, policy, "quotes").select(rule)
        workdir = stack.root / "work"
        workdir.mkdir()
        # What every contestant's child process gets; each run adds its own buckets and run id.
        common_spec = {
            "dsn": stack.dsn,
            "s3_endpoint": stack.s3_endpoint,
            "logical_date": logical_date.isoformat(),
            "cutoff": quotes_cutoff.isoformat(),
            "rule_sql": rule_sql,
            "cutoff_param": f"cutoff__{rule.name}",
            "batch_size": args.batch_size,
            "workdir": str(workdir),
        }
        sizes = [(n, False) for n in args.rows] + ([(args.daily_rows, True)] if args.daily_rows else [])
        for n, daily in sizes:
            label = size_label(n, daily)
            log(f"building {n:,} expired quotes" + (", due since one day" if daily else ""))
            ds = data.build_template(
                stack.dsn, n, quotes_cutoff, logical_date, seed=args.seed, due_days=1 if daily else 364
            )
            count, digest = data.expected_ids_digest(stack.dsn)
            expected = {"rows": n, "total": ds.total, "ids_sha256": digest}
            if count != n:
                raise BenchError(f"template holds {count} due rows, expected {n}")
            datasets[label] = {
                "due": ds.due,
                "held": ds.held,
                "recent": ds.recent,
                "total": ds.total,
                "build_s": round(ds.build_s, 1),
                "due_ids_sha256": digest,
            }
            log(f"built in {ds.build_s:.0f} s ({ds.total:,} rows: {ds.held} held and {ds.recent:,} recent kept)")
            for repeat in range(args.repeat):
                order = (
                    args.contestants[repeat % len(args.contestants) :]
                    + args.contestants[: repeat % len(args.contestants)]
                )
                for contestant in order:
                    restore_s = data.restore(stack.dsn)
                    tag = f"{contestant}-{label}-{repeat}".replace("_", "-").lower()  # a valid bucket name
                    archive, documents = stack.fresh_buckets(tag)
                    spec = common_spec | {
                        "contestant": contestant,
                        "kind": "engine" if contestant in args.candidates else contestant,
                        "plugins": args.candidates.get(contestant, engine_plugins),
                        "archive_bucket": archive,
                        "documents_bucket": documents,
                        "run_id": f"bench__{tag}",
                    }
                    result = run_child(spec)
                    result["checks"] = verify(stack, spec, result, expected)
                    result.update(rows=n, size=label, repeat=repeat, restore_s=restore_s)
                    runs.append(result)
                    log(
                        f"{contestant:6} {n:>9,} rows  run {repeat + 1}/{args.repeat}: {result['wall_s']:6.2f} s, "
                        f"peak RSS {result['peak_rss_mb']:.0f} MiB, {result['archive_bytes']:,} bytes, "
                        f"checks {'ok' if result['checks']['ok'] else 'FAILED ' + json.dumps(result['checks'])}"
                    )
        if args.profile and "engine" in args.contestants:
            n = max(args.rows)
            if sizes[-1] != (n, False):
                data.build_template(stack.dsn, n, quotes_cutoff, logical_date, seed=args.seed)
            data.restore(stack.dsn)
            archive, documents = stack.fresh_buckets("profile")
            stats_file = args.out.resolve().parent / f"profile-engine-{n}.pstats"
            stats_file.parent.mkdir(parents=True, exist_ok=True)
            spec = common_spec | {
                "contestant": "engine",
                "archive_bucket": archive,
                "documents_bucket": documents,
                "run_id": "bench__profile",
                "plugins": engine_plugins,
                "profile": str(stats_file),
                "phases": True,
            }
            log(f"profiling the engine at {n:,} rows")
            result = run_child(spec)
            text = profile_summary(stats_file)
            stats_file.with_suffix(".txt").write_text(text)
            report["profile"] = {
                "rows": n,
                "wall_s": result["wall_s"],
                "phases": result["phases"],
                "stats_file": str(stats_file),
                "summary_file": str(stats_file.with_suffix(".txt")),
            }
        if not args.skip_parse:
            log("measuring DAG parse times")
            report["parse_time"] = parse_time.measure(stack.root / "airflow-home", repeat=args.repeat)
        if not args.skip_documents:
            report["documents"] = documents_bench.run(stack, args.documents_files, args.repeat, log, seed=args.seed)
        if not args.skip_page:
            from bench import page as page_bench

            report["page"] = page_bench.run(stack, args.page_customers, repeat=page_bench.REPEAT, log=log)
        if not args.skip_partitions:
            from bench import partitions as partitions_bench

            report["partitions"] = partitions_bench.run(stack, args.partition_rows, logical_date, args.batch_size, log)
        if not args.skip_full_run:
            report["full_run"] = full_run.run(
                stack, args.full_run_customers, logical_date, args.batch_size, run_child, log, engine_plugins
            )
    finally:
        log("stopping PostgreSQL and the S3 server")
        bench_stack.stop(stack)
    report["datasets"] = datasets
    report["runs"] = runs
    report["summary"] = summarize(runs, args.rows, args.contestants, args.daily_rows)
    report["bench_s"] = time.perf_counter() - started
    report["all_checks_ok"] = (
        all(r["checks"]["ok"] for r in runs)
        and report.get("documents", {}).get("all_checks_ok", True)
        and report.get("partitions", {}).get("all_checks_ok", True)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return report


def cli() -> None:
    try:
        report = main()
    except BenchError as exc:
        sys.exit(f"bench failed: {exc}")
    if not report["all_checks_ok"]:
        sys.exit("bench failed: a contestant did not archive and delete exactly the due rows (see the JSON report)")


if __name__ == "__main__":
    cli()
