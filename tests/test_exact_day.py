"""A row's archived copy is gone on its OWN end date (issue 18, item 1; DESIGN.md §3).

Objects are written per end day, so an object goes whole on its day. Objects written per month
before (rows ending on different days) are rewritten without their rows past their end when
the earliest is due (unlocked tiers); a locked one stays whole until its lock date.

Real PostgreSQL and S3 (moto): every version of the bucket is listed, every object read back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io

import pyarrow.parquet as pq
import pytest
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.policy.periods import Period

from tests import factories as f

pytestmark = pytest.mark.integration


def engine_for(policy, purpose, source_dsn, s3, storage) -> RetentionEngine:
    return RetentionEngine(policy, purpose, source_dsn, ArchiveStore(s3, storage), lock_timeout=5)


def versions(s3, bucket: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys += [v["Key"] for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    return keys


def committed(db) -> dict[str, tuple]:
    """{object key: (record ids, purge date in Paris, earliest end, sha256, version)} of committed objects."""
    rows = db.execute(
        "SELECT object_key, record_ids, (purge_after AT TIME ZONE 'Europe/Paris')::date, earliest_purge_after,"
        " sha256, version_id FROM retention.archive_manifest WHERE state = 'committed' ORDER BY id"
    ).fetchall()
    return {key: (ids, day.isoformat(), earliest, sha, version) for key, ids, day, earliest, sha, version in rows}


def read_ids(s3, storage, key: str, version: str, sha256: str) -> list[int]:
    """The object's ids, read back and checked against the manifest's SHA-256."""
    body = s3.get_object(Bucket=storage.archive_bucket, Key=key, VersionId=version)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha256, f"{key} is not what the manifest recorded"
    return pq.read_table(io.BytesIO(body), columns=["id"]).column("id").to_pylist()


def analyses_archived(policy, tier: str = "intermediate"):
    """The shipped schedule with call analyses (which name a document file) archived 12 months in
    ``tier``: the only shipped intermediate rule (quotes) names no file."""
    purpose = policy.purposes["call_recordings"]
    rules = tuple(
        r.model_copy(update={"tier": tier, "archive": Period.parse("12 months")}) if r.name == "call_analyses" else r
        for r in purpose.rules
    )
    changed = purpose.model_copy(update={"rules": rules})
    return policy.model_copy(update={"purposes": policy.purposes | {"call_recordings": changed}})


def analyses_ending_1st_and_28th(db, s3, storage):
    """Two analyses created on 2023-10-01 and 2023-10-28 (live 1 year, archive 12 months: gone on
    2025-10-01 and 2025-10-28), each naming its own document."""
    ids = {}
    for day in ("01", "28"):
        doc = f"analyses/2023-10-{day}.pdf"
        f.put_document(s3, storage.documents_bucket, doc)
        ids[day] = f.call_analysis(db, created=f"2023-10-{day}", document_key=doc)
    return ids


def monthly_groups(original):
    """The engine's re-check as it grouped before objects were written per day: one group per
    month of the end dates, purged at the latest."""

    def recheck(self, conn, rule, ctx, locked):
        months: dict[str, tuple[list[int], dt.datetime]] = {}
        for day, ids, purge_after in original(self, conn, rule, ctx, locked):
            month_ids, latest = months.setdefault(day[:7], ([], purge_after))
            months[day[:7]] = (month_ids + ids, max(latest, purge_after))
        return [(m, sorted(ids), after) for m, (ids, after) in sorted(months.items())]

    return recheck


def test_rows_ending_on_different_days_go_on_their_own_day(db, s3, storage, policy, source_dsn):
    """Rows ending on the 1st and the 28th of one month, archived in one run (a backlog): the run
    on the 1st leaves no copy of the first anywhere (object, older versions, document copy) and
    keeps the second intact and verified."""
    policy = analyses_archived(policy)
    ids = analyses_ending_1st_and_28th(db, s3, storage)
    engine = engine_for(policy, "call_recordings", source_dsn, s3, storage)
    engine.archive_and_delete(RunContext("call_recordings", "backlog", f.midnight("2024-11-01")))
    objects = committed(db)
    assert sorted((v[0], v[1]) for v in objects.values()) == [
        ([ids["01"]], "2025-10-01"),
        ([ids["28"]], "2025-10-28"),
    ], "one object per end day"
    first = next(k for k, v in objects.items() if v[0] == [ids["01"]])
    second = next(k for k, v in objects.items() if v[0] == [ids["28"]])
    assert "purge_date=2025-10-01" in first and "purge_date=2025-10-28" in second

    before = engine.purge_archives(RunContext("call_recordings", "p0", f.midnight("2025-09-30")))
    assert before["purged_objects"] == 0 and set(versions(s3, storage.archive_bucket)) >= {first, second}

    result = engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    assert (result["purged_objects"], result["purged_records"]) == (1, 1)
    left = versions(s3, storage.archive_bucket)
    assert not [k for k in left if k.startswith(first.removesuffix(".parquet"))], "a copy of the first remains"
    assert [k for k in left if k.startswith(second.removesuffix(".parquet") + ".documents/")], "its file copy"
    _, _, _, sha, version = committed(db)[second]
    assert read_ids(s3, storage, second, version, sha) == [ids["28"]]

    engine.purge_archives(RunContext("call_recordings", "p2", f.midnight("2025-10-28")))
    assert versions(s3, storage.archive_bucket) == []


def archive_monthly(engine, monkeypatch, logical_date: str) -> None:
    """Archive as the engine did before objects were written per day, then leave the manifest as
    the schema's upgrade leaves such an object: its earliest end unknown (NULL)."""
    with monkeypatch.context() as patched:
        patched.setattr(RetentionEngine, "_recheck", monthly_groups(RetentionEngine._recheck))
        engine.archive_and_delete(RunContext(engine.purpose_name, "monthly", f.midnight(logical_date)))
    with engine._connect(autocommit=True) as conn:
        conn.execute("UPDATE retention.archive_manifest SET earliest_purge_after = NULL")


def test_an_object_written_per_month_is_rewritten_without_each_row_on_its_own_day(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    policy = analyses_archived(policy)
    ids = analyses_ending_1st_and_28th(db, s3, storage)
    engine = engine_for(policy, "call_recordings", source_dsn, s3, storage)
    archive_monthly(engine, monkeypatch, "2024-11-01")
    [(old_key, (old_ids, purge_day, earliest, _, _))] = committed(db).items()
    assert sorted(old_ids) == sorted(ids.values()) and purge_day == "2025-10-28" and earliest is None

    preview = engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01"), dry_run=True))
    assert (preview["rows_purged"], preview["rewritten_objects"], preview["purged_objects"]) == (1, 1, 0)
    assert committed(db).keys() == {old_key}, "a dry run changes nothing"

    result = engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    assert (result["rows_purged"], result["rewritten_objects"], result["by_table"]) == (1, 1, {"call_analyses": 1})
    [(new_key, (new_ids, purge_day, earliest, sha, version))] = committed(db).items()
    assert new_ids == [ids["28"]] and purge_day == "2025-10-28" and earliest == f.midnight("2025-10-28")
    assert read_ids(s3, storage, new_key, version, sha) == [ids["28"]]
    left = versions(s3, storage.archive_bucket)
    assert old_key not in left, "every version of the old object is gone"
    copies = [k for k in left if ".documents/" in k]
    assert copies == [next(k for k in copies if k.endswith("analyses/2023-10-28.pdf"))], "only the 28th's file copy"
    audit = db.execute(
        "SELECT action, record_ids, object_key FROM retention.audit_log WHERE run_id = 'p1' ORDER BY id"
    ).fetchall()
    assert audit == [("rows_purged", [ids["01"]], old_key)]

    again = engine.purge_archives(RunContext("call_recordings", "p2", f.midnight("2025-10-27")))
    assert again["rows_purged"] == 0 and committed(db).keys() == {new_key}, "nothing else is due before the 28th"
    engine.purge_archives(RunContext("call_recordings", "p3", f.midnight("2025-10-28")))
    assert committed(db) == {} and versions(s3, storage.archive_bucket) == []


def test_an_object_written_per_month_whose_rows_end_later_is_read_once(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """Read on the first day of its purge month, no row due yet: its earliest end is recorded,
    and it is left alone until that day."""
    policy = analyses_archived(policy)
    ids = {day: f.call_analysis(db, created=f"2023-10-{day}") for day in ("05", "20")}
    engine = engine_for(policy, "call_recordings", source_dsn, s3, storage)
    archive_monthly(engine, monkeypatch, "2024-11-01")
    [key] = committed(db)
    result = engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    assert result["rows_purged"] == 0
    assert committed(db)[key][2] == f.midnight("2025-10-05")
    engine.purge_archives(RunContext("call_recordings", "p2", f.midnight("2025-10-05")))
    assert [v[0] for v in committed(db).values()] == [[ids["20"]]]


def test_a_legal_hold_keeps_an_object_written_per_month_whole(db, s3, storage, policy, source_dsn, monkeypatch):
    policy = analyses_archived(policy)
    ids = analyses_ending_1st_and_28th(db, s3, storage)
    engine = engine_for(policy, "call_recordings", source_dsn, s3, storage)
    archive_monthly(engine, monkeypatch, "2024-11-01")
    [key] = committed(db)
    f.legal_hold(db, "call_analyses", ids["28"])  # a neighbour's hold: the object is kept whole
    result = engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    assert result["rows_purged"] == 0 and result["held_objects"] == 1 and result["held_keys"] == [key]
    assert committed(db).keys() == {key} and key in versions(s3, storage.archive_bucket)


def test_a_hold_placed_during_the_rewrite_keeps_the_object_whole(db, s3, storage, policy, source_dsn, monkeypatch):
    """The hold arrives while the new object is uploaded: the rewrite's commit re-checks under the
    hold lock, keeps the old object whole and removes the new one."""
    import psycopg

    policy = analyses_archived(policy)
    ids = analyses_ending_1st_and_28th(db, s3, storage)
    engine = engine_for(policy, "call_recordings", source_dsn, s3, storage)
    archive_monthly(engine, monkeypatch, "2024-11-01")
    [key] = committed(db)
    put_verified = ArchiveStore.put_verified

    def hold_then_put(self, *args, **kwargs):
        with psycopg.connect(source_dsn, autocommit=True) as other:
            f.legal_hold(other, "call_analyses", ids["01"])
        return put_verified(self, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(ArchiveStore, "put_verified", hold_then_put)
        result = engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    assert result["rows_purged"] == 0 and result["held_keys"] == [key]
    assert committed(db).keys() == {key}
    assert [k for k in versions(s3, storage.archive_bucket) if not k.startswith(key.removesuffix(".parquet"))] == []
    states = db.execute("SELECT state FROM retention.object_rewrites").fetchall()
    assert states == [("abandoned",)]


def a_rewrite_cut_off_after_its_commit(db, s3, storage, policy, source_dsn, monkeypatch):
    """Analyses ending on the 1st and the 28th, archived in one object per month; the purge on the
    1st rewrites it without the first, and S3 fails while the old object's versions are deleted
    (after the rewrite's commit). Returns the engine, the two ids and the old object's key."""
    policy = analyses_archived(policy)
    ids = analyses_ending_1st_and_28th(db, s3, storage)
    engine = engine_for(policy, "call_recordings", source_dsn, s3, storage)
    archive_monthly(engine, monkeypatch, "2024-11-01")
    [old_key] = committed(db)

    def unreachable(self, keys):
        raise RuntimeError("S3 unreachable")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="S3 unreachable"):
        patched.setattr(ArchiveStore, "delete_all_versions", unreachable)
        engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    return engine, ids, old_key


def test_a_rewrite_cut_off_after_its_upload_is_finished_by_the_next_purge(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """S3 fails while the old object's versions are deleted (after the commit): the next purge
    finishes the rewrite; the row past its end is gone, the other kept, nothing lost."""
    engine, ids, old_key = a_rewrite_cut_off_after_its_commit(db, s3, storage, policy, source_dsn, monkeypatch)
    assert [v[0] for v in committed(db).values()] == [[ids["28"]]]
    assert old_key in versions(s3, storage.archive_bucket), "the old object's bytes are still there"
    engine.purge_archives(RunContext("call_recordings", "p2", f.midnight("2025-10-02")))
    assert old_key not in versions(s3, storage.archive_bucket)
    [(new_key, (new_ids, _, _, sha, version))] = committed(db).items()
    assert read_ids(s3, storage, new_key, version, sha) == [ids["28"]]
    assert db.execute("SELECT state FROM retention.object_rewrites").fetchall() == [("done",)]


def test_a_locked_object_written_per_month_stays_whole_until_its_lock_date(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The probative tier is under COMPLIANCE Object Lock until the purge date: never shortened."""
    policy = analyses_archived(policy, tier="probative")
    ids = analyses_ending_1st_and_28th(db, s3, storage)
    engine = engine_for(policy, "call_recordings", source_dsn, s3, storage)
    archive_monthly(engine, monkeypatch, "2024-11-01")
    [(key, (old_ids, purge_day, _, _, _))] = committed(db).items()
    assert key.startswith("probative/") and sorted(old_ids) == sorted(ids.values()) and purge_day == "2025-10-28"
    result = engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    assert (result["rows_purged"], result["rewritten_objects"], result["purged_objects"]) == (0, 0, 0)
    assert committed(db).keys() == {key}


def test_rows_whose_end_changed_with_the_policy_are_kept_to_the_object_date(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The archive period was shortened after the object was written: the rows' ends computed now
    fall outside the month the object was written for. The policy's change is not applied to a
    written object by a rewrite: it stays whole until its recorded date, reported."""
    archived = analyses_archived(policy)
    analyses_ending_1st_and_28th(db, s3, storage)
    archive_monthly(engine_for(archived, "call_recordings", source_dsn, s3, storage), monkeypatch, "2024-11-01")
    [key] = committed(db)
    purpose = archived.purposes["call_recordings"]
    shorter = tuple(
        r.model_copy(update={"archive": Period.parse("6 months")}) if r.name == "call_analyses" else r
        for r in purpose.rules
    )
    changed = archived.model_copy(
        update={"purposes": archived.purposes | {"call_recordings": purpose.model_copy(update={"rules": shorter})}}
    )
    engine = engine_for(changed, "call_recordings", source_dsn, s3, storage)
    result = engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    assert (result["rows_purged"], result["rows_kept_to_object_date"]) == (0, 2)
    assert committed(db)[key][2] == f.midnight("2025-10-28"), "decided once: goes whole on its date"


def test_rows_whose_end_a_shorter_policy_moves_earlier_within_their_month_are_not_purged_early(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The same change by a few days (1 year + 12 months written as 365 + 360 days, a mistake): the
    ends computed now stay within the month the object was written for, so they were taken, and
    the rewrite purged a row five days before the end it was archived with. An object written
    under another period than the rule's now keeps its rows to its recorded date, as the purge of
    a whole object does."""
    archived = analyses_archived(policy)
    ids = {}
    for day in ("10", "28"):
        doc = f"analyses/2023-10-{day}.pdf"
        f.put_document(s3, storage.documents_bucket, doc)
        ids[day] = f.call_analysis(db, created=f"2023-10-{day}", document_key=doc)  # gone 2025-10-10 and -28
    archive_monthly(engine_for(archived, "call_recordings", source_dsn, s3, storage), monkeypatch, "2024-11-01")
    [key] = committed(db)
    purpose = archived.purposes["call_recordings"]
    shorter = tuple(
        r.model_copy(update={"live": Period.parse("365 days"), "archive": Period.parse("360 days")})
        if r.name == "call_analyses"
        else r
        for r in purpose.rules
    )
    changed = archived.model_copy(
        update={"purposes": archived.purposes | {"call_recordings": purpose.model_copy(update={"rules": shorter})}}
    )
    engine = engine_for(changed, "call_recordings", source_dsn, s3, storage)
    result = engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-05")))
    assert result["rows_purged"] == 0, "a row purged before the end it was archived with (2025-10-10)"
    assert sorted(committed(db)[key][0]) == sorted(ids.values())


@pytest.mark.parametrize(
    "clocks",
    [
        pytest.param(
            ["2026-03-10T00:00:00+01:00", "2026-03-10T12:00:00+01:00", "2026-03-10T23:59:59+01:00"], id="one day"
        ),
        pytest.param(["2026-03-29T00:30:00+01:00", "2026-03-29T23:30:00+02:00"], id="clocks go forward that day"),
        pytest.param(["2026-10-25T00:30:00+02:00", "2026-10-25T23:30:00+01:00"], id="clocks go back that day"),
        pytest.param(["2026-03-10T23:59:59+01:00", "2026-03-11T00:00:00+01:00"], id="two days a second apart"),
        pytest.param(
            ["2026-03-28T23:30:00+01:00", "2026-03-29T00:30:00+01:00", "2026-03-30T00:00:00+02:00"], id="three days"
        ),
    ],
)
def test_a_batch_is_grouped_by_the_paris_day_its_rows_end_on(db, s3, storage, policy, source_dsn, clocks):
    """The re-check's grouping (one statement when the batch's first and last clocks share a
    Paris day and a UTC offset, else a day per row) gives each row the day of its own clock,
    plus the rule's periods, starting at that day's Paris midnight."""
    from retention.policy.periods import local_date, local_midnight

    engine = engine_for(policy, "quotes", source_dsn, s3, storage)
    rule = policy.purposes["quotes"].rules[0]
    instants = [dt.datetime.fromisoformat(c) for c in clocks]
    rows = " UNION ALL ".join(f"SELECT {n}::bigint AS id, timestamptz '{c}' AS clock" for n, c in enumerate(clocks, 1))
    with engine._connect() as conn:
        groups = engine._grouped_by_end_day(conn, rule, rows, {})
    expected: dict[dt.date, list[int]] = {}
    for n, instant in enumerate(instants, 1):
        expected.setdefault(rule.gone_after.add_to(local_date(instant, engine.tz)), []).append(n)
    assert groups == [(day.isoformat(), ids, local_midnight(day, engine.tz)) for day, ids in sorted(expected.items())]


def test_a_hold_placed_before_an_interrupted_rewrite_is_finished_keeps_the_held_rows_bytes(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The purge rewrites an object written per month without the row ending on the 1st; S3 fails
    while the old object's versions are deleted (after the rewrite's commit). A hold is then placed
    on that row (litigation). The old object is now the only copy of the held row: the next run
    must not delete it (an interrupted whole-object purge is decided afresh for the same reason)."""
    engine, ids, old_key = a_rewrite_cut_off_after_its_commit(db, s3, storage, policy, source_dsn, monkeypatch)
    assert old_key in versions(s3, storage.archive_bucket), "the held row's only copy is still stored"

    hold = f.legal_hold(db, "call_analyses", ids["01"])  # committed: litigation about that analysis

    engine.purge_archives(RunContext("call_recordings", "p2", f.midnight("2025-10-02")))
    assert old_key in versions(s3, storage.archive_bucket), (
        "the only stored copy of a row under an active legal hold was deleted by the next purge"
    )
    assert db.execute("SELECT state FROM retention.object_rewrites").fetchall() == [("committed",)]

    db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE id = %s", (hold,))
    db.commit()
    engine.purge_archives(RunContext("call_recordings", "p3", f.midnight("2025-10-03")))
    assert old_key not in versions(s3, storage.archive_bucket), "the hold released, the rewrite is finished"
    assert db.execute("SELECT state FROM retention.object_rewrites").fetchall() == [("done",)]


def test_a_hold_committed_between_a_rewrites_commit_and_its_delete_keeps_the_old_object(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """No crash: the hold is committed once the rewrite has committed (step 3, hold table locked),
    just before the old object's versions are deleted (step 4): a whole-object purge in the same
    place holds the hold table while it deletes, the rewrite deletes without looking."""
    import psycopg
    from retention.archive import rewrite

    policy = analyses_archived(policy)
    ids = analyses_ending_1st_and_28th(db, s3, storage)
    engine = engine_for(policy, "call_recordings", source_dsn, s3, storage)
    archive_monthly(engine, monkeypatch, "2024-11-01")
    [old_key] = committed(db)
    finish = rewrite._finish

    def hold_then_finish(*args, **kwargs):
        with psycopg.connect(source_dsn, autocommit=True) as other:
            f.legal_hold(other, "call_analyses", ids["01"])
        return finish(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(rewrite, "_finish", hold_then_finish)
        engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    assert old_key in versions(s3, storage.archive_bucket), (
        "a hold committed before the old object's delete did not keep the held row's bytes"
    )


def test_the_purge_of_a_rewritten_object_keeps_the_file_copy_a_held_old_object_shares(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """Two analyses (ending on the 1st and the 28th) name the same file. The purge on the 1st
    rewrites their object written per month without the first; the new object names the old
    one's copy of the file (the 28th's row keeps it). A hold on the first, committed after the
    rewrite's commit, keeps the old object: the held row's only copy, its file's too. The purge
    of the new object on the 28th must not delete that copy under the held row; once the hold is
    released and the old object goes, nothing is left."""
    import psycopg
    from retention.archive import rewrite

    policy = analyses_archived(policy)
    f.put_document(s3, storage.documents_bucket, "analyses/shared.pdf")
    ids = {
        day: f.call_analysis(db, created=f"2023-10-{day}", document_key="analyses/shared.pdf") for day in ("01", "28")
    }
    engine = engine_for(policy, "call_recordings", source_dsn, s3, storage)
    archive_monthly(engine, monkeypatch, "2024-11-01")
    [old_key] = committed(db)
    copy = old_key.removesuffix(".parquet") + ".documents/analyses/shared.pdf"
    assert copy in versions(s3, storage.archive_bucket)
    finish = rewrite._finish
    holds = []

    def hold_then_finish(*args, **kwargs):
        with psycopg.connect(source_dsn, autocommit=True) as other:
            holds.append(f.legal_hold(other, "call_analyses", ids["01"]))
        return finish(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(rewrite, "_finish", hold_then_finish)
        engine.purge_archives(RunContext("call_recordings", "p1", f.midnight("2025-10-01")))
    assert old_key in versions(s3, storage.archive_bucket), "the held row's object is kept"

    result = engine.purge_archives(RunContext("call_recordings", "p2", f.midnight("2025-10-28")))
    assert result["purged_objects"] == 1, "the new object (the 28th's row, not held) goes on its day"
    assert copy in versions(s3, storage.archive_bucket), (
        "the purge of the new object deleted the file copy of a row under an active legal hold"
    )

    db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE id = %s", (holds[0],))
    engine.purge_archives(RunContext("call_recordings", "p3", f.midnight("2025-10-29")))
    assert versions(s3, storage.archive_bucket) == [], "the hold released, no copy is left behind"


def quotes_archive_period(policy, tmp_path, period: str):
    """The shipped policy file with the quotes' archive period (12 months) changed to ``period``,
    loaded as the DAGs load it."""
    from retention.paths import POLICY_FILE
    from retention.policy import load_policy

    text = POLICY_FILE.read_text(encoding="utf-8")
    old = "        live: 12 months\n        tier: intermediate\n        archive: 12 months"
    assert text.count(old) == 1
    path = tmp_path / f"policy-{period.replace(' ', '-')}.yaml"
    path.write_text(text.replace(old, old.replace("archive: 12 months", f"archive: {period}")), encoding="utf-8")
    return load_policy(path).with_mode("enforce")


@pytest.mark.parametrize(("period", "purged"), [("5 years", 0), ("12 months", 1), ("6 months", 1)])
def test_an_archive_period_lengthened_since_the_archive_keeps_the_object_past_its_recorded_date(
    tmp_path, db, s3, storage, policy, source_dsn, period, purged
):
    """Quotes: 12 months live, 12 months archive. The archive period is then corrected to 5 years
    (a typo, or the law changed): the object archived before must not go on its old date (a
    review's test purged it); it is kept, reported, and the after gate counts it as kept, not
    overdue. The same period, or a shorter one, lets it go on its recorded date, as before."""
    from retention.gates.sql_checks import kept_beyond_purge

    quote = f.quote(db, issued="2021-02-10")
    engine_for(policy.with_mode("enforce"), "quotes", source_dsn, s3, storage).archive_and_delete(
        RunContext("quotes", "archive", f.midnight("2022-04-01"))
    )
    assert quote not in f.ids(db, "quotes")
    assert db.execute("SELECT gone_after FROM retention.archive_manifest").fetchall() == [("2 years",)]

    edited = quotes_archive_period(policy, tmp_path, period)
    engine = engine_for(edited, "quotes", source_dsn, s3, storage)
    # 2023-03-01: past the recorded purge date (2023-02-10), before the new one (2026-02-10).
    ctx = RunContext("quotes", "purge", f.midnight("2023-03-01"))
    report = engine.purge_archives(ctx)
    assert (report["purged_objects"], report["kept_policy_longer"]) == (purged, 1 - purged)
    states = db.execute("SELECT state FROM retention.archive_manifest").fetchall()
    assert states == [("purged",) if purged else ("committed",)]
    gate = kept_beyond_purge(db, edited, engine.store, ctx, "quotes", dry_run=False)
    assert gate["success"] and gate["observed"].get("kept_as_the_policy_now_keeps_longer", 0) == 1 - purged, gate


def former_customers_clock(policy, tmp_path, clock: str):
    """The shipped policy file (enforced) with the former customers' clock (the relationship's
    end) changed to ``clock``, loaded as the DAGs load it."""
    from retention.paths import POLICY_FILE
    from retention.policy import load_policy

    text = POLICY_FILE.read_text(encoding="utf-8")
    old = "        table: customers\n        clock: customers.relationship_ended_at\n"
    assert text.count(old) == 1
    path = tmp_path / "policy-former-customers-clock.yaml"
    path.write_text(text.replace(old, old.replace("relationship_ended_at", clock.split(".")[1])), encoding="utf-8")
    return load_policy(path).with_mode("enforce")


@pytest.mark.parametrize(
    ("clock", "purged"), [("customers.last_contact_at", 0), ("customers.relationship_ended_at", 1)]
)
def test_a_clock_changed_since_the_archive_keeps_the_object_past_its_recorded_date(
    tmp_path, db, s3, storage, policy, source_dsn, clock, purged
):
    """Former customers: 3 years live, 5 archived, from the relationship's end. The rule's clock
    is then corrected to the last contact (a later date for a customer contacted after the end):
    the object archived before went on the date computed from the old clock, years before the
    policy now says (found by a review: the manifest recorded the periods, not the clock). The
    clock is recorded with the object; one whose rule now counts from another clock is kept,
    reported, and counted by the after gate as kept, not overdue. The same clock: its date holds."""
    from retention.gates.sql_checks import kept_beyond_purge

    customer = f.customer(db, ended="2015-01-01", last_contact_at=f.paris("2016-06-01"))
    engine_for(policy.with_mode("enforce"), "prospects", source_dsn, s3, storage).archive_and_delete(
        RunContext("prospects", "archive", f.midnight("2018-02-01"))
    )
    assert customer not in f.ids(db, "customers")

    edited = former_customers_clock(policy, tmp_path, clock)
    engine = engine_for(edited, "prospects", source_dsn, s3, storage)
    # 2023-06-01: past the recorded purge date (2023-01-01), before the new one (2024-06-01).
    ctx = RunContext("prospects", "purge", f.midnight("2023-06-01"))
    report = engine.purge_archives(ctx)
    assert (report["purged_objects"], report["kept_policy_longer"]) == (purged, 1 - purged)
    states = db.execute("SELECT state FROM retention.archive_manifest").fetchall()
    assert states == [("purged",) if purged else ("committed",)]
    gate = kept_beyond_purge(db, edited, engine.store, ctx, "prospects", dry_run=False)
    assert gate["success"] and gate["observed"].get("kept_as_the_policy_now_keeps_longer", 0) == 1 - purged, gate


def test_a_clock_without_time_zone_is_refused_before_anything_is_selected(db, s3, storage, policy, source_dsn):
    """A `timestamp without time zone` clock is compared with the cutoff as UTC but its end day is
    read in Paris time: a quote stamped 2024-02-28 23:30 (UTC) would be dated a day early. The
    planner refuses the purpose with a clear error, and nothing is planned, archived or deleted."""
    from retention.policy import PolicyError

    due = f.quote(db, issued="2023-01-01")
    db.execute("ALTER TABLE app.quotes ALTER COLUMN issued_at TYPE timestamp USING issued_at AT TIME ZONE 'UTC'")
    try:
        engine = engine_for(policy, "quotes", source_dsn, s3, storage)
        ctx = RunContext("quotes", "manual__naive_clock", f.midnight("2025-02-28"))
        for step in (engine.make_plan, engine.archive_and_delete):
            with pytest.raises(PolicyError, match=r"app\.quotes\.issued_at is timestamp without time zone"):
                step(ctx)
    finally:
        db.execute("ALTER TABLE app.quotes ALTER COLUMN issued_at TYPE timestamptz USING issued_at AT TIME ZONE 'UTC'")
    assert db.execute("SELECT array_agg(id) FROM app.quotes").fetchone()[0] == [due]
    assert db.execute("SELECT count(*) FROM retention.archive_manifest").fetchone()[0] == 0


def test_a_rule_renamed_since_the_archive_keeps_its_objects_past_their_recorded_date(
    tmp_path, db, s3, storage, policy, source_dsn, monkeypatch
):
    """Quotes archived by rule `unconverted_quotes` (12 months live, 12 archived). The rule is then
    renamed and its archive period lengthened to 5 years: its objects, still named by the old rule,
    went on their old date (the purge read a rule no longer in the policy as "the recorded date
    holds", and skipped the clock and period checks a review added). Kept and reported instead,
    until someone names their rule or re-dates them; the after gate counts them as kept."""
    from retention.gates.sql_checks import kept_beyond_purge

    quote = f.quote(db, issued="2021-02-10")
    engine_for(policy.with_mode("enforce"), "quotes", source_dsn, s3, storage).archive_and_delete(
        RunContext("quotes", "archive", f.midnight("2022-04-01"))
    )
    assert quote not in f.ids(db, "quotes")
    edited = policy_with_the_quotes_rule_renamed(tmp_path, monkeypatch, archive="5 years")

    engine = engine_for(edited, "quotes", source_dsn, s3, storage)
    # 2023-03-01: past the recorded purge date (2023-02-10), before the new one (2027-02-10).
    ctx = RunContext("quotes", "purge", f.midnight("2023-03-01"))
    report = engine.purge_archives(ctx)
    assert (report["purged_objects"], report["kept_policy_longer"]) == (0, 1)
    assert db.execute("SELECT state FROM retention.archive_manifest").fetchall() == [("committed",)]
    gate = kept_beyond_purge(db, edited, engine.store, ctx, "quotes", dry_run=False)
    assert gate["success"] and gate["observed"].get("kept_as_the_policy_now_keeps_longer") == 1, gate


def policy_with_the_quotes_rule_renamed(tmp_path, monkeypatch, archive: str = "12 months"):
    """The shipped policy (enforced) with rule `unconverted_quotes` renamed `quotes_never_converted`
    (its file copied under the new name, the loader pointed at a copy of include/sql/) and its
    archive period set to ``archive``."""
    from retention.paths import POLICY_FILE
    from retention.policy import load_policy
    from retention.policy import loading as policy_module

    sql_dir = tmp_path / "sql"
    (sql_dir / "quotes").mkdir(parents=True)
    for purpose_dir in POLICY_FILE.parent.joinpath("sql").iterdir():
        if purpose_dir.is_dir() and purpose_dir.name != "quotes":
            (sql_dir / purpose_dir.name).symlink_to(purpose_dir)
    shipped = POLICY_FILE.parent / "sql" / "quotes" / "unconverted_quotes.sql"
    (sql_dir / "quotes" / "quotes_never_converted.sql").write_text(shipped.read_text(encoding="utf-8"))
    monkeypatch.setattr(policy_module, "SQL_DIR", sql_dir)
    text = POLICY_FILE.read_text(encoding="utf-8")
    old = "      - name: unconverted_quotes\n"
    kept = "        live: 12 months\n        tier: intermediate\n        archive: 12 months"
    assert text.count(old) == 1 and text.count(kept) == 1
    path = tmp_path / "policy-renamed.yaml"
    path.write_text(
        text.replace(old, "      - name: quotes_never_converted\n").replace(
            kept, kept.replace("archive: 12 months", f"archive: {archive}")
        ),
        encoding="utf-8",
    )
    edited = load_policy(path).with_mode("enforce")
    assert [r.name for r in edited.purposes["quotes"].rules] == ["quotes_never_converted"]
    return edited
