"""Exports of access requests do not outlive their purpose.

An access request (retention.rights.access) writes the person's whole file to
``exports/<request id>/export.zip`` in the archive bucket, for them to download. It is deleted,
every version, the policy's ``access_exports.kept_for`` (30 days) after it was produced: by
``delete_expired_exports``, a daily task of the watch DAG (retention.watch).

Each export has a row in ``retention.access_exports``: recorded by the request when it writes
the export (``record_produced``), and by the daily task from the bucket's listing (an export it
has not seen: a request that stopped after the upload, or one written before this module). A
re-run of the request writes a new version and moves the export's date on: the person got a new
link then. The daily task deletes exactly the versions it listed, checks with a new listing that
none is left, and only then records the deletion (``deleted_at``, versions deleted, its run).
When S3 fails nothing is recorded as deleted and the task fails, naming the request; the next
run finishes. The request's own evidence (``retention.subject_requests``) is never rewritten:
this table is what became of its export. Request ids, keys, times and counts only.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from retention.archive.store import ArchiveStorageError, ArchiveStore
from retention.policy import Policy
from retention.policy.periods import due_date

log = logging.getLogger(__name__)

EXPORT_PREFIX = "exports/"
# The key retention.rights.access writes; anything else under the prefix is left alone.
_EXPORT_KEY = re.compile(r"^exports/([A-Za-z0-9._=-]+)/export\.zip$")


class ExportHousekeepingError(RuntimeError):
    """Some expired exports could not be deleted; the message names them. Nothing of those was
    recorded as deleted; the next run tries again."""


def delete_after(policy: Policy, produced_at: dt.datetime) -> dt.datetime:
    """The first daily run at or after produced + kept_for (calendar days in the policy's time
    zone, like every period of the policy)."""
    return due_date(produced_at, policy.access_exports.kept_for, policy.tz)


def record_produced(conn, policy: Policy, request_id: str, export: dict) -> None:
    """The request wrote (and verified) its export: record it, with its deletion date. A re-run
    of the request moves the date of the export it replaced on."""
    produced_at = conn.execute("SELECT now()").fetchone()[0]
    _register(conn, policy, request_id, export["bucket"], export["key"], produced_at)


def _register(conn, policy: Policy, request_id: str, bucket: str, key: str, produced_at: dt.datetime) -> None:
    """The export held under ``key``, produced at ``produced_at`` (never moved back: a listing
    after a partial delete shows older versions only)."""
    conn.execute(
        "INSERT INTO retention.access_exports (request_id, bucket, object_key, produced_at, delete_after)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (bucket, object_key) WHERE deleted_at IS NULL DO UPDATE"
        " SET produced_at = EXCLUDED.produced_at, delete_after = EXCLUDED.delete_after"
        " WHERE access_exports.produced_at < EXCLUDED.produced_at",
        (request_id, bucket, key, produced_at, delete_after(policy, produced_at)),
    )


def delete_expired(policy: Policy, dsn: str, store: ArchiveStore, now: dt.datetime, run_id: str) -> dict:
    """Record the exports the bucket holds, delete every version of those whose time is over,
    and record each deletion once S3 confirmed it. Returns counts, request ids and dates."""
    import psycopg

    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    bucket = store.archive_bucket
    with psycopg.connect(dsn, autocommit=True, application_name="retention:exports") as conn:
        if not conn.execute("SELECT pg_try_advisory_lock(hashtext('retention:exports'))").fetchone()[0]:
            raise ExportHousekeepingError("another run is deleting expired exports; try again once it is done")
        try:
            listed_at = conn.execute("SELECT now()").fetchone()[0]
            listing = store.list_versions(EXPORT_PREFIX)  # an S3 failure here: nothing recorded at all
            exports, unknown = {}, []
            for key, versions in listing.items():
                match = _EXPORT_KEY.match(key)
                if match is None:
                    unknown.append(key)
                elif any(not v.delete_marker for v in versions):
                    exports[key] = (match.group(1), versions)
            for key, (request_id, versions) in exports.items():
                newest = max(v.last_modified for v in versions if not v.delete_marker)
                _register(conn, policy, request_id, bucket, key, newest)
            gone = _record_gone(conn, bucket, set(exports), listed_at, now, run_id)
            due = conn.execute(
                "SELECT id, request_id, object_key, produced_at, delete_after FROM retention.access_exports"
                " WHERE bucket = %s AND deleted_at IS NULL AND delete_after <= %s ORDER BY delete_after, id",
                (bucket, now),
            ).fetchall()
            deleted, failed = [], []
            for row_id, request_id, key, produced_at, due_at in due:
                if key not in exports:  # recorded while the bucket was being listed: seen next time
                    continue
                versions = exports[key][1]
                try:
                    store.delete_versions(versions)
                except ArchiveStorageError as exc:
                    log.error("export of request %s: %s", request_id, exc)
                    failed.append((request_id, str(exc)))
                    continue
                _record_deleted(
                    conn, row_id, (request_id, bucket, key, produced_at, due_at), len(versions), now, run_id
                )
                deleted.append(
                    {"request_id": request_id, "produced_at": produced_at.isoformat(), "versions": len(versions)}
                )
            held = conn.execute(
                "SELECT count(*), min(delete_after) FROM retention.access_exports WHERE bucket = %s AND deleted_at IS NULL",
                (bucket,),
            ).fetchone()
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('retention:exports'))")
    summary = {
        "deleted": deleted,
        "versions_deleted": sum(d["versions"] for d in deleted),
        "gone_before": gone,
        "held": int(held[0]),
        "next_deletion": held[1].isoformat() if held[1] else None,
        "not_exports": len(unknown),
        "failed": [request_id for request_id, _ in failed],
    }
    log.info(
        "exports: %d deleted (%d versions), %d gone before, %d held (next deletion %s), %d failed",
        len(deleted),
        summary["versions_deleted"],
        len(gone),
        summary["held"],
        summary["next_deletion"],
        len(failed),
    )
    if unknown:
        log.warning("%d objects under %s are not exports of a request: left alone", len(unknown), EXPORT_PREFIX)
    if failed:
        raise ExportHousekeepingError(
            f"{len(failed)} expired exports could not be deleted, nothing of them recorded as deleted (the next "
            "run tries again): " + "; ".join(f"request {r!r}: {why}" for r, why in failed)
        )
    return summary


def _record_gone(
    conn, bucket: str, listed: set[str], listed_at: dt.datetime, now: dt.datetime, run_id: str
) -> list[str]:
    """Exports recorded as held that the bucket no longer has (deleted by hand, a lifecycle
    rule): recorded as gone, with nothing deleted by the project. Not one a request recorded
    after the listing began (written after it, so not in it)."""
    held = conn.execute(
        "SELECT id, request_id, object_key FROM retention.access_exports WHERE bucket = %s AND deleted_at IS NULL"
        " AND produced_at < %s",
        (bucket, listed_at),
    ).fetchall()
    gone = []
    for row_id, request_id, key in held:
        if key not in listed:
            conn.execute(
                "UPDATE retention.access_exports SET deleted_at = %s, outcome = 'gone', versions_deleted = 0,"
                " deleted_by = %s WHERE id = %s AND deleted_at IS NULL",
                (now, run_id, row_id),
            )
            gone.append(request_id)
    return gone


def _record_deleted(conn, row_id: int, export: tuple, versions: int, now: dt.datetime, run_id: str) -> None:
    """Every version listed is gone (``versions``: versions and delete markers). The row is marked
    unless the request was re-run meanwhile (its new export moved the row on, and stays): then
    the deletion gets a row of its own."""
    request_id, bucket, key, produced_at, due_at = export
    marked = conn.execute(
        "UPDATE retention.access_exports SET deleted_at = %s, outcome = 'deleted', versions_deleted = %s,"
        " deleted_by = %s WHERE id = %s AND deleted_at IS NULL AND produced_at = %s",
        (now, versions, run_id, row_id, produced_at),
    ).rowcount
    if not marked:
        conn.execute(
            "INSERT INTO retention.access_exports (request_id, bucket, object_key, produced_at, delete_after,"
            " deleted_at, outcome, versions_deleted, deleted_by) VALUES (%s, %s, %s, %s, %s, %s, 'deleted', %s, %s)",
            (request_id, bucket, key, produced_at, due_at, now, versions, run_id),
        )


def delete_subject_exports(conn, store: ArchiveStore, references: set[tuple[str, str]], run_id: str) -> int:
    """An erasure's last step: every export still held of an access request made under any of
    the subject's ``references`` ((kind, reference) pairs: an id, or an address's keyed hash; see
    retention.rights.erase.subject_references) is a full copy of the rows just erased: deleted,
    every version, and recorded. Returns how many this erasure deleted, every run of it."""
    kinds, refs = [k for k, _ in sorted(references)], [r for _, r in sorted(references)]
    rows = conn.execute(
        "SELECT e.id, e.request_id, e.bucket, e.object_key, e.produced_at, e.delete_after"
        " FROM retention.access_exports AS e JOIN retention.subject_requests AS r ON r.request_id = e.request_id"
        " WHERE r.action = 'access' AND (r.subject_kind, r.subject_ref) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " AND e.bucket = %s AND e.deleted_at IS NULL ORDER BY e.id",
        (kinds, refs, store.archive_bucket),
    ).fetchall()
    now = dt.datetime.now(dt.UTC)
    for row_id, request_id, bucket, key, produced_at, due_at in rows:
        versions = store.list_versions(key).get(key, [])
        store.delete_versions(versions)
        _record_deleted(conn, row_id, (request_id, bucket, key, produced_at, due_at), len(versions), now, run_id)
    # Counted from the records of every run of the erasure: a run stopped among them (a crash, S3)
    # deleted some, and the re-triggered one counted only those left (found by a review).
    return conn.execute(
        "SELECT count(*) FROM retention.access_exports WHERE deleted_by = %s AND outcome = 'deleted'", (run_id,)
    ).fetchone()[0]
