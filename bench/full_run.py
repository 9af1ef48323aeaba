"""A full daily run at scale: the seven purposes one after another, at one logical date, on a
database filled by the synthetic generator (tools/seed.py). Each purpose runs in its own process
(plan, then archive_and_delete: the engine directly, no Airflow), timed, with rows deleted.
"""

from __future__ import annotations

import datetime as dt
import time


def run(
    stack, customers: int, logical_date: dt.datetime, batch_size: int, run_child, log, plugins: str | None = None
) -> dict:
    try:
        from tools.seed import seed_database
    except ImportError as exc:
        return {"skipped": f"tools/seed.py is not available ({exc}); no full run"}
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
        }
        result = run_child(spec)
        purposes.append(
            {
                "purpose": purpose,
                "wall_s": result["wall_s"],
                "plan_s": result["plan_s"],
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
        log(f"full run: {purpose}: {result['deleted']:,} rows deleted in {result['wall_s']:.1f} s")
    return {
        "customers": customers,
        "reference_date": reference.isoformat(),
        "logical_date": logical_date.isoformat(),
        "seed_s": seed_s,
        "seeded_rows": counts,
        "purposes": purposes,
        "total_s": sum(p["wall_s"] for p in purposes),
        "total_deleted": sum(p["deleted"] for p in purposes),
    }
