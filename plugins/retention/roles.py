"""The roles' privileges on the application's tables, from the policy (docs/audit.md, "Roles").

include/sql/schema/050_roles.sql creates the four roles and grants what they need in the
``retention`` schema. What they may do to the application's tables depends on which tables the
policy manages, so it is derived here and applied by ``retention.schema`` after the SQL files:

- ``retention_engine`` and ``retention_rights``: SELECT and DELETE on every table the policy
  manages (its rules' tables and the tables a legal hold covers); UPDATE on ``id`` only, because
  PostgreSQL asks for an UPDATE privilege to lock a row (FOR UPDATE, FOR SHARE), with a trigger
  that refuses any UPDATE they make; INSERT into ``marketing_objections`` for the subject
  requests (an objection recorded with an erasure). SELECT on the id and the foreign key of any
  other table referencing a managed one (a row waits for its children); SELECT on every ``*_key``
  column of the source schema (a file is deleted only once no row names it);
- ``retention_reader``: SELECT on the columns the rules read (ids, clocks, the rule files'
  conditions, foreign keys), not on names, addresses or documents: the page shows counts.
"""

from __future__ import annotations

import re

from retention.archive.documents import key_columns
from retention.planner import REFERRED_TABLE
from retention.policy import Policy, rule_filter

WRITERS = ("retention_engine", "retention_rights")
READER = "retention_reader"
_QUALIFIED = re.compile(r"\b([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)\b", re.I)

# Every foreign key into the source schema: (child schema, child table, child column, parent table).
# A key into one partition of a table is the table's (retention.planner.REFERRED_TABLE).
_FOREIGN_KEYS_SQL = f"""
SELECT cn.nspname, child.relname, a.attname, parent.relname
FROM pg_constraint AS con
JOIN pg_class AS parent ON parent.oid = {REFERRED_TABLE}
JOIN pg_namespace AS pn ON pn.oid = parent.relnamespace
JOIN pg_class AS child ON child.oid = con.conrelid
JOIN pg_namespace AS cn ON cn.oid = child.relnamespace
JOIN pg_attribute AS a ON a.attrelid = con.conrelid AND a.attnum = ANY(con.conkey)
WHERE con.contype = 'f' AND pn.nspname = %s
"""


def managed_tables(policy: Policy) -> list[str]:
    """The rules' tables and every table a legal hold covers."""
    tables = {rule.table for purpose in policy.purposes.values() for rule in purpose.rules}
    for parent, children in policy.legal_holds.covers.items():
        tables.add(parent)
        tables.update(child.split(".")[0] for child in children)
    return sorted(tables)


def rule_columns(policy: Policy) -> dict[str, set[str]]:
    """Per table, the columns the rules name: their clocks and their files' joins and conditions."""
    columns: dict[str, set[str]] = {}
    for name, purpose in policy.purposes.items():
        for rule in purpose.rules:
            filt = rule_filter(policy, name, rule)
            for table, column in _QUALIFIED.findall(f"{rule.clock} {filt.joins} {filt.where}"):
                columns.setdefault(table, set()).add(column)
    return columns


def grant_statements(conn, policy: Policy) -> list[str]:
    """The GRANT and trigger statements for the application's tables (idempotent)."""
    schema = policy.source_schema
    managed = managed_tables(policy)
    existing = {
        (table, column)
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s", (schema,)
        )
    }
    reader_columns = {table: {"id"} for table in managed}
    for table, columns in rule_columns(policy).items():
        reader_columns.setdefault(table, {"id"}).update(columns)
    outside: dict[tuple[str, str], set[str]] = {}  # tables referencing a managed one, not managed
    for child_schema, child, column, parent in conn.execute(_FOREIGN_KEYS_SQL, (schema,)):
        if parent not in managed:
            continue
        if child_schema == schema and child in managed:
            reader_columns[child].add(column)
        else:
            outside.setdefault((child_schema, child), {"id"}).add(column)

    writers, reader = ", ".join(WRITERS), READER
    statements = []
    for table in managed:
        name = f'"{schema}"."{table}"'
        statements += [
            f"GRANT SELECT, DELETE ON {name} TO {writers}",
            f"GRANT UPDATE (id) ON {name} TO {writers}",
            f"CREATE OR REPLACE TRIGGER retention_writers_never_update BEFORE UPDATE ON {name}"
            " FOR EACH STATEMENT WHEN (retention.is_retention_writer())"
            " EXECUTE FUNCTION retention.refuse_writer_update()",
        ]
        columns = sorted(c for c in reader_columns[table] if (table, c) in existing)
        statements.append(f"GRANT SELECT ({', '.join(columns)}) ON {name} TO {reader}")
    if "marketing_objections" in managed:
        statements.append(f'GRANT INSERT ON "{schema}"."marketing_objections" TO retention_rights')
    for (child_schema, child), columns in sorted(outside.items()):
        present = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (child_schema, child),
            )
        }
        column_list = ", ".join(f'"{c}"' for c in sorted(columns & present))
        statements.append(f'GRANT SELECT ({column_list}) ON "{child_schema}"."{child}" TO {writers}, {reader}')
    # Every file key of the source schema, for the writers alone: a file is deleted only once no
    # row names it any more (retention.archive.documents.keys_still_named).
    for table, column in key_columns(conn, schema):
        if table not in managed:
            statements.append(f'GRANT SELECT ("{column}") ON "{schema}"."{table}" TO {writers}')
    statements.append(f"GRANT SELECT ON retention.covered_records TO {writers}, {reader}")
    return statements
