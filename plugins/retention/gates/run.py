"""The two gates of a purpose's run, in the order they check: before anything is deleted, after the run.

**Before**, on the tables a purpose's rules read: the declared checks (``retention.gates.checks``:
columns and types, unique keys, clocks set and not in the future, known values, no card
security code) validated with GX, then the mass-deletion guard on a snapshot of the tables.
**After**: nothing due is left, the row counts of the before-snapshot add up (rows still there
+ rows deleted by this run), every archive object of the run read back matches its manifest
row, the probative versions are locked, the manifest agrees with the audit log, and no archive
object is kept past its purge date. A failed gate raises ``QualityGateError`` naming the
expectations, tables and counts; its report (counts only) is the task's XCom.
"""

from __future__ import annotations

import psycopg

from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.gates.archive_readback import archive_object_results, probative_versions_locked
from retention.gates.checks import (
    PAYMENT_TABLE,
    before_checks,
    latest_plausible_clock,
    purpose_of,
    row_count_checks,
    rule_tables,
)
from retention.gates.data_docs import update_data_docs
from retention.gates.deletion_guard import awaiting_approval, deletion_share_results
from retention.gates.figures import (
    connect,
    deleted_by_other_runs,
    deleted_by_table,
    table_snapshot,
    text_columns,
    with_task_figures,
)
from retention.gates.gx import CheckpointRuns, gx_sources, validate_tables
from retention.gates.results import gate_report, gate_result, log_summary, raise_on_failures, short_message
from retention.gates.sql_checks import due_left_results, kept_beyond_purge, manifest_matches_audit
from retention.planner import Plan, Planner
from retention.policy import Policy, Purpose


def run_before_gates(
    policy: Policy,
    purpose: Purpose | str,
    dsn: str,
    ctx: RunContext,
    max_delete_fraction: float,
    plan: Plan | dict | None = None,
    ask_approval: bool = False,
) -> dict:
    """Validate the source before anything is deleted; raise QualityGateError on a failure.

    The mass-deletion guard judges ``plan``, the run's plan (the ``plan`` task's), which is what
    the engine then executes; without one (a direct call) the gate plans itself. With
    ``ask_approval`` (a DAG run: its approve_deletion step asks a person, retention.approval_tasks)
    a share over the guard is reported as needing approval instead of failing the gate."""
    schema = policy.source_schema
    purpose = purpose_of(policy, purpose)
    if isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    tables = rule_tables(purpose)
    with connect(dsn) as conn:
        payment_columns = text_columns(conn, schema, PAYMENT_TABLE) if PAYMENT_TABLE in tables else ()
    checks = before_checks(policy, purpose, latest_plausible_clock(ctx.logical_date, policy.tz), payment_columns)
    runs = CheckpointRuns()
    with gx_sources(dsn) as (context, source):
        results = validate_tables(context, source, f"{purpose.name}.before", checks, runs)
        update_data_docs(context, runs.run_results)
    snapshot = {"table_rows": {}, "table_max_id": {}, "checked_at": None, "audited_before": []}
    try:
        with connect(dsn) as conn:
            snapshot = table_snapshot(conn, schema, tables, ctx, purpose.name)
        guard = deletion_share_results(policy, purpose, dsn, ctx, snapshot["table_rows"], max_delete_fraction, plan)
        results += awaiting_approval(guard) if ask_approval else guard
    except psycopg.Error as exc:
        results.append(gate_result("mass_deletion_guard", f"{schema}.*", False, error=short_message(exc)))
    report = gate_report("before", results) | snapshot | {"max_delete_fraction": max_delete_fraction}
    log_summary(f"before-gate of {purpose.name} at {ctx.logical_date.isoformat()}", results)
    raise_on_failures("before", purpose.name, ctx, results, "nothing was deleted")
    return report


def run_after_gates(
    policy: Policy, purpose: Purpose | str, dsn: str, store: ArchiveStore, ctx: RunContext, before: dict, archived: dict
) -> dict:
    """Validate the source and the archive after the run; raise QualityGateError on a failure."""
    schema = policy.source_schema
    purpose_obj = purpose_of(policy, purpose)
    purpose = purpose_obj.name
    dry_run = ctx.dry_run or bool(archived.get("dry_run"))
    runs = CheckpointRuns()  # the gate's Checkpoint runs, for one Data Docs update at its end
    with connect(dsn) as conn, gx_sources(dsn) as (context, source):
        results = due_left_results(Planner.load(conn, policy, purpose_obj), conn, ctx, dry_run, archived)
        # Counted among the rows of the before-snapshot only (ids up to its largest), as the check counts.
        max_ids = before.get("table_max_id")
        deleted = deleted_by_table(conn, ctx, purpose, max_ids, before.get("audited_before", []))
        elsewhere = deleted_by_other_runs(conn, ctx, list(before["table_rows"]), before.get("checked_at"), max_ids)
        counts = row_count_checks(schema, before["table_rows"], before.get("table_max_id", {}), deleted, elsewhere)
        results += with_task_figures(validate_tables(context, source, f"{purpose}.after", counts, runs), archived)
        read_back, locks = archive_object_results(conn, context, store, ctx, purpose, runs)
        results += read_back
        if any(store.storage.tiers[r.tier].object_lock for r in purpose_obj.rules if r.archived):
            results.append(probative_versions_locked(conn, store, ctx, purpose, locks))
        results.append(manifest_matches_audit(conn, ctx, purpose))
        results.append(kept_beyond_purge(conn, policy, store, ctx, purpose, dry_run))
        update_data_docs(context, runs.run_results)
    report = gate_report("after", results)
    log_summary(f"after-gate of {purpose} at {ctx.logical_date.isoformat()}", results)
    raise_on_failures(
        "after",
        purpose,
        ctx,
        results,
        f"this run's changes are committed: investigate run {ctx.run_id!r} in "
        "retention.audit_log and retention.archive_manifest before the next run",
    )
    return report
