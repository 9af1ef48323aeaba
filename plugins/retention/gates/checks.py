"""What the quality gates check, as data: one ``Check`` per GX expectation on one table.

The declarations below (columns the rule SQL reads, clocks a state requires, enumerated values,
the card security code the policy promises is never stored) and what the policy says (rule
tables, clocks) make each gate's suite: ``before_checks`` for the source before anything is
deleted, ``row_count_checks`` for the source after the run, ``archive_object_checks`` for the
archive objects of a table read back. How GX validates them is ``retention.gates.gx``; the
figures the after-suites compare are read by ``retention.gates.figures``.

No GX here, nothing heavy: the declarations can be read and tested without a database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from retention.policy import Policy, Purpose
from retention.policy.periods import local_date, local_midnight

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


def purpose_of(policy: Policy, purpose: Purpose | str) -> Purpose:
    return policy.purpose(purpose) if isinstance(purpose, str) else purpose


def rule_tables(purpose: Purpose) -> list[str]:
    return list(dict.fromkeys(rule.table for rule in purpose.rules))


def purpose_clocks(purpose: Purpose) -> list[tuple[str, str]]:
    return list(dict.fromkeys((rule.clock_table, rule.clock_column) for rule in purpose.rules))


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
    purpose = purpose_of(policy, purpose)
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


def archive_object_checks(table: str, objects: int, row_count: int) -> list[Check]:
    """After-suite on the archive objects of one table read back (their id columns, in memory,
    one frame; retention.gates.archive_readback.id_frame): each row's ``object_row`` is
    ``"<object number>:<id>"`` and ``in_manifest`` whether the manifest lists that id in that
    object, so that every id is tested against its own object's ids, as if each object were
    validated alone (its Parquet row count is compared to the manifest's beside)."""
    reported = {"objects_validated": objects}
    return [
        Check(table, "expect_table_row_count_to_equal", params={"value": row_count}, reported=reported),
        Check(table, "expect_column_values_to_not_be_null", "id", reported=reported),
        Check(table, "expect_column_values_to_be_unique", "object_row", reported=reported),
        Check(table, "expect_column_values_to_be_in_set", "in_manifest", {"value_set": [True]}, reported=reported),
    ]
