"""Who the rows a delete detaches belonged to (``retention.detached_owners``), recorded before
the delete: shared by the engine's batches and the subject erasures.

A foreign key ``ON DELETE SET NULL`` (a call's analysis to its recording, a cookie choice to its
customer) clears the link of the rows pointing to a deleted record; a hold placed later on that
record, or on its owners, must still cover them (retention.policy.coverage reads these entries).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
from psycopg import sql

from retention.id_sets import id_array
from retention.planner import Blocker


def record_detached_owners(
    conn,
    table: str,
    ids: list[int],
    links: list[Blocker],
    run_id: str,
    owners_of: Callable[[list[list[int]]], list[dict[str, list[int]]]],
    *,
    retired_partitions: bool = False,
) -> None:
    """Before the delete of ``ids`` of ``table`` clears the ``links`` (child table and column) of
    the rows pointing to them, record, in the caller's transaction, who each such row belonged
    to: the deleted record and its own owners (``owners_of``: one owners dict per id set). With
    ``retired_partitions``, the rows of the child table's partitions a retirement has detached
    and not dropped yet are read too (the table no longer reads them; the foreign key, which the
    detached table keeps, still clears their link)."""
    detached: list[tuple[str, int, int]] = []  # (child table, child id, deleted parent id)
    for link in links:
        select = "SELECT id, {column} FROM {only}{table} WHERE {column} = ANY(%s::bigint[])"
        rows = conn.execute(
            sql.SQL(select).format(
                column=sql.Identifier(link.column), only=sql.SQL(""), table=sql.Identifier(link.schema, link.table)
            ),
            (id_array(ids),),
        ).fetchall()
        # Read after the table: a partition whose detach began since is named by then.
        for partition in _retired_partitions(conn, link) if retired_partitions else ():
            try:
                with conn.transaction():  # a savepoint: dropped meanwhile, its rows are gone
                    rows += conn.execute(
                        sql.SQL(select).format(
                            column=sql.Identifier(link.column),
                            only=sql.SQL("ONLY "),
                            table=sql.Identifier(link.schema, partition),
                        ),
                        (id_array(ids),),
                    ).fetchall()
            except psycopg.errors.UndefinedTable:
                continue
        detached += [(link.table, child_id, parent_id) for child_id, parent_id in sorted(set(rows))]
    if not detached:
        return
    parents = sorted({parent_id for _, _, parent_id in detached})
    owners = dict(zip(parents, owners_of([[p] for p in parents]), strict=True))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO retention.detached_owners (table_name, record_id, owner_ids, run_id)"
            " VALUES (%s, %s, %s::jsonb, %s)",
            [
                (child, child_id, json.dumps({table: [parent_id]} | owners[parent_id]), run_id)
                for child, child_id, parent_id in detached
            ],
        )


def _retired_partitions(conn, link: Blocker) -> list[str]:
    """The partitions of the link's table a retirement took out of it and has not dropped yet
    (pending detach or detached: retention.archive.partitions)."""
    return [
        name
        for (name,) in conn.execute(
            "SELECT partition_name FROM retention.partition_retirements"
            " WHERE table_name = %s AND state = 'detaching'"
            " AND to_regclass(format('%%I.%%I', %s::text, partition_name)) IS NOT NULL ORDER BY id",
            (link.table, link.schema),
        )
    ]
