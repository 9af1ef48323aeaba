"""A hold placed after a record went still covers the rows whose link to it the delete cleared
(a foreign key ON DELETE SET NULL: a recording's analysis outlives the recording, a marketing
objection the customer). Found by a review: the hold coverage followed live links only, and
those rows went on their own date under the hold. The engine now records who they belonged to
(retention.detached_owners) in the delete's transaction."""

from __future__ import annotations

import datetime as dt

import pytest
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.rights.requests import SubjectRequest
from retention.rights.subject_rights import SubjectRights

from tests import factories as f

pytestmark = pytest.mark.integration


def run(policy, purpose, source_dsn, s3, storage, day: str, run_id: str):
    return RetentionEngine(policy, purpose, source_dsn, ArchiveStore(s3, storage), lock_timeout=5).archive_and_delete(
        RunContext(purpose, run_id, f.midnight(day))
    )


@pytest.mark.parametrize("held", ["customers", "call_recordings"])
def test_hold_placed_after_the_recording_went_still_covers_its_analysis(held, db, s3, storage, policy, source_dsn):
    """A quality recording goes at 6 months (tier none), its analysis lives 1 year. Deleting the
    recording clears call_analyses.call_recording_id (ON DELETE SET NULL). A hold then placed on
    the customer (or on the recording itself: a dispute about that call) must still cover the
    analysis of their call; the coverage follows live foreign keys only, so it is deleted."""
    customer = f.customer(db)
    recording = f.call_recording(db, reason="quality", started="2024-01-10", customer_id=customer)
    analysis = f.call_analysis(db, recording_id=recording, created="2024-01-10")

    run(policy, "call_recordings", source_dsn, s3, storage, "2024-08-01", "r1")
    assert f.ids(db, "call_recordings") == set(), "the recording's own 6 months are over"
    assert f.ids(db, "call_analyses") == {analysis}, "the analysis' year is not"

    f.legal_hold(db, held, customer if held == "customers" else recording)
    run(policy, "call_recordings", source_dsn, s3, storage, "2025-02-01", "r2")
    assert f.ids(db, "call_analyses") == {analysis}, (
        f"the analysis of a call of the held {held} record was deleted: its link was cleared when the "
        "recording went, and the hold coverage only follows live foreign keys"
    )


def test_customer_hold_placed_after_the_customer_went_covers_their_marketing_objection(
    db, s3, storage, policy, source_dsn
):
    """The former customer's identity goes (archived) 3 years after the relationship ended; their
    marketing objection, received later, outlives it (customer_id ON DELETE SET NULL). A hold then
    placed on that customer (litigation: protects the archived copies, and 'all their records in
    every table') must keep the objection; it is deleted on its own date."""
    customer = f.customer(db, ended="2019-01-01")
    objection = db.execute(
        "INSERT INTO app.marketing_objections (customer_id, channel, email_sha256, source, received_at)"
        " VALUES (%s, 'email', repeat('a', 64), 'rights_request', %s) RETURNING id",
        (customer, f.paris("2021-06-01")),
    ).fetchone()[0]
    run(policy, "prospects", source_dsn, s3, storage, "2022-02-01", "r1")
    assert f.ids(db, "customers") == set(), "the customer is archived and deleted"
    assert f.ids(db, "marketing_objections") == {objection}

    f.legal_hold(db, "customers", customer)
    run(policy, "rights_requests", source_dsn, s3, storage, "2024-07-01", "r2")
    assert f.ids(db, "marketing_objections") == {objection}, (
        "the held customer's marketing objection was deleted: its customer_id was cleared when the "
        "customer was archived, so the hold no longer reaches it"
    )


def test_a_detached_row_goes_once_the_hold_is_released_and_its_record_with_it(db, s3, storage, policy, source_dsn):
    customer = f.customer(db)
    recording = f.call_recording(db, reason="quality", started="2024-01-10", customer_id=customer)
    analysis = f.call_analysis(db, recording_id=recording, created="2024-01-10")
    run(policy, "call_recordings", source_dsn, s3, storage, "2024-08-01", "r1")
    recorded = db.execute("SELECT table_name, record_id, owner_ids FROM retention.detached_owners").fetchall()
    assert recorded == [("call_analyses", analysis, {"call_recordings": [recording], "customers": [customer]})]

    hold = f.legal_hold(db, "customers", customer)
    db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE id = %s", (hold,))
    run(policy, "call_recordings", source_dsn, s3, storage, "2025-02-01", "r2")
    assert f.ids(db, "call_analyses") == set()
    assert db.execute("SELECT count(*) FROM retention.detached_owners").fetchone()[0] == 0


def analyses_archived_policy(tmp_path):
    """The shipped policy with the call analyses archived (intermediate tier, 12 months) instead
    of deleted outright: a DPO's ordinary change."""
    from retention.paths import POLICY_FILE
    from retention.policy import load_policy

    text = POLICY_FILE.read_text(encoding="utf-8")
    old = "        clock: call_analyses.created_at\n        live: 1 year\n        tier: none\n"
    assert text.count(old) == 1
    new = "        clock: call_analyses.created_at\n        live: 1 year\n        tier: intermediate\n        archive: 12 months\n"
    path = tmp_path / "policy-analyses-archived.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return load_policy(path).with_mode("enforce")


def test_a_hold_placed_after_a_detached_row_was_archived_keeps_its_archive_object(
    db, s3, storage, source_dsn, tmp_path
):
    """Once the detached analysis is archived (a policy archiving analyses), its entry goes with
    the row: the archive object's owners carry the detached ones, so a hold placed afterwards on
    the customer keeps the object (found by a review: its owners came from the live links only)."""
    policy = analyses_archived_policy(tmp_path)
    customer = f.customer(db)
    recording = f.call_recording(db, reason="quality", started="2024-01-10", customer_id=customer)
    analysis = f.call_analysis(db, recording_id=recording, created="2024-01-10")
    run(policy, "call_recordings", source_dsn, s3, storage, "2024-08-01", "r1")
    assert f.ids(db, "call_analyses") == {analysis}
    run(policy, "call_recordings", source_dsn, s3, storage, "2025-02-01", "r2")
    assert f.ids(db, "call_analyses") == set()
    owners = db.execute(
        "SELECT owner_ids FROM retention.archive_manifest WHERE table_name = 'call_analyses' AND state = 'committed'"
    ).fetchall()
    assert owners == [({"call_recordings": [recording], "customers": [customer]},)]

    f.legal_hold(db, "customers", customer)
    engine = RetentionEngine(policy, "call_recordings", source_dsn, ArchiveStore(s3, storage), lock_timeout=5)
    report = engine.purge_archives(RunContext("call_recordings", "purge", f.midnight("2026-03-01")))
    states = db.execute("SELECT state FROM retention.archive_manifest WHERE table_name = 'call_analyses'").fetchall()
    assert report["purged_objects"] == 0 and states == [("committed",)], (
        f"the held customer's call analysis was purged from the archive (owner_ids {owners[0][0]}): "
        "the detached owners recorded for the live row were not carried into the archive object's owners"
    )


RECEIVED = dt.datetime(2024, 9, 3, 10, tzinfo=dt.UTC)


def subject_rights(policy, dsn, s3, storage) -> SubjectRights:
    return SubjectRights(policy, dsn, ArchiveStore(s3, storage), lock_timeout=2)


def request(action: str, request_id: str, **kw) -> SubjectRequest:
    kw.setdefault("run_id", f"manual__{request_id}")
    return SubjectRequest(request_id=request_id, action=action, received_at=RECEIVED, preview=False, **kw)


def detached_analysis(db, s3, storage, policy, source_dsn):
    """A customer's quality recording went (6 months, tier none); its analysis (1 year) stays,
    its link cleared, its owners recorded in retention.detached_owners."""
    customer = f.customer(db, ended="2024-01-01")
    recording = f.call_recording(db, reason="quality", started="2024-01-10", customer_id=customer)
    analysis = f.call_analysis(db, recording_id=recording, created="2024-01-10")
    run(policy, "call_recordings", source_dsn, s3, storage, "2024-08-01", "r1")
    assert f.ids(db, "call_recordings") == set() and f.ids(db, "call_analyses") == {analysis}
    owners = db.execute(
        "SELECT owner_ids FROM retention.detached_owners WHERE table_name = 'call_analyses' AND record_id = %s",
        (analysis,),
    ).fetchone()[0]
    assert owners == {"call_recordings": [recording], "customers": [customer]}
    return customer, recording, analysis


def test_access_finds_the_customers_detached_call_analysis(db, s3, storage, policy, source_dsn):
    """An access by the customer lists the analysis of their call (their record, kept 1 year): the
    engine recorded it as theirs (detached_owners); the search followed live links only (found by
    a review)."""
    customer, _, analysis = detached_analysis(db, s3, storage, policy, source_dsn)
    report = subject_rights(policy, source_dsn, s3, storage).handle(
        request("access", "rev-access-detached", kind="customer", subject_id=customer)
    )
    assert report["found"]["live"].get("call_analyses") == 1, (
        f"the access did not find the customer's call analysis {analysis} (link cleared, owners in "
        f"retention.detached_owners): found {report['found']['live']}"
    )


def test_erasure_erases_or_reports_the_detached_analysis(db, s3, storage, policy, source_dsn):
    """An erasure by the customer erases the analysis (legitimate interest) and its entry: it was
    neither erased nor reported kept (found by a review)."""
    customer, _, analysis = detached_analysis(db, s3, storage, policy, source_dsn)
    report = subject_rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-erase-detached", kind="customer", subject_id=customer)
    )
    kept_tables = {k.get("table") for k in report.get("kept", [])}
    naming = db.execute(
        "SELECT table_name, record_id, owner_ids FROM retention.detached_owners WHERE owner_ids @> %s::jsonb",
        (f'{{"customers": [{customer}]}}',),
    ).fetchall()
    problems = []
    if analysis in f.ids(db, "call_analyses") and "call_analyses" not in kept_tables:
        problems.append(f"call analysis {analysis} neither erased nor reported kept (erased {report['erased']})")
    assert not problems, problems
    assert naming == [], "the erased analysis' entry of who it belonged to stayed"


def test_an_analysis_an_erasure_keeps_stays_its_customers_after_the_erasure_deletes_its_recording(
    db, s3, storage, policy, source_dsn
):
    """A hold on a call analysis (a dispute about that call); its customer asks for erasure: the
    quality recording is erased, the held analysis kept (reported). Deleting the recording clears
    the analysis' link (ON DELETE SET NULL), and the erasure recorded no detached owners: a later
    access by the customer did not list the analysis (their record, kept), and a hold then placed
    on the customer did not cover it, so once the first hold was released the analysis went on its
    own date under the customer's hold (found by a review)."""
    customer = f.customer(db)
    recording = f.call_recording(db, reason="quality", started="2024-05-02", customer_id=customer)
    analysis = f.call_analysis(db, recording_id=recording, created="2024-05-02")
    dispute = f.legal_hold(db, "call_analyses", analysis)
    svc = subject_rights(policy, source_dsn, s3, storage)
    erasure = svc.handle(request("erasure", "rev-erase-held-analysis", kind="customer", subject_id=customer))
    assert erasure["erased"]["live"].get("call_recordings") == 1 and recording not in f.ids(db, "call_recordings")
    assert any(k["table"] == "call_analyses" and k["reason"] == "legal_hold" for k in erasure["kept"])

    access = svc.handle(request("access", "rev-access-after-erasure", kind="customer", subject_id=customer))
    assert access["found"]["live"].get("call_analyses") == 1, (
        f"the access missed the customer's kept call analysis: found {access['found']['live']}"
    )

    f.legal_hold(db, "customers", customer)
    db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE id = %s", (dispute,))
    run(policy, "call_recordings", source_dsn, s3, storage, "2025-06-01", "r1")
    assert f.ids(db, "call_analyses") == {analysis}, "the held customer's call analysis was deleted"
