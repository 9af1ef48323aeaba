-- The tables (oids) a foreign key links the table to, either way. Dropping a detached partition
-- of the table (or attaching it again) drops (or creates) its foreign-key triggers, which takes
-- an ACCESS EXCLUSIVE lock on those tables: a transaction that merely read one of them makes the
-- drop wait. The engine drops a partition beside the next partition's archive only when that
-- archive holds no lock on any of them (retention.archive.partitions).
-- Parameters: %(schema)s, %(table)s.
SELECT DISTINCT CASE WHEN k.conrelid = t.oid THEN k.confrelid ELSE k.conrelid END::bigint
FROM pg_constraint AS k
JOIN pg_class AS t ON t.oid IN (k.conrelid, k.confrelid)
JOIN pg_namespace AS n ON n.oid = t.relnamespace
WHERE k.contype = 'f' AND n.nspname = %(schema)s AND t.relname = %(table)s
