"""Assertions on what a run did, shared by the engine tests and the dag.test() tests:
source rows, archive objects read back from S3, manifest, audit log, documents."""

from __future__ import annotations

import io
from collections import defaultdict

import pyarrow.parquet as pq

from tests.scenarios import Scenario


def archived_rows_by_table(conn, s3, storage, purpose: str) -> dict[str, list[int]]:
    """Read every committed archive object of the purpose back and return the ids it holds."""
    by_table: dict[str, list[int]] = defaultdict(list)
    manifest = conn.execute(
        "SELECT table_name, object_key, record_ids, row_count FROM retention.archive_manifest"
        " WHERE purpose = %s AND state = 'committed' ORDER BY id",
        (purpose,),
    ).fetchall()
    for table, key, record_ids, row_count in manifest:
        body = s3.get_object(Bucket=storage.archive_bucket, Key=key)["Body"].read()
        ids = pq.read_table(io.BytesIO(body), columns=["id"]).column("id").to_pylist()
        assert ids == record_ids and len(ids) == row_count, key
        by_table[table] += ids
    return by_table


def assert_scenario_outcome(conn, s3, storage, policy, scenario: Scenario) -> None:
    for table, ids in scenario.deleted.items():
        left = {r[0] for r in conn.execute(f"SELECT id FROM app.{table} WHERE id = ANY(%s)", (list(ids),))}
        assert not left, f"{table}: rows {sorted(left)} should have been deleted"
    for table, ids in scenario.kept.items():
        left = {r[0] for r in conn.execute(f"SELECT id FROM app.{table} WHERE id = ANY(%s)", (list(ids),))}
        assert left == ids, f"{table}: rows {sorted(ids - left)} should have been kept"

    archived_tables = {r.table for r in policy.purposes[scenario.purpose].rules if r.archived}
    archived = archived_rows_by_table(conn, s3, storage, scenario.purpose)
    for table, ids in scenario.deleted.items():
        expected = scenario.archived.get(table, ids if table in archived_tables else set())
        assert sorted(archived.get(table, [])) == sorted(expected), f"{table}: archive holds exactly the archived rows"
    assert set(archived) <= archived_tables
    for table, ids in archived.items():
        assert len(ids) == len(set(ids)), f"{table}: a record is archived twice"

    audit = dict(
        conn.execute(
            "SELECT table_name, sum(record_count) FROM retention.audit_log WHERE purpose = %s"
            " AND action IN ('archived_and_deleted', 'deleted') GROUP BY table_name",
            (scenario.purpose,),
        ).fetchall()
    )
    assert audit == {t: len(ids) for t, ids in scenario.deleted.items()}

    archive_keys = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=storage.archive_bucket)
        for o in page.get("Contents", [])
    }
    for key in scenario.archived_files:
        assert any(k.endswith(".documents/" + key) for k in archive_keys), f"{key} was not archived"
    document_keys = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=storage.documents_bucket)
        for o in page.get("Contents", [])
    }
    assert not (scenario.deleted_files & document_keys), "files of deleted rows must be gone"
    assert scenario.kept_files <= document_keys, "files of kept rows must stay"


def snapshot(conn, purpose: str) -> tuple:
    """Everything a second run must leave unchanged."""
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM retention.archive_manifest WHERE purpose = %(p)s),"
        " (SELECT count(*) FROM retention.document_disposals WHERE purpose = %(p)s),"
        " (SELECT coalesce(sum(record_count), 0) FROM retention.audit_log WHERE purpose = %(p)s"
        "  AND action IN ('archived_and_deleted', 'deleted'))",
        {"p": purpose},
    ).fetchone()
    rows = conn.execute(
        "SELECT string_agg(format('%s:%s', relname, n_live_tup), ',') FROM ("
        " SELECT c.relname, (xpath('/row/c/text()', query_to_xml(format('select count(*) as c from app.%I', c.relname),"
        " false, true, '')))[1]::text::int AS n_live_tup FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'app' AND c.relkind = 'r' ORDER BY 1) x"
    ).fetchone()
    return counts, rows
