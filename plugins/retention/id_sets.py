"""A set of row ids as SQL parameters: one text literal cast to ``bigint[]``, and a predicate
that reads a dense batch as one range scan. Used by every statement that names a batch's rows."""

from __future__ import annotations


def id_array(ids: list[int]) -> str:
    """A bigint[] parameter as one text literal, cast with ``%s::bigint[]`` in the SQL: psycopg
    dumps a Python list element by element (a regex each), 29 ms for 20,000 ids against 8 ms."""
    return "{" + ",".join(map(str, ids)) + "}"


def ids_predicate(column: str, ids: list[int], literal: str | None = None) -> tuple[str, dict]:
    """SQL selecting exactly ``ids`` in ``column``, with the ids bound as one parameter.

    A batch is mostly a dense run of ids: then a range scan with a hashed membership filter (the
    ``+ 0`` keeps the planner from turning it into one index descent per id) reads it in one pass;
    sparse ids keep the plain ``= ANY``, whose cost does not grow with the id range. ``literal``
    is ``id_array(ids)`` when the caller already built it."""
    params = {"ids": literal or id_array(ids), "lo": min(ids), "hi": max(ids)}
    if params["hi"] - params["lo"] < 2 * len(ids):
        return f"{column} BETWEEN %(lo)s AND %(hi)s AND {column} + 0 = ANY(%(ids)s::bigint[])", params
    return f"{column} = ANY(%(ids)s::bigint[])", params
