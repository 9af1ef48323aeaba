"""The archive: the archive-then-delete protocol (``engine``), the S3 store (``store``), the
Parquet objects (``parquet``), the rewrite of an object without some rows (``rewrite``) and the
owners' backfill of old objects (``backfill_owners``).

Imported by tasks only (pyarrow, psycopg, boto3 at module level): never at DAG-parse time. This
file imports nothing, so that a light module (``store``) stays light.
"""
