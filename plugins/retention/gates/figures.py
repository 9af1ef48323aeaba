"""The figures the gates read and compare: from the source, the audit log and the task's report.

Before the run: the payment table's text columns (searched for a card code) and a snapshot of
each rule table (row count and largest id, at one instant). After it: the rows this run
deleted and the rows other retention runs deleted meanwhile (both from the audit log), which
``retention.gates.checks.row_count_checks`` turns into the after-suite, and what the archive
task said it deleted, shown beside. Read-only, on the gates' own connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter

from psycopg import sql

from retention.archive import db
from retention.archive.run import RunContext, deletions_audited

# Deletions by other retention runs (another purpose sharing a table, e.g. app.quotes) are
# looked up in the audit log from this long before the before-snapshot (a batch transaction
# stamps its audit rows with its start time).
CONCURRENT_DELETE_SLACK = dt.timedelta(hours=1)


@contextlib.contextmanager
def connect(dsn: str):
    """The gates' own queries (UTC, and no JIT: compiling a rule's count cost more than running it)."""
    with db.connect(dsn, "retention:checks", autocommit=True) as conn:
        yield conn


def text_columns(conn, schema: str, table: str) -> tuple[str, ...]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
        " AND data_type IN ('text', 'character varying', 'character') ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    return tuple(row[0] for row in rows)


def table_snapshot(conn, schema: str, tables: list[str], ctx: RunContext, purpose: str) -> dict:
    """Row count and largest id of each table, all at one instant (one repeatable-read snapshot),
    and the audit rows of the run's deletions already committed then (``audited_before``: a run
    cleared whole in the UI checks again after its first execution deleted some; the after gate
    leaves their rows out, the snapshot did not count them)."""
    rows, max_ids = {}, {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        checked_at = conn.execute("SELECT now()").fetchone()[0]
        for table in tables:
            query = sql.SQL("SELECT count(*), coalesce(max(id), 0) FROM {}").format(sql.Identifier(schema, table))
            rows[table], max_ids[table] = conn.execute(query).fetchone()
        audited = deletions_audited(conn, ctx.run_id, purpose)
    return {
        "table_rows": rows,
        "table_max_id": max_ids,
        "checked_at": checked_at.isoformat(),
        "audited_before": audited,
    }


# Rows an audit row deleted among those of the before-snapshot: its ids up to the table's largest
# id at the snapshot (a row written since, with an old clock, may be due and deleted too: it was
# not in the snapshot's count); an audit row without ids counts whole.
_SNAPSHOT_ROWS = (
    "sum(CASE WHEN a.record_ids IS NULL OR m.max_id IS NULL THEN a.record_count"
    " ELSE (SELECT count(*) FROM unnest(a.record_ids) AS i(id) WHERE i.id <= m.max_id) END)"
)


def _max_ids(table_max_id: dict | None) -> tuple[list[str], list[int]]:
    tables = sorted(table_max_id or {})
    return tables, [int(table_max_id[t]) for t in tables]


def deleted_by_table(
    conn, ctx: RunContext, purpose: str, table_max_id: dict | None = None, audited_before: list[int] = ()
) -> dict[str, int]:
    """Rows this run deleted, per table, from the audit log: it covers every attempt of a
    retried task (the task's XCom only covers the last one). With ``table_max_id`` (the
    before-snapshot's), only the rows the snapshot counted: ids up to its largest, and none of
    the audit rows ``audited_before`` it (their rows were gone already)."""
    tables, max_ids = _max_ids(table_max_id)
    rows = conn.execute(
        f"SELECT a.table_name, {_SNAPSHOT_ROWS} FROM retention.audit_log AS a"
        " LEFT JOIN unnest(%s::text[], %s::bigint[]) AS m(table_name, max_id) USING (table_name)"
        " WHERE a.run_id = %s AND a.purpose = %s AND a.action IN ('archived_and_deleted', 'deleted')"
        " AND a.id <> ALL(%s::bigint[]) GROUP BY 1",
        (tables, max_ids, ctx.run_id, purpose, list(audited_before)),
    ).fetchall()
    return {table: int(count) for table, count in rows}


def deleted_by_other_runs(
    conn, ctx: RunContext, tables: list[str], checked_at: str | None, table_max_id: dict | None = None
) -> dict[str, int]:
    """Rows other runs deleted from these tables since the before-snapshot (with ``table_max_id``,
    only the rows the snapshot counted). A run is its purpose and run id together: the quotes and
    contracts DAGs share the id 'scheduled__<date>' and both delete from app.quotes."""
    if checked_at is None:
        return {}
    known, max_ids = _max_ids(table_max_id)
    rows = conn.execute(
        f"SELECT a.table_name, {_SNAPSHOT_ROWS} FROM retention.audit_log AS a"
        " LEFT JOIN unnest(%s::text[], %s::bigint[]) AS m(table_name, max_id) USING (table_name)"
        " WHERE NOT (a.run_id = %s AND a.purpose = %s) AND a.table_name = ANY(%s)"
        " AND a.action IN ('archived_and_deleted', 'deleted') AND a.at >= %s::timestamptz - %s GROUP BY 1",
        (known, max_ids, ctx.run_id, ctx.purpose, tables, checked_at, CONCURRENT_DELETE_SLACK),
    ).fetchall()
    return {table: int(count) for table, count in rows}


def with_task_figures(results: list[dict], archived: dict) -> list[dict]:
    """Show beside each table's row count what the archive task reported it deleted."""
    reported: Counter = Counter()
    for rule in archived.get("rules", []):
        reported[rule["table"]] += rule.get("deleted", 0)
    for result in results:
        result["observed"]["deleted_reported_by_task"] = reported[result["table"].split(".", 1)[1]]
    return results
