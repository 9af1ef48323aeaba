"""seed_database: generate the data set, upload its documents, and load it into the database in
one transaction (schema `app` and retention.legal_holds).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from retention.policy import default_policy

from tools.seed.copy_writer import copy_rows, reset_sequence, truncate_all
from tools.seed.documents import document_keys, upload_documents
from tools.seed.generator import Generator
from tools.seed.report import generated_counts, table_counts
from tools.seed.tables import DELETE_ORDER, ROW_TYPES, TABLES


def seed_database(
    dsn: str,
    *,
    customers: int,
    seed: int = 42,
    reference_date: dt.date,
    s3_client: Any = None,
    documents_bucket: str | None = None,
    reset: bool = False,
) -> dict[str, int]:
    """Fill schema `app` (and retention.legal_holds) with synthetic data; return row counts.

    Without ``reset``, a database whose app.customers has rows is left alone. With ``reset``,
    every table of schemas `app` and `retention` is emptied first (WARNING: all of it).
    Documents (when ``s3_client`` and ``documents_bucket`` are given) are uploaded before the
    rows are loaded, and the load is one transaction: a failure leaves the database as it
    was (at worst with objects nobody references, overwritten by the next seed).
    """
    import psycopg

    if customers < 0:
        raise ValueError("customers must be >= 0")
    if (s3_client is None) != (documents_bucket is None):
        raise ValueError("give both s3_client and documents_bucket, or neither")
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        # Two seeders at once (make demo twice) would interleave their COPYs.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('retention:seed'))")
        if not reset and cur.execute("SELECT EXISTS (SELECT 1 FROM app.customers)").fetchone()[0]:
            print("the database is already seeded (app.customers has rows): nothing done; use --reset to reseed")
            return table_counts(cur)

        generator = Generator(seed=seed, reference_date=reference_date, policy=default_policy())
        generator.generate(customers)
        if s3_client is not None:
            upload_documents(s3_client, documents_bucket, document_keys(generator))
        # Table locks from here to the commit only: not while generating or uploading.
        if reset:
            truncate_all(cur)
        for table in TABLES:
            row_type = ROW_TYPES[DELETE_ORDER[table]]
            copy_rows(cur, f"app.{table}", row_type.COLUMNS, (row.values() for row in generator.tables[table]))
            reset_sequence(cur, f"app.{table}")
        holds = generator.legal_holds()
        copy_rows(
            cur, "retention.legal_holds", ("id", "table_name", "record_id", "reason", "placed_at", "released_at"), holds
        )
        reset_sequence(cur, "retention.legal_holds")
        counts = generated_counts(generator.tables, holds)
    # Fresh statistics: the retention queries run right after a seed.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE " + ", ".join(f"app.{table}" for table in TABLES) + ", retention.legal_holds")
    return counts
