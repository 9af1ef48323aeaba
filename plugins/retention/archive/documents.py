"""Files named by a row's ``*_key`` columns follow their row: archived with it (copied beside
its object) or deleted with it. The source file is deleted after the row's commit, from the
pending ``retention.document_disposals``, unless a row still in the source names the same file
(then it stays, recorded 'kept_shared'), the tables naming files locked against writers meanwhile.
Shared by the engine and the subject erasures.
"""

from __future__ import annotations

import logging

from retention.archive.locks import DISPOSAL_LOCK_TIMEOUT
from retention.archive.run import RetentionError
from retention.archive.store import ArchiveStore
from retention.id_sets import id_array

log = logging.getLogger(__name__)


# From the catalog, which every role reads whole: information_schema lists only the columns the
# role has a privilege on, and a file a table the engine may not read still names was deleted.
# Tables, partitioned tables (not their partitions: the parent reads them), views, foreign tables.
_KEY_COLUMNS_SQL = """
SELECT c.relname, a.attname, has_column_privilege(c.oid, a.attnum, 'SELECT')
FROM pg_attribute AS a
JOIN pg_class AS c ON c.oid = a.attrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND (%s::text IS NULL OR c.relname = %s)
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
  AND a.attnum > 0 AND NOT a.attisdropped AND a.attname LIKE '%%\\_key'
ORDER BY c.relname, a.attnum
"""


class UnreadableFileKeysError(RetentionError):
    """A ``*_key`` column the role may not read: whether a row still names a file is unknown."""


def key_columns(conn, schema: str, table: str | None = None) -> list:
    """The ``*_key`` columns (file keys) of one table, or (table, column) of every table."""
    rows = conn.execute(_KEY_COLUMNS_SQL, (schema, table, table)).fetchall()
    return [r[1] for r in rows] if table else [(r[0], r[1]) for r in rows]


def keys_still_named(conn, schema: str, keys: list[str], excluding: dict[str, list[int]] | None = None) -> set[str]:
    """The file keys that some row of the source, in any ``*_key`` column, still names, the rows
    of ``excluding`` (table -> ids: those about to go, an erasure's preview) left out. A column
    the session may not read stops here (UnreadableFileKeysError): no file is deleted unknowing."""
    if not keys:
        return set()
    rows = conn.execute(_KEY_COLUMNS_SQL, (schema, None, None)).fetchall()
    unreadable = [f"{schema}.{table}.{column}" for table, column, readable in rows if not readable]
    if unreadable:
        raise UnreadableFileKeysError(
            f"this role may not read the file keys of {', '.join(unreadable)}: whether a row there still names a "
            "file to delete is unknown, so the files stay pending (retention.document_disposals) and nothing "
            "more is deleted; `make schema` grants the engine and the subject requests SELECT on every *_key "
            "column of the source schema"
        )
    columns = [(table, column) for table, column, _ in rows]
    if not columns:
        return set()
    excluding = excluding or {}
    named = " OR ".join(
        f'EXISTS (SELECT 1 FROM "{schema}"."{table}" AS t WHERE t."{column}" = k'
        + (" AND NOT t.id = ANY(%s::bigint[]))" if table in excluding else ")")
        for table, column in columns
    )
    params = [sorted(excluding[table]) for table, _ in columns if table in excluding]
    rows = conn.execute(f"SELECT k FROM unnest(%s::text[]) AS k WHERE {named}", (keys, *params)).fetchall()
    return {r[0] for r in rows}


# Files disposed of per transaction: the tables naming files stay locked against writers for
# one check and one S3 delete request (1,000 keys) at most.
DISPOSAL_CHUNK = 1000

_PENDING = "FROM retention.document_disposals WHERE purpose = %s AND disposed_at IS NULL AND bucket = %s"


def _any_pending(conn, store: ArchiveStore, purpose: str) -> bool:
    """Whether a file of the purpose is pending, read without a lock; no transaction left open
    (the disposal's own must be one, not a savepoint in the caller's)."""
    pending = conn.execute(f"SELECT EXISTS (SELECT 1 {_PENDING})", (purpose, store.documents_bucket)).fetchone()[0]
    if not conn.autocommit:
        conn.commit()
    return pending


class DisposalBusyError(RetentionError):
    """The tables naming files were being written for longer than a disposal waits: its files
    stay pending, none deleted unchecked."""


def dispose_documents(conn, store: ArchiveStore, schema: str, purpose: str, *, defer_when_busy: bool = True) -> int:
    """Delete the source files of committed rows of the purpose (idempotent: finishes a crashed
    run's too), except a file that a row still in the source names: it is kept (shared with a
    kept or held row) and recorded as such. Returns the number of files kept that way.

    Per chunk, in one transaction: the tables naming files are locked in SHARE mode first
    (``retention.lock_file_key_tables``), so that a row the application is inserting (or changing)
    to name one of the files is committed and seen by the check, or waits until the file's fate is
    recorded (found by a review: a row inserted before the check and committed after it named a
    file deleted under it). The pending rows are claimed (``FOR UPDATE SKIP LOCKED``) until they
    are marked, so that the units of a run disposing side by side each count a file once.

    Those are the application's busy tables: nothing is locked when no file is pending, and a lock
    not granted within DISPOSAL_LOCK_TIMEOUT (an application transaction writing one of them stays
    open; its next writes queue behind the request meanwhile) leaves the files pending for the next
    batch or run (``defer_when_busy``, the engine: its batch is committed, nothing to fail) or raises
    DisposalBusyError (a subject erasure, whose report would otherwise count files still stored).
    So does a deadlock PostgreSQL breaks by failing the disposal: the tables are taken one after
    the other, and an application transaction writing two of them in another order waits for the
    disposal while the disposal waits for it (found by a review: under a deadlock_timeout below
    DISPOSAL_LOCK_TIMEOUT the DeadlockDetected failed the run whose batch was committed)."""
    from psycopg.errors import DeadlockDetected, LockNotAvailable

    kept = 0
    while _any_pending(conn, store, purpose):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{DISPOSAL_LOCK_TIMEOUT}'")
                conn.execute("SELECT retention.lock_file_key_tables(%s)", (schema,))
                rows = conn.execute(
                    f"SELECT id, source_key {_PENDING} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (purpose, store.documents_bucket, DISPOSAL_CHUNK),
                ).fetchall()
                if not rows:
                    break
                keys = sorted({key for _, key in rows})
                shared = keys_still_named(conn, schema, keys)
                store.delete_documents([k for k in keys if k not in shared])
                conn.execute(
                    "UPDATE retention.document_disposals SET disposed_at = now(),"
                    " outcome = CASE WHEN source_key = ANY(%s::text[]) THEN 'kept_shared' ELSE 'deleted' END"
                    " WHERE id = ANY(%s::bigint[])",
                    (sorted(shared), id_array([r[0] for r in rows])),
                )
        except (LockNotAvailable, DeadlockDetected):  # only while the tables' locks are taken
            if not defer_when_busy:
                raise DisposalBusyError(
                    f"purpose {purpose!r}: the tables naming files were being written for longer than "
                    f"{DISPOSAL_LOCK_TIMEOUT} or in a deadlock with it (an application transaction still open), so the "
                    "deleted rows' files stay pending, none deleted: trigger again once it has ended"
                ) from None
            log.warning(
                "purpose %s: source files left pending: a table naming files was being written for longer than %s"
                " (or in a deadlock with the disposal);"
                " the next batch or run disposes of them",
                purpose,
                DISPOSAL_LOCK_TIMEOUT,
            )
            break
        if shared:
            log.info("%d source files kept: rows still in the source name them", len(shared))
        kept += sum(1 for _, key in rows if key in shared)
    return kept
