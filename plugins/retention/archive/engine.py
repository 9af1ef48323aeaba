"""The archive-then-delete engine (DESIGN.md §4), the same for every purpose.

For each rule of a purpose, in policy order (children before parents), in bounded batches:

1. in a transaction, take the legal-hold table in SHARE mode (a hold placed meanwhile waits
   for the commit, or was committed before and is seen), lock the next batch of rows the
   rule's clock and conditions select (``FOR UPDATE SKIP LOCKED``) and the parent rows the
   rule reads (``FOR SHARE``), then re-run the whole rule on the locked ids: expiry, holds,
   waiting children (this statement sees every commit made before the locks);
2. read those rows as Arrow (ADBC, binary protocol) and write one Parquet object per purge
   day (the day the rows' archive period ends, so that each goes on its own day), recorded first as an 'uploading' intent in the manifest, uploaded with a SHA-256
   checksum; files named by ``*_key`` columns are copied beside it;
3. read every object back and verify size, checksum and row count;
4. delete exactly those rows, mark the manifest rows 'committed', write the audit rows and
   the pending file disposals, and commit: all in the one transaction.

Two batches are in flight at most: while batch N is uploaded, read back, deleted and committed
(a worker thread, on N's own connection), batch N+1 is locked, re-checked and read on a second
connection; N's delete still waits for N's verified upload, and N+1 backs off while anyone
waits for N's locks (a hold being placed, a contract set back to running), so nothing
overtakes a writer.

After the commit the probative objects are locked (the verified versions) and the source
files are deleted, unless a row still in the source names them. A crash at
any step leaves the source rows in place; the next run removes the orphan objects of
'uploading' intents and finishes pending disposals and locks, so nothing is lost or
archived twice. A per-purpose advisory lock keeps two runs of a purpose apart (held in
shared mode by the units of one run spread over workers: a recovery never runs beside them).

Heavy imports (pyarrow, psycopg, adbc) happen here, never at DAG-parse time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql
from psycopg.rows import namedtuple_row

from retention import identifiers, processor
from retention.archive import rewrite as object_rewrite
from retention.archive.parquet import document_keys, parquet_bytes, parquet_row_count, typed
from retention.archive.store import ArchiveStore, document_archive_key, object_key
from retention.future_dates import FUTURE_TOLERANCE  # a run dated later than now + this is refused
from retention.id_sets import id_array as _id_array
from retention.id_sets import ids_predicate as _ids_predicate
from retention.planner import MAX_IDS_IN_LOG, IdRange, Plan, Planner, RuleOutcome
from retention.policy import DEFAULT_BATCH_SIZE, Policy, Purpose, Rule, fingerprint
from retention.policy.coverage import covered_records_sql, object_held, owners_of_row_sets, parents_of
from retention.policy.periods import local_date, local_midnight

log = logging.getLogger(__name__)

# How long a batch waits for a row lock (a parent row the application holds) before failing.
BATCH_LOCK_TIMEOUT = "30s"
# The same wait while the previous batch is still uploading (see _run_rule): that batch's
# transaction cannot commit before this one has its locks, so a long wait here could only end
# in the 30 s timeout; after this one the batch is prepared again once the previous has committed.
PIPELINED_LOCK_TIMEOUT = "200ms"
# Larger sorts of a batch (its ids by purge day) stay in memory: 4 MB (the default) spills.
BATCH_WORK_MEM = "64MB"
LOCK_HOLDS = "LOCK TABLE retention.legal_holds IN SHARE MODE"
# Ids run up to this (bigint): the upper bound of a rule's batches when the run is not split.
MAX_ID = 2**63 - 1
# A rule with more deletable rows than this is spread over several units (mapped tasks), one
# per range of ids of about this many rows (retention.dag_factory).
RANGE_ROWS = 250_000
# At most this many units per rule (Airflow's max_map_length is 1024): a smaller range size is
# widened to fit.
MAX_UNITS_PER_RULE = 64
# A batch's objects (one per end day) uploaded at once: parallel requests hide S3's latency.
UPLOAD_THREADS = 4
# The suffix of an object rewritten by a purge (retention.archive.rewrite), replaced at the next.
_PURGE_SUFFIX = re.compile(r"\.purged-\d{4}-\d{2}-\d{2}$")


class RetentionError(RuntimeError):
    """A run stopped on purpose; the message says why and what was (not) changed."""


class PurposeLockedError(RetentionError):
    pass


class FutureLogicalDateError(RetentionError):
    pass


class PlanMismatchError(RetentionError):
    """The approved plan is not the one this run would execute (policy changed, other date)."""


class CommittedBatchError(RetentionError):
    """A step after a batch's commit failed: the rows are archived and deleted; the next run
    finishes the step (locks, file disposals)."""


def refuse_future(logical_date: dt.datetime, now: dt.datetime | None = None) -> None:
    """Airflow takes any logical date (trigger dialog, REST, `dags test`): a run dated in the
    future would apply future cutoffs, deleting and purging before their time."""
    now = now or dt.datetime.now(dt.UTC)
    if logical_date > now + FUTURE_TOLERANCE:
        raise FutureLogicalDateError(
            f"logical date {logical_date.isoformat()} is after now ({now.isoformat(timespec='seconds')}): "
            "a retention run acts as of its logical date, so a future date would delete and purge records "
            "before their time. Nothing was changed; trigger the run with a logical date in the past."
        )


def purpose_lock_name(purpose: str) -> str:
    return f"retention:{purpose}"


def acquire_purpose_lock(
    conn: psycopg.Connection, purpose: str, timeout: float, *, shared: bool = False, on_timeout: str | None = None
) -> None:
    """The purpose's advisory lock (session level), waited for up to ``timeout`` seconds, then
    PurposeLockedError. Exclusive for whatever may remove objects of the purpose (a run's
    recovery of 'uploading' orphans, purges, subject erasures); shared for the units of one run
    (retention.dag_factory), which only add objects: a recovery never runs beside an upload."""
    try_lock = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    deadline = time.monotonic() + timeout
    while True:
        got = conn.execute(f"SELECT {try_lock}(hashtext(%s))", (purpose_lock_name(purpose),)).fetchone()[0]
        if not conn.autocommit:
            conn.commit()
        if got:
            return
        if time.monotonic() >= deadline:
            raise PurposeLockedError(
                on_timeout
                or f"another run of purpose {purpose!r} holds its advisory lock (waited {timeout:.0f}s); "
                "nothing was changed by this run"
            )
        time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))


def release_purpose_lock(conn: psycopg.Connection, purpose: str, *, shared: bool = False) -> None:
    unlock = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
    conn.execute(f"SELECT {unlock}(hashtext(%s))", (purpose_lock_name(purpose),))
    if not conn.autocommit:
        conn.commit()


@dataclass(frozen=True)
class Unit:
    """A share of a run: one rule, its ids ``first_id..last_id``, at most ``rows`` of them (the
    plan's count for that range; None: the rule's whole deletable count)."""

    rule: str
    first_id: int = 1
    last_id: int = MAX_ID
    rows: int | None = None

    def as_dict(self) -> dict:
        return {"rule": self.rule, "first_id": self.first_id, "last_id": self.last_id, "rows": self.rows}


def plan_units(plan: Plan) -> list[list[Unit]]:
    """Per rule, in policy order, the units of the plan: one per id range of a large rule
    (``Plan.ranges``), else one for the whole rule. Each rule has at least one unit, so that the
    rules' mapped tasks chain (a rule with nothing to delete has one unit that deletes nothing)."""
    return [
        [Unit(o.rule, r.first_id, r.last_id, r.rows) for r in plan.ranges.get(o.rule, [])]
        or [Unit(o.rule, rows=o.deletable)]
        for o in plan.rules
    ]


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


@dataclass(frozen=True)
class RunContext:
    """What a run is: which purpose, for which logical date, under which run id.

    ``dry_run`` is what the run does: the per-run param, or the purpose's preview mode."""

    purpose: str
    run_id: str
    logical_date: dt.datetime
    batch_size: int = DEFAULT_BATCH_SIZE
    dry_run: bool = False
    mode: str = "enforce"

    def __post_init__(self) -> None:
        if self.logical_date.tzinfo is None:
            raise ValueError("logical_date must be timezone-aware")
        if not 1 <= self.batch_size <= 1_000_000:
            raise ValueError(f"batch_size must be between 1 and 1,000,000, got {self.batch_size}")
        if self.mode not in ("preview", "enforce"):
            raise ValueError(f"mode must be 'preview' or 'enforce', got {self.mode!r}")


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


def _split_rows(rows: pa.Table, groups: list[tuple[str, list[int], dt.datetime]]) -> list[pa.Table]:
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


def _has_waiters(conn, backend_pid: int) -> bool:
    """Whether a session waits for a lock that the backend ``backend_pid`` holds (pg_locks is
    visible to every role, unlike other sessions' wait events in pg_stat_activity)."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND %s = ANY(pg_blocking_pids(pid)))",
        (backend_pid,),
    ).fetchone()[0]


class RetentionEngine:
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

    # ------------------------------------------------------------------ connections, planner

    def _connect(self, autocommit: bool = False) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, autocommit=autocommit, application_name=f"retention:{self.purpose_name}")
        conn.execute("SET TIME ZONE 'UTC'")
        # Batch statements are short index scans: JIT-compiling them costs ~8 ms each (~250 ms
        # for a rule's count) and saves nothing.
        conn.execute("SET jit = off")
        if not autocommit:
            conn.commit()
        return conn

    def planner(self, conn: psycopg.Connection) -> Planner:
        if self._planner is None:
            self._planner = Planner.load(conn, self.policy, self.purpose_name)
            if not conn.autocommit:
                conn.commit()
        return self._planner

    def previews(self, ctx: RunContext) -> bool:
        """Nothing changes on a dry run, nor ever while the purpose is in preview mode."""
        return ctx.dry_run or not self.purpose.enforced

    # ------------------------------------------------------------------ plan

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
            plan, exceptions = self._make_plan(conn, ctx, range_rows)
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
            o.rule: planner.id_ranges(
                conn, rule, ctx.logical_date, max(range_rows, -(-o.deletable // MAX_UNITS_PER_RULE))
            )
            for rule, o in zip(self.purpose.rules, outcomes, strict=True)
            if range_rows is not None and o.deletable > range_rows
        }
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

    # ------------------------------------------------------------------ archive & delete

    def archive_and_delete(
        self, ctx: RunContext, plan: Plan | None = None, unit: Unit | None = None
    ) -> list[RuleOutcome]:
        """Archive then delete the due rows of the purpose (nothing at all in preview), at most
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
            return plan.rules if plan is not None else self.plan(ctx)
        if unit is not None and plan is None:
            raise ValueError("a unit is a share of an approved plan: pass the plan")
        self.store.preflight()
        shared = unit is not None
        with (
            self._connect() as control,
            self._connect() as second,
            self._connect(autocommit=True) as intents,
            adbc.connect(self.dsn) as reader,
        ):
            if shared:
                acquire_purpose_lock(control, self.purpose_name, self.lock_timeout, shared=True)
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
                rules = [r for r in self.purpose.rules if unit is None or r.name == unit.rule]
                outcomes = []
                for rule in rules:
                    approved = plan.rule(rule.name)
                    self._allowances[rule.name] = (
                        _Allowance(unit.first_id, unit.last_id, approved.deletable if unit.rows is None else unit.rows)
                        if unit is not None
                        else _Allowance(1, MAX_ID, approved.deletable)
                    )
                    outcome = self._run_rule((control, second), intents, reader, rule, ctx)
                    self._note_beyond_plan(control, rule, ctx, outcome)
                    outcomes.append(outcome)
            finally:
                second.rollback()
                control.rollback()
                release_purpose_lock(control, self.purpose_name, shared=shared)
                self._allowances.clear()
        return outcomes

    def recover_before_units(self, ctx: RunContext, plan: Plan) -> dict[str, int]:
        """The first task of a run spread over units: under the purpose's lock held exclusively,
        finish what a crashed run left (orphan uploads, locks, source files); the units then
        hold the lock in shared mode, so no recovery runs while one of them uploads."""
        refuse_future(ctx.logical_date)
        self.check_plan(plan, ctx)
        if self.previews(ctx):
            return {"orphans_removed": 0, "locks_applied": 0}
        self.store.preflight()
        with self._connect() as control:
            self._acquire_purpose_lock(control)
            try:
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

    def _note_beyond_plan(self, control, rule: Rule, ctx: RunContext, outcome: RuleOutcome) -> None:
        """Once the approved count is used up, the deletable rows the run did not take are left
        for the next run: counted, reported, never deleted by this one. Those are the rows cut
        from a batch, and the deletable rows of the range beyond the last batch; not the rows a
        batch kept for its own reasons (the processor did not confirm an erasure): those are
        what the after-gate is there to report."""
        allowance = self._allowances[rule.name]
        if allowance.rows_left > 0:
            return
        query = (
            f"SELECT count(*) FROM ({self._planner.deletable_select(rule)}) AS d WHERE d.id > %(lo)s AND d.id <= %(hi)s"
        )
        params = self._planner.params(ctx.logical_date) | {
            "lo": max(allowance.reached_id, allowance.first_id - 1),
            "hi": allowance.last_id,
        }
        outcome.beyond_plan = allowance.cut + control.execute(query, params).fetchone()[0]
        control.commit()
        if outcome.beyond_plan:
            log.warning(
                "rule %s (%s): %d deletable rows beyond the %d the plan approved are left for the next run",
                rule.name,
                rule.table,
                outcome.beyond_plan,
                self._plan.rule(rule.name).deletable,
            )

    def _planned_outcome(self, rule: Rule) -> RuleOutcome:
        """The rule's outcome as the approved plan counted it (due, held, waiting); the run adds
        what it deletes and archives."""
        return self._plan.rule(rule.name).planned()

    def _run_rule(self, connections, intents, reader, rule: Rule, ctx: RunContext) -> RuleOutcome:
        """The rule's batches, two at a time: while batch N is uploaded, verified, deleted and
        committed by a worker thread (on its own connection), batch N+1 is locked, re-checked and
        read on the other connection. Each batch is deleted and committed in its own transaction
        once its upload is verified, so every guarantee of a batch holds as if they ran one after
        the other."""
        outcome = self._planned_outcome(rule)
        after_id, turn = 0, 0
        in_flight: tuple[Batch, Future] | None = None
        stopping = threading.Event()  # set when the run fails: the batch in flight deletes nothing
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"retention-commit-{rule.name}") as worker:
            try:
                while True:
                    conn = connections[turn % 2]
                    try:
                        batch = self._archive_batch(
                            conn, intents, reader, rule, ctx, after_id, outcome, in_flight and in_flight[0].conn
                        )
                    except _LockBusy:
                        # Someone waits for a lock the batch in flight holds (a legal hold being
                        # placed, a parent row being updated): let that batch commit first.
                        self._tally(outcome, in_flight)
                        in_flight = None
                        batch = self._archive_batch(conn, intents, reader, rule, ctx, after_id, outcome)
                    if in_flight is not None:
                        self._tally(outcome, in_flight)
                        in_flight = None
                    if batch is None:
                        break
                    after_id, turn = batch.last_id, turn + 1
                    in_flight = (batch, worker.submit(self._upload_and_commit, rule, ctx, batch, stopping))
            except BaseException:
                # The worker's connection is its own until it stops: wait for it. Nothing of an
                # uncommitted batch is deleted; its uploaded objects are orphans of 'uploading'
                # intents, removed by the next run (recover).
                if in_flight is not None:
                    stopping.set()
                    wait([in_flight[1]])
                for conn in connections:
                    conn.rollback()
                raise
        log.info(
            "rule %s (%s): due=%d deleted=%d held=%d waiting=%s objects=%d bytes=%d documents=%d kept_shared=%d",
            rule.name,
            rule.table,
            outcome.due,
            outcome.deleted,
            outcome.held,
            outcome.waiting,
            outcome.objects,
            outcome.archive_bytes,
            outcome.documents,
            outcome.documents_kept_shared,
        )
        return outcome

    def _archive_batch(self, control, intents, reader, rule, ctx, after_id, outcome, uploading=None) -> Batch | None:
        """Steps 1-2 of the protocol for the next batch: lock, re-check, read the rows and record
        the upload intents, in a transaction left open (the upload, the delete and the commit
        follow: _upload_and_commit); None, with no transaction open, when done.

        ``uploading`` is the connection of the batch still in flight, if any. This batch must not
        overtake someone who already waits for that batch's locks (the application setting a
        contract back to running): sharing the parent rows' FOR SHARE locks, it could decide on
        the old state and keep the writer waiting one batch more, again and again. So it backs
        off (_LockBusy): the uploading batch commits, the writer goes through, this batch is
        prepared again and sees the change."""
        pipelined = uploading is not None
        try:
            control.execute(f"SET LOCAL lock_timeout = '{PIPELINED_LOCK_TIMEOUT if pipelined else BATCH_LOCK_TIMEOUT}'")
            control.execute(f"SET LOCAL work_mem = '{BATCH_WORK_MEM}'")
            # A hold placed from now on waits for this commit; one committed before is seen below.
            control.execute(LOCK_HOLDS)
            locked = self._lock_batch(control, rule, ctx, after_id)
        except psycopg.errors.LockNotAvailable:
            control.rollback()
            if pipelined:
                raise _LockBusy() from None
            raise
        if not locked:
            control.rollback()
            return None
        if pipelined and _has_waiters(control, uploading.info.backend_pid):
            control.rollback()
            raise _LockBusy()
        control.execute(f"SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'")
        batch = Batch(conn=control, last_id=locked[-1])
        groups = self._within_allowance(rule, self._recheck(control, rule, ctx, locked))
        if rule.erase_at_processor:  # issue 9: only the rows the processor confirmed erased go
            groups = processor.erase_before_delete(control, self.schema, ctx, groups, outcome)
        # A backlog row whose archive period is already over at D is not archived only to be
        # purged: it is deleted like a row of tier 'none'.
        archived = [rule.archived and purge_after > ctx.logical_date for _, _, purge_after in groups]
        # The batch's rows are read once, then split per purge day (the days interleave).
        to_archive = [group for group, archive in zip(groups, archived, strict=True) if archive]
        to_read = sorted(i for _, ids, _ in to_archive for i in ids)
        if to_read:
            rows = _split_rows(self._read_rows(reader, rule, to_read), to_archive)
            self._record_intents(control, intents, rule, ctx, to_archive, rows, batch)
        for (purge_day, ids, _), archive in zip(groups, archived, strict=True):
            if archive:
                batch.archived_until[purge_day] += len(ids)
            else:
                self._dispose_unarchived(control, rule, ids, batch)
            batch.ids += ids
        return batch

    def _upload_and_commit(self, rule: Rule, ctx: RunContext, batch: Batch, stopping: threading.Event) -> Batch:
        """Steps 2-4 (worker thread, the batch's own connection): upload and verify the batch's
        objects, then delete exactly its rows, mark the manifest committed, audit, commit; then
        the Object Locks and file disposals. Counts what it did on the batch. Deletes nothing
        once ``stopping`` is set (the run failed or was stopped meanwhile)."""
        self._upload_batch(batch)  # raises if an upload or its read-back failed: nothing deleted
        if stopping.is_set():
            raise RetentionError(f"{rule.table}: the run stopped before the batch up to id {batch.last_id} was deleted")
        self._delete_rows(batch.conn, rule, ctx, batch)
        batch.conn.commit()
        self._finish_commit(batch.conn, rule, batch)
        return batch

    @staticmethod
    def _tally(outcome: RuleOutcome, in_flight: tuple[Batch, Future]) -> None:
        """Wait for the batch in flight (raising what it raised) and add what it did."""
        batch = in_flight[1].result()
        outcome.deleted += batch.deleted
        outcome.objects += len(batch.objects)
        outcome.archive_bytes += sum(o[1].size for o in batch.objects)
        outcome.documents += len(batch.disposals)
        outcome.documents_kept_shared += batch.documents_kept_shared
        for day, rows in batch.archived_until.items():
            outcome.archived_until[day] = outcome.archived_until.get(day, 0) + rows

    def _lock_batch(self, conn, rule: Rule, ctx: RunContext, after_id: int) -> list[int]:
        """The next batch, within what the plan approved: the rule's (or unit's) id range, and
        no more rows in all than the approved count (the rest is left for the next run)."""
        allowance = self._allowances[rule.name]
        limit = min(ctx.batch_size, allowance.rows_left)
        if limit <= 0:
            return []
        params = self._planner.params(ctx.logical_date) | {
            "after_id": max(after_id, allowance.first_id - 1),
            "until_id": allowance.last_id,
            "batch_size": limit,
        }
        locked = [row[0] for row in conn.execute(self._planner.lock_batch_sql(rule), params).fetchall()]
        if locked:
            allowance.reached_id = max(allowance.reached_id, locked[-1])
        return locked

    def _within_allowance(self, rule: Rule, groups: list[tuple[str, list[int], dt.datetime]]) -> list:
        """The re-checked rows of a batch, cut to what is left of the approved count (counted
        here, not at the lock: the lock also picks rows the re-check keeps)."""
        allowance = self._allowances[rule.name]
        kept = []
        for day, ids, purge_after in groups:
            taken = ids[: max(allowance.rows_left, 0)]
            allowance.cut += len(ids) - len(taken)
            ids = taken
            allowance.rows_left -= len(ids)
            if ids:
                kept.append((day, ids, purge_after))
        return kept

    def _recheck(
        self, conn, rule: Rule, ctx: RunContext, locked: list[int]
    ) -> list[tuple[str, list[int], dt.datetime]]:
        """Re-run the rule on the locked ids, now that the rows, their parents and the holds are
        locked (a new statement sees the latest committed state): a row whose clock moved, that
        is held or has a child stays. This is where holds and waiting children are tested (the
        lock picks by the rule's clock and conditions only). Groups the rest by the day their
        archive period ends: (that day in Paris, ids, the instant it starts)."""
        gone_after = rule.gone_after
        locked_ids, locked_params = _ids_predicate("due.id", locked)
        # Grouped by the clock's local day first: the purge date is computed once per day, not
        # for every row (time-zone arithmetic: half the statement's time at 100,000 rows).
        # Several clock days may end on one day (month ends: Jan 29-31 + 1 month = Feb 28/29).
        query = (
            "SELECT ((day + make_interval(months => %(months)s, days => %(days)s))::date"
            "   ::timestamp AT TIME ZONE %(tz)s) AS purge_after, ids"
            " FROM (SELECT (d.clock AT TIME ZONE %(tz)s)::date AS day, array_agg(d.id) AS ids"
            f"  FROM ({self._planner.deletable_select(rule, id_filter=' AND ' + locked_ids)}) AS d GROUP BY 1) AS x"
        )
        params = (
            self._planner.params(ctx.logical_date)
            | locked_params
            | {"tz": self.policy.timezone, "months": gone_after.months, "days": gone_after.days}
        )
        per_end_day: dict[dt.datetime, list[int]] = {}
        for purge_after, ids in conn.execute(query, params):
            per_end_day.setdefault(purge_after, []).extend(ids)
        return [
            (purge_after.astimezone(self.tz).date().isoformat(), sorted(ids), purge_after)
            for purge_after, ids in sorted(per_end_day.items())
        ]

    def _read_rows(self, reader, rule: Rule, ids: list[int]) -> pa.Table:
        """The rows with these ids (sorted) as Arrow, typed: NUMERIC as decimal128, other
        PostgreSQL extensions as text.

        The ids are written into the statement (integers only, formatted here): a statement
        without parameters is read through COPY in the driver's binary format, twice as fast as
        a prepared one (0.20 s against 0.39 s for 100,000 rows). A dense batch (most ids of its
        range) is read as the range, one index range scan, and the rows of other ids are dropped
        here; sparse ids are looked up with ``= ANY``."""
        first, last = int(ids[0]), int(ids[-1])
        if last - first < 2 * len(ids):
            where = f"id BETWEEN {first} AND {last}"
        else:
            where = f"id = ANY('{_id_array([int(i) for i in ids])}'::bigint[])"
        with reader.cursor() as cur:
            cur.execute(f'SELECT * FROM "{self.schema}"."{rule.table}" WHERE {where} ORDER BY id')
            table = cur.fetch_arrow_table()
        if table.num_rows != len(ids):
            table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(ids, pa.int64())))
        return typed(table)

    def _record_intents(self, control, intents, rule, ctx, groups, tables, batch: Batch) -> None:
        """Record the upload intent of each end day's rows (``groups``), read as ``tables`` in the
        order of their ids, in one transaction (main thread: the connections)."""
        tier = self.store.storage.tiers[rule.tier]
        for (_, ids, _), table in zip(groups, tables, strict=True):
            if table.column("id").to_pylist() != ids:
                raise RetentionError(f"{rule.table}: read {table.num_rows} rows for {len(ids)} locked ids")
        # Whose rows these are (their contract, its customer...): a hold placed on one of them
        # after the live rows are gone still keeps the object (retention.policy.coverage). The rows' own
        # parent columns are in the batch read: only their parents' parents are queried, once
        # for every object of the batch.
        parent_columns = [column for _, column in parents_of(self.policy).get(rule.table, [])]
        owners = owners_of_row_sets(
            control,
            self.policy,
            rule.table,
            [ids for _, ids, _ in groups],
            [{c: pc.unique(table.column(c).drop_null()).to_pylist() for c in parent_columns} for table in tables],
        )
        intents_rows = []
        for (purge_day, ids, purge_after), table, owned in zip(groups, tables, owners, strict=True):
            key = object_key(tier.prefix, self.purpose_name, rule.table, purge_day, ctx.run_id, rule.name, ids[0])
            documents = document_keys(table)
            doc_pairs = [(src, document_archive_key(key, src)) for _, src in documents]
            batch.groups.append(ArchiveGroup(0, key, table, ids, documents, doc_pairs, purge_after))
            intents_rows.append(
                (
                    ctx.run_id,
                    ctx.logical_date,
                    self.purpose_name,
                    rule.name,
                    rule.table,
                    rule.tier,
                    self.store.archive_bucket,
                    key,
                    purge_day[:7],
                    purge_after,
                    purge_after,  # every row of the object ends that day
                    len(ids),
                    _id_array(ids),
                    [t for _, t in doc_pairs],
                    json.dumps(owned),
                    # Keyed hashes of the rows' e-mails and phones: a request by address finds the object.
                    identifiers.locators_literal(table),
                )
            )
        # Committed before any upload (write-ahead): an object uploaded by a batch that never
        # commits is an orphan of an 'uploading' row, removed by the next run.
        with intents.transaction(), intents.cursor() as cur:
            cur.executemany(
                "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,"
                " object_key, state, purge_month, purge_after, earliest_purge_after, row_count, record_ids,"
                " document_keys, owner_ids, identifier_hashes)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'uploading', %s, %s, %s, %s, %s::bigint[], %s, %s::jsonb,"
                " %s::bigint[]) RETURNING id",
                intents_rows,
                returning=True,
            )
            group = len(batch.groups) - len(groups)
            while True:
                batch.groups[group].manifest_id = cur.fetchone()[0]
                group += 1
                if not cur.nextset():
                    break
            if group != len(batch.groups):
                raise RetentionError(f"{rule.table}: {group} upload intents recorded for {len(batch.groups)} objects")

    def _upload_batch(self, batch: Batch) -> None:
        """Step 2-3 for every group of the batch (worker thread, no database): Parquet, file
        copies, upload with checksum, read-back verification. Fills batch.objects and locks.

        A backlog's batch ends on many days (one object each): its objects are uploaded a few
        at a time. The first failure is raised once every upload started has ended; nothing is
        deleted then, and what was uploaded is removed by the next run (its 'uploading' intent)."""
        if len(batch.groups) <= 1:
            uploaded = [self._upload_group(group) for group in batch.groups]
        else:
            with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, len(batch.groups))) as pool:
                uploaded = list(pool.map(self._upload_group, batch.groups))
        for obj, lock in uploaded:
            batch.objects.append(obj)
            if lock is not None:
                batch.locks.append(lock)

    def _upload_group(self, group: ArchiveGroup) -> tuple[tuple, tuple | None]:
        """(the verified object's record, its versions to lock or None) for one group."""
        tier = self.store.storage.tiers[self._tier_of_key(group.key)]
        body = parquet_bytes(group.table)
        group.table = None  # the Arrow rows are not needed any more: free them before the upload
        doc_versions = self.store.copy_documents(group.doc_pairs, tier.storage_class)
        verified = self.store.put_verified(group.key, body, tier.storage_class, len(group.ids), parquet_row_count)
        obj = (group.manifest_id, verified, group.ids, group.documents, group.doc_pairs, doc_versions)
        if not tier.object_lock:
            return obj, None
        versions = [(group.key, verified.version_id)] + [
            (t, v) for (_, t), v in zip(group.doc_pairs, doc_versions, strict=True)
        ]
        return obj, (versions, group.purge_after)

    def _dispose_unarchived(self, control, rule: Rule, ids: list[int], batch: Batch) -> None:
        """Tier 'none': nothing archived, but the files the rows name go with them."""
        key_columns = self._key_columns(control, rule.table)
        if not key_columns:
            return
        rows = control.execute(
            sql.SQL("SELECT id, {cols} FROM {table} WHERE id = ANY(%s::bigint[])").format(
                cols=sql.SQL(", ").join(map(sql.Identifier, key_columns)),
                table=sql.Identifier(self.schema, rule.table),
            ),
            (_id_array(ids),),
        ).fetchall()
        for row in rows:
            batch.disposals += [(rule.table, row[0], source_key, None) for source_key in row[1:] if source_key]

    def _key_columns(self, conn, table: str | None = None) -> list:
        """The ``*_key`` columns (file keys) of one table, or (table, column) of every table."""
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s"
            " AND (%s::text IS NULL OR table_name = %s) AND column_name LIKE '%%\\_key'"
            " ORDER BY table_name, ordinal_position",
            (self.schema, table, table),
        ).fetchall()
        return [r[1] for r in rows] if table else [tuple(r) for r in rows]

    def _delete_rows(self, control, rule: Rule, ctx: RunContext, batch: Batch) -> None:
        """Delete exactly the batch's rows and record it, in the batch's transaction."""
        if not batch.ids:
            return
        where, params = _ids_predicate("id", batch.ids)
        deleted = control.execute(f'DELETE FROM "{self.schema}"."{rule.table}" WHERE {where}', params).rowcount
        if deleted != len(batch.ids):
            raise RetentionError(f"{rule.table}: deleted {deleted} rows, expected {len(batch.ids)}; rolled back")
        with control.cursor() as cur:
            for manifest_id, verified, record_ids, documents, doc_pairs, doc_versions in batch.objects:
                cur.execute(
                    "UPDATE retention.archive_manifest SET state = 'committed', byte_size = %s, sha256 = %s,"
                    " version_id = %s, document_version_ids = %s, committed_at = now()"
                    " WHERE id = %s AND state = 'uploading'",
                    (verified.size, verified.sha256_hex, verified.version_id, doc_versions, manifest_id),
                )
                if cur.rowcount != 1:
                    raise RetentionError(f"manifest row {manifest_id} is no longer 'uploading'; rolled back")
                self._audit(
                    cur,
                    ctx,
                    rule.name,
                    rule.table,
                    "archived_and_deleted",
                    record_ids,
                    key=verified.key,
                    byte_count=verified.size,
                )
                batch.disposals += [
                    (rule.table, record_id, src, target)
                    for (record_id, src), (_, target) in zip(documents, doc_pairs, strict=True)
                ]
            archived_ids = {i for _, _, record_ids, *_ in batch.objects for i in record_ids}
            unarchived = [i for i in batch.ids if i not in archived_ids]
            if unarchived:
                self._audit(cur, ctx, rule.name, rule.table, "deleted", unarchived)
            if batch.disposals:
                cur.executemany(
                    "INSERT INTO retention.document_disposals (run_id, purpose, table_name, record_id, bucket,"
                    " source_key, archive_key) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [
                        (ctx.run_id, self.purpose_name, table, record_id, self.store.documents_bucket, src, target)
                        for table, record_id, src, target in batch.disposals
                    ],
                )
        batch.deleted = deleted

    # ------------------------------------------------------------------ after commit / recovery

    def _finish_commit(self, control, rule: Rule, batch: Batch) -> None:
        """Lock the probative versions and delete the source files; a failure here is reported
        as what it is: the batch is committed, and the next run finishes these steps."""
        step = "applying Object Lock"
        try:
            self._apply_locks(control, batch.locks)
            step = "deleting the source files"
            batch.documents_kept_shared = self._dispose_documents(control)
        except Exception as exc:
            control.rollback()
            keys = [o[1].key for o in batch.objects][:3]
            raise CommittedBatchError(
                f"{rule.table}: the batch up to id {batch.last_id} is committed ({len(batch.ids)} rows deleted"
                f"{', archived in ' + ', '.join(keys) if keys else ''}), then {step} failed: "
                f"{type(exc).__name__}: {str(exc)[:300]}. Nothing is lost; the next run of {self.purpose_name!r} "
                "applies the pending Object Locks and deletes the pending source files before anything else."
            ) from exc

    def _apply_locks(self, control, pending: list[tuple[list[tuple[str, str | None]], dt.datetime]]) -> None:
        """Lock after the commit, so that an orphan of a crashed batch can still be removed; on
        the version that was read back and recorded, never on whatever the key points to now."""
        if not pending or not self.store.lock_supported():
            return
        now = dt.datetime.now(dt.UTC)
        for versions, retain_until in pending:
            if versions and retain_until > now:
                self.store.apply_lock(versions, retain_until)
                control.execute(
                    "UPDATE retention.archive_manifest SET locked_until = %s WHERE bucket = %s AND object_key = %s"
                    " AND state = 'committed'",
                    (retain_until, self.store.archive_bucket, versions[0][0]),
                )
        control.commit()

    def _dispose_documents(self, control) -> int:
        """Delete the source files of committed rows (idempotent: finishes a crashed run's too),
        except a file that a row still in the source names: it is kept (shared with a kept or
        held row) and recorded as such. Returns the number of files kept that way.

        The pending rows are claimed (``FOR UPDATE SKIP LOCKED``) until they are marked, so
        that the units of a run disposing side by side each count a file once."""
        rows = control.execute(
            "SELECT id, source_key FROM retention.document_disposals WHERE purpose = %s AND disposed_at IS NULL"
            " AND bucket = %s ORDER BY id FOR UPDATE SKIP LOCKED",
            (self.purpose_name, self.store.documents_bucket),
        ).fetchall()
        if not rows:
            control.commit()
            return 0
        keys = sorted({key for _, key in rows})
        shared = self._keys_still_named(control, keys)
        self.store.delete_documents([k for k in keys if k not in shared])
        control.execute(
            "UPDATE retention.document_disposals SET disposed_at = now(),"
            " outcome = CASE WHEN source_key = ANY(%s::text[]) THEN 'kept_shared' ELSE 'deleted' END"
            " WHERE id = ANY(%s::bigint[])",
            (sorted(shared), _id_array([r[0] for r in rows])),
        )
        control.commit()
        if shared:
            log.info("%d source files kept: rows still in the source name them", len(shared))
        return sum(1 for _, key in rows if key in shared)

    def _keys_still_named(self, conn, keys: list[str]) -> set[str]:
        """The file keys that some row of the source, in any ``*_key`` column, still names."""
        columns = self._key_columns(conn)
        if not columns or not keys:
            return set()
        named = " OR ".join(
            f'EXISTS (SELECT 1 FROM "{self.schema}"."{table}" AS t WHERE t."{column}" = k)' for table, column in columns
        )
        rows = conn.execute(f"SELECT k FROM unnest(%s::text[]) AS k WHERE {named}", (keys,)).fetchall()
        return {r[0] for r in rows}

    def recover(self, control, ctx: RunContext) -> dict[str, int]:
        """Finish what a crashed run left: orphan uploads, unlocked objects, source files."""
        # First the object rewrites of an interrupted erasure request: their new object's
        # 'uploading' row names the document copies of the rows it keeps, which belong to the
        # old object, still committed: removed below as an orphan's, those copies would be lost.
        self._finish_interrupted_rewrites(control)
        orphans = control.execute(
            "SELECT id, rule, table_name, object_key, document_keys, record_ids FROM retention.archive_manifest"
            " WHERE purpose = %s AND state = 'uploading' AND bucket = %s ORDER BY id",
            (self.purpose_name, self.store.archive_bucket),
        ).fetchall()
        control.commit()
        for manifest_id, rule_name, table, key, doc_keys, record_ids in orphans:
            self.store.delete_all_versions([key, *doc_keys])
            with control.transaction():
                control.execute(
                    "UPDATE retention.archive_manifest SET state = 'abandoned' WHERE id = %s", (manifest_id,)
                )
                self._audit(control, ctx, rule_name, table, "orphan_removed", len(record_ids), key=key)
        unlocked = control.execute(
            "SELECT object_key, version_id, document_keys, document_version_ids, purge_after"
            " FROM retention.archive_manifest"
            " WHERE purpose = %s AND state = 'committed' AND locked_until IS NULL AND purge_after > now()"
            " AND bucket = %s",
            (self.purpose_name, self.store.archive_bucket),
        ).fetchall()
        control.commit()
        lockable = [
            ([(key, version), *zip(docs, doc_versions or [None] * len(docs), strict=True)], purge_after)
            for key, version, docs, doc_versions, purge_after in unlocked
            if self.store.storage.tiers[self._tier_of_key(key)].object_lock
        ]
        self._apply_locks(control, lockable)
        self._dispose_documents(control)
        if orphans:
            log.warning("removed %d orphan archive objects left by an interrupted run", len(orphans))
        return {"orphans_removed": len(orphans), "locks_applied": len(lockable)}

    def _finish_interrupted_rewrites(self, control) -> None:
        """Object rewrites of a subject erasure (retention.rights.subject_rights) that a crash left in
        this purpose, finished under the purpose's lock, so that none waits for a new request:
        'uploading' -> the new object is removed (the old one holds every row), 'committed' ->
        the old object's versions are deleted."""
        object_rewrite.recover_rewrites(self.store, control, self.purpose_name)

    def _tier_of_key(self, key: str) -> str:
        prefix = key.split("/", 1)[0]
        for name, tier in self.store.storage.tiers.items():
            if tier.prefix == prefix:
                return name
        raise RetentionError(f"archive key {key!r} is under no configured tier prefix")

    # ------------------------------------------------------------------ archive purge

    def purge_archives(self, ctx: RunContext) -> dict:
        """Delete archive objects whose archive period has ended at the logical date.

        Each object is decided and deleted in its own transaction, holding the legal-hold table
        in SHARE mode and the manifest row: a hold placed meanwhile either is seen (the object
        is kept whole and reported) or waits until the object is gone. An object with a
        covered record among its rows or their owners (retention.policy.coverage) is kept.

        Objects are written per end day, so each goes whole on its day. Objects written per
        month before hold rows ending on different days: an unlocked one is rewritten without
        its rows past their own end (``_purge_rows_past_their_end``), a locked one stays whole
        until its lock date."""
        refuse_future(ctx.logical_date)
        preview = self.previews(ctx)
        report = {
            "purged_objects": 0,
            "purged_records": 0,
            "held_objects": 0,
            "held_keys": [],
            "owners_not_recorded": 0,
            "by_table": {},
            # Rows removed from objects written per month, on their own end date (rewrites).
            "rows_purged": 0,
            "rewritten_objects": 0,
            # Rows of such objects whose own end cannot be told (their clock is not among the
            # archived columns, or the policy changed since): kept to the object's date.
            "rows_kept_to_object_date": 0,
        }
        by_table: Counter = Counter()
        with self._connect() as control:
            if not preview:
                self._acquire_purpose_lock(control)  # two purges of a purpose never interleave
            try:
                if not preview:
                    # A rewrite left 'committed' still stores the old object (with the erased
                    # subject's rows), which no purge selects: finished here, under the lock.
                    self._finish_interrupted_rewrites(control)
                    self._finish_interrupted_purges(control, ctx)
                candidates = control.execute(
                    "SELECT id FROM retention.archive_manifest WHERE purpose = %s AND state = 'committed'"
                    " AND purge_after <= %s AND bucket = %s ORDER BY purge_after, id",
                    (self.purpose_name, ctx.logical_date, self.store.archive_bucket),
                ).fetchall()
                control.commit()
                with self._connect(autocommit=True) as intents:
                    for (manifest_id,) in candidates:
                        self._purge_one(control, intents, ctx, manifest_id, preview, report, by_table)
                    self._purge_rows_past_their_end(control, intents, ctx, preview, report, by_table)
            finally:
                control.rollback()
                if not preview:
                    release_purpose_lock(control, self.purpose_name)
        report["by_table"] = dict(by_table)
        report["held_keys"] = report["held_keys"][:MAX_IDS_IN_LOG]
        return report

    def _purge_one(
        self, control, intents, ctx: RunContext, manifest_id: int, preview: bool, report: dict, by_table
    ) -> None:
        with control.transaction():
            if not preview:
                control.execute(f"SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'")
                control.execute(LOCK_HOLDS)
            row = control.execute(
                f"WITH covered AS ({covered_records_sql(self.policy)})"
                " SELECT m.rule, m.table_name, m.object_key, m.document_keys, m.row_count,"
                f" {object_held('m')} AS held, m.owner_ids IS NULL"
                " FROM retention.archive_manifest AS m WHERE m.id = %s AND m.state = 'committed'"
                # NO KEY UPDATE: two purges of the object serialize, while the purge intent's
                # foreign key (KEY SHARE on this row, from the intents connection) goes through.
                + ("" if preview else " FOR NO KEY UPDATE OF m"),
                (manifest_id,),
            ).fetchone()
            if row is None:  # purged meanwhile by another run
                return
            rule_name, table, key, doc_keys, row_count, held, owners_unknown = row
            if held:
                report["held_objects"] += 1
                report["owners_not_recorded"] += owners_unknown
                report["held_keys"].append(key)
                if not preview:
                    self._audit(control, ctx, rule_name, table, "object_purge_held", row_count, key=key)
                return
            report["purged_objects"] += 1
            report["purged_records"] += row_count
            by_table[table] += row_count
            if preview:
                return
            # Committed before the irreversible delete: a crash from here on is finished by the
            # next purge (_finish_interrupted_purges) instead of leaving a 'committed' row whose
            # bytes are gone.
            intents.execute(
                "INSERT INTO retention.purge_intents (manifest_id, run_id) VALUES (%s, %s)"
                " ON CONFLICT (manifest_id) DO NOTHING",
                (manifest_id, ctx.run_id),
            )
            self.store.delete_all_versions([key, *doc_keys])
            self._mark_purged(control, ctx, manifest_id, rule_name, table, key, row_count)

    def _purge_rows_past_their_end(self, control, intents, ctx: RunContext, preview: bool, report: dict, by_table):
        """The rows whose own end date has come in an unlocked object that also holds rows
        ending later (written per month before objects were written per day): the object is
        rewritten without them (retention.archive.rewrite), so no row is archived a day past its
        end because a neighbour ends later. The earliest end of the rows that stay is recorded,
        so that the object is read again only on that day."""
        unlocked = [name for name, tier in self.store.storage.tiers.items() if not tier.object_lock]
        candidates = (
            control.cursor(row_factory=namedtuple_row)
            .execute(
                f"WITH covered AS ({covered_records_sql(self.policy)})"
                " SELECT m.id, m.rule, m.table_name, m.tier, m.object_key, m.version_id, m.sha256, m.purge_month,"
                f" m.purge_after, m.document_keys, m.document_version_ids, m.owner_ids, {object_held('m')} AS held"
                " FROM retention.archive_manifest AS m"
                " WHERE m.purpose = %(purpose)s AND m.state = 'committed' AND m.bucket = %(bucket)s"
                " AND m.tier = ANY(%(tiers)s) AND m.purge_after > %(date)s"
                " AND m.earliest_purge_after IS DISTINCT FROM m.purge_after"
                # Not read yet: its rows end within its purge month, so none before the month starts.
                " AND coalesce(m.earliest_purge_after,"
                "     date_trunc('month', m.purge_after AT TIME ZONE %(tz)s) AT TIME ZONE %(tz)s) <= %(date)s"
                " ORDER BY m.id",
                {
                    "purpose": self.purpose_name,
                    "bucket": self.store.archive_bucket,
                    "tiers": unlocked,
                    "date": ctx.logical_date,
                    "tz": self.policy.timezone,
                },
            )
            .fetchall()
        )
        control.commit()
        for m in candidates:
            rule_name, table, key = m.rule, m.table_name, m.object_key
            if m.held:
                report["held_objects"] += 1
                report["owners_not_recorded"] += m.owner_ids is None
                report["held_keys"].append(key)
                if not preview:
                    with control.transaction():
                        self._audit(control, ctx, rule_name, table, "object_purge_held", 0, key=key)
                continue
            docs = list(m.document_keys or [])
            obj = object_rewrite.StoredObject(
                m.id,
                m.tier,
                key,
                docs,
                list(m.document_version_ids or [None] * len(docs)),
                m.owner_ids,
                object_rewrite.read_object(self.store, key, m.version_id, m.sha256),
            )
            ends = self._row_ends(rule_name, table, obj.rows, m.purge_month, m.purge_after)
            if ends is None:
                report["rows_kept_to_object_date"] += obj.rows.num_rows
                if not preview:  # told once: the object now goes whole on its date
                    self._record_earliest_end(control, m.id, m.purge_after)
                continue
            due = {i for i, end in ends.items() if end <= ctx.logical_date}
            later = [end for i, end in ends.items() if i not in due]
            report["rows_purged"] += len(due)
            by_table[table] += len(due)
            report["rewritten_objects"] += bool(due)
            if preview:
                continue
            if not due:
                self._record_earliest_end(control, m.id, min(later))
                continue
            day = ctx.logical_date.astimezone(self.tz).date().isoformat()
            result = object_rewrite.rewrite_without(
                self.policy,
                self.store,
                control,
                intents,
                obj,
                due,
                origin=f"purge:{ctx.run_id}",
                new_key=f"{_PURGE_SUFFIX.sub('', key.removesuffix('.parquet'))}.purged-{day}.parquet",
                earliest_purge_after=min(later) if later else None,
                on_commit=lambda conn, removed, rule_name=rule_name, table=table, key=key: self._audit(
                    conn, ctx, rule_name, table, "rows_purged", removed, key=key
                ),
            )
            if result["action"] != "rewritten":  # a hold placed meanwhile keeps the object whole
                report["rows_purged"] -= len(due)
                by_table[table] -= len(due)
                report["rewritten_objects"] -= 1
                report["held_objects"] += result.get("held", False)
                report["held_keys"] += [key] if result.get("held") else []

    def _row_ends(self, rule_name: str, table: str, rows: pa.Table, purge_month: str, purge_after: dt.datetime):
        """{row id: the instant its archive period ends}, from the clock among its archived
        columns and its rule's periods (the calendar arithmetic of the re-check); None when that
        cannot be told: the rule is gone from the policy, its clock is another table's, or an
        end falls outside the object's purge month (the periods changed since it was written)."""
        rule = next((r for r in self.purpose.rules if r.name == rule_name), None)
        clock_table, _, clock_column = (rule.clock if rule else "").partition(".")
        if rule is None or clock_table != table or clock_column not in rows.column_names:
            return None
        clock_type = rows.schema.field(clock_column).type
        if not (pa.types.is_timestamp(clock_type) and clock_type.tz):  # an instant, or nothing to tell
            return None
        ends = {}
        for row_id, clock in zip(rows.column("id").to_pylist(), rows.column(clock_column).to_pylist(), strict=True):
            if clock is None:
                return None
            end = local_midnight(rule.gone_after.add_to(local_date(clock, self.tz)), self.tz)
            if end > purge_after or end.strftime("%Y-%m") != purge_month:
                return None
            ends[row_id] = end
        return ends

    def _record_earliest_end(self, control, manifest_id: int, earliest: dt.datetime) -> None:
        with control.transaction():
            control.execute(
                "UPDATE retention.archive_manifest SET earliest_purge_after = %s WHERE id = %s AND state = 'committed'",
                (earliest, manifest_id),
            )

    def _mark_purged(self, control, ctx: RunContext, manifest_id, rule_name, table, key, row_count) -> None:
        control.execute(
            "UPDATE retention.archive_manifest SET state = 'purged', purged_at = now(), purge_run_id = %s"
            " WHERE id = %s",
            (ctx.run_id, manifest_id),
        )
        control.execute("DELETE FROM retention.purge_intents WHERE manifest_id = %s", (manifest_id,))
        self._audit(control, ctx, rule_name, table, "object_purged", row_count, key=key)

    def _finish_interrupted_purges(self, control, ctx: RunContext) -> None:
        """A purge that died after deciding an object: if the object is gone (it is deleted
        after its files), record the purge that happened; if it is still there, decide again."""
        rows = control.execute(
            "SELECT m.id, m.state, m.rule, m.table_name, m.object_key, m.version_id, m.document_keys, m.row_count"
            " FROM retention.purge_intents AS p JOIN retention.archive_manifest AS m ON m.id = p.manifest_id"
            " WHERE m.purpose = %s AND m.bucket = %s ORDER BY m.id",
            (self.purpose_name, self.store.archive_bucket),
        ).fetchall()
        control.commit()
        for manifest_id, state, rule_name, table, key, version, doc_keys, row_count in rows:
            with control.transaction():
                if state == "committed" and not self.store.version_exists(key, version):
                    self.store.delete_all_versions([key, *doc_keys])  # the copies a crash may have left
                    self._mark_purged(control, ctx, manifest_id, rule_name, table, key, row_count)
                    log.warning("recorded the purge of %s, interrupted by a previous run", key)
                else:
                    control.execute("DELETE FROM retention.purge_intents WHERE manifest_id = %s", (manifest_id,))

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
        ids = records if isinstance(records, list) else None
        conn.execute(
            "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action,"
            " record_count, byte_count, object_key, record_ids)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::bigint[])",
            (
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
            ),
        )
