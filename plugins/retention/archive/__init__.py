"""The archive: a run's engine (``engine``) over one rule's batches (``protocol``, ``batch``),
what a crash left (``recovery``), the purge (``purge``), partitions retired whole
(``partition_plan``, ``partitions``, ``partition_detach``, ``partition_finish``,
``partition_drops``), the S3 store (``store``), the Parquet objects (``parquet``), an object
rewritten without some rows (``rewrite``), files following their rows (``documents``), and the
owners' backfill of old objects (``backfill_owners``). Module by module: docs/architecture.md.

Imported by tasks only (pyarrow, psycopg, boto3 at module level): never at DAG-parse time. This
file imports nothing, so that a light module (``store``) stays light.
"""
