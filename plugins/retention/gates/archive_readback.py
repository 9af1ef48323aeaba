"""The after-gate's read-back of the archive objects this run committed.

Each object is re-read from S3, one request an object (the key's latest version: when it is the
manifest's, that answer is also the proof that nothing was written over the key, and it carries
the version's Object Lock; otherwise the manifest's version is read too): its size, SHA-256 and
Parquet row count against its manifest row; then the id columns of a table's objects (the only
column read, in memory) are validated with GX in one frame against the manifest's row counts
and ids, each id tagged with its object's number so that it is tested against its own object's
ids (whether the manifest lists it is computed once per frame with pandas: GX copied the whole
list of the manifest's ids for every expectation it looked at, 3 s at 36,000 ids). One
validation (and one Data Docs page) per table, not per object: a run writes one object per
table and end day, and a validation of its own cost 0.3-0.6 s an object, most of the after-gate.
A backlog's objects are validated FRAME_ROWS ids at a time (memory stays bounded), their
results summed into one line per expectation. In a tier under Object Lock, the version read
back must be under COMPLIANCE retention until its purge date.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.gates.checks import archive_object_checks
from retention.gates.gx import CheckpointRuns, frame_batch_definition, validate_frame
from retention.gates.results import MAX_LISTED, gate_result

READ_THREADS = 8  # archive objects (and their lock settings) read from S3 at once
FRAME_ROWS = 200_000  # ids of a table's objects validated in one frame, at most (about 40 MB)


@dataclass
class _ArchiveTable:
    """What the archive objects of one table, written by this run, showed when read back."""

    objects: int = 0
    rows: int = 0
    mismatched: list[str] = field(default_factory=list)  # "<key>: <what differs>", one per object
    # The frame being gathered: per object read back its number and ids, the manifest's ids
    # tagged "<object number>:<id>", the manifest's rows of those objects.
    frames: list = field(default_factory=list)
    object_rows: list[str] = field(default_factory=list)
    frame_rows: int = 0
    validated: list[list[dict]] = field(default_factory=list)  # one GX result list per frame


# (key, version) -> the version's Object Lock (mode, retain-until) as read back, or the error
ObjectLocks = dict[tuple[str, str | None], tuple | Exception]


def archive_object_results(
    conn, context, store: ArchiveStore, ctx: RunContext, purpose: str, runs: CheckpointRuns
) -> tuple[list[dict], ObjectLocks]:
    """Every object this run committed: re-read from S3, size / SHA-256 / Parquet rows against
    the manifest, then the ids of each table's objects validated with GX in one frame (the
    validation gathered in ``runs``). Also returns the Object Lock each read-back showed."""
    manifest = conn.execute(
        "SELECT table_name, bucket, object_key, version_id, sha256, byte_size, row_count, record_ids"
        " FROM retention.archive_manifest WHERE run_id = %s AND purpose = %s AND state = 'committed' ORDER BY id",
        (ctx.run_id, purpose),
    ).fetchall()
    frame_batch = frame_batch_definition(context) if manifest else None
    by_table: dict[str, _ArchiveTable] = defaultdict(_ArchiveTable)
    locks: ObjectLocks = {}
    # The objects are read a few at a time (S3's latency, once per object, was most of the gate).
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        read_backs = pool.map(lambda row: _read_back(store.client, *row[1:7]), manifest)
        for row, (ids, problems, lock) in zip(manifest, read_backs, strict=True):
            table, _, key, version, _, _, row_count, record_ids = row
            locks[(key, version)] = lock
            seen = by_table[table]
            seen.objects += 1
            seen.rows += row_count
            if problems:
                seen.mismatched.append(f"{key}: {'; '.join(problems)}")
            if ids is not None:
                number = seen.objects - 1
                seen.frames.append((number, ids))
                seen.object_rows += [f"{number}:{record_id}" for record_id in record_ids]
                seen.frame_rows += row_count
                if seen.frame_rows >= FRAME_ROWS:
                    _validate_frame(context, frame_batch, purpose, table, seen, runs)
    results = []
    for table, seen in by_table.items():
        _validate_frame(context, frame_batch, purpose, table, seen, runs)
        results.append(
            gate_result(
                "archive_objects_match_manifest",
                f"archive:{table}",
                not seen.mismatched,
                objects=seen.objects,
                rows=seen.rows,
                mismatched_objects=len(seen.mismatched),
                mismatches=seen.mismatched[:MAX_LISTED],
            )
        )
        results += _summed(seen.validated)
    return results, locks


def id_frame(objects: list[tuple[int, object]], object_rows: list[str]):
    """The id columns of some objects (``(object number, DataFrame with "id")``) in one frame:
    ``object_row`` is ``"<object number>:<id>"``, ``in_manifest`` whether ``object_rows`` (the
    manifest's, tagged the same way) lists it; both missing where the id is."""
    import numpy as np
    import pandas as pd

    frame = pd.concat([ids[["id"]] for _, ids in objects], ignore_index=True)
    numbers = pd.Series(np.repeat([number for number, _ in objects], [len(ids) for _, ids in objects]))
    ids = frame["id"]
    missing = ids.isna()
    object_row = (numbers.astype("string") + ":" + ids.astype("Int64").astype("string")).astype(object)
    object_row[missing] = None
    in_manifest = object_row.isin(set(object_rows)).astype(object)
    in_manifest[missing] = None
    return frame.assign(object_row=object_row, in_manifest=in_manifest)


def _validate_frame(context, frame_batch, purpose: str, table: str, seen: _ArchiveTable, runs: CheckpointRuns) -> None:
    """Validate the frame gathered for ``table`` (if any) and start a new one."""
    if not seen.frames:
        return

    suite_name = f"{purpose}.after.archive.{table}"
    if seen.validated:  # a backlog's next frame: a suite of its own
        suite_name += f".{len(seen.validated) + 1}"
    checks = archive_object_checks(f"archive:{table}", len(seen.frames), seen.frame_rows)
    frame = id_frame(seen.frames, seen.object_rows)
    seen.validated.append(validate_frame(context, frame_batch, suite_name, checks, frame, runs))
    seen.frames, seen.object_rows, seen.frame_rows = [], [], 0


def _summed(per_frame: list[list[dict]]) -> list[dict]:
    """One line per expectation for the frames of one table: failed only if one frame failed,
    counts summed (a daily run has one frame: its lines as they are)."""
    if len(per_frame) <= 1:
        return per_frame[0] if per_frame else []
    summed = []
    for same_check in zip(*per_frame, strict=True):
        first = same_check[0]
        observed = {"frames": len(same_check), "failed_frames": sum(r["success"] is False for r in same_check)}
        for name in ("objects_validated", "element_count", "unexpected_count", "missing_count", "observed_value"):
            values = [r["observed"][name] for r in same_check if isinstance(r["observed"].get(name), int)]
            if values:
                observed[name] = sum(values)
        errors = [r["observed"]["error"] for r in same_check if "error" in r["observed"]]
        if errors:
            observed["error"] = errors[0]
        summed.append(
            gate_result(
                first["expectation"],
                first["table"],
                observed["failed_frames"] == 0 and not errors,
                column=first.get("column"),
                **observed,
            )
        )
    return summed


def _read_back(
    client, bucket: str, key: str, version: str | None, sha256: str | None, size: int | None, row_count: int
):
    """(the object's id column as a DataFrame, or None if unreadable; what differs from the
    manifest; the version's Object Lock as (mode, retain-until), or the error that hid it).
    The manifest's version is what is checked, whatever the key points to now."""
    import pyarrow.parquet as pq

    problems = []
    try:
        got = client.get_object(Bucket=bucket, Key=key)  # the latest version: is it still ours?
        if version and got.get("VersionId") != version:
            problems.append(
                "a newer version was written over the key after the archive (the manifest's version is intact)"
            )
            got["Body"].close()  # not ours: its bytes are not read
            got = client.get_object(Bucket=bucket, Key=key, VersionId=version)
        body = got["Body"].read()
    except Exception as exc:  # botocore raises several unrelated classes
        return None, [f"cannot be read back ({type(exc).__name__})"], exc
    lock = (got.get("ObjectLockMode"), got.get("ObjectLockRetainUntilDate"))
    if len(body) != size:
        problems.append(f"{len(body)} bytes, manifest says {size}")
    if hashlib.sha256(body).hexdigest() != sha256:
        problems.append("SHA-256 of the stored bytes differs from the manifest")
    try:
        parquet = pq.ParquetFile(io.BytesIO(body))
        ids = parquet.read(columns=["id"]).to_pandas()
    except Exception as exc:  # pyarrow raises several classes for a damaged file
        return None, problems + [f"not a readable Parquet file with an id column ({type(exc).__name__})"], lock
    if parquet.metadata.num_rows != row_count:
        problems.append(f"{parquet.metadata.num_rows} Parquet rows, manifest says {row_count}")
    return ids, problems, lock


def probative_versions_locked(
    conn, store: ArchiveStore, ctx: RunContext, purpose: str, read_back: ObjectLocks | None = None
) -> dict:
    """Each object of the run in a locked tier: the manifest's version (the one read back) is
    under COMPLIANCE retention until at least its purge date. The locks the read-back saw are
    used as they are (``read_back``); any other version's is asked for (HEAD)."""
    locked_prefixes = [t.prefix + "/" for t in store.storage.tiers.values() if t.object_lock]
    if not locked_prefixes or not store.lock_supported():
        return gate_result("probative_version_locked", "archive:probative", None, skipped="no Object Lock tier")
    rows = conn.execute(
        "SELECT object_key, version_id, purge_after FROM retention.archive_manifest"
        " WHERE run_id = %s AND purpose = %s AND state = 'committed' AND purge_after > now()"
        " AND split_part(object_key, '/', 1) || '/' = ANY(%s) ORDER BY id",
        (ctx.run_id, purpose, locked_prefixes),
    ).fetchall()

    seen = read_back or {}

    def lock_of(row) -> tuple | Exception:
        if (row[0], row[1]) in seen:
            return seen[(row[0], row[1])]
        try:
            return store.locked_until(row[0], row[1])
        except Exception as exc:  # botocore raises several unrelated classes
            return exc

    unlocked = []
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        locks = list(pool.map(lock_of, rows))
    for (key, version, purge_after), lock in zip(rows, locks, strict=True):
        if isinstance(lock, Exception):
            unlocked.append(f"{key}: cannot be read ({type(lock).__name__})")
            continue
        mode, until = lock
        if mode != "COMPLIANCE" or until is None or until < purge_after:
            unlocked.append(f"{key}@{version}: lock {mode or 'none'} until {until}, purge date {purge_after:%Y-%m-%d}")
    return gate_result(
        "probative_version_locked",
        "archive:probative",
        not unlocked,
        objects=len(rows),
        unlocked_objects=len(unlocked),
        unlocked=unlocked[:MAX_LISTED],
    )
