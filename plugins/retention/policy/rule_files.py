"""A rule file (include/sql/<purpose>/<rule>.sql): the filter that narrows a rule's rows.

The select itself is never written by hand: the planner builds it from the policy (the rule's
table, its clock, the cutoff) and from the one definition of legal-hold coverage, so a rule
file cannot select another table, another clock or skip the holds. A rule file holds only

    [JOIN <schema>.<table> AS <table> ON <condition>] ...
    [WHERE <extra conditions>]

for example ``JOIN app.contracts AS contracts ON contracts.id = claims.contract_id``. Aliases are
the table names, so the policy's ``clock: contracts.ended_at`` is valid SQL as it stands. The
file is checked when the policy is loaded (DAG-parse time): every table it names is in the
policy's source schema, every ``alias.column`` it uses is the rule's table or a table it
joins, the clock's table is one of those, and it neither selects, ends a statement nor binds
the cutoff (the planner adds ``<clock> < %(cutoff)s``).

Pure text processing, no database: importable at DAG-parse time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STRING = re.compile(r"'(?:[^']|'')*'")
# Left to right, as PostgreSQL reads: a string (whose `--` is text), or a comment (whose `'` is).
_STRING_OR_COMMENT = re.compile(r"'(?:[^']|'')*'|--[^\n]*")
_TABLE_REF = re.compile(r"\b(FROM|JOIN)\s+([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)(?:\s+AS)?\s+([a-z_][a-z0-9_]*)", re.I)
_QUALIFIED = re.compile(r"\b([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)\b", re.I)
_TOP_JOIN = re.compile(r"^\s*JOIN\s+([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)\s+AS\s+([a-z_][a-z0-9_]*)\s+ON\s+", re.I)
_WHERE = re.compile(r"\bWHERE\b", re.I)
_OUTER = re.compile(r"\b(LEFT|RIGHT|FULL|CROSS|NATURAL|LATERAL)\b", re.I)
_FORBIDDEN = {
    ";": "ends the statement",
    "%(cutoff)s": "binds the cutoff (the planner adds `<clock> < %(cutoff)s` from the policy)",
}
BOOKKEEPING_SCHEMA = "retention"


class RuleFileError(ValueError):
    """The rule file contradicts its rule in the policy, or is not a filter."""


@dataclass(frozen=True)
class RuleFilter:
    """A parsed rule file: its JOIN clauses and its extra WHERE conditions (both may be empty)."""

    joins: str
    where: str
    joined_tables: tuple[str, ...]
    # Each JOIN as (``schema.table``, its ON condition): the same filter written as a correlated
    # EXISTS (retention.planner: another rule on the table selects the row).
    join_conditions: tuple[tuple[str, str], ...] = ()

    def selects_row(self, table: str) -> str:
        """A condition on the row of ``table`` (its alias in the enclosing statement): true when
        this filter selects it, whatever the clock."""
        where = f"({self.where})" if self.where else "true"
        if not self.join_conditions:
            return where
        tables = ", ".join(f"{qualified} AS {qualified.split('.', 1)[1]}" for qualified, _ in self.join_conditions)
        on = " AND ".join(f"({condition})" for _, condition in self.join_conditions)
        return f"EXISTS (SELECT FROM {tables} WHERE {on} AND {where})"


def _strip(text: str) -> str:
    """The text without its `--` comments; a `--` inside a string stays (found by a review: two
    `'--'` strings on two lines swallowed the condition between them into one literal)."""
    return _STRING_OR_COMMENT.sub(lambda m: m.group() if m.group().startswith("'") else " ", text).strip()


def parse_rule_filter(text: str, *, schema: str, table: str, clock: str) -> RuleFilter:
    """Parse and check a rule file against its rule; raise RuleFileError saying what differs."""
    body = _strip(text)
    for token, why in _FORBIDDEN.items():
        if token in body:
            raise RuleFileError(f"contains {token!r}: a rule file never {why}")
    # String literals may hold anything: mask them, keeping every position of the text.
    code = _STRING.sub(lambda m: "'" + " " * (len(m.group()) - 2) + "'", body)
    if re.match(r"^\s*SELECT\b", code, re.I) or re.search(r"^\s*FROM\b", code, re.I):
        raise RuleFileError(
            "is a whole SELECT: a rule file holds only JOIN clauses and a WHERE clause; the planner "
            "builds the select from the rule's table and clock in the policy"
        )
    if _OUTER.search(code):
        raise RuleFileError(f"uses {_OUTER.search(code).group(1).upper()}: only inner JOINs (rows and parents locked)")
    _check_parentheses(code)
    # Only the clauses at the top level: a WHERE or JOIN inside a subquery (an ON clause's NOT
    # EXISTS) is that subquery's. Taken as the file's WHERE, the planner's `<clock> < cutoff AND`
    # would land inside the subquery, and its rows would be selected whatever their clock.
    where_at = next(iter(_top_level(_WHERE, code)), None)
    joins_code = code[: where_at.start()] if where_at else code
    join_conditions = _parse_joins(joins_code, body, schema)
    joined = [qualified.split(".", 1)[1] for qualified, _ in join_conditions]
    joins = body[: where_at.start()].strip() if where_at else body
    where = body[where_at.end() :].strip() if where_at else ""
    if where_at and not where:
        raise RuleFileError("has an empty WHERE clause")
    _check_references(code, schema=schema, table=table, joined=joined)
    clock_table = clock.split(".", 1)[0]
    if clock_table != table and clock_table not in joined:
        raise RuleFileError(
            f"the rule's clock {clock!r} is on table {clock_table!r}, which is neither the rule's table "
            f"{table!r} nor joined by the file (joined: {sorted(joined) or 'none'})"
        )
    return RuleFilter(joins=joins, where=where, joined_tables=tuple(joined), join_conditions=tuple(join_conditions))


def _check_parentheses(code: str) -> None:
    """Parentheses balanced, none closed before it opens (string literals masked): the planner
    writes ``<clock> < %(cutoff)s AND (<where>)``, and a WHERE that closes that parenthesis
    (``a) OR (b``) would select rows whatever their clock."""
    for token, why in (("/*", "a block comment"), ("$", "dollar quoting"), ("\\", "a backslash escape")):
        if token in code:
            raise RuleFileError(f"uses {why} ({token!r}) outside a plain string: only `--` comments and '...' strings")
    if re.search(r"\b[eEuUbBxX]&?'", code):
        raise RuleFileError("uses a prefixed string literal (E'...', U&'...'): only plain '...' strings")
    if code.count("'") % 2:  # each string masked keeps its two quotes
        raise RuleFileError("leaves a string open (a quote never closed)")
    depth = 0
    for char in code:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise RuleFileError("closes a parenthesis it never opened: it would escape the planner's conditions")
    if depth:
        raise RuleFileError("leaves a parenthesis open")


def _top_level(pattern: re.Pattern, code: str) -> list[re.Match]:
    """The matches of ``pattern`` outside every parenthesis (string literals already masked)."""
    depth_at = []
    depth = 0
    for char in code:
        depth_at.append(depth)
        depth += {"(": 1, ")": -1}.get(char, 0)
    return [m for m in pattern.finditer(code) if depth_at[m.start()] == 0]


def _parse_joins(code: str, body: str, schema: str) -> list[tuple[str, str]]:
    """The JOIN part: a sequence of ``JOIN <schema>.<t> AS <t> ON ...`` and nothing else; each
    as (``schema.table``, its ON condition read from ``body``, the text with its strings)."""
    starts = [m.start() for m in _top_level(re.compile(r"\bJOIN\b", re.I), code)]
    if code.strip() and (not starts or code[: starts[0]].strip()):
        raise RuleFileError(f"text before the first JOIN or WHERE: {code[: starts[0] if starts else 60].strip()!r}")
    joined = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(code)
        clause = code[start:end]
        match = _TOP_JOIN.match(clause)
        if not match:
            raise RuleFileError(f"JOIN clause not of the form `JOIN {schema}.<table> AS <table> ON ...`: {clause!r}")
        join_schema, join_table, alias = match.groups()
        if join_schema != schema:
            raise RuleFileError(f"joins {join_schema}.{join_table}, but the policy's source_schema is {schema!r}")
        if alias != join_table:
            raise RuleFileError(f"joins {join_schema}.{join_table} AS {alias}: the alias must be the table name")
        joined.append((f"{join_schema}.{join_table}", body[start + match.end() : end].strip()))
    return joined


def _check_references(code: str, *, schema: str, table: str, joined: list[str]) -> None:
    """Every table named is in the source schema (or the bookkeeping one); every alias.column
    is on the rule's table, a joined table, or a table of a subquery of the file."""
    declared = {table, *joined}
    table_refs = set()
    for match in _TABLE_REF.finditer(code):
        ref_schema, ref_table, alias = match.group(2), match.group(3), match.group(4)
        if ref_schema not in (schema, BOOKKEEPING_SCHEMA):
            raise RuleFileError(f"reads {ref_schema}.{ref_table}, but the policy's source_schema is {schema!r}")
        declared.add(alias)
        table_refs.add((ref_schema, ref_table))
    for match in _QUALIFIED.finditer(code):
        qualifier, name = match.group(1), match.group(2)
        if (qualifier, name) in table_refs or qualifier in declared:
            continue
        raise RuleFileError(
            f"uses {qualifier}.{name}, but {qualifier!r} is neither the rule's table {table!r} nor a table the "
            f"file joins ({sorted(joined) or 'none'})"
        )
