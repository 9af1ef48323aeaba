"""A connection to the source database as the archive uses it (UTC, no JIT)."""

from __future__ import annotations

import psycopg


def connect(dsn: str, application_name: str, autocommit: bool = False) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=autocommit, application_name=application_name)
    conn.execute("SET TIME ZONE 'UTC'")
    # Batch statements are short index scans: JIT-compiling them costs ~8 ms each (~250 ms for a
    # rule's count) and saves nothing.
    conn.execute("SET jit = off")
    if not autocommit:
        conn.commit()
    return conn
