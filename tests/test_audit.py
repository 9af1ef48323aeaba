"""The audit trail a DPO can verify (docs/audit.md): every audit row and every final evidence row
chained in the database, verify naming the first row changed, removed or inserted out of place,
pruning with a checkpoint, the ids forgotten without breaking the chain, and the heads stored in
the archive under Object Lock catching a rewrite of the whole chain."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from retention import audit
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.policy.periods import Period

from tests import factories as f

pytestmark = pytest.mark.integration

INSERT_AUDIT = (
    "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count,"
    " record_ids) VALUES (%s, now(), 'quotes', 'unconverted_quotes', 'quotes', 'deleted', %s, %s::bigint[])"
)


def write_rows(dsn: str, count: int, run_id: str = "manual__audit") -> None:
    """``count`` audit rows of 3 ids each, one transaction per row (as the engine writes them)."""
    with psycopg.connect(dsn) as conn:
        for n in range(count):
            conn.execute(INSERT_AUDIT, (run_id, 3, [n * 3 + 1, n * 3 + 2, n * 3 + 3]))
            conn.commit()


def verified(dsn: str, store=None) -> audit.Verification:
    with psycopg.connect(dsn) as conn:
        return audit.verify(conn, store)


def finished_request(conn, request_id: str) -> None:
    conn.execute(
        "INSERT INTO retention.subject_requests (request_id, action, subject_kind, subject_ref, received_at,"
        " respond_by, state, run_id) VALUES (%s, 'erasure', 'customer', 'customers:7', now(), now() + interval"
        " '1 month', 'running', 'manual__request')",
        (request_id,),
    )
    conn.execute(
        'UPDATE retention.subject_requests SET reports = \'[{"erased": {"live": {"customers": 1}}}]\','
        " state = 'done', finished_at = now() WHERE request_id = %s",
        (request_id,),
    )


def test_the_engine_path_is_chained_and_verifies(db, s3, storage, policy, role_dsn):
    D = f.midnight("2025-02-28")
    for day in ("2023-01-10", "2023-02-10", "2023-03-10"):
        f.quote(db, issued=day)
    held = f.quote(db, issued="2020-01-01")
    f.legal_hold(db, "quotes", held)
    engine = RetentionEngine(policy, "quotes", role_dsn("retention_engine"), ArchiveStore(s3, storage), lock_timeout=2)
    (outcome,) = engine.archive_and_delete(RunContext("quotes", "manual__chained", D, batch_size=2))
    assert (outcome.deleted, outcome.held) == (3, 1)

    rows = db.execute("SELECT count(*) FROM retention.audit_log").fetchone()[0]
    links = db.execute("SELECT seq FROM retention.audit_chain WHERE chain = 'audit_log' ORDER BY seq").fetchall()
    assert rows >= 3 and [s for (s,) in links] == list(range(1, rows + 1))
    # The hash covers the ids' digest, computed in the database from the ids written.
    unchecked = db.execute(
        "SELECT count(*) FROM retention.audit_log WHERE record_ids IS NOT NULL"
        " AND record_ids_sha256 IS DISTINCT FROM sha256(convert_to(record_ids::text, 'UTF8'))"
    ).fetchone()[0]
    assert unchecked == 0
    result = verified(role_dsn("retention_housekeeping"))
    assert result.intact, result.message
    assert result.chains["audit_log"].links == rows


TAMPERING = {
    # name: (statements run as the superuser, the start of verify's message)
    "changed": (
        ["UPDATE retention.audit_log SET record_count = 2 WHERE id = 3"],
        "BROKEN: audit_log row id 3 (seq 3) was changed",
    ),
    "ids_changed": (
        ["UPDATE retention.audit_log SET record_ids = '{4,5,99}' WHERE id = 2"],
        "BROKEN: audit_log row id 2 (seq 2): its record_ids were changed",
    ),
    "digest_changed": (
        ["UPDATE retention.audit_log SET record_ids = NULL, record_ids_sha256 = sha256('x') WHERE id = 2"],
        "BROKEN: audit_log row id 2 (seq 2) was changed",
    ),
    "removed": (
        ["DELETE FROM retention.audit_log WHERE id = 3"],
        "BROKEN: audit_log row id 3 (seq 3) was removed",
    ),
    "removed_with_its_link": (
        [
            "DELETE FROM retention.audit_log WHERE id = 3",
            "DELETE FROM retention.audit_chain WHERE chain = 'audit_log' AND seq = 3",
        ],
        "BROKEN: audit_log: links 3..3 are missing after audit_log row id 2 (seq 2), before audit_log row id 4",
    ),
    "removed_from_the_end": (
        [
            "DELETE FROM retention.audit_log WHERE id = 5",
            "DELETE FROM retention.audit_chain WHERE chain = 'audit_log' AND seq = 5",
        ],
        "BROKEN: audit_log: the chain ends at seq 4 but its head names seq 5: rows removed from its end",
    ),
    "inserted_around_the_trigger": (
        [
            "SET session_replication_role = replica",
            "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count)"
            " VALUES ('manual__forged', now(), 'quotes', 'unconverted_quotes', 'quotes', 'deleted', 1)",
        ],
        "BROKEN: audit_log row id 6 is not in the chain: inserted out of place",
    ),
    "changed_with_its_link": (
        [
            "UPDATE retention.audit_log SET record_count = 2 WHERE id = 3",
            "UPDATE retention.audit_chain AS c SET row_hash = sha256(convert_to(retention.audit_log_content(a),"
            " 'UTF8')) FROM retention.audit_log AS a WHERE c.chain = 'audit_log' AND c.seq = 3 AND a.id = 3",
        ],
        "BROKEN: audit_log row id 3 (seq 3) does not follow the link before it",
    ),
    "evidence_changed": (
        [
            "SET session_replication_role = replica",  # past the trigger that keeps final evidence final
            "UPDATE retention.subject_requests SET reports = '[]' WHERE request_id = 'req-audit-1'",
        ],
        "BROKEN: subject_requests row request_id req-audit-1 (seq 1) was changed",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_verify_names_the_first_row_changed_removed_or_inserted_out_of_place(case, db, role_dsn, source_dsn):
    write_rows(role_dsn("retention_engine"), 5)
    with psycopg.connect(role_dsn("retention_rights")) as conn:
        finished_request(conn, "req-audit-1")
    assert verified(source_dsn).intact

    statements, message = TAMPERING[case]
    with psycopg.connect(source_dsn) as conn:
        for statement in statements:
            conn.execute(statement)
    result = verified(source_dsn)
    assert not result.intact
    assert result.message.startswith(message), result.message


def test_the_command_line_exits_non_zero_naming_the_row(db, role_dsn, source_dsn):
    write_rows(role_dsn("retention_engine"), 4)
    command = [sys.executable, "-m", "retention.audit", "verify", "--no-heads", "--dsn", source_dsn]
    intact = subprocess.run(command, capture_output=True, text=True)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert intact.stdout.startswith("intact: audit_log 4 links")
    db.execute("UPDATE retention.audit_log SET object_key = 'intermediate/elsewhere.parquet' WHERE id = 2")
    broken = subprocess.run(command, capture_output=True, text=True)
    assert broken.returncode == 1
    assert broken.stdout.startswith("BROKEN: audit_log row id 2 (seq 2) was changed"), broken.stdout


def test_writers_committing_at_once_are_chained_in_one_order(db, role_dsn, source_dsn):
    """Eight writers (the units of a run spread over workers), each committing audit rows as fast
    as it can: one total order, no gap, no deadlock."""
    dsn = role_dsn("retention_engine")
    errors = []

    def writer(n: int) -> None:
        try:
            with psycopg.connect(dsn) as conn:
                for batch in range(15):
                    for _ in range(3):  # a batch writes several audit rows (one per object)
                        conn.execute(INSERT_AUDIT, (f"manual__unit{n}", 1, [n * 1000 + batch]))
                    conn.commit()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    seqs = [s for (s,) in db.execute("SELECT seq FROM retention.audit_chain WHERE chain = 'audit_log' ORDER BY seq")]
    assert seqs == list(range(1, 8 * 15 * 3 + 1))
    result = verified(source_dsn)
    assert result.intact, result.message


def test_the_chain_is_locked_only_for_the_commit(db, role_dsn, source_dsn):
    """A writer that wrote its audit row and then waits for a row another writer holds must not
    hold the chain meanwhile: the other one chains its own audit row and commits (with the chain
    locked from the audit insert on, both would wait for each other: a deadlock)."""
    dsn = role_dsn("retention_engine")
    quote = f.quote(db, issued="2020-01-01")
    holder = psycopg.connect(dsn)
    waiter = psycopg.connect(dsn)
    try:
        holder.execute("SELECT id FROM app.quotes WHERE id = %s FOR UPDATE", (quote,))
        waiter.execute(INSERT_AUDIT, ("manual__waiter", 1, [1]))
        waited = {}

        def wait_for_the_row() -> None:
            try:
                waiter.execute("SET lock_timeout = '20s'")
                waiter.execute("SELECT id FROM app.quotes WHERE id = %s FOR UPDATE", (quote,))
                waiter.commit()
                waited["ok"] = True
            except Exception as exc:
                waited["error"] = exc

        thread = threading.Thread(target=wait_for_the_row)
        thread.start()
        time.sleep(0.5)  # the waiter now waits for the holder's row lock
        holder.execute("SET lock_timeout = '5s'")
        holder.execute(INSERT_AUDIT, ("manual__holder", 1, [2]))
        holder.commit()  # chains its row: must not wait for the waiter
        thread.join(30)
        assert waited == {"ok": True}
    finally:
        holder.close()
        waiter.close()
    order = db.execute(
        "SELECT a.run_id FROM retention.audit_chain AS c JOIN retention.audit_log AS a ON a.id = c.row_key::bigint"
        " WHERE c.chain = 'audit_log' ORDER BY c.seq"
    ).fetchall()
    assert [r for (r,) in order] == ["manual__holder", "manual__waiter"]  # the order of the commits
    assert verified(source_dsn).intact


def test_pruning_leaves_a_checkpoint_and_what_remains_verifies(db, role_dsn, source_dsn):
    write_rows(role_dsn("retention_engine"), 3, "manual__old")
    # Chained long ago (chained_at is not hashed): a cut may not remove what is younger than the
    # audit's period (retention.check_cut).
    db.execute("UPDATE retention.audit_chain SET chained_at = '2015-01-01' WHERE chain = 'audit_log'")
    cut = dt.datetime(2016, 1, 1, tzinfo=dt.UTC)
    write_rows(role_dsn("retention_engine"), 2, "manual__new")

    with psycopg.connect(role_dsn("retention_engine")) as engine, pytest.raises(psycopg.errors.InsufficientPrivilege):
        engine.execute("SELECT retention.prune_audit(%s)", (cut,))
    with psycopg.connect(role_dsn("retention_housekeeping")) as housekeeping:
        with pytest.raises(psycopg.errors.RaiseException, match="must be a time in the past"):
            housekeeping.execute("SELECT retention.prune_audit(now() + interval '1 day')")
        housekeeping.rollback()
        checkpoint = housekeeping.execute(
            "SELECT seq, first_seq, links_removed, rows_removed, first_at <= last_at FROM retention.prune_audit(%s)",
            (cut,),
        ).fetchone()
    assert checkpoint == (3, 1, 3, 3, True)
    assert [r for (r,) in db.execute("SELECT run_id FROM retention.audit_log ORDER BY id")] == ["manual__new"] * 2
    result = verified(source_dsn)
    assert result.intact, result.message
    assert result.chains["audit_log"].checkpoint["seq"] == 3 and result.chains["audit_log"].first_seq == 4

    # The checkpoint is what the rest hangs on: changed, the chain no longer verifies.
    db.execute("UPDATE retention.audit_checkpoints SET chain_hash = sha256('forged')")
    result = verified(source_dsn)
    assert result.message.startswith("BROKEN: audit_log row id 4 (seq 4) does not follow the link before it")


def test_the_ids_can_go_and_the_chain_still_verifies(db, role_dsn, source_dsn):
    write_rows(role_dsn("retention_engine"), 4)
    with psycopg.connect(role_dsn("retention_engine")) as engine, pytest.raises(psycopg.errors.InsufficientPrivilege):
        engine.execute("SELECT retention.forget_audit_ids(now())")
    with (
        psycopg.connect(role_dsn("retention_housekeeping")) as housekeeping,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):  # it ignores the manifest: the owner's tool (the housekeeping uses forget_audit_ids_past_archive)
        housekeeping.execute("SELECT retention.forget_audit_ids(now())")
    forgotten = db.execute("SELECT retention.forget_audit_ids(now())").fetchone()[0]
    assert forgotten == 4
    assert db.execute("SELECT count(*) FROM retention.audit_log WHERE record_ids IS NOT NULL").fetchone()[0] == 0
    result = verified(source_dsn)
    assert result.intact, result.message

    # The counts and the digests stay covered.
    db.execute("UPDATE retention.audit_log SET record_count = 30 WHERE id = 2")
    assert verified(source_dsn).message.startswith("BROKEN: audit_log row id 2 (seq 2) was changed")
    db.execute("UPDATE retention.audit_log SET record_count = 3 WHERE id = 2")
    db.execute("UPDATE retention.audit_log SET record_ids_sha256 = sha256('other ids') WHERE id = 4")
    assert verified(source_dsn).message.startswith("BROKEN: audit_log row id 4 (seq 4) was changed")


def rewrite_the_whole_chain(conn) -> None:
    """What a database superuser could do: change a row, then recompute every link after it and
    the head, with the database's own functions."""
    conn.execute("UPDATE retention.audit_log SET record_count = 0 WHERE id = 2")
    previous = bytes(
        conn.execute("SELECT chain_hash FROM retention.audit_chain WHERE chain = 'audit_log' AND seq = 1").fetchone()[0]
    )
    links = conn.execute(
        "SELECT c.seq, sha256(convert_to(retention.audit_log_content(a), 'UTF8')) FROM retention.audit_chain AS c"
        " JOIN retention.audit_log AS a ON a.id = c.row_key::bigint WHERE c.chain = 'audit_log' AND c.seq >= 2"
        " ORDER BY c.seq"
    ).fetchall()
    for seq, digest in links:
        previous = audit.link_hash(previous, seq, bytes(digest))
        conn.execute(
            "UPDATE retention.audit_chain SET row_hash = %s, chain_hash = %s WHERE chain = 'audit_log' AND seq = %s",
            (bytes(digest), previous, seq),
        )
    conn.execute("UPDATE retention.audit_chain_heads SET chain_hash = %s WHERE chain = 'audit_log'", (previous,))


def test_a_rewritten_chain_is_caught_by_the_heads_in_the_archive(db, s3, storage, role_dsn, source_dsn):
    store = ArchiveStore(s3, storage)
    write_rows(role_dsn("retention_engine"), 3)
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        written = audit.write_chain_head(store, conn)
    assert [w["seq"] for w in written] == [3, 0]
    head = s3.head_object(Bucket=storage.archive_bucket, Key=written[0]["key"])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.UTC) + dt.timedelta(days=4 * 365)
    write_rows(role_dsn("retention_engine"), 2)
    result = verified(source_dsn, store)
    assert result.intact and result.chains["audit_log"].heads_compared == 1, result.message

    class Lengthened:
        """The audit's period lengthened since that prune (20 years): the prune, made under the
        period the heads were locked for, was no less legitimate."""

        @staticmethod
        def own_period(record):
            return Period(months=240)

    with psycopg.connect(source_dsn) as conn:
        result = audit.verify(conn, store, policy=Lengthened())
    assert result.intact, result.message

    rewrite_the_whole_chain(db)
    assert verified(source_dsn).intact  # the database alone cannot tell
    result = verified(source_dsn, store)
    assert result.message.startswith(
        "BROKEN: audit_log: the chain at audit_log row id 3 (seq 3) differs from the head stored in the archive"
    ), result.message


def test_rows_removed_from_the_end_are_caught_by_the_heads(db, s3, storage, role_dsn, source_dsn):
    store = ArchiveStore(s3, storage)
    write_rows(role_dsn("retention_engine"), 3)
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        audit.write_chain_head(store, conn)
    # The last row, its link and the head set back: the database agrees with itself.
    db.execute("DELETE FROM retention.audit_log WHERE id = 3")
    db.execute("DELETE FROM retention.audit_chain WHERE chain = 'audit_log' AND seq = 3")
    db.execute(
        "UPDATE retention.audit_chain_heads AS h SET seq = 2, chain_hash = c.chain_hash FROM retention.audit_chain AS c"
        " WHERE h.chain = 'audit_log' AND c.chain = 'audit_log' AND c.seq = 2"
    )
    assert verified(source_dsn).intact
    result = verified(source_dsn, store)
    assert "names seq 3, the chain ends at seq 2: rows removed from its end" in result.message, result.message


def test_no_head_is_stored_where_it_could_be_rewritten(db, s3, storage):
    s3.create_bucket(Bucket="unlocked-archive", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    store = ArchiveStore(s3, storage.model_copy(update={"archive_bucket": "unlocked-archive"}))
    with pytest.raises(audit.AuditError, match="has no Object Lock"):
        audit.write_chain_head(store, db)


def test_final_evidence_is_chained_once_and_never_rewritten(db, role_dsn, source_dsn):
    with psycopg.connect(role_dsn("retention_rights")) as conn:
        conn.execute(
            "INSERT INTO retention.subject_requests (request_id, action, subject_kind, subject_ref, received_at,"
            " respond_by, state) VALUES ('req-running', 'access', 'customer', 'customers:3', now(), now(), 'running')"
        )
        finished_request(conn, "req-done")
        conn.commit()
    chained = [r for (r,) in db.execute("SELECT row_key FROM retention.audit_chain WHERE chain = 'subject_requests'")]
    assert chained == ["req-done"]  # a running request is not final yet
    with psycopg.connect(role_dsn("retention_rights")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="the evidence of request req-done is final"):
            conn.execute("UPDATE retention.subject_requests SET reports = '[]' WHERE request_id = 'req-done'")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table subject_requests"):
            conn.execute("DELETE FROM retention.subject_requests WHERE request_id = 'req-done'")
    assert verified(source_dsn).intact


def test_a_recent_prefix_removed_behind_a_checkpoint_is_caught_by_the_heads(db, s3, storage, role_dsn, source_dsn):
    """What a database superuser could do: remove the first rows of the audit, written this week,
    with their links, and write the checkpoint a prune would have written (or shorten
    retention.own_record_period and call prune_audit). Verify started after the checkpoint, and
    the heads stored in the archive naming those links were only counted: it said intact. A link
    a head names was chained when the head says: a prune may have removed it only once the
    audit's period was over (found by a review)."""
    store = ArchiveStore(s3, storage)
    write_rows(role_dsn("retention_engine"), 2)
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        audit.write_chain_head(store, conn)  # names seq 2, chained today
    write_rows(role_dsn("retention_engine"), 2)
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        audit.write_chain_head(store, conn)  # names seq 4
    assert verified(source_dsn, store).intact

    db.execute(
        "INSERT INTO retention.audit_checkpoints (chain, seq, chain_hash, first_seq, links_removed, rows_removed,"
        " first_at, last_at, cut_before) SELECT 'audit_log', c.seq, c.chain_hash, 1, 3, 3, now(), now(),"
        " '2015-01-01' FROM retention.audit_chain AS c WHERE c.chain = 'audit_log' AND c.seq = 3"
    )
    db.execute(
        "DELETE FROM retention.audit_log WHERE id IN (SELECT row_key::bigint FROM retention.audit_chain"
        " WHERE chain = 'audit_log' AND seq <= 3)"
    )
    db.execute("DELETE FROM retention.audit_chain WHERE chain = 'audit_log' AND seq <= 3")
    assert db.execute("SELECT count(*) FROM retention.audit_log").fetchone()[0] == 1
    assert verified(source_dsn).intact  # the database alone cannot tell
    result = verified(source_dsn, store)
    assert not result.intact, f"rows written today removed behind a checkpoint; verify says: {result.message}"
    assert "audit_log: the link at seq 2 named by the head stored in the archive on" in result.message, result.message


def test_a_prune_past_the_period_of_links_the_heads_named_still_verifies(db, s3, storage, role_dsn, source_dsn):
    """The other side of the check above: heads naming links chained long ago (dated 2015 with
    their links; chained_at is not hashed), then the housekeeping's prune of those links: intact."""
    store = ArchiveStore(s3, storage)
    write_rows(role_dsn("retention_engine"), 2)
    db.execute("UPDATE retention.audit_chain SET chained_at = '2015-01-01' WHERE chain = 'audit_log'")
    db.execute("UPDATE retention.audit_chain_heads SET chained_at = '2015-01-01' WHERE chain = 'audit_log'")
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        audit.write_chain_head(store, conn)  # names seq 2, chained in 2015
    write_rows(role_dsn("retention_engine"), 1)
    with psycopg.connect(role_dsn("retention_housekeeping"), autocommit=True) as conn:
        checkpoint = conn.execute("SELECT seq FROM retention.prune_audit('2016-01-01')").fetchone()
    assert checkpoint == (2,)
    result = verified(source_dsn, store)
    assert result.intact and result.chains["audit_log"].heads_compared == 1, result.message

    class Lengthened:
        """The audit's period lengthened since that prune (20 years): the prune, made under the
        period the heads were locked for, was no less legitimate."""

        @staticmethod
        def own_period(record):
            return Period(months=240)

    with psycopg.connect(source_dsn) as conn:
        result = audit.verify(conn, store, policy=Lengthened())
    assert result.intact, result.message
