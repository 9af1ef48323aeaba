"""The subject's rows in the archive's intermediate tier, erased: each object holding them is
rewritten without them by the write-ahead protocol of retention.archive.rewrite
(``retention.object_rewrites``), under the purpose's advisory lock, so that a crash at any step
loses nothing and a re-run finishes (rewrites a crashed request left are finished first). An
object held, locked, probative or of a purpose kept on request stays whole and is reported
(retention.rights.decide); one rewritten or purged since it was read makes the request
incomplete: a retry reads it again.
"""

from __future__ import annotations

import json
from collections import defaultdict

from retention.archive import rewrite as object_rewrite
from retention.archive.locks import acquire_purpose_lock, release_purpose_lock, wait_for_batches_in_flight
from retention.policy.coverage import ancestors_first
from retention.rights.context import RequestContext
from retention.rights.decide import classify_object
from retention.rights.ends import row_ends
from retention.rights.find import ArchivedObject, Found, held_through_parents
from retention.rights.report import add_kept_archived
from retention.rights.requests import SubjectRequest


def erase_archived(
    ctx: RequestContext,
    conn,
    req: SubjectRequest,
    found: Found,
    report: dict,
    preview: bool,
    before: Found | None = None,
) -> None:
    """Each object holding the subject's rows decided and reported (a kept one with its rows' own
    end dates); unless preview, the erasable ones rewritten, purpose by purpose under the
    purpose's lock, after what a crashed request left is finished."""
    by_purpose: dict[str, list[ArchivedObject]] = defaultdict(list)
    superseded: dict[str, list[ArchivedObject]] = defaultdict(list)
    # An old object of the subject's earlier rewrite (kept by a hold, or left by a crash past the
    # commit): the only copy of their rows. Named their records among its owners before any
    # recovery finishes that rewrite, whose check reads the owners alone: a hold reaching it only
    # through the subject's rows (the prospect they were) did not keep it. So is an object such a
    # hold keeps now: the purge's check reads the owners alone too, and purged on its date the
    # rows this request reports kept under the hold (both found by a review).
    # Not under the purpose's lock: the purge may have purged or rewritten the object since the
    # search (its rows, the subject's among them, then in a new object with the old owners): the
    # request is incomplete, and a retry names the owners of the object the rows are in now
    # (found by a review). Named before, the purge's check (the row's lock) sees them.
    changed: set[int] = set()  # purged or rewritten since the search: not reported kept
    if not preview:
        with ctx.connect() as owners_conn:
            through = held_through_parents(ctx, owners_conn, found)
            for obj in found.objects:
                if obj.superseded or obj.manifest_id in through:
                    state = _name_subject_owners(ctx, owners_conn, obj, found)
                    if state != ("rewritten" if obj.superseded else "committed"):
                        changed.add(obj.manifest_id)
    for obj in found.objects:
        d = classify_object(ctx, obj)
        row_ends(ctx, conn, obj, found.objects)
        entry = {
            "key": obj.key,
            "tier": obj.tier,
            "table": obj.table,
            "sha256": obj.sha256,
            "subject_rows": len(obj.subject_ids),
            "other_rows": obj.rows.num_rows - len(obj.subject_ids),
        }
        if obj.manifest_id in changed:
            # The request is incomplete: a retry finds the rows where they are now (if stored).
            entry["action"] = "changed_meanwhile"
            report["incomplete"] = True
        elif d.erase and obj.superseded:
            # An earlier rewrite's old object, its hold since released: the recovery of the
            # purpose's rewrites below deletes it, with the rows it alone still stores.
            entry["action"] = "would_delete" if preview else "delete"
            superseded[obj.purpose].append(obj)
            if preview:
                counts = report["erased"]["intermediate"]
                counts[obj.table] = counts.get(obj.table, 0) + len(set(obj.subject_ids) - obj.elsewhere)
        elif d.erase:
            entry["action"] = "would_rewrite" if preview else "rewrite"
            by_purpose[obj.purpose].append(obj)
            if preview:
                counts = report["erased"]["intermediate"]
                counts[obj.table] = counts.get(obj.table, 0) + len(obj.subject_ids)
        else:
            entry["action"] = "kept"
            add_kept_archived(ctx.policy, report, obj, d)
        report["objects"].append(entry)
    if preview:
        return
    # Rewrites a crashed request left are finished first, even when no object is to be
    # rewritten now (after a crash past the commit, the subject is no longer found in any).
    # And the purposes of the old objects found to delete: a run may have finished their rewrite
    # since the search (then no longer pending), which the request still reports (a review).
    pending = _pending_rewrites(ctx)
    # ``before``: the subject's rows as found before their live rows were erased (no longer found
    # live, nor in a committed object, they are still in a crashed run's upload).
    subject = _subject_ids(found, before)
    orphaned = _purposes_with_orphan_uploads(ctx, subject)
    for purpose in sorted(pending | set(by_purpose) | set(superseded) | orphaned):
        objects = by_purpose.get(purpose, [])
        with ctx.connect(autocommit=False) as control, ctx.connect() as intents:
            lock_purpose(ctx, control, purpose)
            try:
                object_rewrite.recover_rewrites(ctx.policy, ctx.store, control, purpose)
                if purpose in orphaned:
                    _remove_orphan_uploads(ctx, control, req, purpose, subject, report)
                for obj in superseded.get(purpose, []):
                    entry = next(e for e in report["objects"] if e["key"] == obj.key)
                    done = intents.execute(
                        "SELECT EXISTS (SELECT 1 FROM retention.object_rewrites WHERE old_manifest_id = %s"
                        " AND state = 'done')",
                        (obj.manifest_id,),
                    ).fetchone()[0]
                    if done:
                        entry["action"] = "deleted"
                        erased_ids(report, obj.table).update(set(obj.subject_ids) - obj.elsewhere)
                    else:  # held again meanwhile: still stored
                        entry["action"] = "kept"
                        obj.held = True
                        add_kept_archived(ctx.policy, report, obj, classify_object(ctx, obj))
                for obj in objects:
                    result = _rewrite(ctx, control, intents, req, obj, found)
                    removed = result.pop("removed_ids", None) or ()  # the report holds counts
                    entry = next(e for e in report["objects"] if e["key"] == obj.key)
                    entry.update(result)
                    if result["action"] == "rewritten" and not result["old_object_kept"]:
                        erased_ids(report, obj.table).update(removed)
                    elif result.get("held") or result.get("old_object_kept"):
                        # A hold placed meanwhile: kept whole, or, placed after the rewrite's
                        # commit, the old object (the subject's rows' only copy) kept stored.
                        obj.held = True
                        add_kept_archived(ctx.policy, report, obj, classify_object(ctx, obj))
                    else:  # purged or rewritten since it was read: a re-run decides afresh
                        report["incomplete"] = True
            finally:
                control.rollback()
                release_purpose_lock(control, purpose)


def erased_ids(report: dict, table: str) -> set[int]:
    """The archived rows of ``table`` this run erased (ids, counted by retention.rights.erase
    with those earlier runs of the request erased; never in the evidence)."""
    return report.setdefault(ERASED_IDS, {}).setdefault(table, set())


ERASED_IDS = "_erased_ids"


def _subject_ids(*founds: Found | None) -> dict[str, set[int]]:
    ids: dict[str, set[int]] = {}
    for found in founds:
        for table, found_ids in [*(found.ids.items() if found else ()), *(found.live.items() if found else ())]:
            ids.setdefault(table, set()).update(found_ids)
    return ids


def _orphan_uploads(conn, ctx: RequestContext, ids: dict[str, set[int]], purpose: str | None = None) -> list[tuple]:
    """The 'uploading' intents (of ``purpose``, or every purpose) whose rows include the
    subject's ``ids`` (per table): (manifest id, purpose, rule, table, key, document keys, record ids)."""
    rows = conn.execute(
        "SELECT id, purpose, rule, table_name, object_key, document_keys, record_ids"
        " FROM retention.archive_manifest AS m"
        " WHERE state = 'uploading' AND bucket = %s AND (%s::text IS NULL OR purpose = %s)"
        # A partition's uploads while its retirement is open are the rows' copies the drop commits
        # (the run's recovery finishes it): not orphans.
        " AND NOT EXISTS (SELECT 1 FROM retention.partition_retirements AS r"
        "  WHERE r.state = 'detaching' AND m.id = ANY(r.manifest_ids)) ORDER BY id",
        (ctx.store.archive_bucket, purpose, purpose),
    ).fetchall()
    return [r for r in rows if ids.get(r[3]) and not ids[r[3]].isdisjoint(r[6])]


def _purposes_with_orphan_uploads(ctx: RequestContext, ids: dict[str, set[int]]) -> set[str]:
    with ctx.connect() as conn:
        return {r[1] for r in _orphan_uploads(conn, ctx, ids)}


def _remove_orphan_uploads(
    ctx: RequestContext, control, req: SubjectRequest, purpose: str, ids: dict[str, set[int]], report: dict
) -> None:
    """The uploads a crashed run of the purpose left holding the subject's rows ('uploading'
    intents: copies of rows that were still live), removed, every version, as the purpose's next
    run's recovery removes them (retention.archive.recovery), under the purpose's lock and once
    its batches still open elsewhere are done: a request erasing those rows reported them erased
    while a copy stayed in the bucket, until that run (never, for a purpose in preview mode;
    found by a review)."""
    wait_for_batches_in_flight(control, purpose)
    orphans = _orphan_uploads(control, ctx, ids, purpose)
    control.commit()
    for manifest_id, _, rule, table, key, doc_keys, record_ids in orphans:
        ctx.store.delete_all_versions([key, *doc_keys])
        with control.transaction():
            control.execute(
                "UPDATE retention.archive_manifest SET state = 'abandoned' WHERE id = %s AND state = 'uploading'",
                (manifest_id,),
            )
            control.execute(
                "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action,"
                " record_count, object_key) VALUES (%s, now(), %s, %s, %s, 'orphan_removed', %s, %s)",
                (req.audit_run_id, purpose, rule, table, len(record_ids), key),
            )
        report["erased"]["orphan_uploads"] = report["erased"].get("orphan_uploads", 0) + 1


def _pending_rewrites(ctx: RequestContext) -> set[str]:
    with ctx.connect() as conn:
        return object_rewrite.pending_rewrite_purposes(ctx.store, conn)


def lock_purpose(ctx: RequestContext, conn, purpose: str) -> None:
    """The purpose's advisory lock (the engine's): no archive run, orphan clean-up or purge of
    the purpose runs while its objects are rewritten."""
    acquire_purpose_lock(
        conn,
        purpose,
        ctx.lock_timeout,
        on_timeout=f"a run of purpose {purpose!r} holds its lock (waited {ctx.lock_timeout:.0f}s); its archive "
        "objects were not rewritten yet: retry the request (live rows already erased stay erased)",
    )


def _rewrite(ctx: RequestContext, control, intents, req: SubjectRequest, obj: ArchivedObject, found: Found) -> dict:
    """Rewrite one intermediate object without the subject's rows: the write-ahead protocol of
    retention.archive.rewrite, whose recovery the purpose's next run, purge or request runs. Its
    hold checks (under the hold table's lock) also follow the subject's rows to the object
    (retention.rights.find.held_through_parents)."""
    result = object_rewrite.rewrite_without(
        ctx.policy,
        ctx.store,
        control,
        intents,
        obj,
        found.ids.get(obj.table, set()),
        origin=req.request_id,
        new_key=f"{obj.key.removesuffix('.parquet')}.erasure-{req.request_id}.parquet",
        run_id=req.audit_run_id,
        held=lambda conn: _held_through_parents(ctx, conn, obj, found),
        # The old object, the only copy of the subject's rows until its versions are deleted,
        # named their records among its owners with the commit: after a crash past it, a hold
        # placed on them since keeps it at the recovery of whichever run comes first (the
        # purpose's own run reads the owners alone; found by a review).
        on_commit=lambda conn, _removed: _name_subject_owners(ctx, conn, obj, found),
    )
    return result


def _held_through_parents(ctx: RequestContext, conn, obj: ArchivedObject, found: Found) -> bool:
    """The rewrite's own hold test (held_through_parents); a held object is then named its
    subject's records above its table among its owners, in the hold check's transaction: kept
    whole, or its rewrite left 'committed', every later check (the next run's or request's
    recover_rewrites, the purge) sees only the manifest's owners, and deleted the held object
    (found by a review). A superset of owners only keeps more."""
    if obj.manifest_id not in held_through_parents(ctx, conn, found):
        return False
    _name_subject_owners(ctx, conn, obj, found)
    return True


def _named_above(ctx: RequestContext, obj: ArchivedObject, found: Found) -> dict[str, set[int]]:
    """The records the subject's rows in ``obj`` name above them, up the parent columns of the
    subject's archived rows found: a hold on one covers them, which the manifest's owners may not
    say (a link made after the object was written: the customer the prospect asking became, not
    the subject's own record; found by a review). Live rows' links the hold coverage follows."""
    index: dict[tuple[str, int], dict[str, int | None]] = {}
    for o in found.objects:
        cols = [c for _, c in ctx.parents.get(o.table, []) if c in o.rows.column_names]
        subject = set(o.subject_ids)
        values = {c: o.rows.column(c).to_pylist() for c in cols}
        for n, i in enumerate(o.rows.column("id").to_pylist()):
            if i in subject:
                index[(o.table, i)] = {c: values[c][n] for c in cols}
    named: dict[str, set[int]] = {}
    frontier = [(obj.table, i) for i in obj.subject_ids]
    seen: set[tuple[str, int]] = set()
    while frontier:
        key = frontier.pop()
        if key in seen:
            continue
        seen.add(key)
        row = index.get(key, {})
        for parent, col in ctx.parents.get(key[0], []):
            if row.get(col) is not None:
                named.setdefault(parent, set()).add(row[col])
                frontier.append((parent, row[col]))
    return named


def _name_subject_owners(ctx: RequestContext, conn, obj: ArchivedObject, found: Found) -> str | None:
    """Add the subject's records of the tables above the object's to its owners, and the records
    the subject's archived rows name above it (_named_above): those recorded now, read under the
    row's lock, and more: never fewer. Returns the object's state then."""
    with conn.transaction():
        row = conn.execute(
            "SELECT owner_ids, state FROM retention.archive_manifest WHERE id = %s FOR NO KEY UPDATE",
            (obj.manifest_id,),
        ).fetchone()
        if row is None or row[0] is None:
            return row and row[1]
        owners = {t: set(v) for t, v in row[0].items()}
        above = _named_above(ctx, obj, found)
        for table in ancestors_first(ctx.policy, [obj.table]):
            ids = found.ids.get(table, set()) | above.get(table, set())
            if table != obj.table and ids:
                owners.setdefault(table, set()).update(ids)
        conn.execute(
            "UPDATE retention.archive_manifest SET owner_ids = %s::jsonb WHERE id = %s",
            (json.dumps({t: sorted(v) for t, v in sorted(owners.items())}), obj.manifest_id),
        )
        return row[1]
