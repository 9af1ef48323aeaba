"""The archive-then-delete engine (DESIGN.md §4), the same for every purpose: what a run of a
purpose does, from its plan to its last batch.

``RetentionEngine`` holds a run's state (the policy, the purpose, the store, the planner, the
approved plan) and is made of the protocol's parts, one module each:

- here: the plan (counts, table sizes, id ranges, the policy's fingerprint), its check, the run
  over the purpose's rules (or one unit of a rule) under the purpose's advisory lock;
- ``protocol``: the batches of one rule, lock -> re-check -> read -> intents -> upload ->
  delete -> commit, two in flight;
- ``recovery``: what a crashed run left, finished first;
- ``purge``: the objects whose archive period has ended.

Below them: ``run`` (the run's context, units, errors), ``locks``, ``batch`` (the batch value),
``documents`` (file disposal), ``store`` (S3), ``parquet``, ``rewrite`` (an object rewritten
without some rows), ``db``. Heavy imports (pyarrow, psycopg; adbc when a run opens its
reader) happen here, never at DAG-parse time.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from retention.archive.batch import _Allowance
from retention.archive.db import connect, reader_opened_meanwhile
from retention.archive.documents import dispose_documents
from retention.archive.locks import (
    BATCH_LOCK_TIMEOUT,
    acquire_purpose_lock,
    purpose_lock_name,
    release_purpose_lock,
    unit_batches_lock_name,
    wait_for_unit_batches,
)
from retention.archive.partition_plan import attached_state
from retention.archive.partitions import PartitionRetirement
from retention.archive.protocol import BatchProtocol
from retention.archive.purge import ArchivePurge
from retention.archive.recovery import Recovery
from retention.archive.run import (
    MAX_ID,
    MAX_UNITS_PER_RULE,
    RANGE_ROWS,
    PlanMismatchError,
    PurposeLockedError,
    RetentionError,
    RunContext,
    Unit,
    deletions_audited,
    refuse_future,
)
from retention.archive.store import ArchiveStore
from retention.archive.vacuum import dead_share_threshold, flush_statistics, vacuum_if_bloated
from retention.id_sets import id_array as _id_array
from retention.planner import IdRange, Plan, Planner, RuleOutcome, RuleStatements
from retention.policy import Policy, Purpose, fingerprint

log = logging.getLogger(__name__)


class RetentionEngine(BatchProtocol, PartitionRetirement, Recovery, ArchivePurge):
    """Runs one purpose's rules against a source database and an archive store."""

    def __init__(
        self, policy: Policy, purpose: Purpose | str, dsn: str, store: ArchiveStore, lock_timeout: float = 30.0
    ):
        self.policy = policy
        self.purpose: Purpose = policy.purpose(purpose) if isinstance(purpose, str) else purpose
        self.purpose_name = self.purpose.name
        self.dsn = dsn
        self.store = store
        self.lock_timeout = lock_timeout
        self.tz = policy.tz
        self.schema = policy.source_schema
        self._planner: Planner | None = None
        self._plan: Plan | None = None
        self._allowances: dict[str, _Allowance] = {}
        self._statements: dict[str, RuleStatements] = {}
        # A unit's try: its batches' transactions hold this lock shared (retention.archive.locks).
        self._unit_batches: str | None = None

    def _connect(self, autocommit: bool = False) -> psycopg.Connection:
        return connect(self.dsn, f"retention:{self.purpose_name}", autocommit)

    def _dispose_documents(self, control) -> int:
        """The source files of the purpose's committed rows (retention.archive.documents)."""
        return dispose_documents(control, self.store, self.schema, self.purpose_name)

    def planner(self, conn: psycopg.Connection) -> Planner:
        if self._planner is None:
            self._planner = Planner.load(conn, self.policy, self.purpose_name)
            if not conn.autocommit:
                conn.commit()
        return self._planner

    def previews(self, ctx: RunContext) -> bool:
        """Nothing changes on a dry run, nor ever while the purpose is in preview mode."""
        return ctx.dry_run or not self.purpose.enforced

    def plan(self, ctx: RunContext) -> list[RuleOutcome]:
        """What a run at the logical date does, per rule, changing nothing (also the preview)."""
        refuse_future(ctx.logical_date)
        with self._connect(autocommit=True) as conn:
            return self.planner(conn).plan(conn, ctx.logical_date)

    def table_sizes(self, tables: list[str]) -> dict[str, int]:
        with self._connect(autocommit=True) as conn:
            return self._table_sizes(conn, tables)

    def _table_sizes(self, conn, tables: list[str]) -> dict[str, int]:
        return {
            t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.schema, t))).fetchone()[0]
            for t in sorted(set(tables))
        }

    def make_plan(self, ctx: RunContext, *, range_rows: int = RANGE_ROWS, audit: bool = False) -> Plan:
        """The run's plan, evaluated once (the ``plan`` task): projected counts per rule, table
        sizes, the id ranges of rules larger than ``range_rows``, the policy's fingerprint. With
        ``audit`` (an enforced run) the ids of the held and waiting rows go to the audit log,
        once per run of the purpose."""
        refuse_future(ctx.logical_date)
        with self._connect(autocommit=True) as conn:
            # Read before the counts: a batch committed in between is spent again (the safe side).
            audited_before = deletions_audited(conn, ctx.run_id, self.purpose_name)
            plan, exceptions = self._make_plan(conn, ctx, range_rows)
            plan.audited_before = audited_before
        if audit and not self.previews(ctx):
            with self._connect() as conn:
                self._audit_exceptions(conn, ctx, exceptions)
        return plan

    def _make_plan(self, conn, ctx: RunContext, range_rows: int | None = RANGE_ROWS, *, sizes: bool = True):
        """(the plan, per rule the held and waiting ids found). A direct run's own plan skips
        the table sizes and ranges (``range_rows`` None): it neither gates nor splits."""
        planner = self.planner(conn)
        outcomes, exceptions = [], {}
        for rule in self.purpose.rules:
            outcome, exceptions[rule.name] = planner.count(conn, rule, ctx.logical_date, projected=True)
            outcomes.append(outcome)
        ranges: dict[str, list[IdRange]] = {
            rule.name: self._unit_ranges(
                conn,
                rule,
                ctx.logical_date,
                max(range_rows, -(-o.deletable // MAX_UNITS_PER_RULE)),
                [i for _, ids in exceptions[rule.name] for i in ids],
            )
            for rule, o in zip(self.purpose.rules, outcomes, strict=True)
            if range_rows is not None and o.deletable > range_rows
        }
        for o in outcomes:
            if o.rule in ranges:
                ranges[o.rule] = _within_count(o.rule, ranges[o.rule], o.deletable)
        if not conn.autocommit:
            conn.commit()
        plan = Plan(
            purpose=self.purpose_name,
            logical_date=ctx.logical_date,
            policy_sha256=fingerprint(self.policy, self.purpose),
            rules=outcomes,
            table_rows=self._table_sizes(conn, [o.table for o in outcomes]) if sizes else {},
            ranges=ranges,
        )
        if not conn.autocommit:
            conn.commit()
        return plan, exceptions

    def _audit_exceptions(self, conn, ctx: RunContext, exceptions: dict[str, list]) -> None:
        """Held and waiting rows are kept and reported (ids only) in the audit log: once per run
        of the purpose (a retried plan task finds them written)."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"retention:audit:{self.purpose_name}",))
            written = conn.execute(
                "SELECT 1 FROM retention.audit_log WHERE run_id = %s AND purpose = %s AND action IN ('held', 'waiting')"
                " LIMIT 1",
                (ctx.run_id, self.purpose_name),
            ).fetchone()
            if written:
                return
            rules = {r.name: r for r in self.purpose.rules}
            for rule_name, found in exceptions.items():
                for held, ids in found:
                    self._audit(conn, ctx, rule_name, rules[rule_name].table, "held" if held else "waiting", ids)

    def check_plan(self, plan: Plan, ctx: RunContext) -> None:
        """Refuse to execute a plan that is not this run's: another purpose or date, or made with
        another policy (the file or a rule's SQL changed since the plan was approved)."""
        if plan.purpose != self.purpose_name or plan.logical_date != ctx.logical_date:
            raise PlanMismatchError(
                f"the plan is for purpose {plan.purpose!r} at {plan.logical_date.isoformat()}, this run is "
                f"{self.purpose_name!r} at {ctx.logical_date.isoformat()}; nothing was changed"
            )
        current = fingerprint(self.policy, self.purpose)
        if plan.policy_sha256 != current:
            raise PlanMismatchError(
                f"the retention policy of purpose {self.purpose_name!r} changed since the plan was approved "
                f"(policy fingerprint {plan.policy_sha256[:12]} at planning, {current[:12]} now): the approved "
                "plan is not what this run would execute. Nothing was changed; start a new run to plan and "
                "check again."
            )

    def archive_and_delete(
        self, ctx: RunContext, plan: Plan | None = None, unit: Unit | None = None
    ) -> list[RuleOutcome]:
        """Archive then delete the due rows of the purpose (in preview mode nothing, but the
        partitions an interrupted run left detached attached again: put_back_in_preview), at most
        what the approved ``plan`` counted per rule (rows found beyond it stay for the next run,
        reported as ``beyond_plan``); without a plan (a direct call) the run plans first, under
        its lock. With a ``unit``, only that rule and id range, under the purpose's lock in
        shared mode and without recovery (the run's ``recover_before_units`` did it)."""
        refuse_future(ctx.logical_date)
        if plan is not None:
            self.check_plan(plan, ctx)
        if self.previews(ctx):
            if unit is not None:  # the plan's counts are the run's (retention.tasks.merge_units)
                return []
            self.put_back_in_preview(ctx)
            return plan.rules if plan is not None else self.plan(ctx)
        if unit is not None and plan is None:
            raise ValueError("a unit is a share of an approved plan: pass the plan")
        self.store.preflight()
        shared = unit is not None
        plan_given = plan is not None
        with (
            reader_opened_meanwhile(self.dsn) as opened_reader,  # first: it opens while the rest goes on
            self._connect() as control,
            self._connect() as second,
            self._connect(autocommit=True) as intents,
        ):
            if shared:
                acquire_purpose_lock(control, self.purpose_name, self.lock_timeout, shared=True)
                self._acquire_unit_lock(control, ctx, unit)
                self._unit_batches = unit_batches_lock_name(self._unit_lock_name(ctx, unit))
            else:
                self._acquire_purpose_lock(control)
            try:
                self.planner(control)
                if not shared:
                    self.recover(control, ctx)
                if plan is None:
                    plan, exceptions = self._make_plan(control, ctx, None, sizes=False)
                    self._audit_exceptions(control, ctx, exceptions)
                self._plan = plan
                reader = opened_reader()
                rules = [r for r in self.purpose.rules if unit is None or r.name == unit.rule]
                outcomes = []
                for rule in rules:
                    approved = plan.rule(rule.name)
                    first_id, last_id = (unit.first_id, unit.last_id) if unit is not None else (1, MAX_ID)
                    count = approved.deletable if unit is None or unit.rows is None else unit.rows
                    if plan_given:  # approved before this try: an earlier try of the run may have spent some
                        if shared:  # an earlier try's batch still open (its control session ended) first
                            wait_for_unit_batches(control, self._unit_lock_name(ctx, unit))
                        count -= self._deleted_by_the_run(control, ctx, plan, unit, rule.name, first_id, last_id)
                    self._allowances[rule.name] = _Allowance(first_id, last_id, max(count, 0))
                    # The rule's statements, built once: the batches only execute them.
                    self._statements[rule.name] = self._planner.statements(rule, ctx.logical_date)
                    # Whole partitions first (a partitioned table only), then the row path for the rest.
                    retired = self._retire_partitions(control, second, intents, reader, rule, ctx)
                    outcome = self._run_rule((control, second), intents, reader, rule, ctx)
                    retired.add_to(outcome)
                    self._note_beyond_plan(control, rule, ctx, outcome)
                    outcomes.append(outcome)
                self._vacuum_after_deletes((control, second, intents), reader, outcomes)
            finally:
                second.rollback()
                control.rollback()
                if shared:
                    release_purpose_lock(control, self._unit_lock_name(ctx, unit))
                release_purpose_lock(control, self.purpose_name, shared=shared)
                self._allowances.clear()
                self._statements.clear()
                self._unit_batches = None
        return outcomes

    @staticmethod
    def _unit_lock_name(ctx: RunContext, unit: Unit) -> str:
        return f"unit:{ctx.purpose}:{ctx.run_id}:{unit.rule}:{unit.first_id}"

    def _acquire_unit_lock(self, control, ctx: RunContext, unit: Unit) -> None:
        """One try of a unit at a time: a try Airflow gave up on (its heartbeat lost) may still
        run beside its retry, each with the unit's whole count. The retry waits for it, then fails
        (Airflow tries again later); the purpose's shared lock is let go with it."""
        try:
            acquire_purpose_lock(
                control,
                self._unit_lock_name(ctx, unit),
                self.lock_timeout,
                on_timeout=f"an earlier try of unit {unit.as_dict()} of run {ctx.run_id} still runs; nothing was "
                "changed by this try",
            )
        except BaseException:
            release_purpose_lock(control, self.purpose_name, shared=True)
            raise

    def _deleted_by_the_run(
        self, control, ctx: RunContext, plan: Plan, unit: Unit | None, rule_name: str, first_id: int, last_id: int
    ) -> int:
        """Rows of the rule with ids in ``first_id..last_id`` that the run's earlier tries deleted
        since the plan was made (their audit rows, written in each batch's transaction; those
        committed before it are the plan's ``audited_before``: it counted the rows left; a unit
        that is not one of this plan's, from an earlier plan of the run, spends them all): spent
        from the approved count, so a retried try never deletes more than the plan approved, rows
        due since then included.
        Read after them, the rows of partitions an earlier try detached and did not drop (its
        retirement still 'detaching': a unit's retry runs no recovery): out of the table, not yet
        audited, they go when a recovery finishes the retirement, under this run.

        An audit row whose ids the housekeeping forgot (its object purged since, or 30 days
        past: retention.forget_audit_ids_past_archive) counts all its rows as this range's: a
        retry then deletes less, never more (found by a review: a backfill's try retried after
        the purge of its objects counted none of their rows and deleted the whole count again)."""
        # A first try has no earlier try's partitions to spend: it leaves the other units' alone.
        detached = self._detached_by_the_run(control, ctx, rule_name, first_id, last_id) if ctx.attempt > 1 else 0
        (deleted,) = control.execute(
            "SELECT coalesce(sum(CASE WHEN a.record_ids IS NULL THEN a.record_count ELSE"
            " (SELECT count(*) FROM unnest(a.record_ids) AS i(id) WHERE i.id BETWEEN %s AND %s) END), 0)::bigint"
            " FROM retention.audit_log AS a WHERE a.run_id = %s AND a.purpose = %s AND a.rule = %s"
            " AND a.action IN ('archived_and_deleted', 'deleted') AND a.id <> ALL(%s::bigint[])",
            (first_id, last_id, ctx.run_id, self.purpose_name, rule_name, self._audited_before(plan, unit)),
        ).fetchone()
        control.commit()
        return deleted + detached

    @staticmethod
    def _audited_before(plan: Plan, unit: Unit | None) -> list[int]:
        """The deletions the plan counted without (its ``audited_before``), for a unit the plan
        made; none for one of an earlier plan of the run (its ``plan`` task cleared alone: the
        units are still the earlier plan's, whose counts included those rows). A unit tells which
        by the number of deletions its own plan counted without (``Unit.audited_before``), not by
        its figures: an earlier plan's unit may have the new plan's (found by a review: a rule in
        one unit, holds released before the new plan, spent none of its killed try's deletions)."""
        if unit is None or unit.audited_before == len(plan.audited_before):
            return plan.audited_before
        return []

    def _detached_by_the_run(self, control, ctx: RunContext, rule_name: str, first_id: int, last_id: int) -> int:
        """Rows with ids in ``first_id..last_id`` of the partitions of the rule that the run began
        to retire (step 2 recorded, 'detaching') and has not dropped yet, in the caller's
        transaction: detached, detach pending, or still attached (a zombie try's detach may still
        be under way and take them out of the table after this count; if it does not, this try
        leaves them for the next run). One being dropped by another unit of the run is waited for
        (its drop is audited, read after this); one whose lock is not granted in time fails the
        try (nothing changed): its rows could be this unit's."""
        retirements = control.execute(
            "SELECT table_name, partition_name FROM retention.partition_retirements"
            " WHERE run_id = %s AND purpose = %s AND rule = %s AND state = 'detaching' ORDER BY id",
            (ctx.run_id, self.purpose_name, rule_name),
        ).fetchall()
        rows = 0
        for table, partition in retirements:
            if attached_state(control, self.schema, table, partition) == "gone":
                continue  # dropped: its rows are audited
            try:
                with control.transaction():  # a savepoint: dropped meanwhile, its rows are audited
                    control.execute(f"SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'")
                    (n,) = control.execute(
                        f"SELECT count(*) FROM ONLY {self._qualified(partition)} WHERE id BETWEEN %s AND %s",
                        (first_id, last_id),
                    ).fetchone()
                rows += n
            except psycopg.errors.UndefinedTable:
                continue
            except psycopg.errors.LockNotAvailable:
                control.rollback()
                raise PurposeLockedError(
                    f"partition {partition} of {table}, detached by run {ctx.run_id} and not dropped, stayed locked "
                    f"for {BATCH_LOCK_TIMEOUT}: its rows may be this unit's; nothing was changed by this try"
                ) from None
        return rows

    def _vacuum_after_deletes(self, connections, reader, outcomes: list[RuleOutcome]) -> None:
        """VACUUM (ANALYZE) the tables the row path deleted from, when their dead share passes
        the threshold (retention.archive.vacuum); reported on the table's last rule."""
        threshold = dead_share_threshold()
        row_deletes = {o.table: o for o in outcomes if o.deleted - o.partitions.get("rows", 0) > 0}
        if threshold is None or not row_deletes:
            return
        reader.commit()  # no snapshot of ours may keep the dead rows alive
        control, second, autocommit = connections
        flush_statistics(control, second)
        for table, outcome in row_deletes.items():
            outcome.vacuum = vacuum_if_bloated(autocommit, self.schema, table, threshold)

    def recover_before_units(self, ctx: RunContext, plan: Plan) -> dict[str, int]:
        """The first task of a run spread over units: under the purpose's lock held exclusively,
        finish what a crashed run left (orphan uploads, locks, source files); the units then
        hold the lock in shared mode, so no recovery runs while one of them uploads. The policy's
        checks first (Planner.load: a hold naming a table renamed since, a coverage entry naming no
        link), as archive_and_delete does: the recovery deletes (a rewrite's old object, a detached
        partition), and ran before any of them (found by a review)."""
        refuse_future(ctx.logical_date)
        self.check_plan(plan, ctx)
        if self.previews(ctx):
            self.put_back_in_preview(ctx)
            return {"orphans_removed": 0, "locks_applied": 0}
        self.store.preflight()
        with self._connect() as control:
            self._acquire_purpose_lock(control)
            try:
                self.planner(control)
                return self.recover(control, ctx)
            finally:
                control.rollback()
                release_purpose_lock(control, self.purpose_name)

    @property
    def _lock_name(self) -> str:
        return purpose_lock_name(self.purpose_name)

    def _acquire_purpose_lock(self, conn: psycopg.Connection) -> None:
        """One run per purpose at a time: wait up to lock_timeout, then stop with a clear error."""
        acquire_purpose_lock(conn, self.purpose_name, self.lock_timeout)

    def _tier_of_key(self, key: str) -> str:
        prefix = key.split("/", 1)[0]
        for name, tier in self.store.storage.tiers.items():
            if tier.prefix == prefix:
                return name
        raise RetentionError(f"archive key {key!r} is under no configured tier prefix")

    def _audit(
        self,
        conn,
        ctx: RunContext,
        rule_name: str,
        table: str,
        action: str,
        records: int | list[int],
        *,
        key: str | None = None,
        byte_count: int = 0,
    ) -> None:
        """One audit row, in the caller's transaction: ``records`` is a count, or the ids themselves."""
        conn.execute(_AUDIT_INSERT, self._audit_row(ctx, rule_name, table, action, records, key, byte_count))

    def _audit_objects(self, cur, ctx: RunContext, rule_name: str, table: str, objects: list[tuple]) -> None:
        """One 'archived_and_deleted' audit row per object ``(ids, key, bytes)``, in the caller's
        transaction, sent at once (a batch ending on 365 days has 365 objects)."""
        cur.executemany(
            _AUDIT_INSERT,
            [
                self._audit_row(ctx, rule_name, table, "archived_and_deleted", ids, key, byte_count)
                for ids, key, byte_count in objects
            ],
        )

    def _audit_row(self, ctx: RunContext, rule_name: str, table: str, action: str, records, key, byte_count) -> tuple:
        ids = records if isinstance(records, list) else None
        return (
            ctx.run_id,
            ctx.logical_date,
            self.purpose_name,
            rule_name,
            table,
            action,
            len(ids) if ids is not None else records,
            byte_count,
            key,
            _id_array(ids) if ids is not None else None,
        )


def _within_count(rule: str, ranges: list[IdRange], count: int) -> list[IdRange]:
    """A rule's ranges, their rows adding up to at most the rule's planned ``count``: the ranges
    are cut by another statement than the count, and a row due between the two (a hold released,
    a row written with an old clock) was in the ranges only; each unit may delete its range's
    rows, so the units would delete more than the count the gate, the guard and the approver
    judged. The last ranges give up the difference (what they then find is left for the next run)."""
    left, within = count, []
    for r in ranges:
        rows = min(r.rows, max(left, 0))
        within.append(IdRange(r.first_id, r.last_id, rows))
        left -= rows
    if sum(r.rows for r in ranges) > count:
        log.warning(
            "rule %s: its ranges counted %d rows, its plan %d (rows due while the plan was made): the units"
            " delete at most the plan's",
            rule,
            sum(r.rows for r in ranges),
            count,
        )
    return within


_AUDIT_INSERT = (
    "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action,"
    " record_count, byte_count, object_key, record_ids)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::bigint[])"
)
