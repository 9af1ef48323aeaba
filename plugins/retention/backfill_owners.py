"""Record whose rows each archive object holds, for objects archived before owners were recorded.

    python -m retention.backfill_owners --dsn postgresql://... [--endpoint-url http://...]

Until an object has ``owner_ids``, the purge keeps it (a hold on its contract or customer could
not be matched) and the after-gate reports it. This reads each such object back from S3 (the
manifest's version), takes the parent ids from its rows' own columns (``contract_id``...), and
adds the parents' owners: from the live parent rows, or from the manifest of the objects that
archived them (objects are filled parents first, so a parent archived earlier is known).
Idempotent; objects whose owners are recorded are left alone.
"""

from __future__ import annotations

import argparse
import io
import json
import os

from retention.holds import ancestors_first, owners_of_rows, parents_of
from retention.policy import Policy, default_policy


def backfill_owners(conn, client, policy: Policy) -> int:
    """Fill ``owner_ids`` of every committed object without them; returns how many were filled."""
    import pyarrow.parquet as pq

    parents = parents_of(policy)
    rows = conn.execute(
        "SELECT id, table_name, bucket, object_key, version_id FROM retention.archive_manifest"
        " WHERE state = 'committed' AND owner_ids IS NULL ORDER BY id"
    ).fetchall()
    order = ancestors_first(policy, sorted({r[1] for r in rows}))
    rows.sort(key=lambda r: (order.index(r[1]), r[0]))
    for manifest_id, table, bucket, key, version in rows:
        body = client.get_object(Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))["Body"].read()
        columns = [column for _, column in parents.get(table, [])]
        archived = pq.read_table(io.BytesIO(body), columns=columns) if columns else None
        owners: dict[str, set[int]] = {}
        for parent, column in parents.get(table, []):
            ids = {i for i in archived.column(column).to_pylist() if i is not None}
            if not ids:
                continue
            owners.setdefault(parent, set()).update(ids)
            for ancestor, ancestor_ids in owners_of_rows(conn, policy, parent, sorted(ids)).items():
                owners.setdefault(ancestor, set()).update(ancestor_ids)
            for (known,) in conn.execute(
                "SELECT owner_ids FROM retention.archive_manifest WHERE table_name = %s AND owner_ids IS NOT NULL"
                " AND state = 'committed' AND record_ids && %s::bigint[]",
                (parent, sorted(ids)),
            ):
                for ancestor, ancestor_ids in known.items():
                    owners.setdefault(ancestor, set()).update(ancestor_ids)
        conn.execute(
            "UPDATE retention.archive_manifest SET owner_ids = %s::jsonb WHERE id = %s AND owner_ids IS NULL",
            (json.dumps({t: sorted(v) for t, v in sorted(owners.items())}), manifest_id),
        )
        conn.commit()
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    import boto3
    import psycopg

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("SOURCE_DSN"), help="libpq URI of the source database")
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help="S3 endpoint (not AWS)")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or SOURCE_DSN) is required")
    client = boto3.client("s3", endpoint_url=args.endpoint_url)
    with psycopg.connect(args.dsn) as conn:
        print(f"owners recorded for {backfill_owners(conn, client, default_policy())} archive objects")


if __name__ == "__main__":
    main()
