"""Files named by a row's ``*_key`` columns follow their row: archived with it (copied beside
its object) or deleted with it. The source file is deleted after the row's commit, from the
pending ``retention.document_disposals``, unless a row still in the source names the same file
(then it stays, recorded 'kept_shared'). Shared by the engine and the subject erasures.
"""

from __future__ import annotations

import logging

from retention.archive.store import ArchiveStore
from retention.id_sets import id_array

log = logging.getLogger(__name__)


def key_columns(conn, schema: str, table: str | None = None) -> list:
    """The ``*_key`` columns (file keys) of one table, or (table, column) of every table."""
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s"
        " AND (%s::text IS NULL OR table_name = %s) AND column_name LIKE '%%\\_key'"
        " ORDER BY table_name, ordinal_position",
        (schema, table, table),
    ).fetchall()
    return [r[1] for r in rows] if table else [tuple(r) for r in rows]


def keys_still_named(conn, schema: str, keys: list[str]) -> set[str]:
    """The file keys that some row of the source, in any ``*_key`` column, still names."""
    columns = key_columns(conn, schema)
    if not columns or not keys:
        return set()
    named = " OR ".join(
        f'EXISTS (SELECT 1 FROM "{schema}"."{table}" AS t WHERE t."{column}" = k)' for table, column in columns
    )
    rows = conn.execute(f"SELECT k FROM unnest(%s::text[]) AS k WHERE {named}", (keys,)).fetchall()
    return {r[0] for r in rows}


def dispose_documents(conn, store: ArchiveStore, schema: str, purpose: str) -> int:
    """Delete the source files of committed rows of the purpose (idempotent: finishes a crashed
    run's too), except a file that a row still in the source names: it is kept (shared with a
    kept or held row) and recorded as such. Returns the number of files kept that way.

    The pending rows are claimed (``FOR UPDATE SKIP LOCKED``) until they are marked, so that the
    units of a run disposing side by side each count a file once."""
    rows = conn.execute(
        "SELECT id, source_key FROM retention.document_disposals WHERE purpose = %s AND disposed_at IS NULL"
        " AND bucket = %s ORDER BY id FOR UPDATE SKIP LOCKED",
        (purpose, store.documents_bucket),
    ).fetchall()
    if not rows:
        conn.commit()
        return 0
    keys = sorted({key for _, key in rows})
    shared = keys_still_named(conn, schema, keys)
    store.delete_documents([k for k in keys if k not in shared])
    conn.execute(
        "UPDATE retention.document_disposals SET disposed_at = now(),"
        " outcome = CASE WHEN source_key = ANY(%s::text[]) THEN 'kept_shared' ELSE 'deleted' END"
        " WHERE id = ANY(%s::bigint[])",
        (sorted(shared), id_array([r[0] for r in rows])),
    )
    conn.commit()
    if shared:
        log.info("%d source files kept: rows still in the source name them", len(shared))
    return sum(1 for _, key in rows if key in shared)
