"""The archive purge: objects whose archive period has ended go, whole, on their end day
(every version, document copies first); an object holding a record a legal hold covers stays,
reported. Objects written per month by earlier versions are rewritten without their rows past
their own end (unlocked tiers; retention.archive.rewrite) or stay whole to their lock date.

A purge decided and cut short is finished by the next one (``retention.purge_intents``).
``ArchivePurge`` is one part of ``retention.archive.engine.RetentionEngine``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import Counter

import pyarrow as pa
from psycopg.rows import namedtuple_row

from retention.archive import rewrite as object_rewrite
from retention.archive.locks import (
    BATCH_LOCK_TIMEOUT,
    LOCK_HOLDS,
    release_purpose_lock,
)
from retention.archive.run import RunContext, refuse_future
from retention.planner import MAX_IDS_IN_LOG, check_hold_coverage_in
from retention.policy import Policy, Rule
from retention.policy.coverage import covered_records_sql, object_held
from retention.policy.model import Purpose, covers
from retention.policy.periods import Period, cutoff, local_date, local_midnight

log = logging.getLogger(__name__)


# The suffix of an object rewritten by a purge (retention.archive.rewrite), replaced at the next.
_PURGE_SUFFIX = re.compile(r"\.purged-\d{4}-\d{2}-\d{2}$")


def policy_keeps_longer(purpose: Purpose, rule_name: str, gone_after: str | None, clock: str | None = None) -> bool:
    """Whether the policy now keeps the rows of an object of ``rule_name`` longer than the period
    (live + archive) its purge date was computed with, recorded as ``gone_after`` (a period
    corrected or lengthened since it was archived, found by a review): its recorded date is then
    too early for some of its rows, and it is kept and reported for someone to re-date. A rule
    no longer in the purpose (renamed, moved, removed) cannot tell how long the policy keeps its
    rows now: kept and reported too, until its objects name the rule that keeps them or are
    re-dated (found by a review: a rule renamed with a longer period let its objects go on their
    old date). A rule that now counts from another clock than the one recorded (``clock``) cannot
    tell either: its rows' new end may be later (found by a review: the former customers' clock
    corrected from the relationship's end to the last contact let their objects go on the old
    end's date). Unknown for an object archived before the period (or the clock) was recorded
    (NULL): its recorded date holds, as before."""
    rule = next((r for r in purpose.rules if r.name == rule_name), None)
    if clock is not None and (rule is None or rule.clock != clock):
        return True
    if gone_after is None:
        return False
    if rule is None:
        return True
    return not covers(Period.parse(gone_after, written=False), rule.gone_after)


def clock_not_due(
    policy: Policy, purpose: Purpose, logical_date: dt.datetime, alias: str = "m", archived_since: bool = True
) -> str:
    """SQL, true for the manifest row ``alias`` of a rule whose clock is a parent's column (a
    claim's contract end) when one of the rows' clock records (their owners in that table) is
    still live with its clock unset or not yet due at ``logical_date``, or was archived since by
    a rule on the same clock with a date that tells such a clock: a contract set back to
    running, or its end moved later, after its claims were archived (found by a review: their
    only copy was purged on the date computed from the old end). The object is then kept and
    reported; once those records are gone everywhere, its recorded date holds."""
    arms = []
    for rule in purpose.rules:
        if not rule.archived or rule.clock_table == rule.table:
            continue  # a clock among the archived columns cannot move any more
        limit = cutoff(logical_date, rule.gone_after, policy.tz).isoformat()
        clock = f'p."{rule.clock_column}"'
        parents = f"SELECT o::bigint FROM jsonb_array_elements_text({alias}.owner_ids -> '{rule.clock_table}') AS o"
        live = (
            f'EXISTS (SELECT 1 FROM "{policy.source_schema}"."{rule.clock_table}" AS p WHERE p.id IN ({parents})'
            f" AND ({clock} IS NULL OR {clock} >= '{limit}'::timestamptz))"
        )
        # The clock records archived since, on the same clock: their object's date is their clock's
        # day + their rule's periods, which may not be these rows' (found by a review: claims kept
        # 3 years, their contract 5, were purged on their old date). A clock on or after the day
        # after the last one these rows are due on (``first_not_due``) gives a date on or after that
        # day + the record's periods (the periods' arithmetic never decreases); a date there that a
        # month end clips keeps more.
        # An object of theirs purged already tells it too (found by a review: claims kept 5 years,
        # their contract 3, went on their old date once the contract's object had gone).
        # Through the periods the record's object was dated with (``gone_after``, recorded on it),
        # not its rule's now (found by a review: a contract's period lengthened since its object
        # was written let its claims' copy go on the old end's date); the rule's when not recorded.
        first_not_due = rule.gone_after.latest_start(local_date(logical_date, policy.tz)) + dt.timedelta(days=1)
        later = [
            f"(pm.purpose = '{name}' AND pm.rule = '{r.name}' AND pm.purge_after >= ((DATE '{first_not_due}'"
            f" + coalesce(pm.gone_after, '{r.gone_after}')::interval)::timestamp AT TIME ZONE '{policy.timezone}'))"
            for name, p in policy.purposes.items()
            for r in p.rules
            if r.archived and r.table == rule.clock_table and r.clock == rule.clock
        ]
        # An object of a rule the policy no longer names (renamed, moved, removed: its clock
        # unknown) tells such a date too, through the periods recorded on it, none when not
        # recorded (found by a review: a contracts rule renamed let the claims' copy go on the
        # date of the contract's old end while the contract's object, kept, told the new one).
        known = [(name, r.name) for name, p in policy.purposes.items() for r in p.rules if r.table == rule.clock_table]
        unknown = (
            "(pm.purpose, pm.rule) NOT IN (" + ", ".join(f"('{n}', '{r}')" for n, r in known) + ") AND "
            if known
            else ""
        )
        later.append(
            f"({unknown}pm.purge_after >= ((DATE '{first_not_due}' + coalesce(pm.gone_after, '0 days')::interval)"
            f"::timestamp AT TIME ZONE '{policy.timezone}'))"
        )
        archived = (
            " OR EXISTS (SELECT 1 FROM retention.archive_manifest AS pm WHERE pm.state IN ('committed', 'purged')"
            f" AND pm.table_name = '{rule.clock_table}' AND ({' OR '.join(later)})"
            f" AND pm.record_ids && ARRAY({parents}))"
        )
        # Without ``archived_since``: the live records only (the watch and the Retention page, for
        # every object past its date: that arm reads the whole manifest once per object).
        arms.append(f"({alias}.rule = '{rule.name}' AND ({live}{archived if archived_since else ''}))")
    return f"({' OR '.join(arms)})" if arms else "false"


def clock_records_still_read(conn, policy: Policy, rule: Rule, ids: list[int]) -> set[int]:
    """The ``ids`` of ``rule``'s table that a committed object of another table's rule on the
    same clock names among its owners (a claims' copy on its contract's end): their clock is
    still read by clock_not_due. Such a row is archived even when its own archive period is over
    (archive_split): deleted without an object, its clock (a contract ended again later) was
    told nowhere, and the claims' copy went on the date of the old end (found by a review)."""
    others = [
        (name, r.name)
        for name, p in policy.purposes.items()
        for r in p.rules
        if r.archived and r.clock == rule.clock and r.table != rule.table
    ]
    # And an object of another table under a rule the policy no longer names (renamed, moved,
    # removed: its clock unknown; found by a review: `claims` renamed, the contract went without
    # an object, and the claims' copy, named by its new rule, went on the date of the old end).
    known = [(name, r.name) for name, p in policy.purposes.items() for r in p.rules]
    if not ids or rule.clock_table != rule.table:
        return set()
    such = (
        "m.state = 'committed' AND ((m.purpose, m.rule) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " OR m.table_name <> %s AND (m.purpose, m.rule) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[])))"
    )
    such_args = (
        [p for p, _ in others],
        [r for _, r in others],
        rule.table,
        [p for p, _ in known],
        [r for _, r in known],
    )
    # One whose owners are not recorded yet (archived before: the backfill reads them from its
    # rows later) may name any of them: all are archived (found by a review: the contract went
    # without an object, and once the backfill named it the claims' copy went on the old date).
    if conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM retention.archive_manifest AS m WHERE {such} AND m.owner_ids IS NULL)", such_args
    ).fetchone()[0]:
        return set(ids)
    rows = conn.execute(
        "SELECT DISTINCT o.id FROM retention.archive_manifest AS m,"
        f" jsonb_array_elements_text(m.owner_ids -> %s) AS o(id) WHERE {such} AND o.id::bigint = ANY(%s::bigint[])",
        (rule.table, *such_args, sorted(ids)),
    ).fetchall()
    return {int(i) for (i,) in rows}


def archive_split(conn, policy: Policy, rule: Rule, groups: list, logical_date: dt.datetime) -> list[tuple]:
    """``[(group, archived)]`` for the groups ``(day, ids, purge_after)`` of a batch or a
    partition: a group whose archive period is not over at ``logical_date`` is archived; one
    whose period is over is deleted without archive (it would only be purged), except its rows
    whose clock an archived object of another rule still reads (clock_records_still_read),
    archived on their own (past) date so that the manifest tells their clock to the purge."""
    if not rule.archived:
        return [(group, False) for group in groups]
    past = [i for _, ids, purge_after in groups if purge_after <= logical_date for i in ids]
    read = clock_records_still_read(conn, policy, rule, past) if past else set()
    split = []
    for day, ids, purge_after in groups:
        if purge_after > logical_date:
            split.append(((day, ids, purge_after), True))
            continue
        kept = [i for i in ids if i in read]
        rest = [i for i in ids if i not in read]
        split += [((day, kept, purge_after), True)] if kept else []
        split += [((day, rest, purge_after), False)] if rest else []
    return split


class ArchivePurge:
    """Purge of the purpose's archive objects (a part of RetentionEngine)."""

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
            # Objects whose rule the policy now keeps longer than the period they were archived
            # with (an edited policy): kept past their recorded date, for someone to re-date.
            "kept_policy_longer": 0,
            "kept_policy_longer_keys": [],
            # Objects whose rows' clock is a parent's that is live again with its clock unset or
            # not yet due (a contract set back to running): kept past their recorded date.
            "kept_clock_not_due": 0,
            "kept_clock_not_due_keys": [],
        }
        by_table: Counter = Counter()
        with self._connect() as control:
            if not preview:
                self._acquire_purpose_lock(control)  # two purges of a purpose never interleave
            try:
                # A hold coverage naming no foreign key would keep nothing through that entry.
                check_hold_coverage_in(control, self.policy, {rule.table for rule in self.purpose.rules})
                control.commit()
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
        report["kept_policy_longer_keys"] = report["kept_policy_longer_keys"][:MAX_IDS_IN_LOG]
        report["kept_clock_not_due_keys"] = report["kept_clock_not_due_keys"][:MAX_IDS_IN_LOG]
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
                f" {object_held('m')} AS held, m.owner_ids IS NULL, m.gone_after, m.owner_ids, m.clock"
                " FROM retention.archive_manifest AS m WHERE m.id = %s AND m.state = 'committed'"
                # NO KEY UPDATE: two purges of the object serialize, while the purge intent's
                # foreign key (KEY SHARE on this row, from the intents connection) goes through.
                + ("" if preview else " FOR NO KEY UPDATE OF m"),
                (manifest_id,),
            ).fetchone()
            if row is None:  # purged meanwhile by another run
                return
            rule_name, table, key, doc_keys, row_count, held, owners_unknown, gone_after, owners, clock = row
            if policy_keeps_longer(self.purpose, rule_name, gone_after, clock):
                report["kept_policy_longer"] += 1
                report["kept_policy_longer_keys"].append(key)
                return
            if self._clock_not_due(control, ctx, manifest_id, rule_name, owners, lock=not preview):
                report["kept_clock_not_due"] += 1
                report["kept_clock_not_due_keys"].append(key)
                return
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
            # Not the copies an old object a hold keeps after its rewrite still names (shared).
            copies = object_rewrite.copies_to_delete(control, self.store.archive_bucket, manifest_id, doc_keys)
            self.store.delete_all_versions([key, *copies])
            self._mark_purged(control, ctx, manifest_id, rule_name, table, key, row_count)

    def _clock_not_due(self, control, ctx: RunContext, manifest_id: int, rule_name: str, owners, *, lock: bool) -> bool:
        """Whether the object's rows' clock records (a parent's clock) keep it (clock_not_due). With
        ``lock``, those records are locked first (FOR SHARE, as a batch locks the parents it
        reads): the application setting one back to running waits for this object's delete, or
        went before and is seen by the test, a new statement."""
        rule = next((r for r in self.purpose.rules if r.name == rule_name), None)
        if rule is None or not rule.archived or rule.clock_table == rule.table:
            return False
        parents = (owners or {}).get(rule.clock_table)
        if not parents:
            return False
        if lock:
            control.execute(
                f'SELECT 1 FROM "{self.schema}"."{rule.clock_table}" WHERE id = ANY(%s::bigint[]) FOR SHARE',
                (parents,),
            )
        return control.execute(
            f"SELECT {clock_not_due(self.policy, self.purpose, ctx.logical_date)}"
            " FROM retention.archive_manifest AS m WHERE m.id = %s",
            (manifest_id,),
        ).fetchone()[0]

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
                " m.purge_after, m.document_keys, m.document_version_ids, m.owner_ids, m.gone_after, m.clock,"
                f" {object_held('m')} AS held"
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
            ends = self._row_ends(rule_name, table, obj.rows, m.purge_month, m.purge_after, m.gone_after, m.clock)
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

    def _row_ends(
        self,
        rule_name: str,
        table: str,
        rows: pa.Table,
        purge_month: str,
        purge_after: dt.datetime,
        gone_after: str | None = None,
        clock: str | None = None,
    ):
        """{row id: the instant its archive period ends}, from the clock among its archived
        columns and its rule's periods (the calendar arithmetic of the re-check); None when that
        cannot be told: the rule is gone from the policy, its clock is another table's, its
        periods are not those the object was written with (``gone_after``, recorded: found by a
        review, a period shortened by a few days purged a row days before its recorded end), nor
        its clock (``clock``, recorded), or an end falls outside the object's purge month (the periods changed since it was written)."""
        rule = next((r for r in self.purpose.rules if r.name == rule_name), None)
        clock_table, _, clock_column = (rule.clock if rule else "").partition(".")
        if rule is None or clock_table != table or clock_column not in rows.column_names:
            return None
        if clock is not None and clock != rule.clock:  # dated from another clock than the rule's now
            return None
        if gone_after is not None:
            written = Period.parse(gone_after, written=False)
            if (written.months, written.days) != (rule.gone_after.months, rule.gone_after.days):
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
            "SELECT m.id, m.state, m.rule, m.table_name, m.object_key, m.version_id, m.document_keys,"
            " m.document_version_ids, m.row_count"
            " FROM retention.purge_intents AS p JOIN retention.archive_manifest AS m ON m.id = p.manifest_id"
            " WHERE m.purpose = %s AND m.bucket = %s ORDER BY m.id",
            (self.purpose_name, self.store.archive_bucket),
        ).fetchall()
        control.commit()
        for manifest_id, state, rule_name, table, key, version, doc_keys, doc_versions, row_count in rows:
            with control.transaction():
                if state == "committed" and not self.store.version_exists(key, version):
                    # The copies a crash may have left (not those another stored object names).
                    copies = object_rewrite.copies_to_delete(control, self.store.archive_bucket, manifest_id, doc_keys)
                    self.store.delete_all_versions([key, *copies])
                    self._mark_purged(control, ctx, manifest_id, rule_name, table, key, row_count)
                    log.warning("recorded the purge of %s, interrupted by a previous run", key)
                else:
                    if state == "committed" and doc_keys:
                        self._strike_gone_copies(control, manifest_id, key, doc_keys, doc_versions)
                    control.execute("DELETE FROM retention.purge_intents WHERE manifest_id = %s", (manifest_id,))

    def _strike_gone_copies(self, control, manifest_id: int, key: str, doc_keys: list, doc_versions) -> None:
        """An interrupted purge deletes the file copies first, the object last: one cut short in
        between left the object stored without some of its copies, decided again now (a hold
        placed since keeps it). Those copies are struck from its manifest row, so that it names
        only what is stored (found by a review: a kept object named copies that were gone)."""
        versions = doc_versions or [None] * len(doc_keys)
        stored = [(k, v) for k, v in zip(doc_keys, versions, strict=True) if self.store.version_exists(k, v)]
        if len(stored) == len(doc_keys):
            return
        control.execute(
            "UPDATE retention.archive_manifest SET document_keys = %s, document_version_ids = %s WHERE id = %s",
            ([k for k, _ in stored], [v for _, v in stored] if doc_versions else doc_versions, manifest_id),
        )
        log.warning(
            "%s: %d of its %d file copies were deleted by an interrupted purge; struck from its manifest row",
            key,
            len(doc_keys) - len(stored),
            len(doc_keys),
        )
