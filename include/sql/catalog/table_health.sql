-- Dead and live tuples and the size on disk (heap, TOAST and indexes) of a table, or of each
-- leaf partition of a partitioned one (retention.archive.vacuum). Statistics, not counts:
-- pg_stat_user_tables as last reported. A partition dropped while this runs (another unit of
-- the run retired it) has no size any more: left out. Parameters: %(schema)s, %(table)s.
WITH RECURSIVE leaves AS (
    SELECT c.oid, c.relkind
    FROM pg_class AS c JOIN pg_namespace AS ns ON ns.oid = c.relnamespace
    WHERE ns.nspname = %(schema)s AND c.relname = %(table)s
    UNION ALL
    SELECT child.oid, child.relkind
    FROM leaves JOIN pg_inherits AS inh ON inh.inhparent = leaves.oid
    JOIN pg_class AS child ON child.oid = inh.inhrelid
)
SELECT s.schemaname, s.relname,
       s.n_dead_tup AS dead_tuples,
       s.n_live_tup AS live_tuples,
       size.total_bytes
FROM leaves JOIN pg_stat_user_tables AS s ON s.relid = leaves.oid
CROSS JOIN LATERAL (SELECT pg_total_relation_size(leaves.oid) AS total_bytes) AS size
WHERE leaves.relkind = 'r' AND size.total_bytes IS NOT NULL
ORDER BY 1, 2
