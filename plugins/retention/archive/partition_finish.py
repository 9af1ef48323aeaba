"""Step 4 of a partition's retirement, and what a crash left of one (retention.archive.partitions):
the detached table re-checked under lock and dropped with its manifest and audit rows, or
attached again; the retirements a crash left open finished by the next run's recovery, or put
back by a run of a purpose in preview mode (docs/partitions.md).

``PartitionFinishing`` is one part of ``retention.archive.engine.RetentionEngine`` (through
``PartitionRetirement``); the rule's check it runs again is ``PartitionRetirement._check_partition``.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from retention.archive import partition_detach
from retention.archive.batch import BATCH_WORK_MEM
from retention.archive.locks import BATCH_LOCK_TIMEOUT, LOCK_HOLDS, release_purpose_lock
from retention.archive.partition_plan import attached_state
from retention.archive.purge import archive_split
from retention.archive.run import RetentionError, RunContext
from retention.id_sets import id_array
from retention.policy import Rule

log = logging.getLogger(__name__)


class PartitionFinishing:
    """Step 4, recovery and the preview's put-back of partition retirements (a part of RetentionEngine)."""

    def _finish_detached(
        self, control, retirement_id: int, lock_timeout: str = BATCH_LOCK_TIMEOUT, finished_by: str | None = None
    ) -> bool:
        """Step 4 for a detached partition: re-checked and compared under lock, then dropped with
        the manifest committed and the audit written, in one transaction; or attached again
        ('kept') when a hold or a write reached its rows since they were archived, or when
        PostgreSQL refuses the drop (an object that depends on the partition: a foreign key to it,
        a sequence it owns that the table uses, a function's body). ``finished_by``: the run
        that finishes what an interrupted run left (its record says so); else the record's own."""
        (run_id, logical_date, rule_name, table, partition, bound, row_count, checksum, manifest_ids) = control.execute(
            "SELECT run_id, logical_date, rule, table_name, partition_name, partition_bound, row_count,"
            " rows_checksum, manifest_ids FROM retention.partition_retirements WHERE id = %s AND state = 'detaching'",
            (retirement_id,),
        ).fetchone()
        rule = next((r for r in self.purpose.rules if r.name == rule_name), None)
        if rule is None:
            # The rule that retired it is no longer the purpose's (renamed, removed since): nothing
            # tells that the policy still lets the partition go whole (found by a review: the
            # recovery stopped on the lookup, every run after it too, the partition out of the table).
            log.warning(
                "partition %s of %s stays: rule %r, which retired it, is no longer in the policy; attached"
                " again, its rows take the row path",
                partition,
                table,
                rule_name,
            )
            try:
                control.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
                self._attach_again(control, retirement_id, table, partition, bound, finished_by)
            except BaseException:
                control.rollback()
                raise
            return False
        ctx = RunContext(self.purpose_name, run_id, logical_date)
        if rule.name not in self._statements:
            self._statements[rule.name] = self.planner(control).statements(rule, logical_date)
        try:
            control.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
            control.execute(f"SET LOCAL work_mem = '{BATCH_WORK_MEM}'")
            control.execute(LOCK_HOLDS)
            control.execute(f"LOCK TABLE {self._qualified(partition)} IN ACCESS EXCLUSIVE MODE")
            check = self._check_partition(control, rule, partition, fingerprint=checksum is not None)
            same_rows = check.rows == row_count and (checksum is None or check.fingerprint == checksum)
            if not (check.whole and same_rows):
                log.warning(
                    "partition %s of %s stays: since it was archived, held=%d waiting=%d, rows %d -> %d%s;"
                    " attached again",
                    partition,
                    table,
                    check.held,
                    check.waiting,
                    row_count,
                    check.rows,
                    "" if same_rows else " (rows changed)",
                )
                self._attach_again(control, retirement_id, table, partition, bound, finished_by)
                return False
            if finished_by is not None and not self._archived_as_the_rule_says(
                control, rule, partition, manifest_ids, logical_date
            ):
                log.warning(
                    "partition %s of %s stays: the policy changed the rule's tier or archive period since an"
                    " interrupted run archived it; attached again, its rows take the row path",
                    partition,
                    table,
                )
                self._attach_again(control, retirement_id, table, partition, bound, finished_by)
                return False
            # What a DELETE would do that a DROP does not, added since step 2 (a DBA's DDL that
            # waited for the partition's lock of step 1, or came after it): attached again.
            reasons = self._delete_does_more(control, table, partition)
            if reasons:
                log.warning(
                    "partition %s of %s stays: since it was checked, %s; attached again, its rows take the row path",
                    partition,
                    table,
                    reasons,
                )
                self._attach_again(control, retirement_id, table, partition, bound, finished_by)
                return False
            control.execute("SAVEPOINT before_the_drop")
            try:
                self._commit_retirement(control, ctx, rule, partition, manifest_ids, row_count)
                control.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(self.schema, partition)))
            except psycopg.errors.DependentObjectsStillExist as refused:
                control.execute("ROLLBACK TO SAVEPOINT before_the_drop")
                # The detail names the dependent objects (catalog names, no row's content).
                log.warning(
                    "partition %s of %s stays: %s; attached again, its rows take the row path",
                    partition,
                    table,
                    refused.diag.message_detail or refused.diag.message_primary,
                )
                self._attach_again(control, retirement_id, table, partition, bound, finished_by)
                return False
            self._close_retirement(control, retirement_id, "dropped", finished_by)
            control.commit()
        except BaseException:
            control.rollback()
            raise
        return True

    def _archived_as_the_rule_says(self, control, rule: Rule, partition: str, manifest_ids, logical_date) -> bool:
        """Whether the retirement's objects are those the rule asks for now: one per day its rows'
        archive period ends (the days not over at the logical date), in the rule's tier; none for
        tier none. An interrupted run archived them under the policy of its day: a tier made
        probative since, or an archive period lengthened, would drop rows with no copy, or with
        one purged too early, where the row path's crashed batch leaves them to the next run."""
        groups = self._partition_groups(control, rule, partition) if rule.archived else []
        split = archive_split(control, self.policy, rule, groups, logical_date)
        wanted = sorted((purge_after, ids) for (_, ids, purge_after), archived in split if archived)
        made = control.execute(
            "SELECT purge_after, record_ids, tier FROM retention.archive_manifest WHERE id = ANY(%s::bigint[])",
            (id_array(manifest_ids),),
        ).fetchall()
        return all(tier == rule.tier for *_, tier in made) and sorted((p, sorted(ids)) for p, ids, _ in made) == wanted

    def _attach_again(
        self, control, retirement_id: int, table: str, partition: str, bound: str, finished_by: str | None = None
    ) -> None:
        """The detached partition attached again with its bound, its record 'kept'; committed."""
        control.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} ").format(
                sql.Identifier(self.schema, table), sql.Identifier(self.schema, partition)
            )
            + sql.SQL(bound)
        )
        self._close_retirement(control, retirement_id, "kept", finished_by)
        control.commit()

    def _commit_retirement(
        self, control, ctx: RunContext, rule: Rule, partition: str, manifest_ids, row_count: int
    ) -> None:
        """The manifest rows 'committed' and the row path's audit rows: one per object, and one
        for the rows deleted without archive (tier none, or their archive period already over).
        The object's ids go from the manifest row to its audit row inside the server."""
        audit_row = (ctx.run_id, ctx.logical_date, self.purpose_name, rule.name, rule.table)
        with control.cursor() as cur:
            if self._planner.may_be_detached(rule.table):
                # Who its rows belonged to before a delete cleared their link goes with them, as a
                # row path delete's entries do.
                cur.execute(
                    "DELETE FROM retention.detached_owners WHERE table_name = %s"
                    f" AND record_id IN (SELECT id FROM ONLY {self._qualified(partition)})",
                    (rule.table,),
                )
            committed = cur.execute(
                "UPDATE retention.archive_manifest SET state = 'committed', committed_at = now()"
                " WHERE id = ANY(%s::bigint[]) AND state = 'uploading' RETURNING cardinality(record_ids)",
                (id_array(manifest_ids),),
            ).fetchall()
            if len(committed) != len(manifest_ids):
                raise RetentionError(
                    f"{rule.table}: {len(committed)} of the {len(manifest_ids)} manifest rows of partition "
                    f"{partition} are still 'uploading'; nothing dropped"
                )
            if manifest_ids:
                cur.execute(
                    "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action,"
                    " record_count, byte_count, object_key, record_ids)"
                    " SELECT %s, %s, %s, %s, %s, 'archived_and_deleted', cardinality(m.record_ids), m.byte_size,"
                    " m.object_key, m.record_ids FROM retention.archive_manifest AS m"
                    " WHERE m.id = ANY(%s::bigint[]) ORDER BY m.id",
                    audit_row + (id_array(manifest_ids),),
                )
            archived = sum(n for (n,) in committed)
            if archived == row_count:
                return  # every row is in an object: none was deleted without archive
            cur.execute(
                "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action,"
                " record_count, byte_count, record_ids)"
                " SELECT %s, %s, %s, %s, %s, 'deleted', count(*), 0, array_agg(p.id)"
                f" FROM (SELECT id FROM ONLY {self._qualified(partition)} ORDER BY id) AS p"
                + (
                    " WHERE p.id NOT IN (SELECT unnest(m.record_ids) FROM retention.archive_manifest AS m"
                    " WHERE m.id = ANY(%s::bigint[]))"
                    if manifest_ids
                    else ""
                )
                + " HAVING count(*) > 0",
                audit_row + ((id_array(manifest_ids),) if manifest_ids else ()),
            )

    @staticmethod
    def _close_retirement(control, retirement_id: int, state: str, finished_by: str | None = None) -> None:
        """The record closed, with the run that closed it (its own run unless ``finished_by``)."""
        control.execute(
            "UPDATE retention.partition_retirements SET state = %s, finished_at = now(),"
            " finished_by = coalesce(%s, run_id) WHERE id = %s",
            (state, finished_by, retirement_id),
        )

    def _finish_partition_retirements(self, control, ctx: RunContext, *, put_back: bool = False) -> int:
        """What a crash left between the write-ahead record and the drop, finished by the run
        ``ctx`` (recover; each record names it: the run's report lists them): a detach left
        pending finalized, then the detached table re-checked and dropped (or attached again); a
        partition never detached kept (its uploads are orphans). With ``put_back`` (the run of a
        purpose in preview mode: it deletes no record) the detached table is attached again
        instead, its record 'kept', its uploads removed."""
        open_retirements = self._open_retirements(control)
        for retirement_id, table, partition in open_retirements:
            # The interrupted run's detach may still be running in its backend: where it ends counts.
            with psycopg.connect(self.dsn, autocommit=True) as waiter:
                partition_detach.wait_for_detach_in_flight(waiter, self.schema, table, partition)
            where = attached_state(control, self.schema, table, partition)
            control.commit()
            if where == "attached":
                with control.transaction():
                    self._close_retirement(control, retirement_id, "kept", ctx.run_id)
                continue
            if where == "gone":
                raise RetentionError(
                    f"partition {partition} of {table} is gone but its retirement {retirement_id} was never "
                    "recorded as dropped: check the manifest and audit by hand"
                )
            if where == "pending":
                with psycopg.connect(self.dsn, autocommit=True) as finalizer:
                    partition_detach.finalize(finalizer, self.schema, table, partition)
            if put_back:
                self._put_back(control, ctx, retirement_id, table, partition)
                continue
            self._finish_detached(control, retirement_id, finished_by=ctx.run_id)
            log.warning("finished the retirement of partition %s of %s left by an interrupted run", partition, table)
        return len(open_retirements)

    def _open_retirements(self, control) -> list[tuple[int, str, str]]:
        """(id, table, partition) of the purpose's retirements still 'detaching'; committed."""
        open_retirements = control.execute(
            "SELECT id, table_name, partition_name FROM retention.partition_retirements"
            " WHERE purpose = %s AND state = 'detaching' ORDER BY id",
            (self.purpose_name,),
        ).fetchall()
        control.commit()
        return open_retirements

    def _put_back(self, control, ctx: RunContext, retirement_id: int, table: str, partition: str) -> None:
        """A detached partition attached again with the bound it had, no row deleted; then its
        uploads, copies of rows back in the table, removed as a crashed batch's are (recover):
        an erasure of those rows must not leave copies in the bucket."""
        (bound, manifest_ids) = control.execute(
            "SELECT partition_bound, manifest_ids FROM retention.partition_retirements WHERE id = %s",
            (retirement_id,),
        ).fetchone()
        try:
            control.execute(f"SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'")
            self._attach_again(control, retirement_id, table, partition, bound, ctx.run_id)
        except psycopg.Error as refused:
            control.rollback()
            raise RetentionError(
                f"partition {partition} of {table}, left detached by an interrupted run, could not be attached "
                f"again ({refused.diag.message_primary or type(refused).__name__}); no row was deleted: attach it "
                "by hand or enforce the purpose, whose next run finishes its retirement"
            ) from refused
        except BaseException:
            control.rollback()
            raise
        uploads = control.execute(
            "SELECT id, rule, table_name, object_key, document_keys, record_ids FROM retention.archive_manifest"
            " WHERE id = ANY(%s::bigint[]) AND state = 'uploading' ORDER BY id",
            (id_array(manifest_ids),),
        ).fetchall()
        control.commit()
        self._remove_orphans(control, ctx, uploads)
        log.warning(
            "preview mode: partition %s of %s, left detached by an interrupted enforced run, attached again "
            "(no row deleted); its %d uploads removed",
            partition,
            table,
            len(uploads),
        )

    def put_back_in_preview(self, ctx: RunContext) -> int:
        """The one change a run of a purpose in preview mode makes: the partitions an interrupted
        enforced run left detached (their rows in neither the table nor the archive, the
        subject requests of their table stopped) are attached again, under the purpose's lock;
        an enforced run's recovery would drop them, which a preview never does. A dry run of an
        enforced purpose leaves them to that purpose's next run. Returns how many were open."""
        if self.purpose.enforced:
            return 0
        with self._connect() as control:
            if not self._open_retirements(control):
                return 0  # the usual case: no lock taken
            self._acquire_purpose_lock(control)
            try:
                return self._finish_partition_retirements(control, ctx, put_back=True)
            finally:
                control.rollback()
                release_purpose_lock(control, self.purpose_name)
