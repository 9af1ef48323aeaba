"""One batch of one rule, as a value handed from step to step (retention.archive.protocol):
the connection whose transaction holds its locks, its ids, its objects grouped per end day, what
was uploaded and verified, the Object Locks and file disposals to finish after the commit; and
what the approved plan still lets the rule delete.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import psycopg
import pyarrow as pa

from retention.archive.run import MAX_ID

# Larger sorts of a batch (its ids by purge day) stay in memory: 4 MB (the default) spills.
BATCH_WORK_MEM = "64MB"
# Rows that fit in fewer batches are cut into this many (of at least PIPELINED_BATCH_MIN rows):
# a batch is locked and read while the one before is uploaded and deleted, and a single batch
# overlaps nothing (100,000 rows of one day: 0.90 s in one batch, 0.74 s in four; docs/benchmark.md).
PIPELINED_BATCHES = 4
PIPELINED_BATCH_MIN = 10_000


@dataclass
class _Allowance:
    """What the approved plan lets a rule (or a unit of it) delete: ids in a range, at most so
    many rows; counted down as batches are re-checked (_within_allowance)."""

    first_id: int
    last_id: int
    rows_left: int
    # Deletable rows a batch found once the count was used up, and the last id locked so far.
    cut: int = 0
    reached_id: int = 0
    # Rows the batches locked and their re-checks kept (held, waiting, clock moved).
    kept: int = 0
    _batch_rows: int | None = field(default=None, init=False)

    def batch_rows(self, batch_size: int) -> int:
        """The rows a batch locks at most: the run's batch size, or less when the rows left at
        the row path's first batch (whole partitions went before it) fit in fewer than
        PIPELINED_BATCHES batches (never less than PIPELINED_BATCH_MIN)."""
        if self._batch_rows is None:
            self._batch_rows = min(batch_size, max(PIPELINED_BATCH_MIN, -(-self.rows_left // PIPELINED_BATCHES)))
        return self._batch_rows

    def lock_limit(self, batch_size: int) -> int:
        """The rows the next batch locks: a batch's rows (batch_rows), at most the rows left;
        but when what is left is about one batch (a tenth more at most), all of it, plus as many
        rows as the re-checks kept so far (at most a tenth of a batch): the rows they keep push
        the last few deletable rows past the last full batch, and a batch of their own would
        cost a lock, a read, an object and a commit. Never more than ``batch_size``, the most
        rows of a transaction and of an object (the DAG's param). Rows found beyond the count
        are cut by _within_allowance, never deleted."""
        rows = self.batch_rows(batch_size)
        if self.rows_left <= rows + rows // 10:
            return min(batch_size, self.rows_left + min(self.kept, rows // 10))
        return rows  # more than a batch is left

    def covers(self, first_id: int, last_id: int) -> bool:
        """Whether ids ``first_id..last_id`` all lie in the allowed range."""
        return self.first_id <= first_id and last_id <= self.last_id

    @property
    def is_a_share(self) -> bool:
        """A unit's share of the rule (other units run beside it), not the whole rule."""
        return self.last_id != MAX_ID


@dataclass
class ArchiveGroup:
    """Rows of one batch archived together (one purge day): read, intent recorded, to upload."""

    manifest_id: int
    key: str
    table: pa.Table | None
    ids: list[int]
    documents: list[tuple[int, str]]  # (record id, file key) of the files the rows name
    doc_pairs: list[tuple[str, str]]  # (file key, archive key)
    purge_after: dt.datetime


@dataclass
class Batch:
    """One batch of one rule, from its lock to its commit: a value handed from step to step.

    ``conn`` is the connection whose open transaction holds the batch's locks; the batch's
    delete, manifest and audit rows are written and committed in it."""

    conn: psycopg.Connection
    last_id: int
    ids: list[int] = field(default_factory=list)
    groups: list[ArchiveGroup] = field(default_factory=list)
    # (manifest id, verified object, record ids, [(record id, file key)], [(file key, archive key)], [doc version])
    objects: list[tuple] = field(default_factory=list)
    # (table, record id, file key, archive key or None): source files deleted after the commit
    disposals: list[tuple] = field(default_factory=list)
    # ([(archive key, version id)], retain until): Object Lock on exactly the verified versions
    locks: list[tuple[list[tuple[str, str | None]], dt.datetime]] = field(default_factory=list)
    # Rows archived per day their archive period ends (Paris date, ISO)
    archived_until: Counter = field(default_factory=Counter)
    # Once committed: rows deleted, source files kept because a row still in the source names them
    deleted: int = 0
    documents_kept_shared: int = 0


class _LockBusy(Exception):
    """The next batch could not get its locks within PIPELINED_LOCK_TIMEOUT, or someone waits
    for the locks of the batch still uploading (see _archive_batch)."""


def split_rows(rows: pa.Table, groups: list[tuple[str, list[int], dt.datetime]]) -> list[pa.Table]:
    """The rows (sorted by id) of each group (its ids sorted), in the groups' order: one stable
    sort by group, then slices (a filter per group scanned the whole batch once per end day)."""
    if len(groups) == 1:
        return [rows]
    ids = rows.column("id").to_numpy()
    group_of_row = np.full(len(ids), len(groups), dtype=np.int32)
    for number, (_, group_ids, _) in enumerate(groups):
        group_of_row[np.searchsorted(ids, np.asarray(group_ids, dtype=ids.dtype))] = number
    by_group = rows.take(pa.array(np.argsort(group_of_row, kind="stable")))
    tables, start = [], 0
    for _, group_ids, _ in groups:
        tables.append(by_group.slice(start, len(group_ids)))
        start += len(group_ids)
    return tables
