"""A record's own end date: under its rule, from its clock (the schedule's calendar arithmetic),
or while its clock has not started the policy's words for it; for an archived row, from its
clock read through its parents, never the date of the archive object it shares with other
people's rows.
"""

from __future__ import annotations

import datetime as dt

from retention.policy import Rule
from retention.policy.periods import Period, due_date
from retention.rights.context import RequestContext
from retention.rights.find import ArchivedObject

# "Kept until" of a record whose clock has not started, in the policy's words for that clock
# (the "live in DB" column of docs/schedule.md), then its rule's whole period.
CLOCK_NOT_STARTED = {
    "contracts.ended_at": "while the contract runs",
    "customers.relationship_ended_at": "while the customer relationship lasts",
    "fraud_cases.closed_at": "while the fraud case is open",
    "fraud_alerts.qualified_at": "until the alert is qualified",
    "chat_messages.transmitted_at": "until transmitted to the partner vets",
    "vet_consultations.transmitted_at": "until transmitted to the partner vets",
    "information_requests.handled_at": "until the request is handled",
    "identity_documents.checked_at": "until the identity check is done",
}


def own_end(rule: Rule, clock: dt.datetime | None, tz: dt.tzinfo) -> str:
    """A record's own end date under its rule (the schedule's calendar arithmetic), or while
    its clock has not started the policy's words for it, e.g. "while the contract runs, then
    5 years"."""
    if clock is not None:
        # The Paris day: a zero period's end is the clock itself, in the time zone it was read in.
        return due_date(clock, rule.gone_after, tz).astimezone(tz).date().isoformat()
    words = CLOCK_NOT_STARTED.get(rule.clock, f"until {rule.clock} is set")
    return words if rule.gone_after == Period() else f"{words}, then {rule.gone_after}"


def row_ends(ctx: RequestContext, conn, obj: ArchivedObject, objects: list[ArchivedObject]) -> dict[int, str]:
    """The own end date of each of the subject's rows in an archived object, from the row's
    clock under the object's rule (not the object's purge date, which a later row of
    another person may set). A clock in a parent table (a claim's contract end) is read
    through the parent link: from the rows found, the live table, or the parent's archive."""
    if obj.until:
        return obj.until
    purge_day = obj.purge_after.astimezone(ctx.tz).date().isoformat()
    rule = next((r for r in ctx.policy.purpose(obj.purpose).rules if r.name == obj.rule), None)
    if rule is None:  # renamed or removed since: the object's recorded date is all that is known
        obj.until.update(dict.fromkeys(obj.subject_ids, purge_day))
        return obj.until
    clock_table, clock_column = rule.clock_table, rule.clock_column
    path = _path_up(ctx.parents, obj.table, clock_table)
    at = {i: i for i in obj.subject_ids}  # subject row -> the id reached in `table`
    table = obj.table
    for parent, column in path or ():
        values = _column_values(ctx, conn, table, column, set(at.values()) - {None}, objects)
        at = {i: values.get(j) for i, j in at.items()}
        table = parent
    clocks = (
        _column_values(ctx, conn, table, clock_column, set(at.values()) - {None}, objects) if path is not None else {}
    )
    for i in obj.subject_ids:
        clock = clocks.get(at[i])
        # An archived row's clock has started (it was due); one that cannot be read back (a
        # parent gone everywhere) falls back to the object's purge date, when its copy goes.
        obj.until[i] = own_end(rule, clock, ctx.tz) if clock is not None else purge_day
    return obj.until


def _column_values(
    ctx: RequestContext, conn, table: str, column: str, ids: set[int], objects: list[ArchivedObject]
) -> dict:
    """``{id: value of column}`` for rows of ``table``, wherever they are: in the objects read
    for the request, in the live table, or in the other committed objects of the table."""
    values: dict = {}
    for obj in objects:
        if obj.table == table and column in obj.rows.column_names and ids - values.keys():
            for i, v in zip(obj.rows.column("id").to_pylist(), obj.rows.column(column).to_pylist(), strict=True):
                if i in ids:
                    values[i] = v
    missing = sorted(ids - values.keys())
    if missing:
        values.update(
            conn.execute(
                f'SELECT id, "{column}" FROM "{ctx.schema}"."{table}" WHERE id = ANY(%s::bigint[])', (missing,)
            ).fetchall()
        )
    missing = sorted(ids - values.keys())
    if missing:
        for key, version, sha in conn.execute(
            "SELECT object_key, version_id, sha256 FROM retention.archive_manifest WHERE state = 'committed'"
            " AND bucket = %s AND table_name = %s AND record_ids && %s::bigint[] ORDER BY id",
            (ctx.store.archive_bucket, table, missing),
        ).fetchall():
            rows = ctx.read_object(key, version, sha)
            if column in rows.column_names:
                for i, v in zip(rows.column("id").to_pylist(), rows.column(column).to_pylist(), strict=True):
                    if i in ids:
                        values.setdefault(i, v)
    return values


def _path_up(parents: dict[str, list[tuple[str, str]]], table: str, target: str) -> list[tuple[str, str]] | None:
    """The links from ``table`` up to ``target`` through the coverage graph (shortest first):
    ``[(parent table, the child's column naming it), ...]``; None when there is none."""
    frontier = [(table, [])]
    seen = {table}
    while frontier:
        current, path = frontier.pop(0)
        if current == target:
            return path
        for parent, column in parents.get(current, []):
            if parent not in seen:
                seen.add(parent)
                frontier.append((parent, [*path, (parent, column)]))
    return None
