"""Erasure (Art. 17), in its order: the live rows, their files, then the archive.

Live rows are deleted (children first) with their files, in one transaction holding the
legal-hold table in SHARE mode like the engine's batches, after deciding again under that lock
(retention.rights.decide); a row a kept row references stays. Their files are deleted after the
commit (retention.archive.documents), unless a kept row names them too. The subject is then
searched again and each intermediate-tier object holding their rows is rewritten without them
(retention.rights.erase_archived). With ``marketing_objection``, the objection is recorded on
the suppression list (hashes only) in the live rows' transaction.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import psycopg
from psycopg import sql

from retention import identifiers
from retention.archive.db import connect
from retention.archive.detached_owners import record_detached_owners as record_detached_owners_of
from retention.archive.documents import dispose_documents, key_columns, keys_still_named
from retention.archive.locks import BATCH_LOCK_TIMEOUT, LOCK_HOLDS
from retention.planner import Blocker, cascading_keys_into, links_cleared_by_deletes
from retention.policy.coverage import owners_of_row_sets, with_detached_owners
from retention.rights import exports, suppression
from retention.rights.context import RequestContext
from retention.rights.decide import Decision, classify_live
from retention.rights.erase_archived import ERASED_IDS, erase_archived
from retention.rights.find import SUBJECT_TABLES, Found, expand, resolve, tables_in_order
from retention.rights.report import add_kept
from retention.rights.requests import SubjectRequest
from retention.rights.retirements import find_settled, settled


class KeysChangedError(RuntimeError):
    """A foreign key that cascades into a table the erasure deletes from was added while it ran:
    the erasure is rolled back, nothing of it erased; a retry reads the keys again."""


def erase(ctx: RequestContext, conn, req: SubjectRequest, found: Found, report: dict) -> None:
    """Erase what may be erased, live then archived, and report what is kept and why; in
    preview, report what would be erased and change nothing."""
    report["erased"] = {"live": {}, "intermediate": {}, "files": 0, "files_kept_shared": 0}
    report["marketing_objection"] = "not_requested"
    if req.preview:
        decisions = classify_live(ctx, conn, found.live)
        for (table, _), d in sorted(decisions.items()):
            if d.erase:
                report["erased"]["live"][table] = report["erased"]["live"].get(table, 0) + 1
            else:
                add_kept(ctx.policy, report, "live", table, d)
        preview_files(ctx, conn, decisions, report)
        if req.marketing_objection:
            report["marketing_objection"] = "would_record"
        erase_archived(ctx, conn, req, found, report, preview=True)
        return
    references = subject_references(ctx, conn, req, found)  # read before the live rows go
    purposes = erase_live(ctx, req, report)
    # With the files a crashed run of this request left queued (a purpose in preview mode
    # runs no engine recovery that would finish them).
    purposes |= {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT purpose FROM retention.document_disposals WHERE run_id = %s AND disposed_at IS NULL",
            (req.audit_run_id,),
        )
    }
    for purpose in sorted(purposes):  # the files of deleted rows, unless a kept row names them
        with connect(ctx.dsn, f"retention:{purpose}") as control:
            dispose_documents(control, ctx.store, ctx.schema, purpose, defer_when_busy=False)
    erased_by_request(conn, req, report)
    # Searched again after the live rows went: an object the engine committed meanwhile is seen.
    fresh = find_settled(
        ctx,
        conn,
        req,
        seed=found.ids,
        done="its live rows that could go are erased (audited), its archived ones not yet",
    )
    erase_archived(ctx, conn, req, fresh, report, preview=False, before=found)
    # The archived rows erased, with those of the request's earlier runs (its rewrites done): a
    # run stopped after a rewrite wrote no report, and the re-triggered one found the rows
    # nowhere (found by a review).
    ids = report.pop(ERASED_IDS, {})
    for table, removed in conn.execute(
        "SELECT m.table_name, w.removed_ids FROM retention.object_rewrites AS w"
        " JOIN retention.archive_manifest AS m ON m.id = w.old_manifest_id WHERE w.request_id = %s AND w.state = 'done'",
        (req.request_id,),
    ):
        ids.setdefault(table, set()).update(removed)
    report["erased"]["intermediate"] = {t: len(v) for t, v in sorted(ids.items()) if v}
    # Counted from the audit log, every run of the request: a run stopped after removing one
    # wrote no report, and the re-triggered one found none left (found by a review).
    (orphans,) = conn.execute(
        "SELECT count(*) FROM retention.audit_log WHERE run_id = %s AND action = 'orphan_removed'",
        (req.audit_run_id,),
    ).fetchone()
    if orphans:
        report["erased"]["orphan_uploads"] = orphans
    # The subject's access exports are copies of what was just erased.
    report["erased"]["access_exports"] = exports.delete_subject_exports(conn, ctx.store, references, req.audit_run_id)


def preview_files(ctx: RequestContext, conn, decisions: dict[tuple[str, int], Decision], report: dict) -> None:
    """The preview's files, counted as the erasure counts them (one per erasable row and file it
    names): kept when a row the erasure keeps, or another person's, names it too, deleted
    otherwise. The preview reported none either way (found by a review)."""
    erasable: dict[str, list[int]] = defaultdict(list)
    for (table, rid), d in decisions.items():
        if d.erase:
            erasable[table].append(rid)
    named: list[str] = []
    for table, col in key_columns(conn, ctx.schema):
        if table in erasable:
            named += [
                k
                for (k,) in conn.execute(
                    sql.SQL("SELECT {} FROM {} WHERE id = ANY(%s)").format(
                        sql.Identifier(col), sql.Identifier(ctx.schema, table)
                    ),
                    (sorted(erasable[table]),),
                )
                if k
            ]
    if not named:
        return
    shared = keys_still_named(conn, ctx.schema, named, excluding=erasable)
    report["erased"]["files_kept_shared"] = sum(1 for k in named if k in shared)
    report["erased"]["files"] = len(named) - report["erased"]["files_kept_shared"]


def erased_by_request(conn, req: SubjectRequest, report: dict) -> None:
    """The live rows and files the request erased, every run of it: read from its audit log and
    file disposals. A run stopped after its live rows' commit (DisposalBusyError, a crash) wrote
    no report; re-triggered, it finds nothing live left, and its report, the request's evidence,
    said nothing was erased (found by a review). The files: deleted, or kept because another
    row still names them (a file kept that way was counted erased too; found by a review)."""
    report["erased"]["live"] = {
        table: int(n)
        for table, n in conn.execute(
            "SELECT table_name, sum(record_count) FROM retention.audit_log WHERE run_id = %s AND action = 'deleted'"
            " GROUP BY 1 ORDER BY 1",
            (req.audit_run_id,),
        )
    }
    outcomes = dict(
        conn.execute(
            "SELECT outcome, count(*) FROM retention.document_disposals WHERE run_id = %s AND disposed_at IS NOT NULL"
            " GROUP BY 1",
            (req.audit_run_id,),
        ).fetchall()
    )
    report["erased"]["files"] = outcomes.get("deleted", 0)
    report["erased"]["files_kept_shared"] = outcomes.get("kept_shared", 0)


def subject_references(ctx: RequestContext, conn, req: SubjectRequest, found: Found) -> set[tuple[str, str]]:
    """Every (kind, reference) an access request of the person may have been made under: the
    erasure's own, the ids of the person's own rows found (a customer, the prospect they were,
    a candidate), and the keyed hashes of those rows' addresses (an access by e-mail, then an
    erasure by id: the export is the same person's)."""
    references = {(req.kind, ref) for ref in req.subject_refs}
    addresses: set[str] = set()
    for kind, table in SUBJECT_TABLES.items():
        references |= {(kind, str(i)) for i in found.ids.get(table, set())}
        live = sorted(found.live.get(table, set()))
        if live:
            addresses |= {
                email
                for (email,) in conn.execute(
                    f'SELECT DISTINCT email FROM "{ctx.schema}"."{table}" WHERE id = ANY(%s) AND email IS NOT NULL',
                    (live,),
                )
            }
    # And of those rows archived (a former customer's record): an access by that address is
    # theirs too (found by a review: only the live rows' addresses were looked at).
    for obj in found.objects:
        if obj.table in SUBJECT_TABLES.values() and "email" in obj.rows.column_names:
            mine = set(obj.subject_ids)
            rows = zip(obj.rows.column("id").to_pylist(), obj.rows.column("email").to_pylist(), strict=True)
            addresses |= {email for i, email in rows if i in mine and email}
    for email in sorted(addresses):
        try:
            references.add(("email", identifiers.email_ref(email)))
        except identifiers.IdentifierKeyError:
            break  # no key: no request by e-mail could be made either
        references.add(("email", f"sha256:{suppression.email_hash(email)}"))
    return references


def erase_live(ctx: RequestContext, req: SubjectRequest, report: dict) -> set[str]:
    """In one transaction under the hold lock: decide again, delete the erasable rows
    children first (a row a kept row references stays), queue their files, record the
    objection. Returns the purposes whose files were queued. Done again when a partition's
    retirement moved while the rows were found (retention.rights.retirements)."""
    return settled(ctx, req, lambda check: _erase_live(ctx, req, report, check))


def _erase_live(ctx: RequestContext, req: SubjectRequest, report: dict, check) -> set[str]:
    purposes: set[str] = set()
    with ctx.connect(autocommit=False) as conn, conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'")
        conn.execute(LOCK_HOLDS)  # a hold placed from now on waits for the commit
        found = expand(ctx, conn, resolve(ctx, conn, req), [])
        # Their rows locked, parents first, before deciding: a clock or a link the decision
        # reads (a quote converted, a contract set back to running) cannot change under it.
        # The parents a rule joins are in practice the subject's rows too (their contract,
        # their marketing contact); fraud cases are not, and fraud is kept whole.
        # A row a retention batch deleted meanwhile (archived: the archive step below erases it
        # there) is not locked: it is no longer live, and not reported kept live (found by a review).
        for table in tables_in_order(ctx, found.live):
            if found.live.get(table):
                found.live[table] = {
                    r[0]
                    for r in conn.execute(
                        f'SELECT id FROM "{ctx.schema}"."{table}" WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE',
                        (sorted(found.live[table]),),
                    )
                }
        found.live = {t: ids for t, ids in found.live.items() if ids}
        decisions = classify_live(ctx, conn, found.live)
        check()  # no partition went out of sight while the rows were found (else rolled back, again)
        erased: Counter = Counter()
        audited: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        disposals = []
        # The lock each DELETE takes, taken before the keys are read: a foreign key into these
        # tables added from now on waits for the commit (as a retention batch's: archive.protocol).
        erasing = [
            t
            for t in reversed(tables_in_order(ctx, found.live))
            if any(d.erase for (x, _), d in decisions.items() if x == t)
        ]
        for table in erasing:
            conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ROW EXCLUSIVE MODE").format(sql.Identifier(ctx.schema, table)))
        cleared = links_cleared_by_deletes(conn, ctx.policy)
        for table in erasing:
            ids = sorted(i for (t, i), d in decisions.items() if t == table and d.erase)
            key_cols = key_columns(conn, ctx.schema, table)
            cascades = cascading_keys_into(conn, ctx.schema, table)
            for rid in ids:
                d = decisions[(table, rid)]
                # A key that cascades raises no violation: the row a kept row (or one no rule
                # describes) references through it would take that row along (found by a review).
                if _referenced_through(conn, ctx.schema, table, rid, cascades):
                    decisions[(table, rid)] = Decision(False, "referenced_by_kept_row", d.purpose, d.rule, d.until)
                    continue
                try:
                    with conn.transaction():  # a savepoint: a referenced row stays
                        record_detached_owners(ctx, conn, req, table, rid, cleared.get(table, []))
                        row = conn.execute(
                            f'DELETE FROM "{ctx.schema}"."{table}" WHERE id = %s RETURNING '
                            + (", ".join(f'"{c}"' for c in key_cols) or "NULL"),
                            (rid,),
                        ).fetchone()
                        # Read again under the DELETE's locks: the lock above is the table's
                        # only, and a key into one of its partitions waits for that partition's
                        # (found by a review: a key added into March's partition after the read
                        # cascaded into its notes). As the engine's batches (archive.protocol).
                        if _added(cascades, cascading_keys_into(conn, ctx.schema, table)):
                            raise KeysChangedError(
                                f"{table}: a foreign key into it was added while the erasure ran (a migration); "
                                "the erasure is rolled back, nothing of it erased. Retry the request: it reads "
                                "the keys again and keeps the rows their new children reference"
                            )
                except psycopg.errors.ForeignKeyViolation:
                    decisions[(table, rid)] = Decision(False, "referenced_by_kept_row", d.purpose, d.rule, d.until)
                    continue
                if row is None:
                    continue
                # Its entry of who it belonged to, if a delete had cleared its link, goes with it.
                conn.execute(
                    "DELETE FROM retention.detached_owners WHERE table_name = %s AND record_id = %s", (table, rid)
                )
                erased[table] += 1
                audited[(d.purpose, d.rule, table)].append(rid)
                purposes.add(d.purpose)
                disposals += [(d.purpose, table, rid, k) for k in (row if key_cols else ()) if k]
        # Again before the commit: a partition detached meanwhile hid rows from the deletes.
        check()
        for (table, _), d in sorted(decisions.items()):
            if not d.erase:
                add_kept(ctx.policy, report, "live", table, d)
        # Audited like the engine's deletes, in the same transaction: the after-gates of a
        # retention run going on meanwhile count these rows as deleted by another run.
        conn.cursor().executemany(
            "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action,"
            " record_count, record_ids) VALUES (%s, now(), %s, %s, %s, 'deleted', %s, %s::bigint[])",
            [(req.audit_run_id, p, r, t, len(ids), sorted(ids)) for (p, r, t), ids in sorted(audited.items())],
        )
        if disposals:
            conn.cursor().executemany(
                "INSERT INTO retention.document_disposals (run_id, purpose, table_name, record_id, bucket,"
                " source_key) VALUES (%s, %s, %s, %s, %s, %s)",
                [(req.audit_run_id, p, t, i, ctx.store.documents_bucket, k) for p, t, i, k in disposals],
            )
        if req.marketing_objection:
            report["marketing_objection"] = record_objection(ctx, conn, req, found)
    report["erased"]["live"] = dict(sorted(erased.items()))
    report["erased"]["files"] = len(disposals)
    return purposes


def _added(before, after) -> bool:
    """Whether ``after`` (cascading_keys_into) names a key ``before`` did not."""
    return bool({(sc, t, tuple(p)) for sc, t, p in after} - {(sc, t, tuple(p)) for sc, t, p in before})


def _referenced_through(conn, schema: str, table: str, rid: int, keys) -> bool:
    """Whether a row still references ``table``'s row ``rid`` through one of ``keys``
    (retention.planner.cascading_keys_into). The erasable rows under it went first (children
    first): one left is kept."""
    for child_schema, child, pairs in keys:
        on = sql.SQL(" AND ").join(
            sql.SQL("c.{} = p.{}").format(sql.Identifier(cc), sql.Identifier(pc)) for cc, pc in pairs
        )
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS c JOIN {} AS p ON {} WHERE p.id = %s)").format(
            sql.Identifier(child_schema, child), sql.Identifier(schema, table), on
        )
        if conn.execute(query, (rid,)).fetchone()[0]:
            return True
    return False


def record_detached_owners(
    ctx: RequestContext, conn, req: SubjectRequest, table: str, rid: int, links: list[Blocker]
) -> None:
    """Before the delete of ``rid`` clears their link (ON DELETE SET NULL), who the rows still
    pointing to it belonged to (the row and its owners), as the engine's batches record it
    (retention.archive.detached_owners). The erased rows under it went first (children first):
    these are rows the erasure keeps (a held call analysis), still the person's; without it an
    access missed them and a hold placed later on the person did not cover them (found by a
    review)."""
    record_detached_owners_of(
        conn,
        table,
        [rid],
        links,
        req.audit_run_id,
        lambda id_sets: with_detached_owners(
            conn, table, id_sets, owners_of_row_sets(conn, ctx.policy, table, id_sets)
        ),
    )


def record_objection(ctx: RequestContext, conn, req: SubjectRequest, found: Found) -> str:
    """The suppression entry (hashes only, channel 'all'), once per address."""
    people = []
    for table, column in (("customers", "customer_id"), ("prospects", "prospect_id")):
        for rid in sorted(found.live.get(table, ())):
            email, phone = conn.execute(
                f'SELECT email, phone FROM "{ctx.schema}"."{table}" WHERE id = %s', (rid,)
            ).fetchone()
            people.append((column, rid, email, phone))
    if not people and req.email:
        people.append((None, None, req.email, None))
    recorded = 0
    for column, rid, email, phone in people:
        email_sha = suppression.email_hash(email) if email else None
        try:
            phone_sha = suppression.phone_hash(phone) if phone else None
        except ValueError:
            phone_sha = None
        if not (email_sha or phone_sha):
            continue
        exists = conn.execute(
            "SELECT 1 FROM app.marketing_objections WHERE channel = 'all' AND email_sha256 IS NOT DISTINCT FROM %s"
            " AND phone_sha256 IS NOT DISTINCT FROM %s",
            (email_sha, phone_sha),
        ).fetchone()
        if exists:
            continue
        conn.execute(
            "INSERT INTO app.marketing_objections (customer_id, prospect_id, channel, email_sha256, phone_sha256,"
            " source, received_at) VALUES (%s, %s, 'all', %s, %s, 'rights_request', %s)",
            (
                rid if column == "customer_id" else None,
                rid if column == "prospect_id" else None,
                email_sha,
                phone_sha,
                req.received_at,
            ),
        )
        recorded += 1
    return "recorded" if recorded else ("already_on_list" if people else "no_address")
