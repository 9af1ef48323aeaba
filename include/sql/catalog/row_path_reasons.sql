-- Why a partitioned table's rows must go by the row path, whose DELETE a DROP of a partition
-- does not replace; no row when none applies. Over the table and every partition:
-- - 'a trigger or rule on DELETE': the application's (a guard that refuses to delete some rows,
--   a journal of deletions; the foreign keys' own triggers are internal and left out), enabled or
--   not: a drop runs neither;
-- - 'row-level security': policies may hide rows from the engine's checks (an owner is subject
--   to them under FORCE ROW LEVEL SECURITY) while a drop takes every row;
-- - 'logical replication': a publication sends each DELETE to its subscribers, never a DROP: the
--   rows would stay on every subscriber;
-- - 'a foreign key that sets NULL or DEFAULT on delete': the rows referring to a deleted row
--   outlive it (the planner does not wait for them), but PostgreSQL refuses to detach a
--   partition that rows of another table still refer to: every run would fail there.
-- Parameters: %(schema)s, %(table)s.
WITH tree AS (
    SELECT t.relid, ns.nspname, c.relname, c.relrowsecurity
    FROM pg_partition_tree(format('%%I.%%I', %(schema)s::text, %(table)s::text)::regclass) AS t
    JOIN pg_class AS c ON c.oid = t.relid
    JOIN pg_namespace AS ns ON ns.oid = c.relnamespace  -- a partition may live in another schema
)
SELECT 'a trigger or rule on DELETE'
WHERE EXISTS (SELECT FROM tree JOIN pg_trigger AS tg ON tg.tgrelid = tree.relid
              WHERE NOT tg.tgisinternal AND tg.tgtype & 8 <> 0)  -- TRIGGER_TYPE_DELETE
   OR EXISTS (SELECT FROM tree JOIN pg_rewrite AS r ON r.ev_class = tree.relid WHERE r.ev_type = '4')  -- ON DELETE
UNION ALL
SELECT 'row-level security' WHERE EXISTS (SELECT FROM tree WHERE tree.relrowsecurity)
UNION ALL
SELECT 'logical replication'
WHERE EXISTS (SELECT FROM pg_publication_tables AS p
              JOIN tree ON p.schemaname = tree.nspname AND p.tablename = tree.relname)
UNION ALL
SELECT 'a foreign key that sets NULL or DEFAULT on delete'
WHERE EXISTS (SELECT FROM tree JOIN pg_constraint AS fk ON fk.confrelid = tree.relid
              WHERE fk.contype = 'f' AND fk.confdeltype IN ('n', 'd'))
