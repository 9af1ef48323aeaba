"""Access and portability (Art. 15, 20): the subject's index (source, purpose, legal basis, kept
until) always; unless preview, one zip (``index.json``, ``<source>/<table>.json``, ``files/...``)
under ``exports/<request id>/`` of the archive bucket with SSE, verified by read-back, and a
presigned URL with a short expiry. The report holds the index and where the export is, never
the data; the export is deleted after the policy's ``access_exports.kept_for``
(retention.rights.exports).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import pyarrow as pa
from psycopg.rows import dict_row

from retention.archive import rewrite as object_rewrite
from retention.archive.store import ArchiveStorageError
from retention.rights import exports
from retention.rights.context import RequestContext
from retention.rights.decide import basis, classify_live, classify_object
from retention.rights.ends import row_ends
from retention.rights.find import Found
from retention.rights.requests import SubjectRequest

EXPORT_PREFIX = "exports"
# The export link is a bearer credential to the subject's data: short-lived; a new one is
# `aws s3 presign` on the key of the report.
EXPORT_URL_SECONDS = 3600


@dataclass
class Gathered:
    """The subject's rows as the export holds them, per path, and the files to add."""

    parts: dict[str, list[dict]]
    files: list[tuple[str, str, str]]  # (bucket, key, name in the export)


def gather(ctx: RequestContext, conn, found: Found, report: dict) -> Gathered:
    """Every row found read (live from the tables, archived from the objects read back), and the
    index (source, purpose, legal basis, kept until) written into the report: the request's last
    reads, made inside its settled search (retention.rights.retirements)."""
    live_decisions = classify_live(ctx, conn, found.live)
    parts: dict[str, list[dict]] = defaultdict(list)  # path -> rows
    index: dict[tuple, dict] = {}
    files: list[tuple[str, str, str]] = []  # (bucket, key, name in the export)

    def add_index(path: str, source: str, table: str, purpose: str | None, rule: str | None, until: str | None):
        key = (path, purpose, rule, until)  # one entry per own end date
        entry = index.setdefault(
            key,
            {
                "path": path,
                "source": source,
                "table": table,
                "purpose": purpose,
                "rule": rule,
                "legal_basis": basis(ctx.policy, purpose, rule) if purpose else None,
                "kept_until": until,
                "records": 0,
            },
        )
        entry["records"] += 1

    for table, ids in sorted(found.live.items()):
        path = f"live/{table}.json"
        rows = conn.cursor(row_factory=dict_row).execute(
            f'SELECT * FROM "{ctx.schema}"."{table}" WHERE id = ANY(%s::bigint[]) ORDER BY id', (sorted(ids),)
        )
        for row in rows:
            d = live_decisions[(table, row["id"])]
            parts[path].append(row)
            add_index(path, "live", table, d.purpose, d.rule, d.until)
            files += [(ctx.store.documents_bucket, v, f"files/{v}") for k, v in row.items() if k.endswith("_key") and v]
    for obj in found.objects:
        path = f"{obj.tier}/{obj.table}.json"
        d = classify_object(ctx, obj)
        ends = row_ends(ctx, conn, obj, found.objects)
        wanted = set(obj.subject_ids) - obj.elsewhere  # exported once, from the committed object
        mask = pa.array([i in wanted for i in obj.rows.column("id").to_pylist()])
        for row in obj.rows.filter(mask).to_pylist():
            parts[path].append(row)
            add_index(path, obj.tier, obj.table, d.purpose, d.rule, ends[row["id"]])
            for k, v in row.items():
                if k.endswith("_key") and v:
                    copy = _archive_copy_of(obj.document_keys, v)
                    if copy:
                        files.append((ctx.store.archive_bucket, copy, f"files/{v}"))
    report["index"] = sorted(
        index.values(), key=lambda e: (e["path"], e["purpose"] or "", e["rule"] or "", e["kept_until"] or "")
    )
    report["files"] = {"found": len({name for _, _, name in files})}
    return Gathered(dict(parts), files)


def export(ctx: RequestContext, conn, req: SubjectRequest, gathered: Gathered, report: dict) -> None:
    """The export of what was gathered, unless preview."""
    if req.preview:
        return
    report["export"] = write_export(ctx, req, gathered.parts, gathered.files, report["index"])
    exports.record_produced(conn, ctx.policy, req.request_id, report["export"])  # deleted kept_for later


def write_export(ctx: RequestContext, req: SubjectRequest, parts: dict, files: list, index: list) -> dict:
    """One zip under exports/<request>/, SSE, checksummed and read back; a presigned URL."""
    sink = io.BytesIO()
    names = set()
    missing = 0
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("index.json", json.dumps({"request_id": req.request_id, "parts": index}, indent=2))
        names.add("index.json")
        for path, rows in sorted(parts.items()):
            zf.writestr(path, json.dumps(rows, default=json_default, ensure_ascii=False, indent=1))
            names.add(path)
        for bucket, key, name in files:
            if name in names:
                continue
            try:
                body = ctx.store.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as exc:  # botocore raises several unrelated classes
                if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    missing += 1  # a row names a file that is not stored: counted, the rest exported
                    continue
                raise ArchiveStorageError(f"a file of the subject could not be read: {type(exc).__name__}") from exc
            zf.writestr(name, body)
            names.add(name)
    key = f"{EXPORT_PREFIX}/{req.request_id}/export.zip"
    verified = ctx.store.put_verified(
        key, sink.getvalue(), "STANDARD", len(names), lambda data: len(zipfile.ZipFile(io.BytesIO(data)).namelist())
    )
    params = {"Bucket": ctx.store.archive_bucket, "Key": key}
    if verified.version_id:
        params["VersionId"] = verified.version_id
    url = ctx.store.client.generate_presigned_url("get_object", Params=params, ExpiresIn=EXPORT_URL_SECONDS)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=EXPORT_URL_SECONDS)
    return {
        "bucket": ctx.store.archive_bucket,
        "key": key,
        "version_id": verified.version_id,
        "sha256": verified.sha256_hex,
        "bytes": verified.size,
        "entries": len(names),
        "files_missing": missing,
        "url": url,
        "url_expires_at": expires.isoformat(timespec="seconds"),
    }


def _archive_copy_of(document_keys: list[str], source_key: str) -> str | None:
    return next((k for k in document_keys if object_rewrite.source_of(k) == source_key), None)


def json_default(value):
    """The JSON form of a row's values that JSON lacks (dates in ISO 8601, decimals as text, bytes in hex)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot export a {type(value).__name__}")
