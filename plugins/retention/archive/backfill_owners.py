"""Record whose rows each archive object holds, and the keyed hashes of their identifiers, for
objects archived before these were recorded.

    python -m retention.archive.backfill_owners --dsn postgresql://... [--endpoint-url http://...]

Until an object has ``owner_ids``, the purge keeps it (a hold on its contract or customer could
not be matched) and the after-gate reports it. This reads each such object back from S3 (the
manifest's version), takes the parent ids from its rows' own columns (``contract_id``...), and
adds the parents' owners: from the live parent rows, or from the manifest of the objects that
archived them (objects are filled parents first, so a parent archived earlier is known).

Until an object has ``identifier_hashes``, a request by e-mail cannot find it (the request's
report counts such objects): with ``RETENTION_IDENTIFIER_KEY`` set (retention.identifiers), the
same pass records the keyed hashes of its rows' e-mails and phones. Idempotent; what is recorded
is left alone.
"""

from __future__ import annotations

import argparse
import io
import json
import os

from retention import identifiers
from retention.policy import Policy, default_policy
from retention.policy.coverage import ancestors_first, owners_of_rows, parents_of


def backfill_owners(conn, client, policy: Policy) -> int:
    """Fill ``owner_ids`` (and, with the key, ``identifier_hashes``) of every committed object
    without them; returns how many objects were filled."""
    import pyarrow.parquet as pq

    with_key = identifiers.identifier_key(required=False) is not None
    parents = parents_of(policy)
    rows = conn.execute(
        "SELECT id, table_name, bucket, object_key, version_id, owner_ids IS NULL, identifier_hashes IS NULL"
        " FROM retention.archive_manifest WHERE state = 'committed'"
        " AND (owner_ids IS NULL OR (%s AND identifier_hashes IS NULL)) ORDER BY id",
        (with_key,),
    ).fetchall()
    order = ancestors_first(policy, sorted({r[1] for r in rows}))
    rows.sort(key=lambda r: (order.index(r[1]), r[0]))
    for manifest_id, table, bucket, key, version, owners_missing, identifiers_missing in rows:
        body = client.get_object(Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))["Body"].read()
        if owners_missing:
            conn.execute(
                "UPDATE retention.archive_manifest SET owner_ids = %s::jsonb WHERE id = %s AND owner_ids IS NULL",
                (json.dumps(_owners(conn, policy, parents, table, body)), manifest_id),
            )
        if with_key and identifiers_missing:
            names = pq.read_schema(io.BytesIO(body)).names
            wanted = [c for c in names if c in identifiers.EMAIL_COLUMNS | identifiers.PHONE_COLUMNS]
            conn.execute(
                "UPDATE retention.archive_manifest SET identifier_hashes = %s::bigint[]"
                " WHERE id = %s AND identifier_hashes IS NULL",
                (identifiers.locators_literal(pq.read_table(io.BytesIO(body), columns=wanted)), manifest_id),
            )
        conn.commit()
    return len(rows)


def _owners(conn, policy: Policy, parents: dict, table: str, body: bytes) -> dict[str, list[int]]:
    import pyarrow.parquet as pq

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
    return {t: sorted(v) for t, v in sorted(owners.items())}


def main(argv: list[str] | None = None) -> None:
    import boto3
    import psycopg

    from retention.archive.store import client_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("SOURCE_DSN"), help="libpq URI of the source database")
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help="S3 endpoint (not AWS)")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or SOURCE_DSN) is required")
    client = boto3.client("s3", endpoint_url=args.endpoint_url, config=client_config())
    with psycopg.connect(args.dsn) as conn:
        print(
            f"owners / identifier hashes recorded for {backfill_owners(conn, client, default_policy())} archive objects"
        )
        if identifiers.identifier_key(required=False) is None:
            print(f"{identifiers.KEY_ENV} is not set: identifier hashes were not recorded (docs/subject-requests.md)")


if __name__ == "__main__":
    main()
