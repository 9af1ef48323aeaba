"""What the roles may not do to the evidence (docs/audit.md, docs/housekeeping.md), found by a
review: each test failed before its fix. The housekeeping may not cut the audit, the evidence or
the ids younger than their periods (retention.own_record_periods, checked by every removal
function), nor forget the ids of an object still archived; the audit's, the answer's and the
verification's times are the database's, not the writer's; the subject requests may not mark an
archive object purged."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from retention import audit, housekeeping
from retention.archive.store import ArchiveStore

from tests.test_audit import finished_request, verified

pytestmark = pytest.mark.integration

LIVE_KEY = "intermediate/quotes/2025-01-10/live.parquet"


def engine_audit_row(conn, *, object_key=None, ids=(1, 2, 3), at=None, run_id="manual__review") -> int:
    return conn.execute(
        "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count,"
        " object_key, record_ids, at) VALUES (%s, now(), 'quotes', 'unconverted_quotes', 'quotes',"
        " 'archived_and_deleted', %s, %s, %s::bigint[], coalesce(%s, now())) RETURNING id",
        (run_id, len(ids), object_key, list(ids), at),
    ).fetchone()[0]


def manifest_row(db, key: str = LIVE_KEY, state: str = "committed") -> int:
    """An archive object (its archive period runs until 2030), committed unless said otherwise."""
    return db.execute(
        "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,"
        " object_key, state, purge_month, purge_after, row_count, record_ids, committed_at)"
        " VALUES ('manual__review', now(), 'quotes', 'unconverted_quotes', 'quotes', 'intermediate', 'b', %s,"
        " %s, '2030-01', '2030-01-10', 3, '{1,2,3}', now()) RETURNING id",
        (key, state),
    ).fetchone()[0]


def audit_rows_chained_long_ago(db, role_dsn, *object_keys: str | None) -> list[int]:
    """One engine audit row per object key (None: no object), each in its own transaction, their
    links dated 2015 (chained_at is not hashed): past the audit's period."""
    with psycopg.connect(role_dsn("retention_engine")) as conn:
        rows = []
        for key in object_keys:
            rows.append(engine_audit_row(conn, object_key=key))
            conn.commit()
    db.execute("UPDATE retention.audit_chain SET chained_at = '2015-01-01' WHERE chain = 'audit_log'")
    return rows


def test_the_housekeeping_cannot_prune_the_audit_or_the_evidence_younger_than_their_period(
    db, s3, storage, role_dsn, source_dsn
):
    """prune_audit accepts any cut in the past: the housekeeping role erases the audit row of an
    object still in the archive (and a request answered today), 5 years early, and verify,
    even against the heads stored under Object Lock, reports the chain intact."""
    store = ArchiveStore(s3, storage)
    manifest_row(db)
    with psycopg.connect(role_dsn("retention_engine")) as conn:
        kept = engine_audit_row(conn, object_key=LIVE_KEY)
        conn.commit()
        engine_audit_row(conn)
        conn.commit()
    with psycopg.connect(role_dsn("retention_rights")) as conn:
        finished_request(conn, "req-review-today")
        conn.commit()
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        audit.write_chain_head(store, conn)  # the DPO's anchor, written before
    cut = db.execute("SELECT clock_timestamp()").fetchone()[0]

    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        for chain in ("audit_log", "subject_requests"):
            try:
                conn.execute("SELECT retention.prune_audit(%s, %s)", (cut, chain))
            except psycopg.Error:
                pass  # refused: what the policy's 5 years require

    left = db.execute("SELECT count(*) FROM retention.audit_log WHERE id = %s", (kept,)).fetchone()[0]
    evidence = db.execute("SELECT count(*) FROM retention.subject_requests").fetchone()[0]
    result = verified(source_dsn, store)
    assert (left, evidence) == (1, 1), (
        f"housekeeping pruned the audit row of a live archive object and today's evidence "
        f"(left={left}, evidence={evidence}); verify with the archived heads says: {result.message}"
    )


def test_the_housekeeping_cannot_forget_the_ids_of_an_object_still_archived(db, role_dsn, source_dsn):
    """docs/housekeeping.md: never removes 'an audit row's ids while any manifest row of its
    object is not purged'. forget_audit_ids (granted to the role) ignores the manifest."""
    manifest_row(db)
    with psycopg.connect(role_dsn("retention_engine")) as conn:
        row = engine_audit_row(conn, object_key=LIVE_KEY)
        conn.commit()
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        try:
            conn.execute("SELECT retention.forget_audit_ids(now())")
        except psycopg.Error:
            pass
    ids = db.execute("SELECT record_ids FROM retention.audit_log WHERE id = %s", (row,)).fetchone()[0]
    assert ids == [1, 2, 3], (
        f"ids of a committed archive object forgotten: {ids}; verify: {verified(source_dsn).message}"
    )


# ------------------------------------------------------------------ timestamps the writers choose


def test_an_audit_row_is_dated_when_written_whatever_the_engine_says(db, policy, role_dsn, source_dsn):
    """`at` is 'when the row was written'. The engine writes any time it likes: a row written
    today claims 2015, verify says intact, and the housekeeping's own daily call forgets its ids
    at once (30 days counted from the forged `at`)."""
    from retention import housekeeping

    with psycopg.connect(role_dsn("retention_engine")) as conn:
        row = engine_audit_row(conn, at=dt.datetime(2015, 1, 1, tzinfo=dt.UTC))
        conn.commit()
    now = dt.datetime.now(dt.UTC)
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        conn.execute(
            "SELECT retention.forget_audit_ids_past_archive(%s)",
            (housekeeping.cut(policy, "audit_ids_without_archive", now),),
        )
    at, chained_at, ids = db.execute(
        "SELECT a.at, c.chained_at, a.record_ids FROM retention.audit_log AS a JOIN retention.audit_chain AS c"
        " ON c.chain = 'audit_log' AND c.row_key = a.id::text WHERE a.id = %s",
        (row,),
    ).fetchone()
    result = verified(source_dsn)
    assert abs(chained_at - at) < dt.timedelta(minutes=5) or not result.intact, (
        f"audit row written {chained_at:%Y-%m-%d} claims at={at:%Y-%m-%d}; ids after today's housekeeping: {ids};"
        f" verify: {result.message}"
    )


def test_an_answer_is_dated_when_recorded_whatever_the_requests_role_says(db, role_dsn, source_dsn):
    """`finished_at` proves the answer was in time (Art. 12(3)). A request answered late today
    is recorded as finished before its deadline; sealed in the chain, verify says intact."""
    with psycopg.connect(role_dsn("retention_rights")) as conn:
        conn.execute(
            "INSERT INTO retention.subject_requests (request_id, action, subject_kind, subject_ref, received_at,"
            " respond_by, state, run_id) VALUES ('req-late', 'erasure', 'customer', 'customers:9',"
            " now() - interval '3 months', now() - interval '2 months', 'running', 'manual__late')"
        )
        conn.commit()
        try:
            conn.execute(
                "UPDATE retention.subject_requests SET state = 'done', reports = '[]',"
                " finished_at = respond_by - interval '1 day' WHERE request_id = 'req-late'"
            )
            conn.commit()
        except psycopg.Error:
            conn.rollback()
    row = db.execute(
        "SELECT r.finished_at, r.respond_by, c.chained_at FROM retention.subject_requests AS r"
        " LEFT JOIN retention.audit_chain AS c ON c.chain = 'subject_requests' AND c.row_key = r.request_id"
        " WHERE r.request_id = 'req-late' AND r.state = 'done'"
    ).fetchone()
    result = verified(source_dsn)
    if row is not None:
        finished_at, respond_by, chained_at = row
        assert abs(chained_at - finished_at) < dt.timedelta(minutes=5) or not result.intact, (
            f"finished {chained_at:%Y-%m-%d} (deadline {respond_by:%Y-%m-%d}) recorded as finished_at="
            f"{finished_at:%Y-%m-%d}; verify: {result.message}"
        )


def test_a_verification_is_dated_when_recorded(db, role_dsn, source_dsn):
    """The Retention page shows the latest verification by checked_at. One row 'intact' dated
    2100 by the housekeeping role masks every real BROKEN result recorded afterwards."""
    with psycopg.connect(role_dsn("retention_engine")) as conn:
        engine_audit_row(conn)
        conn.commit()
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        try:
            conn.execute(
                "INSERT INTO retention.audit_verifications (checked_at, intact, message)"
                " VALUES ('2100-01-01', true, 'intact: audit_log 1 links (up to seq 1)')"
            )
        except psycopg.Error:
            pass
    db.execute("UPDATE retention.audit_log SET record_count = 0")  # tampering
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        result = audit.verify(conn)
        assert not result.intact
        audit.record_verification(conn, result)
        conn.commit()
        shown = audit.last_verification(conn)
    assert not shown["intact"], f"the page shows: {shown}"


# ------------------------------------------------------------------ roles doing more than their job


def test_the_subject_requests_role_cannot_mark_an_archive_object_purged(db, role_dsn):
    """Purging is the engine's job; the subject requests' role may set any manifest state. An
    object marked 'purged' (still in the bucket) then loses its audit ids and its manifest row
    to the housekeeping."""
    manifest_row(db)
    with psycopg.connect(role_dsn("retention_rights"), autocommit=True) as conn:
        try:
            changed = conn.execute(
                "UPDATE retention.archive_manifest SET state = 'purged' WHERE object_key = %s", (LIVE_KEY,)
            ).rowcount
        except psycopg.Error:
            changed = 0
    assert changed == 0, "retention_rights marked a committed archive object 'purged'"


def test_a_prune_past_the_period_stops_before_the_audit_of_an_object_still_archived(db, role_dsn, source_dsn):
    """Three audit rows chained long ago; the second names an object a hold kept in the archive
    past the audit's period: the cut removes the first only, and what remains verifies."""
    manifest_row(db)
    first, kept, _ = audit_rows_chained_long_ago(db, role_dsn, None, LIVE_KEY, None)
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        checkpoint = conn.execute("SELECT seq, rows_removed FROM retention.prune_audit('2016-01-01')").fetchone()
    assert checkpoint == (1, 1)
    left = [r for (r,) in db.execute("SELECT id FROM retention.audit_log ORDER BY id")]
    assert first not in left and kept in left and len(left) == 2
    assert verified(source_dsn).intact


def test_a_checkpoint_written_without_its_prune_is_named_by_verify(db, s3, storage, role_dsn, source_dsn):
    """The owner changes row 1 and adds a checkpoint at seq 1 copying link 1's hash, as a prune
    would, without pruning: verify started after the checkpoint and said intact (found by a
    review); the links left at or before it are named."""
    store = ArchiveStore(s3, storage)
    with psycopg.connect(role_dsn("retention_engine")) as conn:
        for _ in range(3):
            engine_audit_row(conn)
            conn.commit()
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        audit.write_chain_head(store, conn)
    assert verified(source_dsn, store).intact

    db.execute("UPDATE retention.audit_log SET record_count = 0 WHERE id = 1")
    db.execute(
        "INSERT INTO retention.audit_checkpoints (chain, seq, chain_hash, first_seq, links_removed, rows_removed,"
        " cut_before) SELECT 'audit_log', seq, chain_hash, 1, 1, 1, now() FROM retention.audit_chain"
        " WHERE chain = 'audit_log' AND seq = 1"
    )
    assert db.execute("SELECT record_count FROM retention.audit_log WHERE id = 1").fetchone()[0] == 0
    result = verified(source_dsn, store)
    assert not result.intact, f"row id 1 changed and still in the audit; verify says: {result.message}"


# ------------------------------------------------------------------ found by the review of the fixes above
OLD_KEY = "intermediate/quotes/2019-01-10/held.parquet"
NEW_KEY = "intermediate/quotes/2019-01-10/held.erasure-req-1.parquet"


def test_a_prune_keeps_the_audit_of_an_object_kept_by_a_hold_after_its_rewrite_committed(db, role_dsn, source_dsn):
    """rewrite._finish: a hold placed between step 3 and 4 keeps the old object's versions (state
    'rewritten', its rewrite 'committed'); the new object (committed) holds the other rows and no
    audit row names it. prune_audit's 'still needed' stop only looks at uploading/committed: it
    removes the audit of the object still in the archive."""
    old_id = manifest_row(db, OLD_KEY, "rewritten")
    new_id = manifest_row(db, NEW_KEY, "committed")
    db.execute(
        "INSERT INTO retention.object_rewrites (request_id, old_manifest_id, new_manifest_id, removed_ids, state,"
        " committed_at) VALUES ('req-1', %s, %s, '{1}', 'committed', now())",
        (old_id, new_id),
    )
    archived, _ = audit_rows_chained_long_ago(db, role_dsn, OLD_KEY, None)
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        conn.execute("SELECT retention.prune_audit('2016-01-01')")
    left = [r for (r,) in db.execute("SELECT id FROM retention.audit_log")]
    assert archived in left, "the audit of an object still archived (held, rewrite pending) was pruned"


def test_the_rights_role_cannot_mark_an_object_rewritten_that_no_rewrite_names(db, role_dsn, source_dsn):
    """The trigger lets the subject-requests role move any committed object to 'rewritten' (no
    rewrite names it): the object stays in the bucket, is never purged (purge reads 'committed'),
    and the housekeeping's prune removes its audit as if nothing were archived."""
    manifest_row(db, OLD_KEY, "committed")
    archived, _ = audit_rows_chained_long_ago(db, role_dsn, OLD_KEY, None)
    with psycopg.connect(role_dsn("retention_rights"), autocommit=True) as conn:
        try:
            conn.execute("UPDATE retention.archive_manifest SET state = 'rewritten' WHERE object_key = %s", (OLD_KEY,))
        except psycopg.Error:
            pass
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        conn.execute("SELECT retention.prune_audit('2016-01-01')")
    left = [r for (r,) in db.execute("SELECT id FROM retention.audit_log")]
    state = db.execute("SELECT state FROM retention.archive_manifest WHERE object_key = %s", (OLD_KEY,)).fetchone()[0]
    assert archived in left, f"retention_rights moved a live object to {state!r} with no rewrite; its audit was pruned"


@pytest.mark.parametrize("role", ["retention_rights", "retention_engine"])
def test_a_disposal_is_dated_when_recorded_whatever_the_writer_says(db, policy, role_dsn, role):
    """disposed_at is the writer's (UPDATE granted, no stamping trigger): a disposal recorded today,
    dated 2015, is removed by the housekeeping's own daily cut (5 years), whatever check_cut says."""
    with psycopg.connect(role_dsn(role)) as conn:
        (row,) = conn.execute(
            "INSERT INTO retention.document_disposals (run_id, purpose, table_name, record_id, bucket, source_key)"
            " VALUES ('manual__review', 'quotes', 'quotes', 1, 'docs', 'k/1.pdf') RETURNING id"
        ).fetchone()
        conn.execute(
            "UPDATE retention.document_disposals SET disposed_at = '2015-01-01', outcome = 'deleted' WHERE id = %s",
            (row,),
        )
        conn.commit()
    now = dt.datetime.now(dt.UTC)
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        housekeeping.prune_own_rows(conn, policy, now, enforce=True)
    left = db.execute("SELECT count(*) FROM retention.document_disposals WHERE id = %s", (row,)).fetchone()[0]
    assert left == 1, f"{role} back-dated a disposal recorded today; the housekeeping removed it"


def test_a_purge_is_dated_when_recorded_whatever_the_engine_says(db, policy, role_dsn):
    """purged_at is the engine's (UPDATE granted): an object purged today, dated 2015, loses its
    manifest row (the proof of the purge) to today's housekeeping, 5 years early."""
    manifest_row(db, OLD_KEY, "committed")
    with psycopg.connect(role_dsn("retention_engine")) as conn:
        conn.execute(
            "UPDATE retention.archive_manifest SET state = 'purged', purged_at = '2015-01-01' WHERE object_key = %s",
            (OLD_KEY,),
        )
        conn.commit()
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        housekeeping.prune_own_rows(conn, policy, dt.datetime.now(dt.UTC), enforce=True)
    left = db.execute("SELECT count(*) FROM retention.archive_manifest WHERE object_key = %s", (OLD_KEY,)).fetchone()[0]
    assert left == 1, "a purge done today, back-dated by the engine, lost its manifest row to today's housekeeping"
