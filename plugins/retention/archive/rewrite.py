"""Rewriting an unlocked archive object without some of its rows (write-ahead), and finishing a
rewrite a crash left.

Two callers remove rows from an object that others' rows share: a subject's erasure
(retention.rights.subject_rights) and the purge of rows whose own end date has come in an object
written per month before objects were written per day (retention.archive.engine). Both run under the
purpose's advisory lock, which every writer and purger of the purpose's objects takes.

The protocol (``retention.object_rewrites``):

1. record the rewrite and the new object's 'uploading' manifest row (committed);
2. upload the new object (SHA-256, SSE) and read it back (size, checksum, row count);
3. in one transaction holding the hold table in SHARE mode: re-check the old object is still
   committed and not held, mark the new one 'committed', the old one 'rewritten';
4. under the hold table's SHARE lock again, unless a hold placed since 3 covers the old object
   (it may be the only copy of the removed rows): delete every version of the old object and of
   its document copies that no other stored object names (the new one names those of the rows it
   keeps; copies_stored_elsewhere). A held one stays, its rewrite 'committed', until a run
   after the hold's release finishes it (as an interrupted whole-object purge is decided again).

A crash before 3 leaves the old object whole (the new one is an orphan); after 3, the old
object's versions are still to delete. Either is finished by ``recover_rewrites``, which the
engine's recovery and purge, and every subject request, call under the purpose's lock.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from retention import identifiers
from retention.archive.locks import LOCK_HOLDS
from retention.archive.parquet import file_keys, parquet_bytes, parquet_row_count, read_parquet
from retention.archive.store import ArchiveStore
from retention.policy import Policy
from retention.policy.coverage import covered_records_sql, object_held

log = logging.getLogger(__name__)

# How long a rewrite waits for the hold table and the manifest row (as a batch does).
REWRITE_LOCK_TIMEOUT = "30s"


class RewriteError(RuntimeError):
    """The rewritten object does not read back as the rows it should hold; nothing changed."""


@dataclass
class StoredObject:
    """A committed archive object, read back: what a rewrite needs to know of it."""

    manifest_id: int
    tier: str
    key: str
    document_keys: list[str]
    document_version_ids: list[str | None]
    owner_ids: dict | None
    rows: pa.Table


def source_of(archive_copy_key: str) -> str:
    """The documents-bucket key an archive copy was made from (archive_store.document_archive_key)."""
    return archive_copy_key.split(".documents/", 1)[1] if ".documents/" in archive_copy_key else ""


def copies_stored_elsewhere(conn, bucket: str, manifest_id: int, copies: list[str]) -> set[str]:
    """The archive copies among ``copies`` (document keys of the manifest row ``manifest_id``)
    that another object still stored names: a rewrite's new object names the old one's copies of
    the rows it keeps, and an old object a hold keeps after its rewrite's commit still needs them
    (found by a review: the purge of the new object deleted the file copy of a held row). They
    stay until the last object naming them goes. Such objects share the copies' stem (the old
    object's key without ``.parquet``: a rewrite only appends to it), so only those are read."""
    stems = sorted({k.split(".documents/", 1)[0] for k in copies if ".documents/" in k})
    if not stems:
        return set()
    rows = conn.execute(
        "SELECT DISTINCT k FROM retention.archive_manifest AS o, unnest(o.document_keys) AS k"
        " WHERE o.bucket = %s AND o.id <> %s AND k = ANY(%s::text[])"
        " AND EXISTS (SELECT 1 FROM unnest(%s::text[]) AS s WHERE starts_with(o.object_key, s))"
        " AND (o.state IN ('uploading', 'committed') OR o.state = 'rewritten' AND EXISTS"
        "  (SELECT 1 FROM retention.object_rewrites AS r WHERE r.old_manifest_id = o.id"
        "   AND r.state IN ('uploading', 'committed')))",
        (bucket, manifest_id, sorted(set(copies)), stems),
    ).fetchall()
    return {r[0] for r in rows}


def copies_to_delete(conn, bucket: str, manifest_id: int, copies: list[str]) -> list[str]:
    """``copies`` without those another stored object names (copies_stored_elsewhere), each once."""
    shared = copies_stored_elsewhere(conn, bucket, manifest_id, copies)
    return sorted({k for k in copies if k not in shared})


def read_object(store: ArchiveStore, key: str, version: str | None, sha256: str) -> pa.Table:
    """An archive object's rows, checked against the manifest's SHA-256."""
    return read_parquet(store.read_verified(key, version, sha256))


def rewrite_without(
    policy: Policy,
    store: ArchiveStore,
    control,
    intents,
    obj: StoredObject,
    remove: set[int],
    *,
    origin: str,
    new_key: str,
    run_id: str | None = None,
    earliest_purge_after: dt.datetime | None = None,
    on_commit: Callable[[Any, list[int]], None] | None = None,
    held: Callable[[Any], bool] | None = None,
) -> dict:
    """Rewrite ``obj`` without the rows whose id is in ``remove`` (the protocol above).

    ``origin`` names who asked (a request id, or ``purge:<run id>``), ``new_key`` the key of the
    object holding the rows that remain, ``run_id`` its manifest run (None: the old object's),
    ``earliest_purge_after`` the earliest end date of a remaining row (None: the old object's);
    ``on_commit(conn, removed ids)`` writes the caller's record (an audit row) in the
    transaction of step 3, so that it is there exactly when the rewrite is. ``held(conn)``: the
    caller's own hold test, run with the manifest's at steps 3 and 4 under the hold table's lock.
    Returns what was done: ``rewritten``, or ``kept`` (a hold placed meanwhile keeps the old
    object whole) or ``changed_meanwhile`` (purged or rewritten since it was read)."""
    ids = obj.rows.column("id").to_pylist()
    keep_mask = pa.array([i not in remove for i in ids])
    remaining = obj.rows.filter(keep_mask)
    gone = obj.rows.filter(pc.invert(keep_mask))
    removed = gone.column("id").to_pylist()
    gone_sources = file_keys(gone) - file_keys(remaining)
    removed_docs = [k for k in obj.document_keys if source_of(k) in gone_sources]
    kept_docs = [
        (k, v) for k, v in zip(obj.document_keys, obj.document_version_ids, strict=True) if k not in removed_docs
    ]
    # The old object's owners, unchanged (never recorded stays unknown: the purge keeps such
    # an object). Not "minus the removed rows' owners": a row kept here may still belong to
    # them through a record this caller cannot see, and a hold placed on them later must keep
    # it. A superset only keeps more.
    owners = obj.owner_ids
    tier = store.storage.tiers[obj.tier]
    new_id = None
    with intents.transaction():
        if remaining.num_rows:
            new_id = intents.execute(
                "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier,"
                " bucket, object_key, state, purge_month, purge_after, earliest_purge_after, row_count, record_ids,"
                " document_keys, owner_ids, identifier_hashes, gone_after, clock)"
                " SELECT coalesce(%s, run_id), logical_date, purpose, rule, table_name, tier, bucket, %s, 'uploading',"
                " purge_month, purge_after, coalesce(%s, earliest_purge_after), %s, %s::bigint[], %s, %s::jsonb,"
                " %s::bigint[], gone_after, clock FROM retention.archive_manifest WHERE id = %s RETURNING id",
                (
                    run_id,
                    new_key,
                    earliest_purge_after,
                    remaining.num_rows,
                    remaining.column("id").to_pylist(),
                    [k for k, _ in kept_docs],
                    json.dumps(owners) if owners is not None else None,
                    # The identifiers of the rows it keeps (exact, unlike the owners: no removed
                    # person's address stays findable through it).
                    identifiers.locators_literal(remaining),
                    obj.manifest_id,
                ),
            ).fetchone()[0]
        rewrite_id = intents.execute(
            "INSERT INTO retention.object_rewrites (request_id, old_manifest_id, new_manifest_id, removed_ids,"
            " removed_document_keys, state) VALUES (%s, %s, %s, %s::bigint[], %s, 'uploading') RETURNING id",
            (origin, obj.manifest_id, new_id, removed, removed_docs),
        ).fetchone()[0]
    verified = None
    if new_id is not None:
        body = parquet_bytes(remaining)
        if not read_parquet(body).equals(remaining):
            raise RewriteError(f"{obj.key}: the rewritten rows do not read back equal; nothing changed")
        verified = store.put_verified(new_key, body, tier.storage_class, remaining.num_rows, parquet_row_count)
    with control.transaction():
        control.execute(f"SET LOCAL lock_timeout = '{REWRITE_LOCK_TIMEOUT}'")
        control.execute(LOCK_HOLDS)
        row = control.execute(
            f"WITH covered AS ({covered_records_sql(policy)})"
            f" SELECT {object_held('m')}, m.owner_ids FROM retention.archive_manifest AS m"
            " WHERE m.id = %s AND m.state = 'committed' FOR NO KEY UPDATE OF m",
            (obj.manifest_id,),
        ).fetchone()
        held_now = bool(row and (row[0] or (held is not None and held(control))))
        proceed = row is not None and not held_now
        if proceed:
            if new_id is not None and owners is not None and row[1] != owners:
                # The old object's owners now, read under its lock: a request may have named more
                # since they were read (found by a review: the owners a request named after a
                # hold reached the object through its rows were lost with the rewrite, and the
                # hold, released and placed again, no longer kept the new object). Never fewer.
                control.execute(
                    "UPDATE retention.archive_manifest SET owner_ids = %s::jsonb WHERE id = %s AND state = 'uploading'",
                    (json.dumps(row[1]), new_id),
                )
            if new_id is not None:
                control.execute(
                    "UPDATE retention.archive_manifest SET state = 'committed', byte_size = %s, sha256 = %s,"
                    " version_id = %s, document_version_ids = %s, committed_at = now()"
                    " WHERE id = %s AND state = 'uploading'",
                    (verified.size, verified.sha256_hex, verified.version_id, [v for _, v in kept_docs], new_id),
                )
            control.execute(
                "UPDATE retention.archive_manifest SET state = 'rewritten' WHERE id = %s AND state = 'committed'",
                (obj.manifest_id,),
            )
            control.execute(
                "UPDATE retention.object_rewrites SET state = 'committed', committed_at = now() WHERE id = %s",
                (rewrite_id,),
            )
            if on_commit is not None:
                on_commit(control, removed)
    if not proceed:  # held (or changed) meanwhile: the old object stays whole
        _abandon(store, control, rewrite_id, new_id, new_key if new_id is not None else None)
        return {"action": "kept" if row else "changed_meanwhile", "held": held_now}
    finished = _finish(policy, store, control, rewrite_id, obj.manifest_id, obj.key, held)
    return {
        "action": "rewritten",
        # A hold placed since the commit keeps the old object, the only copy of the removed rows:
        # they are still stored (until a run after the hold's release finishes the rewrite).
        "old_object_kept": not finished,
        "removed_rows": len(removed),
        "removed_ids": removed,
        "new_key": new_key if new_id is not None else None,
        "new_sha256": verified.sha256_hex if verified else None,
        "remaining_rows": remaining.num_rows,
        "removed_document_copies": len(removed_docs),
    }


def _abandon(store: ArchiveStore, control, rewrite_id: int, new_id: int | None, new_key: str | None) -> None:
    if new_key:
        store.delete_all_versions([new_key])
    with control.transaction():
        if new_id is not None:
            control.execute(
                "UPDATE retention.archive_manifest SET state = 'abandoned' WHERE id = %s AND state = 'uploading'",
                (new_id,),
            )
        control.execute("UPDATE retention.object_rewrites SET state = 'abandoned' WHERE id = %s", (rewrite_id,))


def _finish(
    policy: Policy,
    store: ArchiveStore,
    control,
    rewrite_id: int,
    old_id: int,
    old_key: str,
    held: Callable[[Any], bool] | None = None,
) -> bool:
    """Step 4: the old object goes last (delete_all_versions), after its document copies that no
    other stored object names (the removed rows', and those of a new object purged meanwhile:
    copies_stored_elsewhere), under the hold table's SHARE lock, as a purge's delete: a hold
    placed since step 3 on a row the old object still stores keeps its bytes (the rewrite stays
    'committed', finished by a later run once the hold is released); one placed meanwhile waits
    for the delete. Returns whether the old object went (False: held, its versions kept)."""
    with control.transaction():
        control.execute(f"SET LOCAL lock_timeout = '{REWRITE_LOCK_TIMEOUT}'")
        control.execute(LOCK_HOLDS)
        kept = control.execute(
            f"WITH covered AS ({covered_records_sql(policy)})"
            f" SELECT {object_held('m')} FROM retention.archive_manifest AS m WHERE m.id = %s",
            (old_id,),
        ).fetchone()[0] or (held is not None and held(control))
        if kept:
            log.warning("%s: held since its rewrite was committed; its versions are kept", old_key)
            return False
        docs = control.execute(
            "SELECT document_keys FROM retention.archive_manifest WHERE id = %s", (old_id,)
        ).fetchone()[0]
        store.delete_all_versions([old_key, *copies_to_delete(control, store.archive_bucket, old_id, list(docs))])
        control.execute(
            "UPDATE retention.object_rewrites SET state = 'done', done_at = now() WHERE id = %s", (rewrite_id,)
        )
    return True


def recover_rewrites(policy: Policy, store: ArchiveStore, control, purpose: str) -> dict[str, int]:
    """Finish what a crashed rewrite of the purpose left (under the purpose's lock):
    'uploading' -> remove the new object (the old one still holds every row), abandon;
    'committed' -> delete the old object's versions, done."""
    rows = control.execute(
        "SELECT r.id, r.state, r.new_manifest_id, n.object_key, o.id, o.object_key"
        " FROM retention.object_rewrites AS r JOIN retention.archive_manifest AS o ON o.id = r.old_manifest_id"
        " LEFT JOIN retention.archive_manifest AS n ON n.id = r.new_manifest_id"
        " WHERE o.purpose = %s AND o.bucket = %s AND r.state IN ('uploading', 'committed') ORDER BY r.id",
        (purpose, store.archive_bucket),
    ).fetchall()
    control.commit()
    done = Counter()
    for rewrite_id, state, new_id, new_key, old_id, old_key in rows:
        if state == "uploading":
            _abandon(store, control, rewrite_id, new_id, new_key)
        else:
            _finish(policy, store, control, rewrite_id, old_id, old_key)
        done[state] += 1
    if rows:
        log.warning("finished %d object rewrites interrupted earlier", len(rows))
    return dict(done)


def pending_rewrite_purposes(store: ArchiveStore, conn) -> set[str]:
    """The purposes with a rewrite a crash left unfinished."""
    rows = conn.execute(
        "SELECT DISTINCT o.purpose FROM retention.object_rewrites AS r"
        " JOIN retention.archive_manifest AS o ON o.id = r.old_manifest_id"
        " WHERE r.state IN ('uploading', 'committed') AND o.bucket = %s",
        (store.archive_bucket,),
    ).fetchall()
    return {r[0] for r in rows}
