-- Where a partition being retired stands (retention.archive.partitions): 'attached', 'pending'
-- (DETACH ... CONCURRENTLY interrupted: finish with DETACH PARTITION ... FINALIZE), 'detached'
-- (a table of its own) or 'gone'. Parameters: %(schema)s, %(table)s, %(partition)s.
SELECT CASE
           WHEN part.oid IS NULL THEN 'gone'
           WHEN inh.inhrelid IS NULL THEN 'detached'
           WHEN inh.inhdetachpending THEN 'pending'
           ELSE 'attached'
       END AS state
FROM (SELECT 1) AS one
LEFT JOIN pg_namespace AS ns ON ns.nspname = %(schema)s
LEFT JOIN pg_class AS part ON part.relnamespace = ns.oid AND part.relname = %(partition)s
LEFT JOIN pg_class AS parent ON parent.relnamespace = ns.oid AND parent.relname = %(table)s
LEFT JOIN pg_inherits AS inh ON inh.inhrelid = part.oid AND inh.inhparent = parent.oid
