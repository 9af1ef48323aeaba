"""Recovery: what a crashed run, purge or erasure left is finished before anything else, under
the purpose's lock held exclusively: interrupted object rewrites, orphan uploads of 'uploading'
intents (removed: their rows are still in the source), Object Locks not yet applied (on the
exact verified versions) and source files not yet disposed of.

``Recovery`` is one part of ``retention.archive.engine.RetentionEngine``.
"""

from __future__ import annotations

import datetime as dt
import logging

from retention.archive import rewrite as object_rewrite
from retention.archive.locks import wait_for_batches_in_flight
from retention.archive.run import RunContext

log = logging.getLogger(__name__)

# How long after an upload intent was recorded (counted to the purpose's latest intent) each
# recovery still looks for an object landed at its key once the intent is 'abandoned'
# (_remove_late_uploads): longer than any upload of a try cut off from the database, and than a
# stopped worker is left running.
ABANDONED_RECHECK = dt.timedelta(days=7)


class Recovery:
    """Finishing what a crash left (a part of RetentionEngine)."""

    def recover(self, control, ctx: RunContext) -> dict[str, int]:
        """Finish what a crashed run left: orphan uploads, unlocked objects, source files."""
        # First the object rewrites of an interrupted erasure request: their new object's
        # 'uploading' row names the document copies of the rows it keeps, which belong to the
        # old object, still committed: removed below as an orphan's, those copies would be lost.
        self._finish_interrupted_rewrites(control)
        # Then partitions a crash left between their write-ahead record and their drop: one
        # never detached leaves its uploads as the orphans removed below.
        self._finish_partition_retirements(control, ctx)
        # A batch of a run whose control session was ended (the purpose lock with it) may still
        # be open: it commits or rolls back before the intents are read.
        wait_for_batches_in_flight(control, self.purpose_name)
        orphans = control.execute(
            "SELECT id, rule, table_name, object_key, document_keys, record_ids FROM retention.archive_manifest"
            " WHERE purpose = %s AND state = 'uploading' AND bucket = %s ORDER BY id",
            (self.purpose_name, self.store.archive_bucket),
        ).fetchall()
        control.commit()
        self._remove_orphans(control, ctx, orphans)
        late = self._remove_late_uploads(control, ctx)
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
        return {"orphans_removed": len(orphans) + late, "locks_applied": len(lockable)}

    def _remove_orphans(self, control, ctx: RunContext, orphans: list[tuple]) -> None:
        """Uploads that were never committed (their rows are still in the source) removed, every
        version, their manifest rows 'abandoned' (from 'uploading' only) and audited, one at a time.
        ``orphans``: (manifest id, rule, table, object key, document keys, record ids)."""
        for manifest_id, rule_name, table, key, doc_keys, record_ids in orphans:
            self.store.delete_all_versions([key, *doc_keys])
            with control.transaction():
                control.execute(
                    "UPDATE retention.archive_manifest SET state = 'abandoned' WHERE id = %s AND state = 'uploading'",
                    (manifest_id,),
                )
                self._audit(control, ctx, rule_name, table, "orphan_removed", len(record_ids), key=key)

    def _remove_late_uploads(self, control, ctx: RunContext) -> int:
        """Uploads that landed after their intent was 'abandoned': a run cut off from the
        database (a failover, its sessions ended: its locks with them) while its PUT was still
        travelling; a recovery removed what was stored then, and the PUT landed afterwards. No
        live manifest row names such an object (an erasure would not find it): every recovery
        lists the keys of the abandoned intents recorded less than ABANDONED_RECHECK before the
        purpose's latest intent (not before now: a purpose whose runs stopped after the crash is
        still looked at when they resume) and removes what is stored there, its own document
        copies with it. Never a key a live manifest row names (a
        later batch of the same run and try that reused it: committed, or uploading), nor a copy
        outside the key's own ``.documents/`` (a rewrite's intent names its old object's).
        Returns how many were removed (found by a review)."""
        abandoned = control.execute(
            "SELECT a.id, a.rule, a.table_name, a.object_key, a.document_keys, a.record_ids"
            " FROM retention.archive_manifest AS a"
            " WHERE a.purpose = %s AND a.bucket = %s AND a.state = 'abandoned'"
            " AND a.created_at > (SELECT l.created_at FROM retention.archive_manifest AS l"
            "  WHERE l.purpose = a.purpose AND l.bucket = a.bucket ORDER BY l.id DESC LIMIT 1) - %s"
            " AND NOT EXISTS (SELECT FROM retention.archive_manifest AS live WHERE live.bucket = a.bucket"
            "  AND live.object_key = a.object_key AND live.state IN ('uploading', 'committed', 'rewritten'))"
            " ORDER BY a.id",
            (self.purpose_name, self.store.archive_bucket, ABANDONED_RECHECK),
        ).fetchall()
        control.commit()
        removed = 0
        for _, rule_name, table, key, doc_keys, record_ids in abandoned:
            stem = key.removesuffix(".parquet")
            own = {key, *(d for d in doc_keys if d.startswith(f"{stem}.documents/"))}
            stored = [v for k, versions in self.store.list_versions(stem).items() if k in own for v in versions]
            if not stored:
                continue
            self.store.delete_versions(stored)
            with control.transaction():
                self._audit(control, ctx, rule_name, table, "orphan_removed", len(record_ids), key=key)
            removed += 1
        if removed:
            log.warning("removed %d archive objects uploaded after their intent was abandoned", removed)
        return removed

    def _finish_interrupted_rewrites(self, control) -> None:
        """Object rewrites of a subject erasure (retention.rights.subject_rights) that a crash left in
        this purpose, finished under the purpose's lock, so that none waits for a new request:
        'uploading' -> the new object is removed (the old one holds every row), 'committed' ->
        the old object's versions are deleted."""
        object_rewrite.recover_rewrites(self.policy, self.store, control, self.purpose_name)

    def _apply_locks(self, control, pending: list[tuple[list[tuple[str, str | None]], dt.datetime]]) -> None:
        """Lock after the commit, so that an orphan of a crashed batch can still be removed; on
        the version that was read back and recorded, never on whatever the key points to now.
        Every version of the batch (or partition) at once, 8 requests at a time, then one
        statement records them (one request and one UPDATE per object cost 12 ms an object)."""
        due = self._locks_due(pending)
        if due:
            self._lock_versions(due)
            self._record_locks(control, due)

    def _locks_due(self, pending: list[tuple[list[tuple[str, str | None]], dt.datetime]]) -> list:
        """The (versions, retain until) of ``pending`` still to lock: none when the bucket cannot."""
        if not pending or not self.store.lock_supported():
            return []
        now = dt.datetime.now(dt.UTC)
        return [(versions, retain_until) for versions, retain_until in pending if versions and retain_until > now]

    def _lock_versions(self, due: list) -> None:
        self.store.apply_locks([(key, version, until) for versions, until in due for key, version in versions])

    def _record_locks(self, control, due: list) -> None:
        """The locks applied, recorded on their committed manifest rows; one left unrecorded (a
        crash in between) is applied again by the next run's recover, to the same date."""
        control.execute(
            "UPDATE retention.archive_manifest AS m SET locked_until = l.until"
            " FROM unnest(%s::text[], %s::timestamptz[]) AS l(object_key, until)"
            " WHERE m.bucket = %s AND m.object_key = l.object_key AND m.state = 'committed'",
            ([versions[0][0] for versions, _ in due], [until for _, until in due], self.store.archive_bucket),
        )
        control.commit()
