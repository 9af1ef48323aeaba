-- The tables (oids) a foreign key links the table to, either way, whether declared on the table
-- or on one of its partitions alone. Dropping a detached partition of the table (or attaching it
-- again) drops (or creates) its foreign-key triggers, which takes an ACCESS EXCLUSIVE lock on
-- those tables: a transaction that merely read one of them makes the drop wait. The engine drops
-- a partition beside the next partition's archive only when that archive holds no lock on any of
-- them (retention.archive.partitions).
-- Parameters: %(schema)s, %(table)s.
WITH tree AS (
    SELECT relid FROM pg_partition_tree(format('%%I.%%I', %(schema)s::text, %(table)s::text)::regclass)
)
SELECT DISTINCT CASE WHEN side.from_tree THEN k.confrelid ELSE k.conrelid END::bigint
FROM pg_constraint AS k,
     LATERAL (SELECT k.conrelid IN (SELECT relid FROM tree) AS from_tree,
                     k.confrelid IN (SELECT relid FROM tree) AS to_tree) AS side
-- One side in the table's tree, the other outside it (a key within the table locks nothing else).
WHERE k.contype = 'f' AND side.from_tree <> side.to_tree
