-- Whether deleting a row of the table runs something of the application's: a trigger on DELETE
-- (row or statement level, enabled or not, on the table or any of its partitions; the foreign
-- keys' own triggers are internal and left out) or a rule ON DELETE. Dropping a partition runs
-- neither: a table where one exists takes the row path, whose DELETE runs them (a trigger that
-- refuses to delete some rows then stops the batch instead of being bypassed).
-- Parameters: %(schema)s, %(table)s.
SELECT EXISTS (
           SELECT FROM pg_partition_tree(format('%%I.%%I', %(schema)s::text, %(table)s::text)::regclass) AS tree
           JOIN pg_trigger AS tg ON tg.tgrelid = tree.relid
           WHERE NOT tg.tgisinternal AND tg.tgtype & 8 <> 0  -- TRIGGER_TYPE_DELETE
       )
    OR EXISTS (
           SELECT FROM pg_partition_tree(format('%%I.%%I', %(schema)s::text, %(table)s::text)::regclass) AS tree
           JOIN pg_rewrite AS r ON r.ev_class = tree.relid
           WHERE r.ev_type = '4'  -- ON DELETE
       )
