"""Exports of access requests do not outlive their purpose (issue 18, item 9).

Against the real S3 server (versioned archive bucket) and PostgreSQL: an access request's export
is recorded when written; the daily deletion leaves it alone until the policy's
`access_exports.kept_for` is over, then deletes every version and records it apart from the
request's evidence, which stays as it was. When S3 is unreachable, or fails in the middle,
nothing is recorded as deleted and the error names the request; the next run finishes."""

from __future__ import annotations

import datetime as dt

import boto3
import botocore.config
import pytest
from retention.archive.store import ArchiveStorageError, ArchiveStore
from retention.rights.access import EXPORT_PREFIX as WRITTEN_UNDER
from retention.rights.exports import EXPORT_PREFIX, ExportHousekeepingError, delete_expired, record_produced
from retention.rights.requests import SubjectRequest
from retention.rights.subject_rights import SubjectRights

from tests import factories as f
from tests.dag_runs import load_dag, task_states, xcoms
from tests.tcp_proxy import TcpProxy
from tools.devstack import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, free_port

pytestmark = pytest.mark.integration


def _client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )


def _access(db, s3, storage, policy, source_dsn, request_id: str) -> dict:
    customer = f.customer(db, ended="2024-01-10")
    req = SubjectRequest(
        request_id=request_id,
        action="access",
        kind="customer",
        subject_id=customer,
        received_at=dt.datetime.now(dt.UTC),
        preview=False,
        run_id=f"manual__{request_id}",
    )
    return SubjectRights(policy, source_dsn, ArchiveStore(s3, storage)).handle(req)["export"]


def _versions(s3, bucket: str, key: str) -> list[str]:
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [v["VersionId"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", []) if v["Key"] == key]


def _rows(db) -> list[tuple]:
    return db.execute(
        "SELECT request_id, object_key, deleted_at IS NOT NULL, outcome, versions_deleted, deleted_by"
        " FROM retention.access_exports ORDER BY id"
    ).fetchall()


def test_the_export_goes_every_version_once_its_time_is_over(db, s3, storage, policy, source_dsn):
    assert EXPORT_PREFIX == WRITTEN_UNDER + "/"
    export = _access(db, s3, storage, policy, source_dsn, "DSR-2026-0001")
    key, bucket = export["key"], storage.archive_bucket
    # A second version of the same export (a re-run of the request writes the key again), then a
    # plain DELETE (a delete marker over both), and an object that is not an export.
    s3.put_object(Bucket=bucket, Key=key, Body=b"PK second version", ServerSideEncryption="AES256")
    s3.delete_object(Bucket=bucket, Key=key)
    s3.put_object(Bucket=bucket, Key="exports/README.txt", Body=b"not an export")
    assert len(_versions(s3, bucket, key)) == 3
    evidence = db.execute("SELECT reports, state, finished_at FROM retention.subject_requests").fetchall()

    (produced_at, due_at) = db.execute("SELECT produced_at, delete_after FROM retention.access_exports").fetchone()
    paris = policy.tz
    assert due_at.astimezone(paris).date() - produced_at.astimezone(paris).date() == dt.timedelta(days=30)
    assert due_at.astimezone(paris).time() == dt.time(0), "recorded with its deletion date: a Paris day"

    # The day before: kept, every version.
    summary = delete_expired(policy, source_dsn, ArchiveStore(s3, storage), due_at - dt.timedelta(seconds=1), "w1")
    assert summary["deleted"] == [] and summary["held"] == 1 and summary["not_exports"] == 1
    assert len(_versions(s3, bucket, key)) == 3
    assert _rows(db) == [("DSR-2026-0001", key, False, None, None, None)]

    summary = delete_expired(policy, source_dsn, ArchiveStore(s3, storage), due_at, "w2")
    assert [d["request_id"] for d in summary["deleted"]] == ["DSR-2026-0001"]
    assert summary["versions_deleted"] == 3 and summary["held"] == 0
    assert _versions(s3, bucket, key) == [], "every version and the delete marker are gone"
    assert s3.get_object(Bucket=bucket, Key="exports/README.txt")["Body"].read() == b"not an export"
    assert _rows(db) == [("DSR-2026-0001", key, True, "deleted", 3, "w2")]
    # The request's evidence is not rewritten: what became of the export is a row of its own.
    assert db.execute("SELECT reports, state, finished_at FROM retention.subject_requests").fetchall() == evidence

    # Nothing left to do: a second run changes nothing.
    assert delete_expired(policy, source_dsn, ArchiveStore(s3, storage), due_at, "w3")["deleted"] == []
    assert _rows(db) == [("DSR-2026-0001", key, True, "deleted", 3, "w2")]


def test_an_export_found_in_the_bucket_is_recorded_and_one_deleted_elsewhere_is_recorded_gone(
    db, s3, storage, policy, source_dsn
):
    bucket = storage.archive_bucket
    s3.put_object(Bucket=bucket, Key="exports/DSR-found/export.zip", Body=b"PK", ServerSideEncryption="AES256")
    with db.transaction():
        record_produced(db, policy, "DSR-gone", {"bucket": bucket, "key": "exports/DSR-gone/export.zip"})
    summary = delete_expired(policy, source_dsn, ArchiveStore(s3, storage), dt.datetime.now(dt.UTC), "w1")
    assert summary["gone_before"] == ["DSR-gone"] and summary["held"] == 1
    assert _rows(db) == [
        ("DSR-gone", "exports/DSR-gone/export.zip", True, "gone", 0, "w1"),
        ("DSR-found", "exports/DSR-found/export.zip", False, None, None, None),
    ]


def test_an_export_recorded_while_the_bucket_is_listed_is_not_taken_for_gone(db, s3, storage, policy, source_dsn):
    """A request writes its export after the listing began (so the listing misses it) and
    records it: it is held, not gone."""
    store = ArchiveStore(s3, storage)
    listing = store.list_versions

    def listing_then_a_request_records_its_export(prefix):
        found = listing(prefix)
        s3.put_object(Bucket=storage.archive_bucket, Key="exports/DSR-late/export.zip", Body=b"PK")
        record_produced(
            db, policy, "DSR-late", {"bucket": storage.archive_bucket, "key": "exports/DSR-late/export.zip"}
        )
        return found

    store.list_versions = listing_then_a_request_records_its_export
    summary = delete_expired(policy, source_dsn, store, dt.datetime.now(dt.UTC), "w1")
    assert summary["gone_before"] == [] and summary["held"] == 1
    assert _rows(db) == [("DSR-late", "exports/DSR-late/export.zip", False, None, None, None)]


def test_s3_unreachable_records_nothing_as_deleted(db, storage, policy, source_dsn):
    dead = ArchiveStore(_client(f"http://127.0.0.1:{free_port()}"), storage)
    with db.transaction():
        record_produced(db, policy, "DSR-1", {"bucket": storage.archive_bucket, "key": "exports/DSR-1/export.zip"})
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)
    with pytest.raises(ArchiveStorageError, match=r"listing s3://.*/exports/ failed"):
        delete_expired(policy, source_dsn, dead, later, "w1")
    assert _rows(db) == [("DSR-1", "exports/DSR-1/export.zip", False, None, None, None)]


def test_s3_failing_during_the_delete_records_nothing_and_the_next_run_finishes(
    db, s3, s3_endpoint, storage, policy, source_dsn
):
    bucket = storage.archive_bucket
    for request_id in ("DSR-a", "DSR-b"):
        for body in (b"PK one", b"PK two"):
            s3.put_object(
                Bucket=bucket, Key=f"exports/{request_id}/export.zip", Body=body, ServerSideEncryption="AES256"
            )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)
    proxy = TcpProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    try:
        store = ArchiveStore(_client(proxy.endpoint_url), storage)
        # The listing goes through, then S3 goes away after one version of the first export.
        proxy.down_after_requests(2)
        with pytest.raises(ExportHousekeepingError) as error:
            delete_expired(policy, source_dsn, store, later, "w1")
        message = str(error.value)
        assert "2 expired exports could not be deleted, nothing of them recorded as deleted" in message
        assert "request 'DSR-a'" in message and "request 'DSR-b'" in message
        assert [r[2] for r in _rows(db)] == [False, False], "nothing recorded as deleted"
        assert _versions(s3, bucket, "exports/DSR-b/export.zip"), "the second export is untouched"

        proxy.up()
        summary = delete_expired(policy, source_dsn, store, later, "w2")
    finally:
        proxy.close()
    assert sorted(d["request_id"] for d in summary["deleted"]) == ["DSR-a", "DSR-b"]
    assert _versions(s3, bucket, "exports/DSR-a/export.zip") == []
    assert _versions(s3, bucket, "exports/DSR-b/export.zip") == []
    assert [(r[0], r[2], r[3], r[5]) for r in _rows(db)] == [
        ("DSR-a", True, "deleted", "w2"),
        ("DSR-b", True, "deleted", "w2"),
    ]


def test_the_watch_dag_runs_the_deletion_every_day(airflow_db, db, s3, storage):
    s3.put_object(
        Bucket=storage.archive_bucket, Key="exports/DSR-7/export.zip", Body=b"PK", ServerSideEncryption="AES256"
    )
    dag = load_dag("watch")
    dag_run = dag.test(logical_date=dt.datetime.now(dt.UTC), run_conf={"purposes": ["quotes"]})
    assert task_states(dag_run)["delete_expired_exports"] == "success"
    summary = xcoms(dag_run)["delete_expired_exports"]
    assert summary["held"] == 1 and summary["deleted"] == [] and summary["next_deletion"]
    assert _rows(db) == [("DSR-7", "exports/DSR-7/export.zip", False, None, None, None)]
