-- Whether the session may DETACH a partition of the table and DROP it: both need the table's
-- owner (a superuser, or a member of the owning role). The engine's role (retention_engine)
-- normally is not: its partitioned tables then take the row path (docs/partitions.md).
-- Parameters: %(schema)s, %(table)s.
SELECT pg_has_role(current_user, c.relowner, 'USAGE')
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s
