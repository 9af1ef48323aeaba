"""Partitioned tables retired whole: a partition whose every row is due, none held or waiting,
is archived from the partition itself, detached (``DETACH PARTITION ... CONCURRENTLY``) and
dropped, instead of deleted row by row (issue 20; docs/partitions.md).

Which tables and partitions may go this way, and the units cut around them, are planned in
``retention.archive.partition_plan`` (the catalog). A partition qualifies when its upper bound is at or before the
rule's cutoff (every row is past its live period), every row passes the rule (its conditions,
no hold, no waiting child: the planner's select, run over the partition alone), its ids lie in
the unit's range and within what the plan approved. Anything else is left to the row path,
which then deletes the partition's deletable rows and leaves the partition in place.

One partition, under the purpose's lock:

1. archive: in one snapshot (REPEATABLE READ, shared with the reader; the application writes
   on), the rows checked and their versions' fingerprint taken (one scan), then the rows read,
   grouped per end day, recorded as 'uploading' intents in the manifest, uploaded and read
   back: the row path's own steps;
2. the partition locked in SHARE mode (the application's writes wait from here) and the hold
   table too, the rows re-checked and their fingerprint taken again: a hold placed or a row
   written during step 1 keeps the partition, its uploads removed; then the write-ahead record
   'detaching' committed (retention.partition_retirements, with the objects' verified size,
   checksum and version). Tier none reads nothing: its step 1 holds the SHARE lock and step 2
   follows in the same transaction;
3. ``DETACH PARTITION ... CONCURRENTLY`` (autocommit: it cannot run in a transaction block),
   waiting at most ``RETENTION_DETACH_WAIT`` for the transactions that use the table;
4. in one transaction, the hold table and the detached table locked: the rows re-checked
   again (a hold placed between steps 2 and 3 keeps them: the table is attached again) and
   compared with the fingerprint of step 1 (a write that slipped in keeps them too), then the
   manifest rows 'committed', the audit rows, the record 'dropped' and ``DROP TABLE``; commit.
   A drop PostgreSQL refuses (an object depends on the partition) attaches it again too.

A crash leaves a 'detaching' record: the next run finishes it before anything else (recover):
a detach left pending is finalized (``DETACH PARTITION ... FINALIZE``), the detached table goes
through step 4; a partition never detached is kept and its uploads removed as orphans. A run of
the purpose in preview mode attaches the detached table again instead (put_back_in_preview).

``PartitionRetirement`` is one part of ``retention.archive.engine.RetentionEngine``; step 3 and its
bounded wait are ``retention.archive.partition_detach``; step 4 itself, the recovery and the
put-back are ``retention.archive.partition_finish``; step 4 beside the next partition's archive
is scheduled by ``retention.archive.partition_drops``.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import psycopg
from psycopg import sql

from retention.archive import partition_detach
from retention.archive.batch import BATCH_WORK_MEM, Batch, split_rows
from retention.archive.locks import BATCH_LOCK_TIMEOUT, LOCK_HOLDS
from retention.archive.parquet import typed
from retention.archive.partition_drops import DetachedPartition, PartitionDrops, PartitionsDone
from retention.archive.partition_finish import PartitionFinishing
from retention.archive.partition_plan import Partition, PartitionPlanning, attached_state, foreign_key_neighbours
from retention.archive.purge import archive_split
from retention.archive.run import RetentionError, RunContext
from retention.id_sets import id_array
from retention.policy import Rule, rule_filter

log = logging.getLogger(__name__)

# Rows of a partition read and uploaded at a time (one object per end day, as in the row path).
READ_ROWS = 200_000


@dataclass
class PartitionCheck:
    """A partition's rows as the rule sees them: all, due (clock and conditions), held, waiting
    (for a child row, or selected by another rule too)."""

    rows: int
    due: int
    held: int
    waiting: int
    min_id: int | None
    max_id: int | None
    # The rows' versions as they stand (see PartitionRetirement._part_counts), when asked for.
    fingerprint: int | None = None

    @property
    def whole(self) -> bool:
        return self.due == self.rows and self.held == 0 and self.waiting == 0

    def __bool__(self) -> bool:
        return self.whole


# A partition that stays (its deletable rows take the row path).
_KEPT = PartitionCheck(0, 0, 1, 0, None, None)


class PartitionRetirement(PartitionFinishing, PartitionPlanning):
    """Whole partitions archived, detached and dropped (a part of RetentionEngine)."""

    def _retire_partitions(self, control, second, intents, reader, rule: Rule, ctx: RunContext) -> PartitionsDone:
        """Retire every partition of the rule's table that qualifies; the rest is the row path's.

        Two partitions in flight, each step on the connection it needs: while partition k is
        verified and dropped (step 4, on ``second``) and its Object Locks applied (S3 requests,
        recorded at the end), partition k+1 is checked, read and uploaded (step 1, on the
        others). Its step 2 waits for k's drop (one that gave up on a lock is done again after
        the last partition: PartitionDrops). A drop locks the tables the table's foreign keys name: when
        step 1 reads one of them (a hold check through a parent), the partitions are dropped one
        after the other."""
        done = PartitionsDone()
        partition_detach.detach_wait()  # a wrong setting stops the run here, before anything is archived
        candidates = self._partition_candidates(
            control, rule, self._statements[rule.name].params[f"cutoff__{rule.name}"]
        )
        allowance = self._allowances[rule.name]
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"retention-drop-{rule.name}") as dropper,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"retention-locks-{rule.name}") as locker,
        ):
            drops = PartitionDrops(self, second, rule, ctx, done, allowance, dropper, locker)
            if candidates:
                drops.neighbours = foreign_key_neighbours(control, self.schema, rule.table)
                control.commit()
            try:
                for partition in candidates:
                    if allowance.is_a_share and not self._may_be_the_units(control, partition.name, allowance):
                        continue  # another unit's: not even locked (it may be dropped under us)
                    if self._retire_partition(control, intents, reader, rule, ctx, partition, drops) is _KEPT:
                        done.kept += 1
            except BaseException:
                # Nothing of ours may keep the pending drop waiting while the error goes up.
                control.rollback()
                with contextlib.suppress(Exception):
                    reader.commit()
                drops.wait_quietly()
                raise
            drops.settle()
            if drops.deferred:
                control.rollback()
                reader.commit()
                drops.drop_deferred()
            for future, _ in drops.locking:
                future.result()
        if drops.locking:
            self._record_locks(control, [lock for _, due in drops.locking for lock in due])
        return done

    def _check_partition(self, conn, rule: Rule, partition: str, *, fingerprint: bool = False) -> PartitionCheck:
        """The rule's select (clock, conditions, holds, waiting children) run over the partition
        alone, in the caller's transaction: its rows are the rule's whole only if all are due,
        none held, none waiting. With ``fingerprint``, the same scan also takes the rows'."""
        statements = self._statements[rule.name]
        conditions = rule_filter(self.policy, self.purpose_name, rule)
        shared = len(self.policy.written_rules_on(rule.table)) > 1  # another rule's rows: tested row by row
        if not conditions.joins.strip() and not conditions.where.strip() and not shared:
            return self._check_unfiltered(conn, rule, partition, statements.params, fingerprint)
        query = (
            "SELECT part.n, due.n, due.held, due.waiting, part.min_id, part.max_id, part.fingerprint"
            f" FROM {self._part_counts(partition, fingerprint)},"
            " (SELECT count(*) AS n, count(*) FILTER (WHERE due.held) AS held,"
            " count(*) FILTER (WHERE NOT due.held AND (due.waiting_for IS NOT NULL OR due.claimed_by IS NOT NULL))"
            " AS waiting"
            f" FROM ({self._select_over(rule, partition)}) AS due) AS due"
        )
        return PartitionCheck(*conn.execute(query, statements.params).fetchone())

    def _check_unfiltered(self, conn, rule: Rule, partition: str, params: dict, fingerprint: bool) -> PartitionCheck:
        """The same test for a rule without conditions (its clock alone): every row is due by
        the partition's bound, so only the exceptions are looked up, from their side: the rows
        an active hold covers (a few hundred) and the rows another table references, through
        their indexes, instead of testing every row of the partition."""
        qualified = self._qualified(partition)
        select = self._select_over(rule, partition)
        ctes = select[: select.index(f' SELECT "{rule.table}".id AS id')]  # WITH held_... (the hold coverage)
        blockers = self._planner.blockers.get(rule.table, ())
        waiting = " + ".join(
            f'(SELECT count(DISTINCT b."{b.column}") FROM "{b.schema}"."{b.table}" AS b'
            f' JOIN ONLY {qualified} AS p ON p.id = b."{b.column}")'
            for b in blockers
        )
        # Due by the clock itself, not by the partition's bound as listed: a DBA may have changed
        # the partition since (merged in a later month), and the bound is not read again.
        counts = self._part_counts(partition, fingerprint, (rule.clock_column, f"cutoff__{rule.name}"))
        query = (
            f"{ctes} SELECT part.n, part.due, (SELECT count(*) FROM held_{rule.table} AS h"
            f" JOIN ONLY {qualified} AS p ON p.id = h.id), {waiting or '0'}, part.min_id, part.max_id,"
            f" part.fingerprint FROM {counts}"
        )
        return PartitionCheck(*conn.execute(query, params).fetchone())

    def _select_over(self, rule: Rule, partition: str) -> str:
        """The planner's select of the rule, reading the partition (attached or not) in place of
        the rule's table: same alias, so the clock, conditions and hold tests apply unchanged."""
        select = self._planner.select(rule)
        table_from = f'FROM "{self.schema}"."{rule.table}" AS "{rule.table}"'
        if select.count(table_from) != 1:
            raise RetentionError(f"{rule.table}: cannot point the rule's select at partition {partition}")
        select = select.replace(table_from, f'FROM ONLY {self._qualified(partition)} AS "{rule.table}"')
        # The table's own hold coverage (its rows whose customer, contract... is held) reads the
        # partition too: once detached, its rows are no longer in the table.
        own_coverage = f'FROM "{self.schema}"."{rule.table}" AS c '
        return select.replace(own_coverage, f"FROM ONLY {self._qualified(partition)} AS c ")

    def _part_counts(self, partition: str, fingerprint: bool, due_before: tuple[str, str] | None = None) -> str:
        """The partition's rows counted, their least and greatest id, and with ``fingerprint`` a
        sum of the hashes of each row version's place and creating transaction (ctid, xmin):
        every write makes a new row version (an update too), so a row written since the sum was
        taken changes it, whatever its columns hold. A rewrite (VACUUM FULL) changes it too: the
        partition then stays, which is the safe side. Far cheaper than hashing the rows' content.
        With ``due_before`` (a clock column, the name of the cutoff parameter), ``due`` counts the
        rows whose clock is before the cutoff, in the same scan."""
        taken = "sum(hash_record_extended((p.ctid, p.xmin), 0))" if fingerprint else "NULL::numeric"
        due = f'count(*) FILTER (WHERE p."{due_before[0]}" < %({due_before[1]})s)' if due_before else "NULL::bigint"
        return (
            f"(SELECT count(*) AS n, {due} AS due, min(p.id) AS min_id, max(p.id) AS max_id,"
            f" {taken} AS fingerprint FROM ONLY {self._qualified(partition)} AS p) AS part"
        )

    # ------------------------------------------------------------------ one partition

    def _retire_partition(self, control, intents, reader, rule, ctx, partition: Partition, drops: PartitionDrops):
        """Steps 1-3 for one partition, step 4 handed to ``drops``: its check when detached; _KEPT
        when it stays (a row held, waiting or not the rule's, or a hold that reached it while it
        was archived); None when it is not this run's (outside the unit's ids, beyond the
        approved count). Whether a detached one is dropped is known when ``drops`` settles."""
        # A retirement of the partition still open: a try of this run killed between its record
        # and its detach (a unit's retry runs no recovery; found by a review: every retry failed on
        # the record's unique index). The partition stays, for the recovery that finishes or undoes
        # that retirement (the next run's); its deletable rows take the row path meanwhile.
        (open_retirement,) = control.execute(
            "SELECT EXISTS (SELECT 1 FROM retention.partition_retirements"
            " WHERE table_name = %s AND partition_name = %s AND state = 'detaching')",
            (rule.table, partition.name),
        ).fetchone()
        control.commit()
        if open_retirement:
            log.warning(
                "rule %s: partition %s stays: a retirement of it is still open (an interrupted try); its deletable"
                " rows take the row path",
                rule.name,
                partition.name,
            )
            return _KEPT
        # Step 1: the partition's rows checked and archived as one snapshot shows them, with their
        # fingerprint; the application writes on meanwhile (step 2 finds what it wrote). Tier none
        # has nothing to read: its step 2 follows at once, in the same transaction and lock.
        archived = rule.archived
        if archived:
            control.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        try:
            self._lock_partition(control, partition.name, "ACCESS SHARE" if archived else "SHARE")
        except psycopg.errors.UndefinedTable:
            control.rollback()
            return None  # dropped meanwhile by another rule's unit on the same table
        except psycopg.errors.LockNotAvailable:
            # Tier none's SHARE lock: a transaction that writes the partition is still open (or, in
            # either mode, a DBA's ALTER or DROP). Nothing done yet: the partition stays.
            control.rollback()
            log.warning(
                "rule %s: partition %s stays: a transaction kept it locked for %s; its deletable rows take the row path",
                rule.name,
                partition.name,
                BATCH_LOCK_TIMEOUT,
            )
            return _KEPT
        check = self._check_partition(control, rule, partition.name, fingerprint=archived)
        allowance = self._allowances[rule.name]
        if check.rows and not allowance.covers(check.min_id, check.max_id):
            control.rollback()
            return None
        if not check.whole or check.rows > allowance.rows_left:
            control.rollback()
            log.info(
                "rule %s: partition %s stays (rows=%d due=%d held=%d waiting=%d, %d left to the plan): its "
                "deletable rows take the row path",
                rule.name,
                partition.name,
                check.rows,
                check.due,
                check.held,
                check.waiting,
                allowance.rows_left,
            )
            return _KEPT
        batch = Batch(conn=control, last_id=check.max_id or 0)
        stays = partial(self._stays, control, ctx, rule, partition.name, batch)  # stays(why): kept, uploads removed
        try:
            unarchived_days = self._archive_partition(control, intents, reader, rule, ctx, partition, batch)
            # The partition before this one dropped (or kept) first: one write-ahead record at a time.
            drops.before_step_2(control)
            if archived:
                # Step 1 ends (its snapshot let go); the application's writes wait from here to
                # the end of step 2: a re-check, not an archive.
                control.commit()
                reader.commit()
                try:
                    self._lock_partition(control, partition.name, "SHARE")
                except psycopg.errors.UndefinedTable as dropped:
                    # Its rows are gone, not by this run: the uploads may be their only copy.
                    # Kept (as 'uploading' intents) for a person to look at before the next run
                    # removes them as orphans; the run stops loudly.
                    control.rollback()
                    raise RetentionError(
                        f"rule {rule.name}: partition {partition.name} of {rule.table} was dropped by another session "
                        f"while this run archived it: its rows were deleted outside the retention, not audited. Their "
                        f"verified copies are still in the archive bucket (retention.archive_manifest ids "
                        f"{[group.manifest_id for group in batch.groups]}, state 'uploading'): copy them now if the "
                        "drop was a mistake; the purpose's next run removes them as orphans"
                    ) from dropped
                except psycopg.errors.LockNotAvailable:
                    # A transaction that wrote it during the archive is still open: its rows changed.
                    return stays(
                        f"a transaction that writes it kept it locked for {BATCH_LOCK_TIMEOUT} after its archive",
                    )
            # Step 2: the holds locked, the rule re-checked and the rows' fingerprint taken again
            # (after an archive: a hold or a write may have come meanwhile; tier none went
            # straight here, its rows held in SHARE mode since its check).
            try:
                control.execute(LOCK_HOLDS)
            except psycopg.errors.LockNotAvailable:
                return stays(
                    f"a transaction on the hold table (a hold placed or released, not committed) kept it locked for "
                    f"{BATCH_LOCK_TIMEOUT}",
                )
            changed = self._changed_since_the_listing(control, rule, partition.name)
            if changed:
                return stays(f"since the listing, {changed}")
            recheck = self._check_partition(control, rule, partition.name, fingerprint=True) if archived else check
            same_rows = recheck.rows == check.rows and recheck.fingerprint == check.fingerprint
            if not (recheck.whole and same_rows):
                written = "" if same_rows else " (written since they were archived)"
                return stays(
                    f"held={recheck.held} waiting={recheck.waiting}, rows {check.rows} -> {recheck.rows}{written} "
                    "found at the re-check",
                )
            manifest_ids = [group.manifest_id for group in batch.groups]
            # The bound as it stands under the lock (the listed one may be stale: a DBA may have
            # merged partitions since), for attaching the partition again if it must stay.
            (bound,) = control.execute(
                "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = %s::regclass",
                (self._qualified(partition.name),),
            ).fetchone()
            with control.cursor() as cur:
                for manifest_id, verified, *_ in batch.objects:
                    cur.execute(
                        "UPDATE retention.archive_manifest SET byte_size = %s, sha256 = %s, version_id = %s,"
                        " document_version_ids = '{}' WHERE id = %s AND state = 'uploading'",
                        (verified.size, verified.sha256_hex, verified.version_id, manifest_id),
                    )
                retirement_id = cur.execute(
                    # created_at: now, not the transaction's start (step 1: the archive's duration).
                    "INSERT INTO retention.partition_retirements (run_id, logical_date, purpose, rule, table_name,"
                    " partition_name, partition_bound, row_count, rows_checksum, manifest_ids, state, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::bigint[], 'detaching', clock_timestamp())"
                    " RETURNING id",
                    (
                        ctx.run_id,
                        ctx.logical_date,
                        self.purpose_name,
                        rule.name,
                        rule.table,
                        partition.name,
                        bound,
                        check.rows,
                        check.fingerprint,
                        id_array(manifest_ids),
                    ),
                ).fetchone()[0]
            control.commit()
        except BaseException:
            control.rollback()
            raise
        # Step 3: no transaction of ours may hold a lock on the table now (the detach waits for them).
        reader.commit()
        try:
            self._detach(intents, rule.table, partition.name)
        except psycopg.errors.ForeignKeyViolation:
            # A row of another table refers to one of its rows since step 2: PostgreSQL refuses the
            # detach before it begins (the partition still attached). It stays, as a written one.
            if attached_state(control, self.schema, rule.table, partition.name) != "attached":
                raise
            self._close_retirement(control, retirement_id, "kept")
            control.commit()
            return stays("a row of another table refers to one of its rows since its re-check (the detach was refused)")
        drops.submit(DetachedPartition(partition.name, retirement_id, check, batch, unarchived_days))
        return check

    def _stays(self, control, ctx: RunContext, rule: Rule, partition: str, batch: Batch, why: str) -> PartitionCheck:
        """A partition found at step 2 to stay: its transaction rolled back, why logged (counts and
        names only), its uploads removed; its deletable rows take the row path."""
        control.rollback()
        log.warning("rule %s: partition %s stays: %s; its deletable rows take the row path", rule.name, partition, why)
        self._abandon_uploads(control, ctx, rule, batch)
        return _KEPT

    def _lock_partition(self, control, partition: str, mode: str) -> None:
        """The partition locked in ``mode`` in ``control``'s transaction, waiting at most a batch's wait."""
        control.execute(f"SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'")
        control.execute(f"SET LOCAL work_mem = '{BATCH_WORK_MEM}'")
        control.execute(f"LOCK TABLE {self._qualified(partition)} IN {mode} MODE")

    def _drop_detached(self, conn, rule: Rule, ctx: RunContext, detached: DetachedPartition, lock_timeout: str) -> bool:
        """Step 4 (the drop thread): True when dropped; False when attached again, its uploads removed."""
        if self._finish_detached(conn, detached.retirement_id, lock_timeout):
            return True
        self._abandon_uploads(conn, ctx, rule, detached.batch)
        return False

    def _archive_partition(self, control, intents, reader, rule, ctx, partition: Partition, batch: Batch) -> int:
        """The partition's rows per end day (the row path's grouping), their intents recorded,
        uploaded and read back; a chunk is read while the one before it uploads. Returns the
        number of end days already over at the logical date (deleted without archive)."""
        if not rule.archived:
            return 0
        # The reader reads in control's snapshot: the rows checked and grouped, whatever was written since.
        (snapshot,) = control.execute("SELECT pg_export_snapshot()").fetchone()
        reader.commit()
        with reader.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        split = archive_split(
            control, self.policy, rule, self._partition_groups(control, rule, partition.name), ctx.logical_date
        )
        to_archive = [g for g, archived in split if archived]
        for purge_day, ids, _ in to_archive:
            batch.archived_until[purge_day] += len(ids)
        chunks, chunk, size = [], [], 0
        for group in to_archive:
            chunk.append(group)
            size += len(group[1])
            if size >= READ_ROWS:
                chunks.append(chunk)
                chunk, size = [], 0
        if chunk:
            chunks.append(chunk)
        # The table's columns in the table's order, as the row path reads them (a table attached
        # as a partition may hold its columns in another order).
        names = control.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum",
            (self._qualified(rule.table),),
        ).fetchall()
        columns = sql.SQL(", ").join(sql.Identifier(name) for (name,) in names).as_string(control)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"retention-partition-{rule.name}") as uploader:
            uploading = None
            for chunk in chunks:
                part = Batch(conn=control, last_id=batch.last_id)
                ids = sorted(i for _, group_ids, _ in chunk for i in group_ids)
                rows = split_rows(self._read_partition_rows(reader, columns, partition.name, ids), chunk)
                self._record_intents(control, intents, rule, ctx, chunk, rows, part)
                if uploading is not None:
                    self._add_uploaded(batch, uploading.result())
                uploading = uploader.submit(self._upload_part, part)
            if uploading is not None:
                self._add_uploaded(batch, uploading.result())
        return len({day for (day, _, _), archived in split if not archived})

    def _upload_part(self, part: Batch) -> Batch:
        self._upload_batch(part)
        return part

    @staticmethod
    def _add_uploaded(batch: Batch, part: Batch) -> None:
        batch.groups += part.groups
        batch.objects += part.objects
        batch.locks += part.locks

    def _partition_groups(self, conn, rule: Rule, partition: str) -> list:
        """The partition's ids grouped per day their archive period ends, as the row path's
        re-check groups a batch: (that day in Paris, ids, the instant it starts)."""
        rows = f'SELECT id, "{rule.clock_column}" AS clock FROM ONLY {self._qualified(partition)}'
        return self._grouped_by_end_day(conn, rule, rows, {})

    def _read_partition_rows(self, reader, columns: str, partition: str, ids: list[int]):
        """The rows with these ids (sorted) from the partition itself, as Arrow (the row path's
        read: binary COPY, the ids written into the statement), ``columns`` in the table's order."""
        import pyarrow as pa
        import pyarrow.compute as pc

        first, last = int(ids[0]), int(ids[-1])
        where = (
            f"id BETWEEN {first} AND {last}"
            if last - first < 2 * len(ids)
            else f"id = ANY('{id_array([int(i) for i in ids])}'::bigint[])"
        )
        with reader.cursor() as cur:
            cur.execute(f"SELECT {columns} FROM ONLY {self._qualified(partition)} WHERE {where} ORDER BY id")
            table = cur.fetch_arrow_table()
        if table.num_rows != len(ids):
            table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(ids, pa.int64())))
        return typed(table)

    def _detach(self, autocommit_conn, table: str, partition: str) -> None:
        """Step 3 (retention.archive.partition_detach.detach)."""
        partition_detach.detach(autocommit_conn, self.schema, table, partition)

    def _abandon_uploads(self, control, ctx: RunContext, rule: Rule, batch: Batch) -> None:
        """The objects of a partition that stays: removed now (nothing is committed, no Object
        Lock applied yet), their intents 'abandoned', as recover() removes a crash's orphans. A
        crash here leaves them to recover()."""
        uploads = [
            (group.manifest_id, rule.name, rule.table, group.key, [t for _, t in group.doc_pairs], group.ids)
            for group in batch.groups
        ]
        self._remove_orphans(control, ctx, uploads)
        control.commit()
