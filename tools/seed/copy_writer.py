"""Writing the generated rows into PostgreSQL: COPY, the id sequences moved past the explicit
ids, and the reset that empties schemas `app` and `retention`.
"""

from __future__ import annotations

from typing import Any


def copy_rows(cur: Any, table: str, columns: tuple[str, ...], rows: Any) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def reset_sequence(cur: Any, table: str) -> None:
    # Later inserts (tests, the application) must not collide with the explicit ids.
    cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 0) + 1, false) FROM {table}")


def truncate_all(cur: Any) -> None:
    """WARNING: empties every table of schemas `app` and `retention`."""
    tables = [
        f"{schema}.{name}"
        for schema, name in cur.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('app', 'retention') "
            "ORDER BY schemaname, tablename"
        ).fetchall()
    ]
    if tables:
        cur.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
