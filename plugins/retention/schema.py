"""Apply the operational (`app`) and bookkeeping (`retention`) schemas: one idempotent command.

python -m retention.schema --dsn postgresql://user@host:port/db
"""

from __future__ import annotations

import argparse
import os

from retention.paths import SCHEMA_DIR


def schema_files() -> list:
    return sorted(SCHEMA_DIR.glob("*.sql"))


def apply_schema(dsn: str) -> list[str]:
    """Run every file of include/sql/schema in name order, in one transaction."""
    import psycopg

    applied = []
    with psycopg.connect(dsn) as conn:
        # Two concurrent appliers would race on CREATE ... IF NOT EXISTS.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('retention:schema'))")
        for path in schema_files():
            conn.execute(path.read_text(encoding="utf-8"))
            applied.append(path.name)
    return applied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("SOURCE_DSN"), help="libpq URI of the source database")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or SOURCE_DSN) is required")
    for name in apply_schema(args.dsn):
        print(f"applied {name}")


if __name__ == "__main__":
    main()
