"""One plan per run, handed on: the engine executes the plan the before-gate approved, no more,
and refuses a plan made with another policy (issue 11, item 1)."""

from __future__ import annotations

import pytest
from retention import gates
from retention.archive.engine import RetentionEngine
from retention.archive.run import PlanMismatchError, PurposeLockedError, RunContext, plan_units
from retention.archive.store import ArchiveStore
from retention.planner import Plan, Planner
from retention.policy.periods import Period

from tests import factories as f
from tests.test_safety import InThread, Pause

pytestmark = pytest.mark.integration

D = f.midnight("2025-02-28")  # quotes issued before 2024-02-29 are due


def make_engine(policy, dsn, s3, storage, purpose="quotes") -> RetentionEngine:
    return RetentionEngine(policy, purpose, dsn, ArchiveStore(s3, storage), lock_timeout=2)


def audit_actions(db, run_id: str) -> list[tuple[str, int]]:
    return db.execute(
        "SELECT action, record_count FROM retention.audit_log WHERE run_id = %s ORDER BY id", (run_id,)
    ).fetchall()


def test_the_plan_travels_as_counts_and_comes_back_the_same(db, s3, storage, policy, source_dsn):
    f.quote(db, issued="2023-01-01")
    held = f.quote(db, issued="2023-01-01")
    f.legal_hold(db, "quotes", held)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(RunContext("quotes", "manual__p", D))
    again = Plan.from_dict(plan.as_dict())
    assert again == Plan.from_dict(again.as_dict())
    (rule,) = again.rules
    assert (rule.due, rule.held, rule.deletable, rule.held_ids) == (2, 1, 1, [held])
    assert again.table_rows == {"quotes": 2} and len(again.policy_sha256) == 64


def test_more_rows_due_at_execution_than_approved_stay_for_the_next_run(db, s3, storage, policy, source_dsn):
    """A quote that became due after the plan (here: inserted after it) is not deleted by this
    run, though the batch would select it: the run deletes at most what the gate approved."""
    approved = [f.quote(db, issued="2023-01-01") for _ in range(2)]
    ctx = RunContext("quotes", "manual__beyond", D, batch_size=10)
    engine = make_engine(policy, source_dsn, s3, storage)
    plan = engine.make_plan(ctx)
    late = f.quote(db, issued="2023-01-01")
    (outcome,) = engine.archive_and_delete(ctx, plan)
    assert outcome.deleted == 2 and outcome.beyond_plan == 1
    assert len(f.ids(db, "quotes") & {*approved, late}) == 1, "exactly one due quote is left for the next run"
    # The next run (its own plan) takes it.
    (next_outcome,) = engine.archive_and_delete(RunContext("quotes", "manual__next", D))
    assert next_outcome.deleted == 1 and f.ids(db, "quotes") == set()


def test_an_approved_row_a_hold_keeps_at_execution_is_reported_kept(db, s3, storage, policy, source_dsn):
    """A hold placed between the plan and the archive step keeps the quote the plan approved (the
    batch's re-check under lock). The report said due 1, held 0, deleted 0, with nothing on
    where the row went (found by a review); it now says the row was kept at execution."""
    from retention.tasks import report

    f.quote(db, issued="2023-01-01")
    kept = f.quote(db, issued="2023-01-01")
    ctx = RunContext("quotes", "manual__held_since", D)
    engine = make_engine(policy, source_dsn, s3, storage)
    plan = engine.make_plan(ctx)
    f.legal_hold(db, "quotes", kept)
    (outcome,) = engine.archive_and_delete(ctx, plan)
    assert (outcome.deletable, outcome.deleted) == (2, 1) and f.ids(db, "quotes") == {kept}
    context = {"logical_date": D, "params": {}, "run_id": ctx.run_id}
    purged = {"purged_objects": 0, "purged_records": 0, "held_objects": 0}
    text = report(
        policy.with_mode("enforce").purpose("quotes"), context, {}, {"rules": [outcome.as_dict()]}, purged, {}, {}
    )
    assert "kept at execution (approved by the plan, then kept by the re-check under lock" in text
    assert text.rstrip().endswith("the next run decides again): unconverted_quotes=1"), text


def test_rows_the_last_batch_locks_beyond_the_approved_count_are_left(db, s3, storage, policy, source_dsn):
    """The last batch locks the rows left plus a margin of the rows re-checks kept so far
    (_Allowance.lock_limit): rows that became due after the plan and fall in that margin are
    locked with it, then cut (counted beyond the plan), never deleted."""
    approved = [f.quote(db, issued="2023-01-01") for _ in range(15)]
    f.legal_hold(db, "quotes", approved[2])
    ctx = RunContext("quotes", "manual__margin", D, batch_size=10)
    engine = make_engine(policy, source_dsn, s3, storage)
    plan = engine.make_plan(ctx)
    late = [f.quote(db, issued="2023-01-01") for _ in range(2)]
    db.commit()
    (outcome,) = engine.archive_and_delete(ctx, plan)
    assert outcome.deleted == 14 and outcome.beyond_plan == 2
    assert f.ids(db, "quotes") == {approved[2], *late}
    # Two batches (past their archive period, these rows are deleted without an object): the
    # second locked 6 rows, the 5 left and one late row, cut.
    assert [n for action, n in audit_actions(db, "manual__margin") if action == "deleted"] == [9, 5]


def test_rows_beyond_the_count_in_the_last_batch_are_the_highest_ids_whatever_their_end_day(
    db, s3, storage, policy, source_dsn
):
    """Late rows in the last batch's margin whose archive period ends earlier than the approved
    rows' are still the ones left: the count is cut by id, as batches take rows, not by end day
    (a reviewer's case: cut per end day, an approved row was left and a late one deleted)."""
    approved = [f.quote(db, issued="2023-01-01") for _ in range(15)]
    f.legal_hold(db, "quotes", approved[2])
    ctx = RunContext("quotes", "manual__margin_early", D, batch_size=10)
    engine = make_engine(policy, source_dsn, s3, storage)
    plan = engine.make_plan(ctx)
    late = [f.quote(db, issued="2022-06-01") for _ in range(2)]  # an earlier end day
    db.commit()
    (outcome,) = engine.archive_and_delete(ctx, plan)
    assert outcome.deleted == 14 and outcome.beyond_plan == 2
    assert f.ids(db, "quotes") == {approved[2], *late}


def test_the_after_gate_accepts_the_rows_left_beyond_the_plan_and_shows_them(db, s3, storage, policy, source_dsn):
    f.quote(db, issued="2023-01-01")
    f.quote(db, issued="2024-12-01")
    ctx = RunContext("quotes", "manual__beyond_gate", D)
    engine = make_engine(policy, source_dsn, s3, storage)
    plan = engine.make_plan(ctx)
    before = gates.run_before_gates(policy, policy.purpose("quotes"), source_dsn, ctx, 1.0, plan=plan)
    f.quote(db, issued="2023-01-01")
    archived = {"rules": [o.as_dict() for o in engine.archive_and_delete(ctx, plan)]}
    report = gates.run_after_gates(policy, "quotes", source_dsn, ArchiveStore(s3, storage), ctx, before, archived)
    (due_left,) = [r for r in report["results"] if r["expectation"] == "no_due_record_remains"]
    assert due_left["success"] and due_left["observed"] == {"remaining": 1, "left_beyond_plan": 1}


def test_a_plan_made_with_another_policy_is_refused_and_nothing_changes(db, s3, storage, policy, source_dsn):
    due = f.quote(db, issued="2023-01-01")
    recent = f.quote(db, issued="2024-06-01")
    ctx = RunContext("quotes", "manual__changed", D)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)
    # The file changed between plan and execution: quotes now go after 6 months, not 12.
    quotes = policy.purpose("quotes")
    rule = quotes.rules[0].model_copy(update={"live": Period.parse("6 months")})
    changed = policy.model_copy(
        update={"purposes": policy.purposes | {"quotes": quotes.model_copy(update={"rules": (rule,)})}}
    )
    engine = make_engine(changed, source_dsn, s3, storage)
    with pytest.raises(PlanMismatchError, match="policy of purpose 'quotes' changed since the plan"):
        engine.archive_and_delete(ctx, plan)
    assert f.ids(db, "quotes") == {due, recent}
    assert audit_actions(db, "manual__changed") == []
    assert s3.list_objects_v2(Bucket=storage.archive_bucket).get("KeyCount", 0) == 0
    # With the plan of the policy it runs with, the same engine goes ahead.
    engine.archive_and_delete(ctx, engine.make_plan(ctx))
    assert f.ids(db, "quotes") == set()


def test_held_and_waiting_ids_are_audited_once_per_run(db, s3, storage, policy, source_dsn):
    held = f.quote(db, issued="2023-06-01")
    f.legal_hold(db, "quotes", held)
    f.quote(db, issued="2023-06-01")  # archived until 2025-06
    ctx = RunContext("quotes", "manual__audit", D)
    engine = make_engine(policy, source_dsn, s3, storage)
    plan = engine.make_plan(ctx, audit=True)
    engine.make_plan(ctx, audit=True)  # a retried plan task
    engine.archive_and_delete(ctx, plan)
    assert audit_actions(db, "manual__audit") == [("held", 1), ("archived_and_deleted", 1)]
    dry = RunContext("quotes", "manual__audit_dry", D, dry_run=True)
    engine.make_plan(dry, audit=True)
    assert audit_actions(db, "manual__audit_dry") == [], "a dry run writes nothing"


def test_the_before_gate_judges_the_plan_it_is_given(db, s3, storage, policy, source_dsn, monkeypatch):
    for _ in range(3):
        f.quote(db, issued="2023-01-01")
    f.quote(db, issued="2024-12-01")
    ctx = RunContext("quotes", "manual__gate", D)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx)

    def no_replanning(*args, **kwargs):
        raise AssertionError("the gate planned again")

    monkeypatch.setattr(Planner, "plan", no_replanning)
    with pytest.raises(gates.QualityGateError, match=r"would delete 75% of app.quotes \(3 of 4 rows\)"):
        gates.run_before_gates(policy, policy.purpose("quotes"), source_dsn, ctx, 0.5, plan=plan.as_dict())


# ----------------------------------------------------------------- a purpose over several units


def test_recovery_cannot_run_while_a_unit_holds_the_purpose_lock(db, s3, storage, policy, source_dsn):
    """Units of a run hold the purpose's lock in shared mode: two go side by side, while the
    recovery (exclusive: it removes 'uploading' objects as orphans) waits for both."""
    quotes = [f.quote(db, issued="2023-06-01") for _ in range(4)]  # archived until 2025-06
    ctx = RunContext("quotes", "manual__units", D)
    plan = make_engine(policy, source_dsn, s3, storage).make_plan(ctx, range_rows=2)
    (units,) = plan_units(plan)
    assert [(u.first_id, u.last_id, u.rows) for u in units] == [(quotes[0], quotes[1], 2), (quotes[2], quotes[3], 2)]

    first = make_engine(policy, source_dsn, s3, storage)
    pause = Pause(first, "_record_intents")  # its object uploaded and verified, still 'uploading'
    run = InThread(lambda: first.archive_and_delete(ctx, plan, units[0]))
    assert pause.reached.wait(30)
    (second,) = make_engine(policy, source_dsn, s3, storage).archive_and_delete(ctx, plan, units[1])
    assert second.deleted == 2, "the other unit of the run is not kept waiting"
    recovery = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=1)
    with pytest.raises(PurposeLockedError):
        recovery.recover_before_units(ctx, plan)
    pause.release.set()
    (outcome,) = run.join()
    assert outcome.deleted == 2 and f.ids(db, "quotes") == set()
    states = db.execute("SELECT state, count(*) FROM retention.archive_manifest GROUP BY 1").fetchall()
    assert states == [("committed", 2)], "the paused unit's upload was not removed as an orphan"
    assert recovery.recover_before_units(ctx, plan) == {"orphans_removed": 0, "locks_applied": 0}


def test_a_unit_deletes_only_its_range(db, s3, storage, policy, source_dsn):
    quotes = [f.quote(db, issued="2023-01-01") for _ in range(5)]
    ctx = RunContext("quotes", "manual__range", D, batch_size=1)
    engine = make_engine(policy, source_dsn, s3, storage)
    plan = engine.make_plan(ctx, range_rows=2)
    (units,) = plan_units(plan)
    assert [u.rows for u in units] == [2, 2, 1]
    (outcome,) = engine.archive_and_delete(ctx, plan, units[1])
    assert outcome.deleted == 2 and f.ids(db, "quotes") == {quotes[0], quotes[1], quotes[4]}


def test_the_plan_projects_parents_whose_children_an_earlier_rule_deletes(db, s3, storage, policy, source_dsn):
    """Contracts are planned after their claims and reimbursements: an ended contract whose claim
    goes earlier in the same run counts as deletable; one whose claim is held (so stays) waits
    for the claim, as does one with a live AML record (another purpose's row)."""
    going = f.contract(db, ended="2020-01-01")
    f.reimbursement(db, f.claim(db, going))
    kept_claim = f.contract(db, ended="2020-01-01")
    f.legal_hold(db, "claims", f.claim(db, kept_claim))
    with_aml = f.contract(db, ended="2020-01-01")
    f.aml_record(db, with_aml, checked="2024-01-01")
    engine = make_engine(policy, source_dsn, s3, storage, purpose="contracts")
    plan = engine.make_plan(RunContext("contracts", "manual__projected", f.midnight("2025-01-01")))
    contracts = plan.rule("ended_contracts")
    assert contracts.due == 3 and contracts.held == 0 and contracts.deletable == 1
    assert contracts.waiting == {"claims": 1, "aml_records": 1}
    assert sorted(contracts.waiting_ids) == sorted([kept_claim, with_aml])
    # Live (not projected), the claim still under the first contract keeps it waiting too.
    planner = Planner.load(db, policy, "contracts")
    live, _ = planner.count(db, planner.purpose.rules[-1], f.midnight("2025-01-01"))
    assert live.waiting == {"claims": 2, "aml_records": 1}


def test_the_units_of_a_plan_delete_no_more_than_its_counts_when_a_hold_is_released_while_it_is_made(
    db, s3, storage, policy, source_dsn
):
    """The plan counts a rule's deletable rows, then cuts its id ranges with another statement:
    a hold released in between (or any row due meanwhile) was in the ranges and not in the count.
    The units, each allowed its range's rows, then deleted more than the count the before-gate,
    the mass-deletion guard and the approver judged."""
    q = [f.quote(db, issued="2023-06-01") for _ in range(6)]
    hold = f.legal_hold(db, "quotes", q[2])
    db.commit()
    ctx = RunContext("quotes", "manual__released", D, batch_size=1)
    engine = make_engine(policy, source_dsn, s3, storage)
    real_ranges = engine._unit_ranges

    def released_then_ranges(*args, **kwargs):
        db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE id = %s", (hold,))
        db.commit()
        return real_ranges(*args, **kwargs)

    engine._unit_ranges = released_then_ranges
    plan = engine.make_plan(ctx, range_rows=3)
    approved = plan.rule("unconverted_quotes").deletable
    assert approved == 5
    (units,) = plan_units(plan)
    for unit in units:
        make_engine(policy, source_dsn, s3, storage).archive_and_delete(ctx, plan, unit)
    (deleted,) = db.execute(
        "SELECT coalesce(sum(record_count), 0) FROM retention.audit_log WHERE run_id = %s"
        " AND action IN ('archived_and_deleted', 'deleted')",
        (ctx.run_id,),
    ).fetchone()
    assert deleted <= approved, f"the units deleted {deleted} rows, the plan approved {approved}"


def test_the_after_gate_counts_only_the_deleted_rows_its_before_snapshot_counted(db, s3, storage, policy, source_dsn):
    """The row count check compares the rows of the before-snapshot (ids up to its largest) with
    what the run deleted. A quote written after the snapshot with an old date (an import) is due,
    and the run deletes it in the place of an approved quote held meanwhile: the check counted it
    as deleted from the snapshot's rows and failed a run that kept exactly what it had to."""
    held, going = f.quote(db, issued="2023-01-01"), f.quote(db, issued="2023-01-01")
    ctx = RunContext("quotes", "manual__late_import", D)
    engine = make_engine(policy, source_dsn, s3, storage)
    plan = engine.make_plan(ctx)
    before = gates.run_before_gates(policy, policy.purpose("quotes"), source_dsn, ctx, 1.0, plan=plan)
    f.legal_hold(db, "quotes", held)
    imported = f.quote(db, issued="2023-01-01")
    db.commit()
    archived = {"rules": [o.as_dict() for o in engine.archive_and_delete(ctx, plan)]}
    assert f.ids(db, "quotes") == {held}, (going, imported)
    report = gates.run_after_gates(policy, "quotes", source_dsn, ArchiveStore(s3, storage), ctx, before, archived)
    (rows,) = [r for r in report["results"] if r["table"] == "app.quotes" and "row_count" in r["expectation"]]
    assert rows["success"], rows
