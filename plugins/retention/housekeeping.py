"""The project's own records kept only as long as the policy's `own_records` say (issue 23 §1,
docs/housekeeping.md): what the daily housekeeping DAG does, task by task.

- ``verify_audit``: the audit chain recomputed and compared with the heads in the archive
  (retention.audit), the result recorded for the Retention page; a break fails the task (the
  failure e-mail of retention.alerts) and nothing is pruned after it;
- ``write_chain_heads``: each chain's head stored under Object Lock for the audit's period;
- ``prune_own_rows``: the retention schema's rows past their period, through the housekeeping
  role's SECURITY DEFINER functions (060_housekeeping.sql, prune_audit's checkpoint). A preview
  calls the same functions in a transaction it rolls back: its counts are exact;
- ``clean_airflow_metadata``: Airflow's own ``airflow.utils.db_cleanup.run_cleanup`` (what
  ``airflow db clean`` runs) per record, ``skip_archive=True`` so no archive table stays behind.
  A task may not use Airflow's ORM session in Airflow 3: it connects through the connection
  ``retention_airflow_db``;
- ``delete_old_files``: task log files, GX validation results and Data Docs pages past their
  period (by modification time).

Preview by default (the policy's ``housekeeping.mode``), like the purpose DAGs. Counts, tables,
dates and paths of folders only in what it returns and logs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


# Each of Airflow's own records and the tables db clean removes for it (with their dependents:
# a run's task instances, their history and XCom go with the run).
AIRFLOW_TABLES = {
    "airflow_dag_runs": ["dag_run"],
    "airflow_task_instances": ["task_instance", "task_reschedule"],
    "airflow_xcom": ["xcom"],
    "airflow_log": ["log"],
    "airflow_import_errors": ["import_error"],
}


def cut(policy, record: str, now: dt.datetime) -> dt.datetime:
    """Records of ``record`` before this instant are past their period: midnight (the policy's
    time zone) of the latest day whose records are over on ``now``'s date."""
    from retention.policy.periods import local_date, local_midnight

    return local_midnight(policy.own_period(record).latest_start(local_date(now, policy.tz)), policy.tz)


def _entry(policy, record: str, now: dt.datetime, **counts) -> dict:
    return {"period": str(policy.own_period(record)), "cut": cut(policy, record, now).isoformat(), **counts}


# ------------------------------------------------------------------ the audit


def verify_audit(conn, store, now: dt.datetime | None = None) -> dict:
    """Verify both chains against the stored heads and record the result; raise AuditBroken
    naming the first problem when a chain is broken."""
    from retention import audit

    verification = audit.verify(conn, store, now=now)
    with conn.transaction():
        audit.record_verification(conn, verification)
    result = {"intact": verification.intact, "message": verification.message.splitlines()[0]}
    if not verification.intact:
        raise AuditBroken(verification.message)
    return result


class AuditBroken(RuntimeError):
    """verify found a row changed, removed or inserted out of place."""


# ------------------------------------------------------------------ the retention schema's rows


def prune_own_rows(conn, policy, now: dt.datetime, *, enforce: bool) -> dict:
    """The retention schema's own rows past their period, through the housekeeping functions;
    in preview the same calls, rolled back."""
    results: dict[str, dict] = {}
    with conn.transaction(force_rollback=not enforce):
        for record, chain in (("audit_log", "audit_log"), ("subject_request_evidence", "subject_requests")):
            row = conn.execute(
                "SELECT seq, links_removed, rows_removed FROM retention.prune_audit(%s, %s)",
                (cut(policy, record, now), chain),
            ).fetchone()
            removed = row[2] if row and row[0] is not None else 0
            results[record] = _entry(policy, record, now, removed=removed, checkpoint_seq=row[0] if row else None)
        # The ids first: they are forgotten while the manifest still says their object was purged.
        record = "audit_ids_without_archive"
        (forgotten,) = conn.execute(
            "SELECT retention.forget_audit_ids_past_archive(%s)", (cut(policy, record, now),)
        ).fetchone()
        results["audit_record_ids"] = _entry(policy, record, now, forgotten=forgotten)
        for record in ("manifest_purged", "document_disposals"):
            (removed,) = conn.execute(
                "SELECT retention.prune_own_records(%s, %s)", (record, cut(policy, record, now))
            ).fetchone()
            results[record] = _entry(policy, record, now, removed=removed)
    return results


# ------------------------------------------------------------------ Airflow's metadata


def _old_rows(session, table: str, before: dt.datetime) -> int:
    from airflow.utils.db_cleanup import config_dict
    from sqlalchemy import text

    column = config_dict[table].recency_column.name
    return session.execute(
        text(f'SELECT count(*) FROM "{table}" WHERE "{column}" < :before'), {"before": before}
    ).scalar()


def _row_counts(session, tables) -> dict[str, int]:
    from sqlalchemy import text

    return {t: session.execute(text(f'SELECT count(*) FROM "{t}"')).scalar() for t in tables}


def clean_airflow_metadata(metadata_url: str, policy, now: dt.datetime, *, enforce: bool) -> dict:
    """Airflow's records past their period, by Airflow's own db clean. Returns, per record, the
    rows older than its cut per table (preview) or the rows removed (enforce)."""
    from airflow.utils.db_cleanup import _effective_table_names, run_cleanup
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(metadata_url)
    results: dict[str, dict] = {}
    try:
        with Session(engine) as session:
            for record, roots in AIRFLOW_TABLES.items():
                before = cut(policy, record, now)
                tables, _ = _effective_table_names(table_names=roots)
                if not enforce:
                    results[record] = _entry(
                        policy, record, now, older={t: _old_rows(session, t, before) for t in tables}
                    )
                    session.rollback()
                    continue
                counted = _row_counts(session, tables)
                session.commit()
                run_cleanup(
                    clean_before_timestamp=before,
                    table_names=roots,
                    dry_run=False,
                    confirm=False,
                    skip_archive=True,
                    session=session,
                    error_on_cleanup_failure=True,
                )
                session.commit()
                after = _row_counts(session, tables)
                session.commit()
                results[record] = _entry(policy, record, now, removed={t: counted[t] - after[t] for t in tables})
    finally:
        engine.dispose()
    return results


def metadata_url() -> str:
    """Airflow's metadata database, from the connection retention_airflow_db (a task may not
    use Airflow's own session in Airflow 3)."""
    from retention.connections import AIRFLOW_DB_CONN_ID, conninfo, sqlalchemy_url

    return sqlalchemy_url(conninfo(AIRFLOW_DB_CONN_ID))


# ------------------------------------------------------------------ files


def delete_old_files(root: Path | None, before: dt.datetime, *, enforce: bool) -> dict:
    """Files under ``root`` last modified before ``before``: deleted (enforce) or counted, empty
    folders left by them removed. A missing root counts nothing."""
    files = size = 0
    if root is None or not root.is_dir():
        return {"files": 0, "bytes": 0}
    limit = before.timestamp()
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            path = Path(folder, name)
            stat = path.lstat()
            if stat.st_mtime < limit:
                files += 1
                size += stat.st_size
                if enforce:
                    path.unlink()
        if enforce and Path(folder) != root and not any(Path(folder).iterdir()):
            Path(folder).rmdir()
    return {"files": files, "bytes": size}


def file_roots() -> dict[str, Path | None]:
    """Where each file record lives: Airflow's local task logs and the gates' Data Docs."""
    from airflow.configuration import conf

    from retention.paths import data_docs_dir

    docs = data_docs_dir()
    return {
        "task_logs": Path(conf.get("logging", "base_log_folder")),
        "gx_validation_results": docs / "validations" if docs else None,
        "data_docs": docs / "site" / "validations" if docs else None,
    }


def delete_files(policy, now: dt.datetime, roots: dict[str, Path | None], *, enforce: bool) -> dict:
    return {
        record: _entry(policy, record, now, **delete_old_files(root, cut(policy, record, now), enforce=enforce))
        for record, root in roots.items()
    }


# ------------------------------------------------------------------ the run's evidence


def record_run(conn, run_id: str, *, enforce: bool, results: dict) -> None:
    """What the run did (or would do), for the Retention page (retention.housekeeping_runs)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO retention.housekeeping_runs (run_id, mode, results) VALUES (%s, %s, %s)",
            (run_id, "enforce" if enforce else "preview", json.dumps(results, sort_keys=True)),
        )


def last_run(conn) -> dict | None:
    row = conn.execute(
        "SELECT run_id, mode, ran_at, results FROM retention.housekeeping_runs ORDER BY ran_at DESC, id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else {"run_id": row[0], "mode": row[1], "ran_at": row[2], "results": row[3]}
