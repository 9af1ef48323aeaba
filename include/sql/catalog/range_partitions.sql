-- The partitions of a table range-partitioned on one column (PostgreSQL declarative
-- partitioning), read from the catalog: nothing about partitions is declared in the policy.
-- No row when the table is not partitioned, or partitioned otherwise (list, hash, several
-- columns, another column). Bounds are printed in the session's time zone (the engine's is UTC)
-- and cast back; NULL for MINVALUE / MAXVALUE and for the DEFAULT partition.
-- droppable: the partition is an ordinary table (not partitioned further, not a foreign table)
-- in the table's own schema (the engine names it there), no view or materialized view reads it,
-- and this session may act as its owner. Only such a one may be checked with FROM ONLY and
-- dropped alone (DROP TABLE refuses a table a view depends on, and a role that does not own it,
-- even one that owns the partitioned table).
-- Parameters: %(schema)s, %(table)s, %(column)s.
SELECT part.relname AS partition_name,
       pg_get_expr(part.relpartbound, part.oid) AS bound,
       inh.inhdetachpending AS detach_pending,
       part.relkind = 'r' AND part.relnamespace = parent.relnamespace
       AND NOT EXISTS (SELECT FROM pg_depend AS d
                       WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = part.oid
                         AND d.classid = 'pg_rewrite'::regclass)
       AND pg_has_role(current_user, part.relowner, 'USAGE') AS droppable,
       (substring(pg_get_expr(part.relpartbound, part.oid) FROM 'FROM \(''([^'']*)''\)'))::timestamptz AS lower_bound,
       (substring(pg_get_expr(part.relpartbound, part.oid) FROM ' TO \(''([^'']*)''\)'))::timestamptz AS upper_bound
FROM pg_partitioned_table AS pt
JOIN pg_class AS parent ON parent.oid = pt.partrelid
JOIN pg_namespace AS ns ON ns.oid = parent.relnamespace
JOIN pg_attribute AS key_column ON key_column.attrelid = parent.oid AND key_column.attnum = pt.partattrs[0]
JOIN pg_inherits AS inh ON inh.inhparent = parent.oid
JOIN pg_class AS part ON part.oid = inh.inhrelid
WHERE ns.nspname = %(schema)s
  AND parent.relname = %(table)s
  AND pt.partstrat = 'r'
  AND pt.partnatts = 1
  AND key_column.attname = %(column)s
ORDER BY upper_bound NULLS LAST, part.relname
