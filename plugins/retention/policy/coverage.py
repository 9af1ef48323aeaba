"""What a legal hold covers: the one definition, turned into the SQL that every step uses.

The policy's ``legal_holds.covers`` says, per table, which rows belong to one of its records
(``contracts: [claims.contract_id, ...]``), transitively: a hold on a customer covers their
contracts, so their contracts' claims, so those claims' reimbursements. From it come

- ``held_ctes``: for the tables a statement needs, the ids covered by an active hold, as
  ``held_<table>`` CTEs (the hold itself, plus the rows whose parent is covered, parents
  first, plus the rows whose link the delete of a covered record cleared: ``detached_owners``).
  The rule selects, the batch re-check and the after-gates test ``held_<table>``;
- ``owners_of_rows``: for a batch about to be archived, the ids of every record it belongs
  to (its contract, that contract's customer...), stored in the manifest (``owner_ids``) so
  that a hold placed after the live rows are gone still finds their archive objects;
- ``object_held``: the purge's test on a manifest row: a covered record among its own ids or
  its owners' ids (an object whose owners were never recorded counts as held).

Holds are few (hundreds), so each ``held_<table>`` is a small set computed per statement
through the indexed foreign-key columns, and tested with a hashed lookup.
"""

from __future__ import annotations

from collections.abc import Iterable

from retention.id_sets import ids_predicate
from retention.policy import Policy

ACTIVE_HOLDS = "retention.active_holds"
DETACHED = "retention.detached_owners"


def parents_of(policy: Policy) -> dict[str, list[tuple[str, str]]]:
    """child table -> [(parent table, the child's column holding the parent id)]."""
    parents: dict[str, list[tuple[str, str]]] = {}
    for parent, children in policy.legal_holds.covers.items():
        for child in children:
            table, column = child.split(".")
            parents.setdefault(table, []).append((parent, column))
    return parents


def ancestors_first(policy: Policy, tables: Iterable[str]) -> list[str]:
    """``tables`` and every table whose holds reach them, parents before children."""
    parents = parents_of(policy)
    order: list[str] = []

    def visit(table: str) -> None:
        if table in order:
            return
        for parent, _ in parents.get(table, []):
            visit(parent)
        order.append(table)

    for table in tables:
        visit(table)
    return order


def held_ctes(policy: Policy, tables: Iterable[str]) -> list[str]:
    """``held_<t> AS MATERIALIZED (...)`` for ``tables`` and their ancestors, parents first."""
    parents = parents_of(policy)
    schema = policy.source_schema
    ctes = []
    for table in ancestors_first(policy, tables):
        parts = [f"SELECT record_id AS id FROM {ACTIVE_HOLDS} WHERE table_name = '{table}'"]
        parts += [
            f'SELECT c.id FROM "{schema}"."{table}" AS c WHERE c."{column}" IN (SELECT id FROM held_{parent})'
            for parent, column in parents.get(table, [])
        ]
        if table in parents:
            # Rows whose link a delete cleared: the records they belonged to, recorded then. The
            # first test (one index probe) skips the rest for a table none of whose rows was detached.
            parts.append(
                f"SELECT d.record_id FROM {DETACHED} AS d JOIN {ACTIVE_HOLDS} AS h ON d.owner_ids @>"
                " jsonb_build_object(h.table_name, jsonb_build_array(h.record_id))"
                f" WHERE d.table_name = '{table}'"
                f" AND EXISTS (SELECT FROM {DETACHED} AS any_row WHERE any_row.table_name = '{table}')"
            )
        ctes.append(f"held_{table} AS MATERIALIZED ({' UNION '.join(parts)})")
    return ctes


def held_test(table: str, alias: str) -> str:
    """True when the row ``alias`` of ``table`` is covered (needs ``held_ctes`` for the table)."""
    return f'EXISTS (SELECT 1 FROM held_{table} AS h WHERE h.id = "{alias}".id)'


def covered_records_sql(policy: Policy) -> str:
    """Every (table_name, record_id) covered by an active hold, as far as the live rows show."""
    tables = sorted(parents_of(policy))
    ctes = held_ctes(policy, tables)
    expanded = " UNION ".join(f"SELECT '{t}'::text AS table_name, id AS record_id FROM held_{t}" for t in tables)
    direct = f"SELECT table_name, record_id FROM {ACTIVE_HOLDS}"
    return f"WITH {', '.join(ctes)} {direct} UNION {expanded}"


def object_covered(manifest_alias: str = "m") -> str:
    """A manifest row holds a covered record, or a row of a covered owner (needs a ``covered``
    relation: ``covered_records_sql``)."""
    m = manifest_alias
    return (
        f"EXISTS (SELECT 1 FROM covered AS c WHERE"
        f" (c.table_name = {m}.table_name AND c.record_id = ANY({m}.record_ids))"
        f" OR coalesce({m}.owner_ids -> c.table_name @> to_jsonb(c.record_id), false))"
    )


def object_held(manifest_alias: str = "m") -> str:
    """The purge's test: covered, or archived before owners were recorded (who knows whose
    rows it holds: kept until `python -m retention.archive.backfill_owners` fills them in)."""
    return f"({manifest_alias}.owner_ids IS NULL OR {object_covered(manifest_alias)})"


def owners_of_rows(
    conn, policy: Policy, table: str, ids: list[int], *, parent_ids: dict[str, Iterable[int]] | None = None
) -> dict[str, list[int]]:
    """The ids of every record the rows belong to, per table, through the live parents
    (the rows are locked, so are the parents the rule joins). Own table excluded.

    ``parent_ids``: the values of the rows' own parent columns (``{column: ids}``), when the
    caller has read the rows already (the engine, from the batch it archives): the first level
    then costs no query, and only the parents' own parents are looked up."""
    return owners_of_row_sets(conn, policy, table, [ids], [parent_ids] if parent_ids is not None else None)[0]


def owners_of_row_sets(
    conn,
    policy: Policy,
    table: str,
    id_sets: list[list[int]],
    parent_ids: list[dict[str, Iterable[int]]] | None = None,
) -> list[dict[str, list[int]]]:
    """``owners_of_rows`` of several sets of rows of one table at once (the objects of a batch,
    one per end day): each level above the first is looked up once for every set (the parent
    of each id), then followed per set, instead of one query per set and level."""
    parents = parents_of(policy)
    schema = policy.source_schema
    owners: list[dict[str, set[int]]] = [{} for _ in id_sets]
    frontiers: list[dict[str, set[int]]] = [{table: set(ids)} for ids in id_sets]
    first_level = True
    while any(frontiers):
        next_frontiers: list[dict[str, set[int]]] = [{} for _ in id_sets]
        # (child table, column) -> {child id: parent id}, for the union of the sets' frontiers
        links: dict[tuple[str, str], dict[int, int]] = {}
        if not (first_level and parent_ids is not None):
            wanted: dict[str, set[int]] = {}
            for frontier in frontiers:
                for child, child_ids in frontier.items():
                    wanted.setdefault(child, set()).update(child_ids)
            for child, child_ids in wanted.items():
                for _, column in parents.get(child, []):
                    where, params = ids_predicate("id", sorted(child_ids))
                    # Two binary arrays: a third of the time of as many rows.
                    children, parent_of = conn.execute(
                        f'SELECT array_agg(id), array_agg("{column}") FROM "{schema}"."{child}"'
                        f' WHERE {where} AND "{column}" IS NOT NULL',
                        params,
                        binary=True,
                    ).fetchone()
                    links[(child, column)] = dict(zip(children or [], parent_of or [], strict=True))
        for n, frontier in enumerate(frontiers):
            for child, child_ids in frontier.items():
                for parent, column in parents.get(child, []):
                    if first_level and parent_ids is not None:
                        found = set(parent_ids[n][column])
                    else:
                        link = links[(child, column)]
                        found = {link[i] for i in child_ids if i in link}
                    found -= owners[n].get(parent, set())
                    if found:
                        owners[n].setdefault(parent, set()).update(found)
                        next_frontiers[n].setdefault(parent, set()).update(found)
        frontiers, first_level = next_frontiers, False
    return [{t: sorted(v) for t, v in sorted(found.items())} for found in owners]


def with_detached_owners(
    conn, table: str, id_sets: list[list[int]], owners: list[dict[str, list[int]]]
) -> list[dict[str, list[int]]]:
    """``owners`` (one per id set) with the owners the rows had before a delete cleared their link
    (``retention.detached_owners``): an object of such rows must name them too, or a hold placed on
    them later would not keep it (found by a review)."""
    wanted = sorted({i for ids in id_sets for i in ids})
    recorded: dict[int, list[dict]] = {}
    for record_id, owned in conn.execute(
        f"SELECT record_id, owner_ids FROM {DETACHED} WHERE table_name = %s AND record_id = ANY(%s::bigint[])",
        (table, wanted),
    ):
        recorded.setdefault(record_id, []).append(owned)
    merged_sets = []
    for ids, found in zip(id_sets, owners, strict=True):
        merged = {t: set(v) for t, v in found.items()}
        for record_id in ids:
            for owned in recorded.get(record_id, ()):
                for t, v in owned.items():
                    merged.setdefault(t, set()).update(v)
        merged_sets.append({t: sorted(v) for t, v in sorted(merged.items())})
    return merged_sets
