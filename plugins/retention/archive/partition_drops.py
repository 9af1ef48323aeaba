"""Step 4 of a rule's partitions beside the next partition's archive (retention.archive.partitions):
the verified drop of each detached partition, one at a time on a connection of its own, its
count, its Object Locks, and the drops that gave up on a lock done again after the last
partition. What the partition path did for the rule is summed in ``PartitionsDone``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg

from retention.archive.batch import Batch
from retention.archive.locks import BATCH_LOCK_TIMEOUT, OVERLAPPED_DROP_LOCK_TIMEOUT
from retention.archive.run import RetentionError, RunContext
from retention.planner import RuleOutcome
from retention.policy import Rule

if TYPE_CHECKING:
    from retention.archive.partitions import PartitionCheck

log = logging.getLogger(__name__)


@dataclass
class PartitionsDone:
    """What the partition path did for one rule: added to the rule's outcome."""

    dropped: int = 0
    rows: int = 0
    kept: int = 0
    objects: int = 0
    archive_bytes: int = 0
    archived_until: dict[str, int] = field(default_factory=dict)

    def add_to(self, outcome: RuleOutcome) -> None:
        outcome.deleted += self.rows
        outcome.objects += self.objects
        outcome.archive_bytes += self.archive_bytes
        for day, rows in self.archived_until.items():
            outcome.archived_until[day] = outcome.archived_until.get(day, 0) + rows
        if self.dropped or self.kept:
            outcome.partitions = {"dropped": self.dropped, "rows": self.rows, "kept": self.kept}


@dataclass
class DetachedPartition:
    """A partition archived, re-checked and detached (steps 1-3): its step 4 still to come."""

    name: str
    retirement_id: int
    check: PartitionCheck
    batch: Batch
    unarchived_days: int


class PartitionDrops:
    """Step 4 of the partitions of one rule, one at a time on a connection of its own, while
    the next partition is archived; each settled (counted, its locks applied) before the next
    partition's step 2 and at the end.

    A drop beside the next archive waits at most OVERLAPPED_DROP_LOCK_TIMEOUT for its locks: an
    application transaction can hold one of them (it read a customer) while it waits for the
    next partition's lock (tier none holds it in SHARE mode from its check; an archived
    partition's step 1 holds ACCESS SHARE only), a wait the database cannot see as a deadlock.
    Such a drop is left
    for later (``deferred``: the partition stays detached under its 'detaching' record) and done
    again after the rule's last partition, when no transaction of the run holds anything."""

    def __init__(self, engine, conn, rule: Rule, ctx: RunContext, done: PartitionsDone, allowance, dropper, locker):
        self.engine, self.conn, self.rule, self.ctx, self.done = engine, conn, rule, ctx, done
        self.allowance, self.dropper, self.locker = allowance, dropper, locker
        # The tables a drop locks besides its own (foreign keys: include/sql/catalog/
        # foreign_key_neighbours.sql), and whether drops may run beside the next partition's
        # archive: known at the first partition's step 2 (None: not yet, one after the other).
        self.neighbours: set[int] = set()
        self.beside_next: bool | None = None
        self.pending: tuple | None = None
        self.deferred: list[DetachedPartition] = []
        # (future, versions) of the Object Locks applied beside the next partitions.
        self.locking: list = []

    def submit(self, detached: DetachedPartition) -> None:
        self.settle()
        # Taken from the plan's count now, given back if the partition stays.
        self.allowance.rows_left -= detached.check.rows
        beside = bool(self.beside_next)
        timeout = OVERLAPPED_DROP_LOCK_TIMEOUT if beside else BATCH_LOCK_TIMEOUT
        future = self.dropper.submit(self.engine._drop_detached, self.conn, self.rule, self.ctx, detached, timeout)
        self.pending = (future, detached, beside)
        if not beside:
            self.settle()

    def before_step_2(self, control) -> None:
        """The pending drop settled. The first time, the tables the partition's step 1 locked
        (in ``control``'s open transaction, as every partition's step 1 of the rule does) tell
        whether the next drops may run beside it: not if a drop would lock one of them (it would
        wait for that transaction while the run waits for the drop)."""
        self.settle()
        if self.beside_next is None:
            locked = {
                oid
                for (oid,) in control.execute(
                    "SELECT relation::bigint FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation'"
                )
            }
            self.beside_next = not (locked & self.neighbours)

    def wait_quietly(self) -> None:
        """On an error of the main thread: the pending drop ended, not counted (a 'detaching'
        record it left is finished by the next run); its own error logged, by type only."""
        if self.pending is None:
            return
        future, detached, _ = self.pending
        self.pending = None
        error = future.exception()
        if error is not None:
            log.error(
                "rule %s: the drop of partition %s failed too (%s)", self.rule.name, detached.name, type(error).__name__
            )

    def settle(self) -> None:
        """Wait for the pending drop (its error raised here, but a lock it gave up on beside
        the next archive) and count it."""
        if self.pending is None:
            return
        future, detached, beside = self.pending
        self.pending = None
        try:
            dropped = future.result()
        except psycopg.errors.LockNotAvailable as exc:
            if not beside:
                raise self._still_locked(detached) from exc
            log.info(
                "rule %s: the drop of partition %s waited for a lock beside the next partition's archive;"
                " done again after the last partition",
                self.rule.name,
                detached.name,
            )
            self.deferred.append(detached)
            return
        self._count(detached, dropped)

    def drop_deferred(self) -> None:
        """The drops given up beside an archive, again one after the other, with the run's usual
        lock wait (none of its transactions is open now); an error leaves the 'detaching' record
        to the next run, as a crash would."""
        while self.deferred:
            detached = self.deferred.pop(0)
            try:
                dropped = self.engine._drop_detached(self.conn, self.rule, self.ctx, detached, BATCH_LOCK_TIMEOUT)
            except psycopg.errors.LockNotAvailable as exc:
                raise self._still_locked(detached) from exc
            self._count(detached, dropped)

    def _still_locked(self, detached: DetachedPartition) -> RetentionError:
        """A drop that waited the run's whole lock wait: the run fails (nothing is lost: the rows
        are in the detached table and in their verified objects, under the 'detaching' record)."""
        return RetentionError(
            f"rule {self.rule.name}: partition {detached.name} is archived and detached, but its drop waited"
            f" {BATCH_LOCK_TIMEOUT} for a lock (another session uses the detached table or a table its foreign"
            " keys name: pg_locks tells which); its rows are kept, the next run drops it"
        )

    def _count(self, detached: DetachedPartition, dropped: bool) -> None:
        if not dropped:
            self.allowance.rows_left += detached.check.rows
            self.done.kept += 1
            return
        batch, done = detached.batch, self.done
        done.dropped += 1
        done.rows += detached.check.rows
        done.objects += len(batch.objects)
        done.archive_bytes += sum(o[1].size for o in batch.objects)
        for day, rows in batch.archived_until.items():
            done.archived_until[day] = done.archived_until.get(day, 0) + rows
        # Object Lock on the verified versions, after the commit (as a batch's): one left undone
        # (a crash) is applied by the next run (recover).
        due = self.engine._locks_due(batch.locks)
        if due:
            self.locking.append((self.locker.submit(self.engine._lock_versions, due), due))
        log.info(
            "rule %s: partition %s retired whole: rows=%d objects=%d (deleted unarchived on %d days)",
            self.rule.name,
            detached.name,
            detached.check.rows,
            len(batch.objects),
            detached.unarchived_days,
        )
