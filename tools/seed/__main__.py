"""Deterministic synthetic data for the operational schema (DESIGN.md §5), any scale.

    PYTHONPATH=plugins:. python -m tools.seed --dsn postgresql://postgres@127.0.0.1:5432/insurer \\
        --customers 100000 --seed 42 --reference-date 2026-11-25 \\
        [--s3-endpoint http://127.0.0.1:9000 --documents-bucket insurer-documents] [--reset]

The command line of tools.seed (see its package docstring for what the data looks like).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from typing import Any

from retention.policy import default_policy

from tools.seed.load import seed_database
from tools.seed.report import print_counts


def _s3_client(endpoint_url: str | None, region: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.seed", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("SOURCE_DSN"), help="libpq URI of the source database (default: $SOURCE_DSN)"
    )
    parser.add_argument(
        "--customers", type=int, required=True, help="number of customers; everything else scales from it"
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="random seed (default 42): same seed and arguments, same data"
    )
    parser.add_argument(
        "--reference-date",
        type=dt.date.fromisoformat,
        default=None,
        help="YYYY-MM-DD: the date the data is seen from (default: today in Europe/Paris)",
    )
    parser.add_argument(
        "--s3-endpoint",
        help="S3 endpoint URL for the documents (a local S3 server); AWS when omitted with --documents-bucket",
    )
    parser.add_argument("--s3-region", default=os.environ.get("AWS_DEFAULT_REGION", "eu-west-3"))
    parser.add_argument(
        "--documents-bucket",
        help="bucket for the files named by *_key columns (default: the policy's, with --s3-endpoint)",
    )
    parser.add_argument(
        "--reset", action="store_true", help="WARNING: empties every table of schemas app and retention first"
    )
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or SOURCE_DSN) is required")
    policy = default_policy()
    reference_date = args.reference_date or dt.datetime.now(policy.tz).date()
    bucket = args.documents_bucket
    if bucket is None and args.s3_endpoint:
        bucket = policy.storage_settings().documents_bucket
    s3_client = _s3_client(args.s3_endpoint, args.s3_region) if bucket else None

    started = time.monotonic()
    counts = seed_database(
        args.dsn,
        customers=args.customers,
        seed=args.seed,
        reference_date=reference_date,
        s3_client=s3_client,
        documents_bucket=bucket,
        reset=args.reset,
    )
    print_counts(counts)
    print(f"reference date {reference_date}, seed {args.seed}: {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
