"""A connection to the source database as the archive uses it (UTC, no JIT, custom plans, READ
COMMITTED)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import psycopg

# Each statement its own snapshot, whatever the role or database defaults to: a hold committed
# while LOCK_HOLDS waited is seen by the next statement only so (a REPEATABLE READ transaction
# takes its snapshot at that SELECT, before the lock is granted).
READ_COMMITTED = "SET default_transaction_isolation = 'read committed'"
# A batch's transaction holds its locks, idle, while its objects upload and are read back, and
# the reader's transaction spans the run: a database-wide idle_in_transaction_session_timeout
# shorter than that would end them mid-batch (nothing lost, the run failed). Off for these
# sessions, as in PostgreSQL's defaults; a dead run's sessions end with its process.
NO_IDLE_TIMEOUT = "SET idle_in_transaction_session_timeout = 0"
# The same for a session idle outside a transaction (PostgreSQL 14+): the purpose's advisory lock
# lives on the run's control session, idle while the other connection's batch uploads; ended by a
# database-wide idle_session_timeout, the lock went while the upload went on, and a recovery
# could remove the object the batch then committed (found by a review).
NO_IDLE_SESSION_TIMEOUT = "SET idle_session_timeout = 0"


def connect(dsn: str, application_name: str, autocommit: bool = False) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=autocommit, application_name=application_name)
    conn.execute("SET TIME ZONE 'UTC'")
    # Batch statements are short index scans: JIT-compiling them costs ~8 ms each (~250 ms for a
    # rule's count) and saves nothing.
    conn.execute("SET jit = off")
    # psycopg prepares a statement run 5 times; PostgreSQL then may switch it to a generic plan,
    # where a batch's `id = ANY($ids)` is a parameter, not a constant: not hashed, searched
    # linearly for every row (a 50,000-row batch of a partitioned table: 6 s instead of 0.25 s).
    # Custom plans each time: the parse is still saved.
    conn.execute("SET plan_cache_mode = force_custom_plan")
    conn.execute(READ_COMMITTED)
    conn.execute(NO_IDLE_TIMEOUT)
    if conn.info.server_version >= 140000:
        conn.execute(NO_IDLE_SESSION_TIMEOUT)
    if not autocommit:
        conn.commit()
    return conn


def connect_reader(dsn: str):
    """The engine's Arrow reader (ADBC), READ COMMITTED like the others: its one transaction
    spans a run's batches, so at REPEATABLE READ every batch would read its rows as the first
    one found them (an edit made since archived stale, the row deleted as it is now)."""
    import adbc_driver_postgresql.dbapi as adbc

    reader = adbc.connect(dsn)
    try:
        with reader.cursor() as cur:
            cur.execute(READ_COMMITTED)
            cur.execute(NO_IDLE_TIMEOUT)
        reader.commit()
    except BaseException:
        reader.close()
        raise
    return reader


@contextmanager
def reader_opened_meanwhile(dsn: str) -> Iterator[Callable[[], object]]:
    """The Arrow reader, opened on a thread while the caller goes on; yields a function that
    waits for it. ADBC reads the server's type catalog when it connects (35-40 ms, a fifth of a
    daily run's fixed cost): a run takes its lock, recovers and plans meanwhile. Closed at exit,
    also when the caller never asked for it or failed before it did: at once if it is open, or
    by the opener thread when its connect ends (nothing waits for it then, so a SIGTERM that
    stops the run cannot skip the close)."""
    opener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retention-reader")
    opening = opener.submit(connect_reader, dsn)
    opener.shutdown(wait=False)  # its thread ends with the connect
    try:
        yield opening.result
    finally:
        opening.add_done_callback(_close_if_opened)


def _close_if_opened(opening: Future) -> None:
    if opening.exception() is None:
        opening.result().close()
