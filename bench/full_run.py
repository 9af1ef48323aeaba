"""A full daily run at scale: every purpose one after another, at one logical date, on a
database filled by the synthetic generator (tools/seed/, documents uploaded to the S3 server).
Each purpose runs in its own process, its DAG's steps in the DAG's order, each timed: plan, the
before quality gate on that plan, archive_and_delete of that plan, purge_archives, the after
quality gate (GX Core, Data Docs on, as in the DAGs); the engine and the gates directly, no
Airflow. Seeding is timed separately, and each purpose's
share of time spent in the gates is reported.
"""

from __future__ import annotations

import datetime as dt
import json
import time


def run(
    stack, customers: int, logical_date: dt.datetime, batch_size: int, run_child, log, plugins: str | None = None
) -> dict:
    try:
        from tools.seed.load import seed_database
    except ImportError as exc:
        return {"skipped": f"tools/seed is not available ({exc}); no full run"}
    from retention.policy import default_policy
    from retention.schema import apply_schema

    database = "insurer_full"
    stack.pg.ensure_database(database)
    dsn = stack.database_dsn(database)
    apply_schema(dsn)
    archive, documents = stack.fresh_buckets("full")
    reference = logical_date.astimezone(default_policy().tz).date()
    log(f"full run: seeding {customers:,} customers (reference date {reference}) ...")
    started = time.perf_counter()
    counts = seed_database(
        dsn,
        customers=customers,
        seed=42,
        reference_date=reference,
        s3_client=stack.s3_client(),
        documents_bucket=documents,
        reset=True,
    )
    seed_s = time.perf_counter() - started
    log(f"full run: seeded {sum(counts.values()):,} rows in {seed_s:.0f} s")
    with __import__("psycopg").connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    from tools.stripe_stub import StripeStub  # the payment processor (contracts' payment references)

    stripe = StripeStub().start()
    try:
        purposes = _run_purposes(
            stack, dsn, archive, documents, logical_date, batch_size, run_child, log, plugins, stripe
        )
    finally:
        stripe.stop()
    return {
        "customers": customers,
        "reference_date": reference.isoformat(),
        "logical_date": logical_date.isoformat(),
        "seed_s": seed_s,
        "seed_customers_per_s": customers / seed_s if seed_s else None,
        "seeded_rows": counts,
        "purposes": purposes,
        "total_s": sum(p["wall_s"] for p in purposes),
        "gates_s": sum(p["gates_s"] for p in purposes),
        "gates_share": sum(p["gates_s"] for p in purposes) / sum(p["wall_s"] for p in purposes) if purposes else None,
        "all_gates_passed": all(
            not p["gates"][gate].startswith(("FAILED", "not run"))
            for p in purposes
            for gate in ("before_gate", "after_gate")
        ),
        "total_deleted": sum(p["deleted"] for p in purposes),
    }


def _run_purposes(stack, dsn, archive, documents, logical_date, batch_size, run_child, log, plugins, stripe) -> list:
    from retention.policy import default_policy

    data_docs = stack.root / "full-run-data-docs"
    purposes = []
    for purpose in default_policy().purposes:
        spec = {
            "contestant": "purpose",
            "purpose": purpose,
            "dsn": dsn,
            "s3_endpoint": stack.s3_endpoint,
            "archive_bucket": archive,
            "documents_bucket": documents,
            "logical_date": logical_date.isoformat(),
            "run_id": f"bench_full__{purpose}",
            "batch_size": batch_size,
            "plugins": plugins,
            "env": {
                "RETENTION_DATA_DOCS_DIR": str(data_docs),
                "AIRFLOW_CONN_STRIPE_DEFAULT": json.dumps(stripe.connection()),
            },
            "raise_guard": True,
        }
        result = run_child(spec)
        steps = result["steps"]
        gates_s = steps.get("before_gate", 0.0) + steps.get("after_gate", 0.0)
        run_s = result["wall_s"] - steps.get("before_gate_refused", 0.0)  # the re-triggered run
        purposes.append(
            {
                "purpose": purpose,
                "wall_s": run_s,
                "process_wall_s": result["wall_s"],
                "steps_s": steps,
                "plan_s": result["plan_s"],
                "gates_s": gates_s,
                "gates_share": gates_s / run_s if run_s else None,
                "gates": result["gates"],
                "gates_import_s": result["gates_import_s"],
                "deleted": result["deleted"],
                "objects": result["objects"],
                "archive_bytes": result["archive_bytes"],
                "peak_rss_mb": result["peak_rss_mb"],
                "table_rows": result["table_rows"],
                "rules": {
                    r["rule"]: {k: r[k] for k in ("due", "deleted", "held", "waiting", "objects", "documents")}
                    for r in result["rules"]
                },
            }
        )
        log(
            f"full run: {purpose}: {result['deleted']:,} rows deleted in {run_s:.1f} s "
            f"({', '.join(f'{k} {v:.1f} s' for k, v in steps.items())}); "
            f"gates: before {result['gates']['before_gate'][:80]!r}, after {result['gates']['after_gate'][:80]!r}"
        )
        for name, status in result["gates"].items():
            if status.startswith("FAILED"):
                log(f"full run: {purpose}: {name} {status}")
    return purposes
