"""Which partitions of a rule's table a run may retire whole, and a large rule's units cut
around them (issue 20; docs/partitions.md). ``PartitionPlanning`` is the part of
``retention.archive.partitions.PartitionRetirement`` that reads the catalog and plans; the
retirement itself (archive, detach, verify, drop) is in partitions.py.

Detected from the catalog (include/sql/catalog/range_partitions.sql): the rule's table is
range-partitioned on the rule's own clock column, with no DEFAULT partition (PostgreSQL refuses
a concurrent detach beside one), no ``*_key`` column, nothing a DELETE does that a DROP would
not (a trigger or rule on DELETE, row-level security, logical replication: row_path_reasons),
and a role that may act as its owner.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import psycopg

from retention.archive.documents import key_columns
from retention.archive.run import MAX_UNITS_PER_RULE
from retention.id_sets import id_array
from retention.paths import SQL_DIR
from retention.planner import IdRange
from retention.policy import Rule

log = logging.getLogger(__name__)

CATALOG_DIR = SQL_DIR / "catalog"
# How long a unit waits to read the ids of a partition another unit may be dropping.
PEEK_LOCK_TIMEOUT = "1s"


def _catalog_sql(name: str) -> str:
    return (CATALOG_DIR / f"{name}.sql").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Partition:
    """One partition of a rule's table, as the catalog describes it."""

    name: str
    bound: str
    detach_pending: bool
    droppable: bool  # an ordinary table (not partitioned further, not foreign) no view reads
    lower: dt.datetime | None
    upper: dt.datetime | None
    is_default: bool = False


def range_partitions(conn, schema: str, table: str, column: str) -> list[Partition]:
    """The partitions of ``table`` if it is range-partitioned on ``column`` alone, else []."""
    rows = conn.execute(_catalog_sql("range_partitions"), {"schema": schema, "table": table, "column": column})
    return [Partition(*row, is_default=row[1] == "DEFAULT") for row in rows.fetchall()]


def may_detach(conn, schema: str, table: str) -> bool:
    """Whether this session may detach and drop the table's partitions (it acts as the owner)."""
    row = conn.execute(_catalog_sql("may_detach"), {"schema": schema, "table": table}).fetchone()
    return bool(row and row[0])


def foreign_key_neighbours(conn, schema: str, table: str) -> set[int]:
    """The tables (oids) a foreign key links ``table`` to, either way: a drop of one of its
    detached partitions locks them (include/sql/catalog/foreign_key_neighbours.sql)."""
    rows = conn.execute(_catalog_sql("foreign_key_neighbours"), {"schema": schema, "table": table})
    return {oid for (oid,) in rows.fetchall()}


def row_path_reasons(conn, schema: str, table: str) -> list[str]:
    """Why the table's rows must be deleted row by row, a DELETE doing what a DROP of a partition
    would not (include/sql/catalog/row_path_reasons.sql): [] when nothing stands in the way."""
    return [reason for (reason,) in conn.execute(_catalog_sql("row_path_reasons"), {"schema": schema, "table": table})]


def attached_state(conn, schema: str, table: str, partition: str) -> str:
    """'attached', 'pending' (a concurrent detach interrupted), 'detached' or 'gone'."""
    params = {"schema": schema, "table": table, "partition": partition}
    return conn.execute(_catalog_sql("attached_state"), params).fetchone()[0]


def unit_bounds(spans: list[tuple[int, int]]) -> list[int]:
    """Where a rule's units must start so that none cuts a partition: each span's (a partition's
    least and greatest id) first id and the id after its last, ascending; spans that overlap
    (ids mixed between partitions) taken as one."""
    merged: list[list[int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [bound for first, last in merged for bound in (first, last + 1)]


def pair_bounds(bounds: list[int]) -> list[int]:
    """The same cuts around half as many spans: two neighbours taken as one (the ids between
    them included), for a rule with more partitions than units allowed."""
    spans = list(zip(bounds[::2], bounds[1::2], strict=True))
    paired = [(first, last) for (first, _), (_, last) in zip(spans[::2], spans[1::2], strict=False)]
    if len(spans) % 2:
        paired.append(spans[-1])  # the odd one out stays alone
    return [bound for span in paired for bound in span]


class PartitionPlanning:
    """The partitions a rule may retire whole, and the units of a large rule cut around them."""

    # Off: every rule takes the row path (the bench's comparison; an operator's way out).
    partition_path = True

    def _qualified(self, name: str) -> str:
        return f'"{self.schema}"."{name}"'

    def _may_be_the_units(self, control, partition: str, allowance) -> bool:
        """Whether a partition's ids may all be the unit's (the plan cuts units between
        partitions): read without locking it, so that the other units' partitions, detached and
        dropped beside this one, are left alone: one locked by another for more than a moment is
        left to the row path (as the rest of the unit's). Empty ones wait for a run in one unit."""
        try:
            control.execute(f"SET LOCAL lock_timeout = '{PEEK_LOCK_TIMEOUT}'")
            first, last = control.execute(f"SELECT min(id), max(id) FROM ONLY {self._qualified(partition)}").fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.LockNotAvailable):
            return False  # dropped, or being dropped, by another unit
        finally:
            control.rollback()
        return first is not None and allowance.covers(first, last)

    def _partition_candidates(self, control, rule: Rule, cutoff: dt.datetime) -> list[Partition]:
        """The partitions wholly before the rule's cutoff, when the rule can take this path."""
        if not self.partition_path or rule.erase_at_processor:
            return []
        if rule.clock_table != rule.table:  # the clock is a parent's (a joined table's): rows are not grouped by it
            return []
        partitions = range_partitions(control, self.schema, rule.table, rule.clock_column)
        if not partitions:
            control.commit()
            return []
        why = self._row_path_because(control, rule, partitions)
        control.commit()
        if why:
            log.info("rule %s: %s is partitioned, with %s: the row path", rule.name, rule.table, why)
            return []
        return [
            p for p in partitions if p.upper is not None and p.upper <= cutoff and not p.detach_pending and p.droppable
        ]

    def _row_path_because(self, control, rule: Rule, partitions: list[Partition]) -> str | None:
        """Why the rule's partitioned table must be deleted from row by row, or None."""
        if any(p.is_default for p in partitions):
            return "a DEFAULT partition"  # DETACH ... CONCURRENTLY is refused beside one
        if key_columns(control, self.schema, rule.table):
            return "columns naming files"  # followed row by row (retention.archive.documents)
        reasons = row_path_reasons(control, self.schema, rule.table)
        if reasons:
            return ", ".join(reasons)
        if not may_detach(control, self.schema, rule.table):
            return "another owner than this role"  # DETACH and DROP need the table's owner
        return None

    def _delete_does_more(self, control, table: str, detached: str) -> str | None:
        """Step 4's catalog test: what a DELETE would do that a DROP does not (row_path_reasons),
        on the table or on the detached partition itself. Why, or None."""
        reasons = {*row_path_reasons(control, self.schema, table), *row_path_reasons(control, self.schema, detached)}
        return ", ".join(sorted(reasons)) or None

    def _changed_since_the_listing(self, control, rule: Rule, partition: str) -> str | None:
        """The listing's catalog tests made again for one partition, in the caller's transaction
        (step 2, the partition locked): a DELETE trigger, row-level security, a publication, a
        view... added since the run listed the partitions keeps it. Why, or None."""
        partitions = range_partitions(control, self.schema, rule.table, rule.clock_column)
        why = self._row_path_because(control, rule, partitions)
        if why:
            return why
        now = next((p for p in partitions if p.name == partition), None)
        if now is None or not now.droppable:
            return "no longer a partition that may be dropped (another schema, owner or kind, or a view reads it)"
        return None

    def _unit_ranges(
        self, conn, rule: Rule, logical_date: dt.datetime, rows_per_range: int, kept_ids: list[int]
    ) -> list[IdRange]:
        """A large rule's units (consecutive ranges of its deletable ids, ``rows_per_range`` rows
        each), never cutting a partition that may be retired whole: one split between two units is
        neither's whole, and both would leave it to the row path. Each such partition is a unit of
        its own (the rows between partitions are cut as usual), so the units retire them side by
        side. A partition holding a row the plan keeps (held, waiting) stays anyway: not counted.
        Ids mixed between partitions (rows written long after their clock) make fewer, larger
        units; more partitions than units allowed, two or more a unit."""
        cutoff = self.planner(conn).params(logical_date)[f"cutoff__{rule.name}"]
        spans = []
        for partition in self._partition_candidates(conn, rule, cutoff):
            first, last, keeps_a_row = conn.execute(
                f"SELECT min(p.id), max(p.id), EXISTS (SELECT 1 FROM ONLY {self._qualified(partition.name)} AS k"
                f" WHERE k.id = ANY(%s::bigint[])) FROM ONLY {self._qualified(partition.name)} AS p",
                (id_array(kept_ids),),
            ).fetchone()
            if first is not None and not keeps_a_row:
                spans.append((first, last))
        bounds = unit_bounds(spans)
        ranges = self.planner(conn).id_ranges(conn, rule, logical_date, rows_per_range, bounds)
        while len(ranges) > MAX_UNITS_PER_RULE and len(bounds) > 2:
            bounds = pair_bounds(bounds)
            ranges = self.planner(conn).id_ranges(conn, rule, logical_date, rows_per_range, bounds)
        if not conn.autocommit:
            conn.commit()
        if spans:
            log.info(
                "rule %s: %d units, cut around %d partitions that may go whole", rule.name, len(ranges), len(spans)
            )
        return ranges
