"""``VACUUM (ANALYZE)`` after a mass row delete: a table the run deleted many rows from keeps
them as dead tuples (bloat, stale planner statistics) until autovacuum comes by. When their
share of the table, ``n_dead_tup / (n_live_tup + n_dead_tup)`` in ``pg_stat_user_tables``, passes
the threshold (``RETENTION_VACUUM_DEAD_SHARE``, default 0.2, autovacuum's own default scale
factor; ``off`` disables it), the run vacuums the table itself, each leaf partition over the
threshold of a partitioned one, and reports dead tuples and size before and after.

``SKIP_LOCKED``: a table already being vacuumed (autovacuum, another unit of the run) is left to
that vacuum rather than waited for. Units of a partitioned table run side by side and retire
partitions whole: one dropped meanwhile is left out of the figures and of the vacuum.
"""

from __future__ import annotations

import logging
import os

import psycopg
from psycopg import sql

from retention.paths import SQL_DIR

log = logging.getLogger(__name__)

THRESHOLD_ENV = "RETENTION_VACUUM_DEAD_SHARE"
DEFAULT_DEAD_SHARE = 0.2


def dead_share_threshold(environ: dict | None = None) -> float | None:
    """The configured threshold (a share in 0..1), or None when vacuuming after a run is off."""
    value = (environ if environ is not None else os.environ).get(THRESHOLD_ENV, "").strip().lower()
    if not value:
        return DEFAULT_DEAD_SHARE
    if value in ("off", "none", "never"):
        return None
    share = float(value)
    if not 0 <= share <= 1:
        raise ValueError(f"{THRESHOLD_ENV} must be a share between 0 and 1 or 'off', got {value!r}")
    return share


def table_health(conn, schema: str, table: str) -> list[tuple[str, str, int, int, int]]:
    """(schema, relation, dead tuples, live tuples, bytes) of the table or of each of its leaf
    partitions."""
    query = (SQL_DIR / "catalog" / "table_health.sql").read_text(encoding="utf-8")
    return [tuple(row) for row in conn.execute(query, {"schema": schema, "table": table}).fetchall()]


def flush_statistics(*connections) -> None:
    """Make the deletes of these sessions visible in pg_stat_user_tables now: a backend reports
    its counts when idle, at most once a second, unless told to on its next report."""
    for conn in connections:
        conn.execute("SELECT pg_stat_force_next_flush()")
        if not conn.autocommit:
            conn.commit()


def vacuum_if_bloated(autocommit_conn, schema: str, table: str, threshold: float | None) -> dict[str, int]:
    """VACUUM (ANALYZE) the relations of ``table`` whose dead share passes ``threshold``; the
    figures before and after (totals over the table), or {} when nothing was vacuumed."""
    if threshold is None:
        return {}
    autocommit_conn.execute("SELECT pg_stat_clear_snapshot()")
    before = table_health(autocommit_conn, schema, table)
    bloated = [(nsp, rel) for nsp, rel, dead, live, _ in before if dead > 0 and dead / (dead + live) >= threshold]
    if not bloated:
        return {}
    for nsp, rel in bloated:
        try:
            autocommit_conn.execute(sql.SQL("VACUUM (ANALYZE, SKIP_LOCKED) {}").format(sql.Identifier(nsp, rel)))
        except psycopg.errors.UndefinedTable:
            pass  # a partition another unit of the run retired (dropped) meanwhile
    autocommit_conn.execute("SELECT pg_stat_clear_snapshot()")
    after = table_health(autocommit_conn, schema, table)
    report = {
        "relations": len(bloated),
        "dead_tuples_before": sum(r[2] for r in before),
        "dead_tuples_after": sum(r[2] for r in after),
        "bytes_before": sum(r[4] for r in before),
        "bytes_after": sum(r[4] for r in after),
    }
    log.info("%s.%s vacuumed after the run's deletes: %s", schema, table, report)
    return report
