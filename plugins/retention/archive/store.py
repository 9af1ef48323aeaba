"""S3 side of the archive: keys, verified uploads, locks, version-aware deletes.

Everything that talks to the S3 API lives here, so the engine reads as the protocol of
DESIGN.md §4 and a reviewer can check the S3 guarantees (checksum sent, read back, SSE on
every object, Object Lock on the probative tier) in one place.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from retention.policy import Storage

SSE = "AES256"
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._=-]+")
_S3_THREADS = 8
# A batch's objects (one per end day) uploaded at once: parallel requests hide S3's latency.
UPLOAD_THREADS = 8
# Requests in flight at once: the engine uploads UPLOAD_THREADS objects at a time, each copying
# its files _S3_THREADS at a time, and applies Object Locks beside them. Beyond its pool
# (botocore's default: 10 connections) a client drops a connection after each request and opens
# another: a TLS handshake each against AWS, and a "Connection pool is full" warning in the task
# log (hundreds in one contracts run at 20,000 customers).
MAX_POOL_CONNECTIONS = UPLOAD_THREADS * _S3_THREADS + _S3_THREADS


def client_config(config=None):
    """``config`` (a botocore ``Config``, the Airflow connection's; None: the defaults) with a
    connection pool as large as the store's concurrency, or the larger one it sets itself."""
    from botocore.config import Config

    pool = Config(max_pool_connections=MAX_POOL_CONNECTIONS)
    if config is None:
        return pool
    if (config.max_pool_connections or 0) >= MAX_POOL_CONNECTIONS:
        return config
    return config.merge(pool)


class ArchiveStorageError(RuntimeError):
    """The archive storage failed or could not be verified; nothing was deleted."""


def safe_key_part(text: str) -> str:
    """Airflow run ids hold ':' and '+': keep keys to a portable character set."""
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("_")


def object_key(
    prefix: str, purpose: str, table: str, purge_day: str, run_id: str, rule: str, first_id: int, attempt: int = 1
) -> str:
    """``<tier>/<purpose>/<table>/purge_date=YYYY-MM-DD/<run>/<batch>.parquet``, deterministic.

    One object holds rows whose archive period ends on the same day (the purge date), so that
    the object goes on that day, whole (objects written before were grouped per month:
    ``purge_month=YYYY-MM``; see retention.archive.engine's purge).

    The batch is named by its rule and its first id: unique within a run even across task
    retries (a committed batch's ids are gone from the source, so no later batch starts
    with them) and across rules of one purpose that archive the same table. A try killed before
    its commit (its worker lost) leaves its rows and its 'uploading' intent: the next try
    (``attempt``, Airflow's try number) names its batch ``-try<n>``, and the intent's orphan is
    removed by the next run's recovery, all versions of its own key only."""
    batch = f"{rule}-{first_id:012d}" + (f"-try{attempt}" if attempt > 1 else "")
    return f"{prefix}/{purpose}/{table}/purge_date={purge_day}/{safe_key_part(run_id)}/{batch}.parquet"


def document_archive_key(parquet_key: str, source_key: str) -> str:
    """Archive copy of a file named by a row: beside the row's batch object."""
    return f"{parquet_key.removesuffix('.parquet')}.documents/{source_key}"


@dataclass(frozen=True)
class VerifiedObject:
    key: str
    version_id: str | None
    size: int
    sha256_hex: str


@dataclass(frozen=True)
class ObjectVersion:
    key: str
    version_id: str
    last_modified: dt.datetime
    delete_marker: bool


# Error codes of a request S3 did not answer (throttled, timed out) or refused to (the engine's
# credentials: found by a review, an AccessDenied was taken as "no Object Lock"): not the bucket's settings.
_RETRYABLE = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"}
_REFUSED = {401, 403}


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


class ArchiveStore:
    """The archive and documents buckets behind one boto3 S3 client."""

    def __init__(self, client, storage: Storage):
        self.client = client
        self.storage = storage
        self._lock_supported: bool | None = None

    @property
    def archive_bucket(self) -> str:
        return self.storage.archive_bucket

    @property
    def documents_bucket(self) -> str:
        return self.storage.documents_bucket

    def preflight(self) -> None:
        """Fail fast, before any row is touched, when S3 cannot be reached."""
        for bucket in (self.archive_bucket, self.documents_bucket):
            try:
                self.client.head_bucket(Bucket=bucket)
            except Exception as exc:  # botocore raises several unrelated classes
                raise ArchiveStorageError(
                    f"S3 bucket {bucket!r} is not reachable at {self.client.meta.endpoint_url}: {_describe(exc)}"
                ) from exc

    def lock_supported(self) -> bool:
        """Object Lock needs a bucket created with it; an S3 server may not offer it. Only the
        server's answer tells: a request that got none (the network, a server error or throttling)
        or was refused (AccessDenied: the engine's credentials, found by a review) raises ArchiveStorageError and is asked again next time (found by a review: taken as "no
        Object Lock", it left every probative object of the run unlocked, silently)."""
        if self._lock_supported is None:
            from botocore.exceptions import ClientError

            try:
                conf = self.client.get_object_lock_configuration(Bucket=self.archive_bucket)
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                code = exc.response.get("Error", {}).get("Code")
                if status >= 500 and status != 501 or status in _REFUSED or code in _RETRYABLE:
                    raise ArchiveStorageError(
                        f"whether s3://{self.archive_bucket} has Object Lock is unknown: {_describe(exc)}"
                    ) from exc
                self._lock_supported = False  # no lock configuration, or a server without the API
            except Exception as exc:  # botocore raises several unrelated classes
                raise ArchiveStorageError(
                    f"whether s3://{self.archive_bucket} has Object Lock is unknown: {_describe(exc)}"
                ) from exc
            else:
                self._lock_supported = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        return self._lock_supported

    def put_verified(self, key: str, body: bytes, storage_class: str, expected_rows: int, count_rows) -> VerifiedObject:
        """Upload with a SHA-256 checksum, then read the object back and verify it.

        S3 checks the checksum on upload; some S3-compatible servers don't, so the object is
        also read back: size, SHA-256 of the bytes and the row count must all match.
        """
        digest = hashlib.sha256(body).digest()
        try:
            put = self.client.put_object(
                Bucket=self.archive_bucket,
                Key=key,
                Body=body,
                StorageClass=storage_class,
                ServerSideEncryption=SSE,
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )
            got = (
                self.client.get_object(Bucket=self.archive_bucket, Key=key, VersionId=put["VersionId"])
                if put.get("VersionId")
                else self.client.get_object(Bucket=self.archive_bucket, Key=key)
            )
            data = got["Body"].read()
        except Exception as exc:
            raise ArchiveStorageError(f"upload of s3://{self.archive_bucket}/{key} failed: {_describe(exc)}") from exc
        problems = []
        if len(data) != len(body) or got.get("ContentLength", len(data)) != len(body):
            problems.append(f"size {len(data)} != {len(body)}")
        if hashlib.sha256(data).digest() != digest:
            problems.append("SHA-256 of the stored bytes differs from the uploaded bytes")
        if got.get("ServerSideEncryption") not in (SSE, "aws:kms", "aws:kms:dsse"):
            problems.append(f"server-side encryption is {got.get('ServerSideEncryption')!r}")
        if not problems:
            rows = count_rows(data)
            if rows != expected_rows:
                problems.append(f"row count {rows} != {expected_rows}")
        if problems:
            raise ArchiveStorageError(
                f"read-back verification of s3://{self.archive_bucket}/{key} failed: {'; '.join(problems)}"
            )
        return VerifiedObject(key, put.get("VersionId"), len(body), digest.hex())

    def read_verified(self, key: str, version: str | None, sha256_hex: str) -> bytes:
        """The bytes of one archive object version, checked against the SHA-256 recorded for it."""
        try:
            got = self.client.get_object(
                Bucket=self.archive_bucket, Key=key, **({"VersionId": version} if version else {})
            )
            data = got["Body"].read()
        except Exception as exc:  # botocore raises several unrelated classes
            raise ArchiveStorageError(f"reading s3://{self.archive_bucket}/{key} failed: {_describe(exc)}") from exc
        if hashlib.sha256(data).hexdigest() != sha256_hex:
            raise ArchiveStorageError(f"s3://{self.archive_bucket}/{key}: SHA-256 differs from the manifest")
        return data

    def copy_documents(self, pairs: list[tuple[str, str]], storage_class: str) -> list[str | None]:
        """Copy (source key -> archive key) from the documents bucket, server-side, 8 at a time;
        returns the version id of each archive copy (what gets locked).

        Verified without reading the copy back: the copy's ETag (the MD5 of what was written,
        returned by the copy itself) must equal the source's, and ``CopySourceIfMatch`` makes S3
        copy exactly the source version that was looked at. Two requests per file, not three."""

        def copy(pair: tuple[str, str]) -> str | None:
            source, target = pair
            try:
                source_etag = self.client.head_object(Bucket=self.documents_bucket, Key=source)["ETag"]
                result = self.client.copy_object(
                    Bucket=self.archive_bucket,
                    Key=target,
                    StorageClass=storage_class,
                    ServerSideEncryption=SSE,
                    CopySource={"Bucket": self.documents_bucket, "Key": source},
                    CopySourceIfMatch=source_etag,
                    ChecksumAlgorithm="SHA256",
                )
            except Exception as exc:
                raise ArchiveStorageError(
                    f"copy of document {source!r} into the archive failed: {_describe(exc)}"
                ) from exc
            if result.get("CopyObjectResult", {}).get("ETag") != source_etag:
                raise ArchiveStorageError(f"archive copy of document {source!r} does not match its source")
            return result.get("VersionId")

        return self._parallel(copy, pairs)

    def apply_locks(self, locks: Iterable[tuple[str, str | None, dt.datetime]]) -> None:
        """COMPLIANCE retention until its purge date on exactly each (key, version id): the
        versions that were read back and recorded. The key's newest version may be another
        object written since (an overwrite must not leave the real archive unlocked)."""

        def lock(item: tuple[str, str | None, dt.datetime]) -> None:
            key, version, retain_until = item
            self.client.put_object_retention(
                Bucket=self.archive_bucket,
                Key=key,
                **({"VersionId": version} if version else {}),
                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": retain_until},
            )

        self._parallel(lock, list(locks))

    def put_locked(self, key: str, body: bytes, retain_until: dt.datetime) -> str | None:
        """A small object (the audit chain's head) written under Object Lock COMPLIANCE until
        ``retain_until`` in the same request, with a SHA-256 checksum; returns its version id."""
        try:
            put = self.client.put_object(
                Bucket=self.archive_bucket,
                Key=key,
                Body=body,
                ServerSideEncryption=SSE,
                # S3 asks for a checksum with a lock: the algorithm named, its value sent.
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=retain_until,
            )
        except Exception as exc:  # botocore raises several unrelated classes
            raise ArchiveStorageError(f"upload of s3://{self.archive_bucket}/{key} failed: {_describe(exc)}") from exc
        return put.get("VersionId")

    def read_version(self, key: str, version: str | None) -> bytes:
        """The bytes of one version of an archive object."""
        try:
            got = self.client.get_object(
                Bucket=self.archive_bucket, Key=key, **({"VersionId": version} if version else {})
            )
            return got["Body"].read()
        except Exception as exc:  # botocore raises several unrelated classes
            raise ArchiveStorageError(f"reading s3://{self.archive_bucket}/{key} failed: {_describe(exc)}") from exc

    def locked_until(self, key: str, version: str | None) -> tuple[str | None, dt.datetime | None]:
        """(lock mode, retain-until) of one version, read from HEAD (S3 servers differ on
        GetObjectRetention; HEAD carries both)."""
        head = self.client.head_object(
            Bucket=self.archive_bucket, Key=key, **({"VersionId": version} if version else {})
        )
        return head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")

    def delete_all_versions(self, keys: list[str]) -> None:
        """Really delete archive objects: every version, not just a delete marker. ``keys[0]``
        (the Parquet object) goes last, after its document copies: an object gone has no copy
        left; one still there after a purge cut short may have lost some (the next purge strikes
        them from its manifest row, retention.archive.purge)."""

        def delete(key: str) -> None:
            versions = self.client.list_object_versions(Bucket=self.archive_bucket, Prefix=key)
            entries = [v for v in versions.get("Versions", []) + versions.get("DeleteMarkers", []) if v["Key"] == key]
            for entry in entries:
                self.client.delete_object(Bucket=self.archive_bucket, Key=key, VersionId=entry["VersionId"])

        try:
            self._parallel(delete, list(keys[1:]))
            if keys:
                delete(keys[0])
        except Exception as exc:  # botocore raises several unrelated classes
            raise ArchiveStorageError(
                f"deleting s3://{self.archive_bucket}/{keys[0]} and {len(keys) - 1} document copies failed: "
                f"{_describe(exc)}"
            ) from exc

    def version_exists(self, key: str, version: str | None) -> bool:
        """Whether this version of an archive object is still stored."""
        try:
            self.client.head_object(Bucket=self.archive_bucket, Key=key, **({"VersionId": version} if version else {}))
        except Exception as exc:  # botocore raises several unrelated classes
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (404, 400) or "Not Found" in str(exc) or "NoSuchVersion" in str(exc):
                return False
            raise ArchiveStorageError(
                f"cannot tell whether s3://{self.archive_bucket}/{key} exists: {_describe(exc)}"
            ) from exc
        return True

    def delete_documents(self, keys: list[str]) -> None:
        """Delete source documents (1,000 keys a call); a missing key is already gone."""
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            result = self.client.delete_objects(
                Bucket=self.documents_bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )
            errors = [e for e in result.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise ArchiveStorageError(
                    f"{len(errors)} document deletes failed, first: {errors[0].get('Key')!r} {errors[0].get('Code')}"
                )

    def list_versions(self, prefix: str) -> dict[str, list[ObjectVersion]]:
        """Every version and delete marker under ``prefix`` of the archive bucket, per key, oldest
        first (a whole listing, every page, or an ArchiveStorageError)."""
        found: dict[str, list[ObjectVersion]] = {}
        try:
            for page in self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.archive_bucket, Prefix=prefix
            ):
                for entry in page.get("Versions", []):
                    found.setdefault(entry["Key"], []).append(
                        ObjectVersion(entry["Key"], entry["VersionId"], entry["LastModified"], False)
                    )
                for entry in page.get("DeleteMarkers", []):
                    found.setdefault(entry["Key"], []).append(
                        ObjectVersion(entry["Key"], entry["VersionId"], entry["LastModified"], True)
                    )
        except Exception as exc:  # botocore raises several unrelated classes
            raise ArchiveStorageError(f"listing s3://{self.archive_bucket}/{prefix} failed: {_describe(exc)}") from exc
        return {key: sorted(versions, key=lambda v: v.last_modified) for key, versions in sorted(found.items())}

    def delete_versions(self, versions: list[ObjectVersion]) -> None:
        """Delete exactly these versions (and delete markers) for good, then check with a new
        listing that none of them is left: a version written meanwhile is not one of them."""
        try:
            for version in versions:
                self.client.delete_object(Bucket=self.archive_bucket, Key=version.key, VersionId=version.version_id)
        except Exception as exc:  # botocore raises several unrelated classes
            raise ArchiveStorageError(
                f"deleting the versions of s3://{self.archive_bucket}/{versions[0].key} failed: {_describe(exc)}"
            ) from exc
        for key in sorted({v.key for v in versions}):
            left = {v.version_id for v in self.list_versions(key).get(key, [])}
            still = [v.version_id for v in versions if v.key == key and v.version_id in left]
            if still:
                raise ArchiveStorageError(
                    f"s3://{self.archive_bucket}/{key}: {len(still)} versions are still stored after their delete"
                )

    def _parallel(self, fn, items: list) -> list:
        """fn over items, 8 at a time; results in order; the first error is raised."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(_S3_THREADS, len(items))) as pool:
            return list(pool.map(fn, items))
