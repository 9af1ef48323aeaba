"""The invariants of the retention engine's first promise, checked after a fault and its re-run.

Never delete or purge a record that must be kept, never lose or duplicate one:

- every due row (captured before the fault) is in exactly one place: still in the source, in
  one verified committed archive object (read back by the manifest's version id: SHA-256 ==
  manifest sha256, ids == record_ids), in one purged object (its archive period is over at
  the logical date), or deleted unarchived by a tier-'none' rule (audit 'deleted');
- no held/covered record was deleted (it is still in the source) or purged (an object that
  held it before the fault is still committed, its version in the bucket);
- manifest, audit log and bucket agree: every 'committed' row has exactly its version in the
  bucket, no version in the archive bucket without a committed row, purged/abandoned objects
  are gone, audit 'archived_and_deleted' totals == manifest totals per run, each object purged
  is audited exactly once, no 'uploading' row, no pending file disposal and no unlocked
  probative object are left after the re-run.

``check_invariants`` computes the numbers (records lost, records duplicated) and the list of
problems; ``assert_invariants`` fails with all of them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow.parquet as pq

Ids = dict[str, set[int]]


@dataclass
class InvariantReport:
    lost: set[tuple[str, int]] = field(default_factory=set)  # due or held records found nowhere they may be
    duplicated: set[tuple[str, int]] = field(default_factory=set)  # records in two places at once
    held_violations: set[tuple[str, int]] = field(default_factory=set)  # held records deleted or purged
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.held_violations or self.problems)

    def describe(self) -> str:
        lines = [*self.problems]
        if self.lost:
            lines.append(f"records lost: {sorted(self.lost)[:20]}")
        if self.duplicated:
            lines.append(f"records duplicated: {sorted(self.duplicated)[:20]}")
        if self.held_violations:
            lines.append(f"held records deleted or purged: {sorted(self.held_violations)[:20]}")
        return "\n".join(lines)


def _all_versions(s3, bucket: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    versions, markers = [], []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        versions += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
        markers += [(m["Key"], m["VersionId"]) for m in page.get("DeleteMarkers", [])]
    return versions, markers


def _source_ids(conn, schema: str, table: str, ids: set[int]) -> set[int]:
    if not ids:
        return set()
    rows = conn.execute(f'SELECT id FROM "{schema}"."{table}" WHERE id = ANY(%s)', (sorted(ids),)).fetchall()
    return {r[0] for r in rows}


def check_invariants(
    conn,
    s3,
    storage,
    policy,
    purpose: str,
    due_ids_before: Ids,
    held_ids: Ids,
    logical_date: dt.datetime,
    *,
    archived_before: set[tuple[str, int]] = frozenset(),
) -> InvariantReport:
    """``held_ids``: records a hold in force covers. One in ``archived_before`` (archived before
    the fault) must still be in a committed object; any other must still be in the source."""
    report = InvariantReport()
    schema = policy.source_schema
    bucket = storage.archive_bucket
    manifest = conn.execute(
        "SELECT id, run_id, table_name, tier, object_key, state, row_count, sha256, version_id, record_ids,"
        " document_keys, document_version_ids, purge_after, locked_until, purge_run_id"
        " FROM retention.archive_manifest WHERE purpose = %s AND bucket = %s ORDER BY id",
        (purpose, bucket),
    ).fetchall()
    versions, markers = _all_versions(s3, bucket)
    version_set = set(versions)
    if markers:
        report.problems.append(f"delete markers left in the archive bucket: {markers[:5]}")

    # ---- where each record is: committed (verified) objects, purged objects, 'deleted' audits
    in_committed: dict[tuple[str, int], int] = Counter()
    in_purged: dict[tuple[str, int], int] = Counter()
    expected_versions: set[tuple[str, str]] = set()
    for (mid, _run_id, table, tier, key, state, row_count, sha, version, record_ids, doc_keys, doc_versions,
         purge_after, locked_until, _purge_run_id) in manifest:  # fmt: skip
        if state == "uploading":
            report.problems.append(f"manifest row {mid} ({key}) is still 'uploading' after the re-run")
        elif state == "committed":
            expected_versions.add((key, version))
            present = [v for k, v in versions if k == key]
            if present != [version]:
                report.problems.append(f"committed {key}: bucket holds versions {present}, manifest says {version!r}")
            if (key, version) in version_set:
                body = s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
                if hashlib.sha256(body).hexdigest() != sha:
                    report.problems.append(f"committed {key}: SHA-256 of the stored bytes != manifest sha256")
                ids = pq.read_table(io.BytesIO(body), columns=["id"]).column("id").to_pylist()
                if ids != list(record_ids) or len(ids) != row_count:
                    report.problems.append(f"committed {key}: ids in the object {ids} != manifest {record_ids}")
                for i in ids:
                    in_committed[(table, i)] += 1
            else:  # the manifest says archived, the bucket has nothing: the records are lost
                report.problems.append(f"committed {key}: version {version!r} is not in the bucket")
            for doc_key, doc_version in zip(doc_keys, doc_versions or [None] * len(doc_keys), strict=True):
                doc_present = [v for k, v in versions if k == doc_key]
                if doc_version is not None and doc_present != [doc_version]:
                    report.problems.append(f"document copy {doc_key}: versions {doc_present} != {doc_version!r}")
                expected_versions.update((doc_key, v) for v in doc_present)
            if storage.tiers[tier].object_lock and purge_after > dt.datetime.now(dt.UTC) and locked_until is None:
                report.problems.append(f"committed probative {key} is not under Object Lock")
        elif state == "purged":
            if purge_after > logical_date:
                report.problems.append(f"purged {key} before its purge date {purge_after.isoformat()}")
            for i in record_ids:
                in_purged[(table, i)] += 1
    for key, version in versions:
        if (key, version) not in expected_versions:
            report.problems.append(f"archive bucket holds {key} version {version} with no committed manifest row")

    deleted_unarchived: Counter = Counter()
    for table, ids in conn.execute(
        "SELECT table_name, record_ids FROM retention.audit_log WHERE purpose = %s AND action = 'deleted'",
        (purpose,),
    ).fetchall():
        for i in ids or []:
            deleted_unarchived[(table, i)] += 1

    # ---- every due record in exactly one place
    for table, ids in due_ids_before.items():
        in_source = _source_ids(conn, schema, table, set(ids))
        for i in ids:
            rec = (table, i)
            places = (i in in_source) + in_committed[rec] + in_purged[rec] + deleted_unarchived[rec]
            if places == 0:
                report.lost.add(rec)
            elif places > 1:
                report.duplicated.add(rec)
    # An archived record anywhere (due or not) is never in two objects, nor in an object and the source.
    for rec, n in in_committed.items():
        if n + in_purged[rec] > 1 or (n and _source_ids(conn, schema, rec[0], {rec[1]})):
            report.duplicated.add(rec)

    # ---- held records: never deleted, never purged
    for table, ids in held_ids.items():
        in_source = _source_ids(conn, schema, table, set(ids))
        for i in ids:
            rec = (table, i)
            if rec in archived_before:
                if not in_committed[rec] or in_purged[rec]:
                    report.held_violations.add(rec)
                    report.lost.add(rec)
            elif i not in in_source:
                report.held_violations.add(rec)
                if not in_committed[rec]:
                    report.lost.add(rec)

    # ---- manifest and audit log agree
    manifest_per_run: Counter = Counter()
    purged_per_run: Counter = Counter()
    purged_keys: Counter = Counter()
    for row in manifest:
        if row[5] in ("committed", "purged"):
            manifest_per_run[row[1]] += row[6]
        if row[5] == "purged":
            purged_per_run[row[14]] += 1
            purged_keys[row[4]] += 1
    audit_per_run = Counter(
        dict(
            conn.execute(
                "SELECT run_id, sum(record_count)::int FROM retention.audit_log WHERE purpose = %s"
                " AND action = 'archived_and_deleted' GROUP BY run_id",
                (purpose,),
            ).fetchall()
        )
    )
    if +audit_per_run != +manifest_per_run:
        report.problems.append(
            f"audit archived_and_deleted per run {dict(audit_per_run)} != manifest totals {dict(manifest_per_run)}"
        )
    audited_purges = conn.execute(
        "SELECT run_id, object_key FROM retention.audit_log WHERE purpose = %s AND action = 'object_purged'",
        (purpose,),
    ).fetchall()
    if Counter(r[0] for r in audited_purges) != purged_per_run:
        report.problems.append(
            f"audit object_purged per run {dict(Counter(r[0] for r in audited_purges))} != manifest {dict(purged_per_run)}"
        )
    twice = [k for k, n in Counter(r[1] for r in audited_purges).items() if n > 1]
    if twice or any(n > 1 for n in purged_keys.values()):
        report.problems.append(f"objects purged or audited more than once: {twice}")
    pending = conn.execute(
        "SELECT count(*) FROM retention.document_disposals WHERE purpose = %s AND disposed_at IS NULL", (purpose,)
    ).fetchone()[0]
    if pending:
        report.problems.append(f"{pending} source-file disposals still pending after the re-run")
    return report


def assert_invariants(
    conn,
    s3,
    storage,
    policy,
    purpose: str,
    due_ids_before: Ids,
    held_ids: Ids,
    logical_date: dt.datetime,
    *,
    report_to=None,
    **kw,
) -> InvariantReport:
    """check_invariants, then fail with every problem; ``report_to(report)`` is called first (the
    fault matrix records the numbers of a run that breaks an invariant too)."""
    report = check_invariants(conn, s3, storage, policy, purpose, due_ids_before, held_ids, logical_date, **kw)
    if report_to is not None:
        report_to(report)
    assert report.ok, f"invariants of purpose {purpose!r} broken:\n{report.describe()}"
    return report


def archived_records(conn, purpose: str) -> dict[str, set[int]]:
    """table -> ids in the purpose's committed objects."""
    out: dict[str, set[int]] = defaultdict(set)
    for table, ids in conn.execute(
        "SELECT table_name, record_ids FROM retention.archive_manifest WHERE purpose = %s AND state = 'committed'",
        (purpose,),
    ).fetchall():
        out[table].update(ids)
    return dict(out)
