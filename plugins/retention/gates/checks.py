"""Data-quality gates before and after a retention run (Great Expectations Core, in SQL).

**Before** anything is deleted, for the tables a purpose's rules read: the columns exist with
their types, primary keys are unique, clocks are set where a state needs them and never lie in
the future, enumerated columns hold known values, no card security code is stored in the
source schema, and the mass-deletion guard holds. **After** the run: nothing due is left, every
row of the before-snapshot is either still there or deleted by this run, every archive object
of the run matches its manifest row (bytes re-read from S3), the manifest agrees with the audit
log, and no archive object is kept past its purge date.

The checks are data: the declarations below plus what the policy says (rule tables, clocks),
turned into one GX ``ExpectationSuite`` per purpose, phase and table
(``contracts.before.app.contracts``) and validated on a whole-table batch of a GX Postgres data
source, with row conditions, so every metric is an SQL aggregate computed by PostgreSQL. pandas
only sees the ``id`` column of one archive object read back from S3.

Each gate is run the GX way: a ``ValidationDefinition`` per table (its suite on its batch),
all run by one ``Checkpoint`` per gate whose action updates the Data Docs site (a local folder,
``retention.paths.data_docs_dir()``, linked from the Retention page). The archive objects, one
dataframe each, are validated one object at a time (a ValidationDefinition and Checkpoint each), and the Data Docs
updated once for all of them. Results are stored counts-only (``partial_unexpected_count`` 0:
no unexpected value is fetched, stored or rendered).

Reports hold counts, types, column names and object keys, never row contents. This module and
GX (a 5 s import) are imported inside the tasks only, never when a DAG file is parsed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from retention.archive.run import RetentionError, RunContext
from retention.archive.store import ArchiveStore
from retention.paths import data_docs_dir
from retention.planner import Plan, Planner
from retention.policy import Policy, Purpose
from retention.policy.coverage import covered_records_sql, object_covered
from retention.policy.periods import local_date, local_midnight

log = logging.getLogger(__name__)


class QualityGateError(RetentionError):
    """A data-quality gate failed; the message names the expectations, tables and counts."""


# ---------------------------------------------------------------------------------------
# The checks, as data. Suites are generated from these declarations and the policy's rules.
# ---------------------------------------------------------------------------------------

BIGINT, TIMESTAMPTZ, TEXT, BOOLEAN = "BIGINT", "TIMESTAMP WITH TIME ZONE", "TEXT", "BOOLEAN"

# Columns the rule SQL reads on its own table besides `id` and the clock (include/sql/).
COLUMNS_READ: dict[str, dict[str, str]] = {
    "quotes": {"contract_id": BIGINT},
    "claims": {"contract_id": BIGINT},
    "reimbursements": {"claim_id": BIGINT},
    "payment_methods": {"contract_id": BIGINT},
    "prospects": {"customer_id": BIGINT},
    "pets": {"customer_id": BIGINT},
    "call_recordings": {"reason": TEXT},
    "aml_records": {"contract_id": BIGINT},
    "fraud_alerts": {"contract_id": BIGINT, "fraud_case_id": BIGINT, "status": TEXT},
    "job_applications": {"hired": BOOLEAN},
    "marketing_messages": {"marketing_contact_id": BIGINT},
    "marketing_contacts": {"channel": TEXT},
    "information_requests": {"status": TEXT},
    "identity_documents": {"status": TEXT},
}

# A clock a row must have once it reaches a state: a NULL there would never expire.
# (table, clock column, state column, states)
CLOCKS_REQUIRED_BY_STATE: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("contracts", "ended_at", "status", ("ended",)),
    ("fraud_alerts", "qualified_at", "status", ("not_relevant", "relevant")),
    ("fraud_cases", "closed_at", "status", ("closed",)),
    ("information_requests", "handled_at", "status", ("handled",)),
    ("identity_documents", "checked_at", "status", ("verified", "rejected")),
)

# Enumerated columns: a value outside these would slip through the rules' filters.
KNOWN_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("call_recordings", "reason"): ("contracting", "quality", "claims"),
    ("fraud_alerts", "status"): ("pending", "not_relevant", "relevant"),
    ("contracts", "status"): ("active", "ended"),
    ("fraud_cases", "status"): ("open", "closed"),
    ("marketing_contacts", "channel"): ("email", "phone"),
    ("information_requests", "status"): ("open", "handled"),
    ("identity_documents", "status"): ("pending", "verified", "rejected"),
}

# The policy promises a card security code (CVV2 / "cryptogramme visuel") is never stored.
CARD_CODE_COLUMN_NAME = (
    r"(?i)(^|_)(cvv2?|cvc2?|cvn2?|csc|cryptogram\w*|security_?code|card_?code|card_?verification\w*)(_|$)"
)
CARD_CODE_VALUE = r"^[0-9]{3,4}$"
PAYMENT_TABLE = "payment_methods"
CARD_ROWS = ("kind", ("card",))
LAST_DIGITS_COLUMNS = ("card_last4", "iban_last4")  # 4 digits on purpose: what the processor shows

# Deletions by other retention runs (another purpose sharing a table, e.g. app.quotes) are
# looked up in the audit log from this long before the before-snapshot (a batch transaction
# stamps its audit rows with its start time).
CONCURRENT_DELETE_SLACK = dt.timedelta(hours=1)

# Counts only: GX never fetches the unexpected values themselves (they may be personal data).
RESULT_COUNTS = {"result_format": "BASIC", "partial_unexpected_count": 0}
RESULT_IDENTIFIERS = {"result_format": "BASIC", "partial_unexpected_count": 20}
MAX_LISTED = 5


@dataclass(frozen=True)
class Where:
    """A row condition: only the rows where ``column op value`` are checked."""

    column: str
    op: str  # "in" or "<="
    value: object

    def __str__(self) -> str:
        if self.op == "in":
            return f"{self.column} in ({', '.join(map(repr, self.value))})"
        return f"{self.column} {self.op} {self.value}"


@dataclass(frozen=True)
class Check:
    """One GX expectation on one table, as data; built into a GX Expectation when validated."""

    table: str  # schema-qualified, e.g. "app.contracts"
    expectation: str  # GX Core expectation type, e.g. "expect_column_values_to_be_unique"
    column: str | None = None
    params: dict = field(default_factory=dict)
    where: Where | None = None
    reported: dict = field(default_factory=dict)  # figures shown with the result (counts only)
    values_are_identifiers: bool = False  # unexpected values are column names: safe to report


def rule_tables(purpose: Purpose) -> list[str]:
    return list(dict.fromkeys(rule.table for rule in purpose.rules))


def purpose_clocks(purpose: Purpose) -> list[tuple[str, str]]:
    return list(dict.fromkeys(tuple(rule.clock.split(".")) for rule in purpose.rules))


def purpose_tables(purpose: Purpose) -> list[str]:
    """The rules' tables and their clocks' tables (a parent table such as contracts)."""
    return list(dict.fromkeys(rule_tables(purpose) + [table for table, _ in purpose_clocks(purpose)]))


def latest_plausible_clock(logical_date: dt.datetime, tz, now: dt.datetime | None = None) -> dt.datetime:
    """No clock may lie after this instant: the end of the logical date's day in Paris (a daily
    run sees the rows written during its day before it starts), or now when that is later (a
    backfill sees the rows written since its date)."""
    end_of_day = local_midnight(local_date(logical_date, tz) + dt.timedelta(days=1), tz)
    return max(end_of_day, now or dt.datetime.now(dt.UTC))


def before_checks(
    policy: Policy, purpose: Purpose | str, clock_limit: dt.datetime, payment_text_columns: tuple[str, ...] = ()
) -> list[Check]:
    """The before-suite of a purpose, generated from its rules and the declarations above."""
    purpose = _purpose(policy, purpose)
    schema = policy.source_schema
    tables = purpose_tables(purpose)
    return (
        _column_checks(schema, tables, purpose_clocks(purpose))
        + _key_checks(schema, tables)
        + _clock_checks(schema, tables, purpose_clocks(purpose), clock_limit)
        + _known_value_checks(schema, tables)
        + _card_code_checks(schema, payment_text_columns)
    )


def _column_checks(schema: str, tables: list[str], clocks: list[tuple[str, str]]) -> list[Check]:
    typed = {table: {"id": BIGINT} | COLUMNS_READ.get(table, {}) for table in tables}
    for table, column in clocks:
        typed[table][column] = TIMESTAMPTZ
    checks = []
    for table, columns in typed.items():
        for column, type_ in columns.items():
            checks += [
                Check(f"{schema}.{table}", "expect_column_to_exist", column),
                Check(f"{schema}.{table}", "expect_column_values_to_be_of_type", column, {"type_": type_}),
            ]
    return checks


def _key_checks(schema: str, tables: list[str]) -> list[Check]:
    return [Check(f"{schema}.{table}", "expect_column_values_to_be_unique", "id") for table in tables]


def _clock_checks(schema: str, tables: list[str], clocks: list[tuple[str, str]], limit: dt.datetime) -> list[Check]:
    no_future = [
        Check(
            f"{schema}.{table}",
            "expect_column_values_to_be_between",
            column,
            {"max_value": limit},
            reported={"not_after": limit.isoformat()},
        )
        for table, column in clocks
    ]
    required = [
        Check(f"{schema}.{table}", "expect_column_values_to_not_be_null", column, where=Where(state, "in", states))
        for table, column, state, states in CLOCKS_REQUIRED_BY_STATE
        if table in tables
    ]
    return no_future + required


def _known_value_checks(schema: str, tables: list[str]) -> list[Check]:
    return [
        Check(f"{schema}.{table}", "expect_column_values_to_be_in_set", column, {"value_set": list(values)})
        for (table, column), values in KNOWN_VALUES.items()
        if table in tables
    ]


def _card_code_checks(schema: str, payment_text_columns: tuple[str, ...]) -> list[Check]:
    """No column of the source schema named like a card code; no card row holding a 3-4 digit
    code in a payment-method column other than the documented last digits."""
    by_name = Check(
        "information_schema.columns",
        "expect_column_values_to_not_match_regex",
        "column_name",
        {"regex": CARD_CODE_COLUMN_NAME},
        where=Where("table_schema", "in", (schema,)),
        values_are_identifiers=True,
    )
    by_value = [
        Check(
            f"{schema}.{PAYMENT_TABLE}",
            "expect_column_values_to_not_match_regex",
            column,
            {"regex": CARD_CODE_VALUE},
            where=Where(CARD_ROWS[0], "in", CARD_ROWS[1]),
        )
        for column in payment_text_columns
        if column not in LAST_DIGITS_COLUMNS
    ]
    return [by_name, *by_value]


def row_count_checks(
    schema: str, table_rows: dict, table_max_id: dict, deleted_by_run: dict, deleted_elsewhere: dict
) -> list[Check]:
    """After-suite on the source: rows before = rows after + rows deleted, per table, counted
    on the rows that existed at the before-snapshot (id <= its largest id) so that rows
    inserted meanwhile don't count. When other retention runs deleted from the same table in
    the meantime, their deletions widen the lower bound."""
    checks = []
    for table, before in table_rows.items():
        expected = before - deleted_by_run.get(table, 0)
        elsewhere = deleted_elsewhere.get(table, 0)
        reported = {"rows_before": before, "deleted_by_run": deleted_by_run.get(table, 0)}
        where = Where("id", "<=", table_max_id.get(table, 0))
        if elsewhere:
            checks.append(
                Check(
                    f"{schema}.{table}",
                    "expect_table_row_count_to_be_between",
                    params={"min_value": max(expected - elsewhere, 0), "max_value": expected},
                    where=where,
                    reported=reported | {"deleted_by_other_runs": elsewhere},
                )
            )
        else:
            checks.append(
                Check(
                    f"{schema}.{table}",
                    "expect_table_row_count_to_equal",
                    params={"value": expected},
                    where=where,
                    reported=reported,
                )
            )
    return checks


def archive_object_checks(table: str, row_count: int, record_ids: list[int]) -> list[Check]:
    """After-suite on one archive object read back (its id column, in memory): the manifest's rows."""
    return [
        Check(table, "expect_table_row_count_to_equal", params={"value": row_count}),
        Check(table, "expect_column_values_to_not_be_null", "id"),
        Check(table, "expect_column_values_to_be_unique", "id"),
        Check(table, "expect_column_values_to_be_in_set", "id", {"value_set": record_ids}),
    ]


# ---------------------------------------------------------------------------------------
# The gates
# ---------------------------------------------------------------------------------------


def _purpose(policy: Policy, purpose: Purpose | str) -> Purpose:
    return policy.purpose(purpose) if isinstance(purpose, str) else purpose


def run_before_gates(
    policy: Policy,
    purpose: Purpose | str,
    dsn: str,
    ctx: RunContext,
    max_delete_fraction: float,
    plan: Plan | dict | None = None,
) -> dict:
    """Validate the source before anything is deleted; raise QualityGateError on a failure.

    The mass-deletion guard judges ``plan``, the run's plan (the ``plan`` task's), which is what
    the engine then executes; without one (a direct call) the gate plans itself."""
    schema = policy.source_schema
    purpose = _purpose(policy, purpose)
    if isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    tables = rule_tables(purpose)
    with _connect(dsn) as conn:
        payment_columns = _text_columns(conn, schema, PAYMENT_TABLE) if PAYMENT_TABLE in tables else ()
    checks = before_checks(policy, purpose, latest_plausible_clock(ctx.logical_date, policy.tz), payment_columns)
    with _gx_sources(dsn) as (context, source):
        results = _validate_tables(context, source, f"{purpose.name}.before", checks)
    snapshot = {"table_rows": {}, "table_max_id": {}, "checked_at": None}
    try:
        with _connect(dsn) as conn:
            snapshot = _table_snapshot(conn, schema, tables)
        results += _deletion_share_results(policy, purpose, dsn, ctx, snapshot["table_rows"], max_delete_fraction, plan)
    except psycopg.Error as exc:
        results.append(_result("mass_deletion_guard", f"{schema}.*", False, error=_short(exc)))
    report = _report("before", results) | snapshot | {"max_delete_fraction": max_delete_fraction}
    _log_summary(f"before-gate of {purpose.name} at {ctx.logical_date.isoformat()}", results)
    _raise_on_failures("before", purpose.name, ctx, results, "nothing was deleted")
    return report


def run_after_gates(
    policy: Policy, purpose: Purpose | str, dsn: str, store: ArchiveStore, ctx: RunContext, before: dict, archived: dict
) -> dict:
    """Validate the source and the archive after the run; raise QualityGateError on a failure."""
    schema = policy.source_schema
    purpose_obj = _purpose(policy, purpose)
    purpose = purpose_obj.name
    dry_run = ctx.dry_run or bool(archived.get("dry_run"))
    with _connect(dsn) as conn, _gx_sources(dsn) as (context, source):
        results = _due_left_results(Planner.load(conn, policy, purpose_obj), conn, ctx, dry_run, archived)
        deleted = _deleted_by_table(conn, ctx, purpose)
        elsewhere = _deleted_by_other_runs(conn, ctx, list(before["table_rows"]), before.get("checked_at"))
        counts = row_count_checks(schema, before["table_rows"], before.get("table_max_id", {}), deleted, elsewhere)
        results += _with_task_figures(_validate_tables(context, source, f"{purpose}.after", counts), archived)
        results += _archive_object_results(conn, context, store, ctx, purpose)
        if any(store.storage.tiers[r.tier].object_lock for r in purpose_obj.rules if r.archived):
            results.append(_probative_versions_locked(conn, store, ctx, purpose))
        results.append(_manifest_matches_audit(conn, ctx, purpose))
        results.append(_kept_beyond_purge(conn, policy, store, ctx, purpose, dry_run))
    report = _report("after", results)
    _log_summary(f"after-gate of {purpose} at {ctx.logical_date.isoformat()}", results)
    _raise_on_failures(
        "after",
        purpose,
        ctx,
        results,
        f"this run's changes are committed: investigate run {ctx.run_id!r} in "
        "retention.audit_log and retention.archive_manifest before the next run",
    )
    return report


# ---------------------------------------------------------------------------------------
# Before-gate helpers
# ---------------------------------------------------------------------------------------


def _text_columns(conn, schema: str, table: str) -> tuple[str, ...]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
        " AND data_type IN ('text', 'character varying', 'character') ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    return tuple(row[0] for row in rows)


def _table_snapshot(conn, schema: str, tables: list[str]) -> dict:
    """Row count and largest id of each table, all at one instant (one repeatable-read snapshot)."""
    rows, max_ids = {}, {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        checked_at = conn.execute("SELECT now()").fetchone()[0]
        for table in tables:
            query = sql.SQL("SELECT count(*), coalesce(max(id), 0) FROM {}").format(sql.Identifier(schema, table))
            rows[table], max_ids[table] = conn.execute(query).fetchone()
    return {"table_rows": rows, "table_max_id": max_ids, "checked_at": checked_at.isoformat()}


def _deletion_share_results(
    policy: Policy,
    purpose: Purpose,
    dsn: str,
    ctx: RunContext,
    table_rows: dict,
    max_fraction: float,
    plan: Plan | None = None,
) -> list[dict]:
    """The mass-deletion guard, from the run's plan (due - held - waiting per rule, summed per
    table): the same SQL that selects the rows to delete, projected over the run (a parent whose
    children go earlier in the run counts), and the most the engine will delete. Without a plan
    the planner is run here. On a dry run it is reported, not enforced (nothing will be deleted)."""
    deletable: Counter = Counter()
    if plan is None:
        with _connect(dsn) as conn:
            outcomes = Planner.load(conn, policy, purpose).plan(conn, ctx.logical_date)
    else:
        if plan.purpose != purpose.name or plan.logical_date != ctx.logical_date:
            raise RetentionError(f"the plan is for {plan.purpose!r} at {plan.logical_date}, not this run's")
        outcomes = plan.rules
    for outcome in outcomes:
        deletable[outcome.table] += outcome.deletable
    results = []
    for table, count in deletable.items():
        rows = table_rows[table]
        share = count / rows if rows else float(count > 0)
        qualified = f"{policy.source_schema}.{table}"
        result = _result(
            "mass_deletion_guard",
            qualified,
            share <= max_fraction,
            would_delete=count,
            table_rows=rows,
            fraction=round(share, 4),
            max_delete_fraction=max_fraction,
        )
        if share > max_fraction:
            result["message"] = (
                f"this run would delete {_percent(share)} of {qualified} ({count:,} of {rows:,} rows) > "
                f"max_delete_fraction={_percent(max_fraction)}; raise the max_delete_fraction param for this "
                "run if intended"
            )
        if ctx.dry_run:
            result["enforced"] = False
        results.append(result)
    return results


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}".removesuffix(".0") + "%"


# ---------------------------------------------------------------------------------------
# After-gate helpers
# ---------------------------------------------------------------------------------------


def _due_left_results(
    planner: Planner, conn, ctx: RunContext, dry_run: bool, archived: dict | None = None
) -> list[dict]:
    """Each rule's SQL at the logical date: no due row that is neither held nor waiting remains,
    except the rows the archive step found beyond the approved plan and left for the next run
    (reported with the result)."""
    beyond: Counter = Counter()
    for r in (archived or {}).get("rules", []):
        beyond[r["rule"]] += r.get("beyond_plan", 0)
    results = []
    for rule in planner.purpose.rules:
        table = f"{planner.schema}.{rule.table}"
        if dry_run:
            results.append(_result("no_due_record_remains", table, None, rule=rule.name, skipped="dry run"))
            continue
        remaining = planner.remaining(conn, rule, ctx.logical_date)
        left = {"left_beyond_plan": beyond[rule.name]} if beyond[rule.name] else {}
        results.append(
            _result(
                "no_due_record_remains",
                table,
                remaining <= beyond[rule.name],
                rule=rule.name,
                remaining=remaining,
                **left,
            )
        )
    return results


def _deleted_by_table(conn, ctx: RunContext, purpose: str) -> dict[str, int]:
    """Rows this run deleted, per table, from the audit log: it covers every attempt of a
    retried task (the task's XCom only covers the last one)."""
    rows = conn.execute(
        "SELECT table_name, sum(record_count) FROM retention.audit_log WHERE run_id = %s AND purpose = %s"
        " AND action IN ('archived_and_deleted', 'deleted') GROUP BY 1",
        (ctx.run_id, purpose),
    ).fetchall()
    return {table: int(count) for table, count in rows}


def _deleted_by_other_runs(conn, ctx: RunContext, tables: list[str], checked_at: str | None) -> dict[str, int]:
    """Rows other runs deleted from these tables since the before-snapshot. A run is its purpose
    and run id together: the quotes and contracts DAGs share the id 'scheduled__<date>' and both
    delete from app.quotes."""
    if checked_at is None:
        return {}
    rows = conn.execute(
        "SELECT table_name, sum(record_count) FROM retention.audit_log"
        " WHERE NOT (run_id = %s AND purpose = %s) AND table_name = ANY(%s)"
        " AND action IN ('archived_and_deleted', 'deleted') AND at >= %s::timestamptz - %s GROUP BY 1",
        (ctx.run_id, ctx.purpose, tables, checked_at, CONCURRENT_DELETE_SLACK),
    ).fetchall()
    return {table: int(count) for table, count in rows}


def _with_task_figures(results: list[dict], archived: dict) -> list[dict]:
    """Show beside each table's row count what the archive task reported it deleted."""
    reported: Counter = Counter()
    for rule in archived.get("rules", []):
        reported[rule["table"]] += rule.get("deleted", 0)
    for result in results:
        result["observed"]["deleted_reported_by_task"] = reported[result["table"].split(".", 1)[1]]
    return results


@dataclass
class _ArchiveTable:
    """What the archive objects of one table, written by this run, showed when read back."""

    objects: int = 0
    rows: int = 0
    mismatched: list[str] = field(default_factory=list)  # "<key>: <what differs>", one per object
    id_results: list[list[dict]] = field(default_factory=list)  # one GX result list per object


def _archive_object_results(conn, context, store: ArchiveStore, ctx: RunContext, purpose: str) -> list[dict]:
    """Every object this run committed: re-read from S3, size / SHA-256 / Parquet rows against
    the manifest, then its ids validated with GX (in memory, one object at a time)."""
    manifest = conn.execute(
        "SELECT table_name, bucket, object_key, version_id, sha256, byte_size, row_count, record_ids"
        " FROM retention.archive_manifest WHERE run_id = %s AND purpose = %s AND state = 'committed' ORDER BY id",
        (ctx.run_id, purpose),
    ).fetchall()
    frames = _frame_batch_definition(context) if manifest else None
    by_table: dict[str, _ArchiveTable] = defaultdict(_ArchiveTable)
    runs = _FrameRuns()  # every object's GX validation result, for one Data Docs update
    for table, bucket, key, version, sha256, size, row_count, record_ids in manifest:
        seen = by_table[table]
        seen.objects += 1
        seen.rows += row_count
        ids, problems = _read_back(store.client, bucket, key, version, sha256, size, row_count)
        if problems:
            seen.mismatched.append(f"{key}: {'; '.join(problems)}")
        if ids is not None:
            checks = archive_object_checks(f"archive:{table}", row_count, record_ids)
            seen.id_results.append(
                _validate_frame(context, frames, f"{purpose}.after.archive.{table}", checks, ids, runs)
            )
    _update_data_docs(context, runs)
    results = []
    for table, seen in by_table.items():
        results.append(
            _result(
                "archive_objects_match_manifest",
                f"archive:{table}",
                not seen.mismatched,
                objects=seen.objects,
                rows=seen.rows,
                mismatched_objects=len(seen.mismatched),
                mismatches=seen.mismatched[:MAX_LISTED],
            )
        )
        results += _merge_object_results(seen.id_results, seen.objects)
    return results


def _read_back(
    client, bucket: str, key: str, version: str | None, sha256: str | None, size: int | None, row_count: int
):
    """(the object's id column as a DataFrame, or None if unreadable; what differs from the manifest).
    The manifest's version is read, not whatever the key points to now."""
    import pyarrow.parquet as pq

    try:
        body = client.get_object(Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))["Body"].read()
        current = client.head_object(Bucket=bucket, Key=key).get("VersionId") if version else None
    except Exception as exc:  # botocore raises several unrelated classes
        return None, [f"cannot be read back ({type(exc).__name__})"]
    problems = []
    if version and current != version:
        problems.append("a newer version was written over the key after the archive (the manifest's version is intact)")
    if len(body) != size:
        problems.append(f"{len(body)} bytes, manifest says {size}")
    if hashlib.sha256(body).hexdigest() != sha256:
        problems.append("SHA-256 of the stored bytes differs from the manifest")
    try:
        parquet = pq.ParquetFile(io.BytesIO(body))
        ids = parquet.read(columns=["id"]).to_pandas()
    except Exception as exc:  # pyarrow raises several classes for a damaged file
        return None, problems + [f"not a readable Parquet file with an id column ({type(exc).__name__})"]
    if parquet.metadata.num_rows != row_count:
        problems.append(f"{parquet.metadata.num_rows} Parquet rows, manifest says {row_count}")
    return ids, problems


def _merge_object_results(per_object: list[list[dict]], objects: int) -> list[dict]:
    """One line per expectation for all the objects of a table: failed objects and counts summed."""
    merged = []
    for same_check in zip(*per_object, strict=True):
        first = same_check[0]
        failed = sum(result["success"] is False for result in same_check)
        observed = {"objects": objects, "objects_validated": len(same_check), "failed_objects": failed}
        for name in ("unexpected_count", "error"):
            values = [r["observed"][name] for r in same_check if name in r["observed"]]
            if values:
                observed[name] = sum(values) if name == "unexpected_count" else values[0]
        merged.append(
            _result(first["expectation"], first["table"], failed == 0, column=first.get("column"), **observed)
        )
    return merged


def _probative_versions_locked(conn, store: ArchiveStore, ctx: RunContext, purpose: str) -> dict:
    """Each object of the run in a locked tier: the manifest's version (the one read back) is
    under COMPLIANCE retention until at least its purge date."""
    locked_prefixes = [t.prefix + "/" for t in store.storage.tiers.values() if t.object_lock]
    if not locked_prefixes or not store.lock_supported():
        return _result("probative_version_locked", "archive:probative", None, skipped="no Object Lock tier")
    rows = conn.execute(
        "SELECT object_key, version_id, purge_after FROM retention.archive_manifest"
        " WHERE run_id = %s AND purpose = %s AND state = 'committed' AND purge_after > now()"
        " AND split_part(object_key, '/', 1) || '/' = ANY(%s) ORDER BY id",
        (ctx.run_id, purpose, locked_prefixes),
    ).fetchall()
    unlocked = []
    for key, version, purge_after in rows:
        try:
            mode, until = store.locked_until(key, version)
        except Exception as exc:  # botocore raises several unrelated classes
            unlocked.append(f"{key}: cannot be read ({type(exc).__name__})")
            continue
        if mode != "COMPLIANCE" or until is None or until < purge_after:
            unlocked.append(f"{key}@{version}: lock {mode or 'none'} until {until}, purge date {purge_after:%Y-%m-%d}")
    return _result(
        "probative_version_locked",
        "archive:probative",
        not unlocked,
        objects=len(rows),
        unlocked_objects=len(unlocked),
        unlocked=unlocked[:MAX_LISTED],
    )


def _manifest_matches_audit(conn, ctx: RunContext, purpose: str) -> dict:
    manifest_rows, audit_rows = conn.execute(
        "SELECT (SELECT coalesce(sum(row_count), 0) FROM retention.archive_manifest"
        "        WHERE run_id = %(run)s AND purpose = %(purpose)s AND state = 'committed'),"
        "       (SELECT coalesce(sum(record_count), 0) FROM retention.audit_log"
        "        WHERE run_id = %(run)s AND purpose = %(purpose)s AND action = 'archived_and_deleted')",
        {"run": ctx.run_id, "purpose": purpose},
    ).fetchone()
    return _result(
        "manifest_total_equals_audit",
        "retention.archive_manifest",
        manifest_rows == audit_rows,
        manifest_rows=int(manifest_rows),
        audit_archived_and_deleted=int(audit_rows),
    )


def _kept_beyond_purge(conn, policy: Policy, store: ArchiveStore, ctx: RunContext, purpose: str, dry_run: bool) -> dict:
    """No committed object of the purpose past its purge date, nor an unlocked one holding a row
    past its own end date (an object written per month before: the purge rewrites it without
    those rows), unless a legal hold keeps it (the purge's own test, retention.policy.coverage; those are
    reported). Skipped on a dry run."""
    if dry_run:
        return _result("no_archive_kept_beyond_purge_date", "retention.archive_manifest", None, skipped="dry run")
    unlocked = [name for name, tier in store.storage.tiers.items() if not tier.object_lock]
    overdue, held, keys, unknown = conn.execute(
        f"WITH covered AS ({covered_records_sql(policy)})"
        " SELECT count(*) FILTER (WHERE NOT held), count(*) FILTER (WHERE held),"
        "       (array_agg(object_key ORDER BY purge_after) FILTER (WHERE NOT held))[1:%(n)s],"
        "       count(*) FILTER (WHERE NOT held AND owners_unknown)"
        f" FROM (SELECT m.object_key, m.purge_after, {object_covered('m')} AS held,"
        "              m.owner_ids IS NULL AS owners_unknown"
        "       FROM retention.archive_manifest AS m"
        "       WHERE m.purpose = %(purpose)s AND m.state = 'committed' AND (m.purge_after <= %(date)s"
        "         OR (m.tier = ANY(%(unlocked)s) AND m.earliest_purge_after IS DISTINCT FROM m.purge_after"
        "             AND coalesce(m.earliest_purge_after, date_trunc('month', m.purge_after AT TIME ZONE %(tz)s)"
        "                 AT TIME ZONE %(tz)s) <= %(date)s))) AS x",
        {"purpose": purpose, "date": ctx.logical_date, "n": MAX_LISTED, "unlocked": unlocked, "tz": policy.timezone},
    ).fetchone()
    return _result(
        "no_archive_kept_beyond_purge_date",
        "retention.archive_manifest",
        overdue == 0,
        overdue_objects=overdue,
        kept_under_legal_hold=held,
        overdue_keys=keys or [],
        **({"owners_not_recorded": unknown, "fix": "python -m retention.archive.backfill_owners"} if unknown else {}),
    )


# ---------------------------------------------------------------------------------------
# Great Expectations: an ephemeral context, suites built from Checks, results as counts
# ---------------------------------------------------------------------------------------


DATA_DOCS_SITE = "retention"
# The Data Docs index lists at most this many validation results (newest first): its rebuild
# after each gate reads them, so it must not grow with the history.
DATA_DOCS_INDEX_LIMIT = 300


def _gx_project_config(docs: Path | None):
    """In-memory stores (suites, validation definitions, checkpoints: rebuilt from the
    declarations above at each gate), except the validation results and the Data Docs site,
    kept on disk under `docs` when Data Docs are on."""
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults())
    if docs is None:
        return config
    config.stores["validation_results_store"] = {
        "class_name": "ValidationResultsStore",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs / "validations")},
    }
    config.data_docs_sites = {
        DATA_DOCS_SITE: {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs / "site")},
            "site_index_builder": {
                "class_name": "DefaultSiteIndexBuilder",
                "validation_results_limit": DATA_DOCS_INDEX_LIMIT,
            },
        }
    }
    return config


@contextlib.contextmanager
def _gx_sources(dsn: str):
    """An ephemeral GX context (suites and checkpoints in memory; validation results and Data
    Docs on disk when on) with the source database as a Postgres data source; its SQLAlchemy
    engine is closed on exit."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ("great_expectations", "great_expectations.data_context.types.base"):  # GX sets the 2nd to INFO
        logging.getLogger(name).setLevel(logging.WARNING)  # their INFO lines are GX internals
    context = gx.get_context(project_config=_gx_project_config(data_docs_dir()), mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    from retention.connections import sqlalchemy_url

    source = context.data_sources.add_postgres("source", connection_string=sqlalchemy_url(dsn))
    try:
        yield context, source
    finally:
        source.get_execution_engine().close()


def _docs_actions(context) -> list:
    """The Checkpoints' actions: update the Data Docs site (when Data Docs are on)."""
    return (
        [_data_docs_action_class()(name="update_data_docs", site_names=[DATA_DOCS_SITE])] if _docs_on(context) else []
    )


def _docs_on(context) -> bool:
    return DATA_DOCS_SITE in (context.get_config().data_docs_sites or {})


_ACTION_CLASS = None


def _data_docs_action_class():
    """GX's UpdateDataDocsAction, building the site once for all the results of a Checkpoint run
    (GX's rebuilds it once per result), under a file lock (two gates may finish at once), and
    never failing a gate: the gate's verdict does not depend on its documentation."""
    global _ACTION_CLASS
    if _ACTION_CLASS is not None:
        return _ACTION_CLASS
    from typing import Literal

    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    class RetentionDataDocsAction(UpdateDataDocsAction):
        type: Literal["retention_update_data_docs"] = "retention_update_data_docs"

        def run(self, checkpoint_result, action_context=None) -> dict:
            identifiers = []
            for identifier, result in checkpoint_result.run_results.items():
                identifiers += [identifier, ExpectationSuiteIdentifier(name=result.suite_name)]
            if not identifiers:
                return {}
            try:
                with _docs_lock():
                    self._build_data_docs(site_names=self.site_names, resource_identifiers=identifiers)
            except Exception as exc:  # GX raises many classes; the gate's outcome stands
                log.warning("Data Docs not updated: %s", _short(exc))
            return {}

    RetentionDataDocsAction.update_forward_refs(Literal=Literal)  # this module's annotations are strings
    _ACTION_CLASS = RetentionDataDocsAction
    return _ACTION_CLASS


@contextlib.contextmanager
def _docs_lock():
    import fcntl

    docs = data_docs_dir()
    docs.mkdir(parents=True, exist_ok=True)
    with open(docs / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _update_data_docs(context, runs: _FrameRuns) -> None:
    """One Data Docs update for validation results gathered over several Checkpoint runs."""
    if not runs.run_results or not _docs_on(context):
        return
    from great_expectations.checkpoint.checkpoint import CheckpointResult

    action = _docs_actions(context)[0]
    action._data_context = context
    first = next(iter(runs.run_results))
    action.run(CheckpointResult(run_id=first.run_id, run_results=runs.run_results, checkpoint_config=runs.checkpoint))


def _frame_batch_definition(context):
    frames = context.data_sources.add_pandas("archive_objects")
    return frames.add_dataframe_asset("archive_object").add_batch_definition_whole_dataframe("whole_object")


def _checkpoint(context, name: str, definitions: list, result_format: dict, actions: list):
    import great_expectations as gx

    return context.checkpoints.add(
        gx.Checkpoint(name=name, validation_definitions=definitions, actions=actions, result_format=result_format)
    )


def _definition(context, batch_definition, suite_name: str, checks: list[Check]):
    import great_expectations as gx

    suite = context.suites.add(
        gx.ExpectationSuite(name=suite_name, expectations=[_expectation(c, i) for i, c in enumerate(checks)])
    )
    return context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch_definition, suite=suite)
    )


def _result_format(checks: list[Check]) -> dict:
    return RESULT_IDENTIFIERS if any(c.values_are_identifiers for c in checks) else RESULT_COUNTS


def _validate_tables(context, source, suite_prefix: str, checks: list[Check]) -> list[dict]:
    """One ValidationDefinition per table (a whole-table batch: metrics are computed in SQL), run
    by the gate's Checkpoint (one per result format: column names may be listed, values never)."""
    by_table: dict[str, list[Check]] = defaultdict(list)
    for check in checks:
        by_table[check.table].append(check)
    results: dict[str, list[dict]] = {}
    by_format: dict[int, list] = defaultdict(list)  # by partial_unexpected_count
    for table, table_checks in by_table.items():
        schema, name = table.split(".", 1)
        try:
            asset = source.add_table_asset(table, table_name=name, schema_name=schema)
            batch_definition = asset.add_batch_definition_whole_table("whole_table")
            batch_definition.get_batch()  # a missing table or a connection error: reported per check
        except Exception as exc:  # GX wraps a missing table or a connection error in several classes
            results[table] = [_result_of(check, None, error=_short(exc)) for check in table_checks]
            continue
        format_ = _result_format(table_checks)
        by_format[format_["partial_unexpected_count"]].append(
            (table, _definition(context, batch_definition, f"{suite_prefix}.{table}", table_checks), format_)
        )
    for count, definitions in by_format.items():
        name = suite_prefix if count == RESULT_COUNTS["partial_unexpected_count"] else f"{suite_prefix}.identifiers"
        checkpoint = _checkpoint(
            context, name, [d for _, d, _ in definitions], definitions[0][2], _docs_actions(context)
        )
        by_suite = {r.suite_name: r for r in checkpoint.run().run_results.values()}
        for table, _, _ in definitions:
            results[table] = _results_by_check(by_table[table], by_suite.get(f"{suite_prefix}.{table}"))
    return [r for table in by_table for r in results[table]]


@dataclass
class _FrameRuns:
    """The archive objects' Checkpoint runs of one gate, for one Data Docs update at the end."""

    count: int = 0
    run_results: dict = field(default_factory=dict)
    checkpoint: object = None


def _validate_frame(
    context, batch_definition, suite_name: str, checks: list[Check], frame, runs: _FrameRuns
) -> list[dict]:
    """One archive object (its id column): its suite (the object's own row count and ids) as a
    ValidationDefinition on the dataframe batch, run by a Checkpoint; the Data Docs are updated
    once for every object afterwards (`runs` gathers the results)."""
    runs.count += 1
    name = f"{suite_name}.object{runs.count}"
    definition = _definition(context, batch_definition, name, checks)
    runs.checkpoint = _checkpoint(context, name, [definition], _result_format(checks), [])
    run_results = runs.checkpoint.run(batch_parameters={"dataframe": frame}).run_results
    runs.run_results.update(run_results)
    return _results_by_check(checks, next(iter(run_results.values()), None))


def _results_by_check(checks: list[Check], validation) -> list[dict]:
    by_index = {r.expectation_config.meta["check"]: r for r in (validation.results if validation else [])}
    return [_result_of(check, by_index.get(i)) for i, check in enumerate(checks)]


def _expectation(check: Check, index: int):
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    expectation_class = getattr(gxe, "".join(word.capitalize() for word in check.expectation.split("_")))
    kwargs = dict(check.params, meta={"check": index})
    if check.column:
        kwargs["column"] = check.column
    if check.where:
        column = Column(check.where.column)
        kwargs["row_condition"] = (
            column.is_in(check.where.value) if check.where.op == "in" else column <= check.where.value
        )
    return expectation_class(**kwargs)


def _result_of(check: Check, validation_result, error: str | None = None) -> dict:
    """A GX result reduced to counts (and column names where they are what failed)."""
    raw = (validation_result.result if validation_result else None) or {}
    observed = {key: raw[key] for key in ("element_count", "unexpected_count", "missing_count") if key in raw}
    value = raw.get("observed_value")
    if isinstance(value, (int, float, str)):  # a count or a type name (GX returns a str subclass)
        observed["observed_value"] = value if isinstance(value, (int, float)) else str(value)
    if check.values_are_identifiers and raw.get("partial_unexpected_list"):
        observed["unexpected_values"] = [str(value) for value in raw["partial_unexpected_list"]]
    error = error or _exception_message(validation_result)
    if error:
        observed["error"] = error
    success = bool(validation_result.success) if validation_result and not error else False
    return _result(
        check.expectation,
        check.table,
        success,
        column=check.column,
        where=str(check.where) if check.where else None,
        **observed,
        **check.reported,
    )


def _exception_message(validation_result) -> str | None:
    info = getattr(validation_result, "exception_info", None) or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = [e.get("exception_message") for e in entries if isinstance(e, dict) and e.get("raised_exception")]
    return _short(messages[0]) if messages else None


def _short(error: object, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------
# Results, summary, failure
# ---------------------------------------------------------------------------------------


def _result(
    expectation: str,
    table: str,
    success: bool | None,
    *,
    column: str | None = None,
    where: str | None = None,
    rule: str | None = None,
    **observed,
) -> dict:
    """One line of a gate's report; success None = skipped."""
    result: dict = {"expectation": expectation, "table": table, "success": success}
    if column:
        result["column"] = column
    if rule:
        result["rule"] = rule
    if where:
        result["where"] = where
    result["observed"] = observed
    return result


def _report(phase: str, results: list[dict]) -> dict:
    checked = [r for r in results if r["success"] is not None]
    passed = sum(r["success"] is True for r in checked)
    return {
        phase: f"{passed}/{len(checked)} expectations passed",
        "skipped": len(results) - len(checked),
        "results": results,
        "summary": _summary_table(results),
    }


def _label(result: dict) -> str:
    label = result["expectation"] + (f"({result['column']})" if result.get("column") else "")
    label += f"[{result['rule']}]" if result.get("rule") else ""
    return label + (f" where {result['where']}" if result.get("where") else "")


def _status(result: dict) -> str:
    if result["success"] is None:
        return "skipped"
    if result["success"]:
        return "ok"
    return "FAILED" if result.get("enforced", True) else "reported"


def _observed_text(result: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in result["observed"].items())


def _summary_table(results: list[dict]) -> str:
    rows = [("expectation", "table", "success", "observed")]
    rows += [(_label(r), r["table"], _status(r), _observed_text(r)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}" for row in rows)


def _log_summary(title: str, results: list[dict]) -> None:
    log.info("%s\n%s", title, _summary_table(results))


def _raise_on_failures(phase: str, purpose: str, ctx: RunContext, results: list[dict], consequence: str) -> None:
    failures = [r for r in results if r["success"] is False and r.get("enforced", True)]
    if not failures:
        return
    lines = [f"  - {_label(r)} on {r['table']}: {r.get('message') or _observed_text(r)}" for r in failures]
    raise QualityGateError(
        f"{phase}-gate of purpose {purpose!r} failed at logical date {ctx.logical_date.isoformat()}: "
        f"{len(failures)} of {sum(r['success'] is not None for r in results)} expectations failed; "
        f"{consequence}.\n" + "\n".join(lines)
    )


@contextlib.contextmanager
def _connect(dsn: str):
    with psycopg.connect(dsn, autocommit=True, application_name="retention:checks") as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        yield conn
