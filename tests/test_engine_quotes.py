"""The engine on the quotes purpose, directly (no Airflow): boundaries, archive content, idempotence."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore

from tests import factories as f

pytestmark = pytest.mark.integration


def make_engine(policy, purpose, dsn, s3, storage):
    return RetentionEngine(policy, purpose, dsn, ArchiveStore(s3, storage), lock_timeout=2)


def test_quotes_boundaries_archive_and_second_run(db, s3, storage, policy, source_dsn):
    D = f.midnight("2025-02-28")
    due_feb29 = f.quote(db, issued="2024-02-29")  # + 12 months = 2025-02-28: due on the boundary
    due_before = f.quote(db, issued="2024-02-27")
    not_yet = f.quote(db, issued="2024-03-01")
    contract = f.contract(db)
    converted = f.quote(db, issued="2020-01-01", contract_id=contract)
    held = f.quote(db, issued="2020-01-01")
    f.legal_hold(db, "quotes", held)
    released = f.quote(db, issued="2023-12-01")
    f.legal_hold(db, "quotes", released, released=True)

    eng = make_engine(policy, "quotes", source_dsn, s3, storage)
    ctx = RunContext("quotes", "manual__test1", D, batch_size=2)
    outcomes = eng.archive_and_delete(ctx)
    (o,) = outcomes
    assert (o.due, o.deleted, o.held) == (4, 3, 1)
    remaining = f.ids(db, "quotes")
    assert remaining == {not_yet, converted, held}

    rows = db.execute(
        "SELECT object_key, row_count, record_ids, state, sha256, byte_size FROM retention.archive_manifest ORDER BY id"
    ).fetchall()
    archived_ids = sorted(i for r in rows for i in r[2])
    assert archived_ids == sorted([due_feb29, due_before, released])
    for key, count, record_ids, state, _sha, size in rows:
        assert state == "committed" and key.startswith("intermediate/quotes/quotes/purge_date=")
        body = s3.get_object(Bucket=storage.archive_bucket, Key=key)["Body"].read()
        table = pq.read_table(io.BytesIO(body))
        assert table.column("id").to_pylist() == record_ids and table.num_rows == count == len(record_ids)
        assert len(body) == size
        assert str(table.schema.field("monthly_premium").type) == "decimal128(10, 2)"
    audit = db.execute(
        "SELECT action, sum(record_count) FROM retention.audit_log GROUP BY action ORDER BY action"
    ).fetchall()
    assert dict(audit) == {"archived_and_deleted": 3, "held": 1}

    again = eng.archive_and_delete(RunContext("quotes", "manual__test2", D))
    assert again[0].deleted == 0
    assert f.ids(db, "quotes") == {not_yet, converted, held}


def test_rows_past_their_archive_period_are_deleted_without_archive(db, s3, storage, policy, source_dsn):
    """A backlog quote issued 2020 is past issued + 24 months at D: nothing to archive it for."""
    old = f.quote(db, issued="2020-01-01")
    eng = make_engine(policy, "quotes", source_dsn, s3, storage)
    (o,) = eng.archive_and_delete(RunContext("quotes", "r", f.midnight("2025-02-28")))
    assert o.deleted == 1 and o.objects == 0
    assert f.ids(db, "quotes") == set()
    assert db.execute("SELECT action, record_ids FROM retention.audit_log").fetchall() == [("deleted", [old])]


def test_rows_that_fit_in_one_batch_are_cut_into_batches_that_overlap(db, s3, storage, policy, source_dsn):
    """25,000 due quotes, all ending their archive period on one day, under a batch size of
    100,000: a single batch would overlap nothing (retention.archive.batch.PIPELINED_BATCHES), so
    the rule goes in batches of 10,000; every row is archived once and deleted."""
    from retention.archive.batch import PIPELINED_BATCH_MIN

    db.execute(
        "INSERT INTO app.quotes (email, species, formula, monthly_premium, issued_at)"
        " SELECT 'lea.dubois@example.fr', 'cat', 'confort', 24.50, %s FROM generate_series(1, 25000)",
        (f.paris("2024-02-01"),),
    )
    db.commit()
    eng = make_engine(policy, "quotes", source_dsn, s3, storage)
    (o,) = eng.archive_and_delete(
        RunContext("quotes", "manual__pipelined", f.midnight("2025-02-28"), batch_size=100_000)
    )
    assert o.deleted == 25_000 and f.ids(db, "quotes") == set()
    counts = [r[0] for r in db.execute("SELECT row_count FROM retention.archive_manifest ORDER BY id")]
    assert counts == [PIPELINED_BATCH_MIN, PIPELINED_BATCH_MIN, 5_000]
    archived = db.execute(
        "SELECT count(DISTINCT i) FROM retention.archive_manifest, unnest(record_ids) AS i"
    ).fetchone()
    assert archived == (25_000,)


def test_the_rows_held_rows_push_past_the_last_full_batch_go_with_it(db, s3, storage, policy, source_dsn):
    """30,000 due quotes, three of them held (one in each 10,000), in batches of 10,000: the
    re-checks keep a row per batch, so after two batches 9,999 rows are left, one past the next
    10,000 locked. The last batch takes them all with a margin of the rows kept so far
    (_Allowance.lock_limit) rather than leaving one row to a fourth batch (its own lock, read,
    object and commit); the held rows stay."""
    ids = [
        r[0]
        for r in db.execute(
            "INSERT INTO app.quotes (email, species, formula, monthly_premium, issued_at)"
            " SELECT 'lea.dubois@example.fr', 'cat', 'confort', 24.50, %s FROM generate_series(1, 30000) RETURNING id",
            (f.paris("2024-02-01"),),
        )
    ]
    held = {ids[4_999], ids[14_999], ids[24_999]}
    for record in held:
        f.legal_hold(db, "quotes", record)
    db.commit()
    eng = make_engine(policy, "quotes", source_dsn, s3, storage)
    (o,) = eng.archive_and_delete(
        RunContext("quotes", "manual__last_batch", f.midnight("2025-02-28"), batch_size=10_000)
    )
    assert o.deleted == 29_997 and o.beyond_plan == 0 and f.ids(db, "quotes") == held
    counts = [r[0] for r in db.execute("SELECT row_count FROM retention.archive_manifest ORDER BY id")]
    assert counts == [9_999, 9_999, 9_999]


def test_no_batch_takes_more_rows_than_the_batch_size(db, s3, storage, policy, source_dsn):
    """``batch_size`` is the most rows of a transaction and of an object, also for the last
    batch that takes the rows left (11 due quotes in batches of 10: 10, then 1)."""
    for _ in range(11):
        f.quote(db, issued="2024-02-01")
    f.legal_hold(db, "quotes", f.quote(db, issued="2024-02-01"))
    db.commit()
    eng = make_engine(policy, "quotes", source_dsn, s3, storage)
    (o,) = eng.archive_and_delete(RunContext("quotes", "manual__cap", f.midnight("2025-02-28"), batch_size=10))
    assert o.deleted == 11
    counts = [r[0] for r in db.execute("SELECT row_count FROM retention.archive_manifest ORDER BY id")]
    assert counts == [10, 1]
