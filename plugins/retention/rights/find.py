"""Finding everything of one subject, in the live database and the archive.

Finding uses the one definition of "what belongs to whom" that legal holds use (the policy's
``legal_holds.covers``, retention.policy.coverage): from the subject's own row (a customer, a
prospect, a job application, or every row whose ``email`` column matches an address), down
through every covered table, in the live tables and in the archive. Archive objects are found
through the manifest's ``owner_ids`` (GIN index): every object holding a row that belongs to
the subject records the subject among its owners (retention.policy.coverage.owners_of_rows), so
only those objects are read; their rows are then filtered the same way as the live ones. By
e-mail, the archived rows holding the address are found too, through the keyed hashes each
object records of its rows' e-mails (``identifier_hashes``, retention.identifiers), so that
someone known only by archived rows is found.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import pyarrow as pa

from retention import identifiers
from retention.archive.store import ArchiveStorageError
from retention.policy.coverage import ancestors_first, covered_records_sql, object_covered
from retention.rights import suppression
from retention.rights.context import RequestContext
from retention.rights.requests import SubjectRequest, SubjectRequestError

# The subject's own table for a request by id; "email" resolves to every row whose `email`
# column holds the address, in every table that has one, live or archived.
SUBJECT_TABLES = {"customer": "customers", "prospect": "prospects", "candidate": "job_applications"}
# The characters str.strip() removes that NFKC does not map to a space.
_STRIP = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u1680\u2028\u2029"


@dataclass
class ArchivedObject:
    """A committed archive object holding at least one row of the subject, read back."""

    manifest_id: int
    purpose: str
    rule: str
    table: str
    tier: str
    key: str
    version_id: str | None
    sha256: str
    purge_after: dt.datetime
    document_keys: list[str]
    document_version_ids: list[str | None]
    owner_ids: dict | None  # None: archived before owners were recorded
    held: bool
    rows: pa.Table
    subject_ids: list[int] = field(default_factory=list)
    until: dict[int, str] = field(
        default_factory=dict
    )  # the subject's rows' own end dates (retention.rights.ends.row_ends)
    # The old object of a rewrite a hold kept since its commit ('rewritten', its rewrite
    # 'committed'): still stored, every row it held, the only copy of the rows the rewrite
    # removed. Its other rows were in the new object, which a later erasure of their owner may
    # rewrite in turn (found by a review: a second person's erased rows, still stored here, were
    # reported erased and in no later export): ``rows`` holds them all, and ``elsewhere`` those
    # of the subject's that a committed object found holds too (counted and exported once).
    superseded: bool = False
    elsewhere: set[int] = field(default_factory=set)


@dataclass
class Found:
    """Everything of one subject: ids per table (live or archived), the live ones, the objects."""

    ids: dict[str, set[int]]
    live: dict[str, set[int]]
    objects: list[ArchivedObject]
    owners_not_recorded: int = 0
    matched: dict[str, int] = field(default_factory=dict)  # the subject's own rows (by e-mail: each match)
    matched_archived: dict[str, int] = field(default_factory=dict)  # the same in the archive (by e-mail)
    identifiers_not_recorded: int = 0  # by e-mail: committed objects without identifier hashes


def root_tables(ctx: RequestContext, conn, req: SubjectRequest) -> list[str]:
    """Where the subject's own rows are: its table (by id), or every table with an `email` column."""
    if req.kind != "email":
        return [SUBJECT_TABLES[req.kind]]
    return [
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s AND column_name = 'email'"
            " ORDER BY table_name",
            (ctx.schema,),
        )
    ]


def subject_tables(ctx: RequestContext, conn, req: SubjectRequest) -> set[str]:
    """Every table the subject's rows may be in: the root tables and those below them in the
    coverage graph (a row is the subject's through its parent's)."""
    tables = set(root_tables(ctx, conn, req))
    while below := {
        child for child, edges in ctx.parents.items() if child not in tables and any(p in tables for p, _ in edges)
    }:
        tables |= below
    return tables


def resolve(ctx: RequestContext, conn, req: SubjectRequest) -> dict[str, set[int]]:
    """The subject's own rows: the id given, or every row whose `email` matches."""
    if req.kind != "email":
        return {SUBJECT_TABLES[req.kind]: {req.subject_id}}
    address = suppression.normalise_email(req.email)
    roots: dict[str, set[int]] = {}
    for table in root_tables(ctx, conn, req):
        # Matched on retention.identifiers.normalise_email (NFKC, str.strip()'s whitespace,
        # Python's lower case), so a live row matches exactly when its archived copy would.
        # PostgreSQL's lower() differs from Python's beyond ASCII (a final sigma, a dotted
        # capital I: found by a review), so it only narrows the rows read: an ASCII address
        # through the same normalisation in SQL (the same for ASCII), and every address with a
        # character beyond ASCII (more bytes than characters), checked here.
        ids = {
            i
            for i, email in conn.execute(
                f'SELECT id, email FROM "{ctx.schema}"."{table}" WHERE lower(btrim(normalize(email, NFKC), %s)) = %s'
                " OR (%s AND octet_length(email) <> char_length(email))",
                (_STRIP, address, not address.isascii()),
            )
            if suppression.normalise_email(email) == address
        }
        if ids:
            roots[table] = ids
    return roots


def find(ctx: RequestContext, conn, req: SubjectRequest, seed: dict[str, set[int]] | None = None) -> Found:
    """Every row of the subject, live and archived. ``seed``: ids already known to be the
    subject's (found before live rows were erased), so that archived children stay found."""
    roots = resolve(ctx, conn, req)
    matched = {t: len(v) for t, v in sorted(roots.items())}
    archived, not_recorded = _archived_by_address(ctx, conn, req) if req.kind == "email" else ({}, 0)
    for table, ids in [*archived.items(), *(seed or {}).items()]:
        roots.setdefault(table, set()).update(ids)
    # The manifest is searched again after each read of the live rows, until nothing new: from
    # the rows found (owners are recorded when an object is written: a link made later, such as
    # a prospect who became a customer, is only seen from the rows), and so that a batch the
    # engine committed after a search but before the live read (rows gone, object committed) is
    # seen (both found by a review).
    # A search also ends only when it found the same rows as the one before: a batch committed
    # between a search's manifest read and its live read leaves a row found before in neither
    # (found by a review: the last search then lost it, in no export).
    search = {t: set(v) for t, v in roots.items()}
    seen: set[int] | None = None
    before: dict[str, set[int]] | None = None
    while True:
        objects, unknown = _candidate_objects(ctx, conn, search)
        found = expand(ctx, conn, roots, objects)
        wider = {t: search.get(t, set()) | found.ids.get(t, set()) for t in {*search, *found.ids}}
        now = {o.manifest_id for o in objects}
        if wider == search and now == seen and found.ids == before:
            break
        search, seen, before = wider, now, found.ids
    stored: dict[str, set[int]] = {}
    for obj in found.objects:
        if not obj.superseded:
            stored.setdefault(obj.table, set()).update(obj.subject_ids)
    for obj in found.objects:
        if obj.superseded:
            obj.elsewhere = set(obj.subject_ids) & stored.get(obj.table, set())
    held = held_through_parents(ctx, conn, found)
    for obj in found.objects:
        obj.held = obj.held or obj.manifest_id in held
    found.owners_not_recorded = unknown
    found.matched = matched
    found.matched_archived = {t: len(v) for t, v in sorted(archived.items())}
    found.identifiers_not_recorded = not_recorded
    return found


def held_through_parents(ctx: RequestContext, conn, found: Found) -> set[int]:
    """The objects holding a row of the subject whose parent, live or archived, is under a hold,
    down the subject's rows found (parents first). The hold coverage (``covered_records_sql``,
    ``object_covered``) follows the live links and the owners an object recorded when it was
    written: a link made afterwards to a record since archived (a prospect who became a
    customer, then archived with the customer's identity) is seen only through the rows found
    here, and the object of the prospect's quote was erased under a hold on the customer
    (found by a review). The parent may also be a covered record that is not the subject's (the
    customer the prospect asking became; found by a review)."""
    if not found.objects:
        return set()
    covered = set(
        conn.execute(
            f"WITH covered AS ({covered_records_sql(ctx.policy)}) SELECT table_name, record_id FROM covered"
        ).fetchall()
    )
    held_rows: dict[str, set[int]] = {}
    objects: set[int] = set()
    for table in tables_in_order(ctx, found.ids):
        rows = {i for i in found.ids.get(table, ()) if (table, i) in covered}
        mine = [o for o in found.objects if o.table == table]
        for obj in mine:
            subject = set(obj.subject_ids)
            ids = obj.rows.column("id").to_pylist()
            for parent, col in ctx.parents.get(table, []):
                if col not in obj.rows.column_names:
                    continue
                for i, v in zip(ids, obj.rows.column(col).to_pylist(), strict=True):
                    if i not in subject or v is None:
                        continue
                    if v in held_rows.get(parent, ()) or (parent, v) in covered:
                        rows.add(i)
        objects |= {o.manifest_id for o in mine if rows.intersection(o.subject_ids)}
        if rows:
            held_rows[table] = rows
    return objects


def _archived_by_address(ctx: RequestContext, conn, req: SubjectRequest) -> tuple[dict[str, set[int]], int]:
    """The archived rows whose e-mail is the address: the committed objects recording its
    keyed hash (GIN index on identifier_hashes) are read back and their rows matched on the
    address itself. Also: how many committed objects record no hashes (archived before, or
    without the key: `retention.archive.backfill_owners` fills them in)."""
    try:
        locator = identifiers.email_locator(req.email)
    except identifiers.IdentifierKeyError as exc:
        raise SubjectRequestError(f"a request by e-mail cannot search the archive: {exc}") from exc
    address = suppression.normalise_email(req.email)
    rows: dict[str, set[int]] = {}
    for table, key, version, sha, state in conn.execute(
        "SELECT m.table_name, m.object_key, m.version_id, m.sha256, m.state FROM retention.archive_manifest AS m"
        f" WHERE {STORED.format(m='m')} AND m.bucket = %s AND m.identifier_hashes @> ARRAY[%s]::bigint[]"
        " ORDER BY m.id",
        (ctx.store.archive_bucket, locator),
    ).fetchall():
        data = _read_stored(ctx, key, version, sha, superseded=state != "committed")
        if data is None:
            continue
        for column in identifiers.EMAIL_COLUMNS & set(data.column_names):
            for i, value in zip(data.column("id").to_pylist(), data.column(column).to_pylist(), strict=True):
                if value is not None and suppression.normalise_email(value) == address:
                    rows.setdefault(table, set()).add(i)
    not_recorded = conn.execute(
        "SELECT count(*) FROM retention.archive_manifest WHERE state = 'committed' AND identifier_hashes IS NULL"
        " AND bucket = %s",
        (ctx.store.archive_bucket,),
    ).fetchone()[0]
    return rows, not_recorded


# An object still stored: committed, or the old object of a rewrite a hold kept since its commit
# (its rewrite 'committed', not 'done': retention.archive.rewrite), the only copy of the rows the
# rewrite removed (found by a review: an access missed them).
STORED = (
    "({m}.state = 'committed' OR ({m}.state = 'rewritten' AND EXISTS (SELECT 1 FROM retention.object_rewrites"
    " AS r WHERE r.old_manifest_id = {m}.id AND r.state = 'committed')))"
)


def _read_stored(ctx: RequestContext, key: str, version: str | None, sha: str, superseded: bool) -> pa.Table | None:
    """An object's rows; None for a superseded old object whose versions are gone already (its
    rewrite's delete done, not yet marked: the recovery marks it)."""
    try:
        return ctx.read_object(key, version, sha)
    except ArchiveStorageError as exc:
        code = getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code")
        if superseded and code in ("NoSuchKey", "NoSuchVersion", "404"):
            return None
        raise


def tables_in_order(ctx: RequestContext, roots: dict[str, set[int]]) -> list[str]:
    """The tables a subject's rows may be in (the coverage graph's and the roots'), parents first."""
    covered = set(ctx.parents) | {p for edges in ctx.parents.values() for p, _ in edges}
    return ancestors_first(ctx.policy, sorted(covered | set(roots)))


def expand(ctx: RequestContext, conn, roots: dict[str, set[int]], objects: list[ArchivedObject]) -> Found:
    """Down the coverage graph, parents first: a row is the subject's when it is one of the
    roots or its parent column names a row of the subject (live or archived)."""
    ids: dict[str, set[int]] = {}
    live: dict[str, set[int]] = {}
    for table in tables_in_order(ctx, roots):
        own = set(roots.get(table, ()))
        links = [(col, ids[parent]) for parent, col in ctx.parents.get(table, []) if ids.get(parent)]
        conds, params = [], []
        if own:
            conds.append("id = ANY(%s::bigint[])")
            params.append(sorted(own))
        for col, parent_ids in links:
            conds.append(f'"{col}" = ANY(%s::bigint[])')
            params.append(sorted(parent_ids))
        # Rows whose link to the subject's record a delete cleared (ON DELETE SET NULL): who they
        # belonged to is in retention.detached_owners (found by a review: an access missed them).
        # Their owners name the deleted record and its own owners (a customer), any of them found.
        # Looked up first, so that the table is read by its primary key (an IN (subquery) arm of
        # the OR would make it a scan of the whole table).
        if table in ctx.parents and ids:
            owners = [json.dumps({owner: [i]}) for owner, found_ids in sorted(ids.items()) for i in sorted(found_ids)]
            # One containment test each (a person has few records): the GIN index serves an OR of
            # them, not an ANY over an array.
            contains = " OR ".join(["owner_ids @> %s::jsonb"] * len(owners))
            detached = [
                r[0]
                for r in conn.execute(
                    f"SELECT record_id FROM retention.detached_owners WHERE table_name = %s AND ({contains})",
                    (table, *owners),
                )
            ]
            if detached:
                conds.append("id = ANY(%s::bigint[])")
                params.append(sorted(set(detached)))
        mine: set[int] = set()
        if conds:
            rows = conn.execute(f'SELECT id FROM "{ctx.schema}"."{table}" WHERE {" OR ".join(conds)}', params)
            live[table] = {r[0] for r in rows}
            mine |= live[table]
        for obj in objects:
            if obj.table != table:
                continue
            columns = obj.rows.column_names
            row_ids = obj.rows.column("id").to_pylist()
            hit = [i in own for i in row_ids]
            for col, parent_ids in links:
                if col in columns:
                    hit = [h or (v in parent_ids) for h, v in zip(hit, obj.rows.column(col).to_pylist(), strict=True)]
            obj.subject_ids = [i for i, h in zip(row_ids, hit, strict=True) if h]
            mine |= set(obj.subject_ids)
        if mine:
            ids[table] = mine
    live = {t: v for t, v in live.items() if v}
    return Found(ids=ids, live=live, objects=[o for o in objects if o.subject_ids])


def _candidate_objects(ctx: RequestContext, conn, roots: dict[str, set[int]]) -> tuple[list[ArchivedObject], int]:
    """The committed objects whose recorded owners include a root (GIN index on owner_ids),
    or that hold a root row itself (the owners exclude an object's own table), read back
    and checked against the manifest's SHA-256. Also: how many objects have no owners
    recorded (archived before owners were; `retention.archive.backfill_owners` fills them in)."""
    conds, params = [], []
    for table, ids in sorted(roots.items()):
        for i in sorted(ids):
            conds.append("m.owner_ids @> %s::jsonb")
            params.append(json.dumps({table: [i]}))
        # The root's own table (owners exclude it): no index on record_ids, a scan of the
        # manifest, which has one row per object (thousands), not per record.
        conds.append("(m.table_name = %s AND m.record_ids && %s::bigint[])")
        params += [table, sorted(ids)]
    unknown = conn.execute(
        "SELECT count(*) FROM retention.archive_manifest WHERE state = 'committed' AND owner_ids IS NULL"
        " AND bucket = %s",
        (ctx.store.archive_bucket,),
    ).fetchone()[0]
    if not conds:
        return [], unknown
    rows = conn.execute(
        f"WITH covered AS ({covered_records_sql(ctx.policy)})"
        " SELECT m.id, m.purpose, m.rule, m.table_name, m.tier, m.object_key, m.version_id, m.sha256,"
        f" m.purge_after, m.document_keys, m.document_version_ids, m.owner_ids, {object_covered('m')},"
        " (SELECT r.removed_ids FROM retention.object_rewrites AS r WHERE r.old_manifest_id = m.id"
        "  AND r.state = 'committed' AND m.state = 'rewritten')"
        f" FROM retention.archive_manifest AS m WHERE {STORED.format(m='m')} AND m.bucket = %s"
        f" AND ({' OR '.join(conds)}) ORDER BY m.id",
        [ctx.store.archive_bucket, *params],
    ).fetchall()
    objects = []
    for (
        mid,
        purpose,
        rule,
        table,
        tier,
        key,
        version,
        sha,
        purge_after,
        docs,
        doc_versions,
        owners,
        held,
        removed,
    ) in rows:
        data = _read_stored(ctx, key, version, sha, superseded=removed is not None)
        if data is None:
            continue
        objects.append(
            ArchivedObject(
                mid,
                purpose,
                rule,
                table,
                tier,
                key,
                version,
                sha,
                purge_after,
                list(docs or []),
                list(doc_versions or [None] * len(docs or [])),
                owners,
                held,
                data,
                superseded=removed is not None,
            )
        )
    return objects, unknown
