"""An approval binds what the approver was shown, and the last answer on it counts; the approval
and archive steps judge the guard as the before gate did. Found by a review: each test deleted
quotes no one approved. The task functions and the approval operator are called directly with a
small Airflow context (no dag.test()), against the session's PostgreSQL and S3; Airflow's own
human-in-the-loop park (the operator's ``execute``) is left out."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from types import SimpleNamespace

import pytest
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk.exceptions import AirflowFailException

from tests import factories as f

pytestmark = pytest.mark.integration

D = f.midnight("2025-03-01")  # quotes issued before 2024-03-01 are due


class FakeTI:
    """XComs per (task, key), as a task instance reads and writes them."""

    def __init__(self, xcoms: dict, dag_id: str = "retention_quotes"):
        self.xcoms = {(task, "return_value"): value for task, value in xcoms.items()}
        self.dag_id = dag_id
        self.try_number = 1

    def xcom_pull(self, task_ids=None, key="return_value", **_):
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key, value, **_):
        self.xcoms[("approve_deletion", key)] = value


def context(run_id: str, xcoms: dict | None = None, logical_date=D, ti: FakeTI | None = None, **params) -> dict:
    return {
        "params": {"dry_run": False, "batch_size": 1000, "max_delete_fraction": 0.5, "range_rows": 250_000} | params,
        "run_id": run_id,
        "logical_date": logical_date,
        "dag_run": SimpleNamespace(run_after=logical_date or dt.datetime.now(dt.UTC), conf={}),
        "ti": ti or FakeTI(xcoms or {}),
        "outlet_events": defaultdict(lambda: SimpleNamespace(add=lambda *a, **k: None)),
    }


def run_units(purpose, ctx: dict, planned: dict) -> None:
    from retention import tasks

    units = tasks.prepare_units(purpose, ctx, planned)
    for rule_units in units.values():
        for unit in rule_units:
            tasks.archive_unit(purpose, ctx, planned, unit)


def approve_event() -> dict:
    return {
        "chosen_options": ["Approve"],
        "params_input": {},
        "responded_at": dt.datetime.now(dt.UTC),
        "responded_by_user": {"id": "approver", "name": "approver"},
    }


def test_an_approval_is_bound_to_the_plan_shown_not_to_the_plan_found_when_answered(
    db, s3, storage, policy, monkeypatch
):
    """approve_deletion shows plan A (6 of 10 quotes, 60%) and waits. Meanwhile the plan task is
    re-run (cleared alone: `airflow tasks clear -t ^plan$`) after four legal holds were released:
    plan B deletes 10 of 10. The approver answers the question they saw (6 quotes): the answer is
    recorded for plan A, the step fails, and the archive step deletes nothing (no approval of B)."""
    from retention import approvals, tasks
    from retention.approval_tasks import ApproveDeletion

    monkeypatch.setattr(ApprovalOperator, "execute", lambda self, context: None)  # Airflow's park
    purpose = policy.purpose("quotes")
    free = [f.quote(db, issued="2023-06-01") for _ in range(6)]
    held = [f.quote(db, issued="2023-06-01") for _ in range(4)]
    holds = [f.legal_hold(db, "quotes", q) for q in held]
    run_id = "manual__rebound"

    plan_a = tasks.plan(purpose, context(run_id))
    op = ApproveDeletion(task_id="approve_deletion", approvals=policy.approvals)
    ti = FakeTI({"plan": plan_a})
    op.execute(context(run_id, ti=ti))
    assert "| quotes **(over the guard)** | 6 | 10 | 60% |" in op.body

    # While the question waits: the holds are released, the plan task is run again.
    db.execute("UPDATE retention.legal_holds SET released_at = now() WHERE id = ANY(%s)", (holds,))
    plan_b = tasks.plan(purpose, context(run_id))
    assert plan_b != plan_a
    ti.xcoms[("plan", "return_value")] = plan_b

    with pytest.raises(AirflowFailException, match="the figures changed while the question waited"):
        op.execute_complete(context(run_id, ti=ti), approve_event())
    recorded = db.execute("SELECT plan_sha256, decision FROM retention.approvals WHERE run_id = %s", (run_id,))
    assert recorded.fetchall() == [(approvals.deletion_digest(plan_a), "approved")]

    with pytest.raises(Exception, match="no approval of its plan"):
        run_units(purpose, context(run_id, {"plan": plan_b}), plan_b)
    assert f.ids(db, "quotes") >= set(free + held), "quotes were deleted on a plan no one was shown"


def test_a_rejection_of_the_plan_revokes_an_earlier_approval_of_the_same_plan(db, s3, storage, policy, source_dsn):
    """The run's plan was approved, the run failed later (a unit out of retries), approve_deletion
    was cleared with its downstream and asked again on the same plan: this time the approver
    rejects. An operator then marks approve_deletion "success" by hand, which the docs promise
    "deletes nothing" without an approval. require_deletion_approval looks for *any* approved row
    of the plan's hash (decision = 'approved' ... ORDER BY id DESC), so the superseded approval
    still counts and the archive step deletes the plan the approver last rejected."""
    from retention import approvals, tasks

    purpose = policy.purpose("quotes")
    due = {f.quote(db, issued="2023-06-01") for _ in range(6)}
    kept = {f.quote(db, issued="2024-12-01") for _ in range(4)}
    run_id = "manual__rejected"
    planned = tasks.plan(purpose, context(run_id))
    digest = approvals.deletion_digest(planned)
    figures = approvals.deletion_figures(planned, 0.5)
    common = dict(kind="deletion", dag_id="retention_quotes", run_id=run_id, plan_sha256=digest, figures=figures)
    now = dt.datetime.now(dt.UTC)
    approvals.record(source_dsn, **common, decision="approved", decided_by="approver", decided_at=now, purpose="quotes")
    approvals.record(
        source_dsn,
        **common,
        decision="rejected",
        decided_by="approver",
        decided_at=now + dt.timedelta(hours=1),
        purpose="quotes",
    )

    with pytest.raises(Exception, match="the last answer on its plan is 'rejected'"):
        run_units(purpose, context(run_id), planned)
    assert f.ids(db, "quotes") == due | kept, "the plan's last answer was Reject: nothing may be deleted"


def test_what_the_before_gate_sends_for_approval_is_asked_or_not_deleted(db, s3, storage, policy):
    """Plan: 5 of 10 quotes (50%, within max_delete_fraction 0.5). Before check_before runs, two
    quotes that are not due are removed (the application, a subject erasure, another run). The
    before gate counts the table again (8 rows) and reports the guard as over (62.5%) "awaiting
    approval"; the run goes on. approve_deletion and the archive step judge the plan's own table
    size (10) instead: no question is asked and the run deletes 62.5% of app.quotes without any
    approval, while its check_before report says "approval asked"."""
    from retention import tasks
    from retention.approval_tasks import ApproveDeletion

    purpose = policy.purpose("quotes")
    due = {f.quote(db, issued="2023-06-01") for _ in range(5)}
    kept = [f.quote(db, issued="2024-12-01") for _ in range(5)]
    run_id = "manual__gate_vs_approval"
    planned = tasks.plan(purpose, context(run_id))
    db.execute("DELETE FROM app.quotes WHERE id = ANY(%s)", (kept[:2],))

    before = tasks.check_before(purpose, context(run_id), planned)
    [guard] = [r for r in before["results"] if r["expectation"] == "mass_deletion_guard"]
    assert guard.get("awaiting_approval"), guard  # the gate: over the guard, approval asked
    asked = ApproveDeletion(task_id="approve_deletion", approvals=policy.approvals).question(
        context(run_id, {"plan": planned, "check_before": before})
    )
    assert asked is not None and "62.5%" in asked["body"]
    with pytest.raises(Exception, match="no approval of its plan"):
        run_units(purpose, context(run_id, {"plan": planned, "check_before": before}), planned)
    deleted = due - f.ids(db, "quotes")
    assert asked is not None or not deleted, (
        f"the before gate sent the run for approval ({guard['observed']}), no one was asked, "
        f"and {len(deleted)} of {len(due) + 3} quotes were deleted"
    )


def test_an_approval_is_bound_to_the_table_sizes_shown_not_only_to_the_plan(db, s3, storage, policy, monkeypatch):
    """approve_deletion shows 6 of 10 quotes (60%: the before gate's count) and waits. Meanwhile
    the application removes the 4 other quotes and check_before is run again: 6 of 6 (100%). The
    approval binds the plan and the sizes shown: the step fails, and the archive step, judging the
    new counts, finds no approval of them (found by a review of the fix above)."""
    from retention import tasks
    from retention.approval_tasks import ApproveDeletion

    monkeypatch.setattr(ApprovalOperator, "execute", lambda self, context: None)
    purpose = policy.purpose("quotes")
    due = {f.quote(db, issued="2023-06-01") for _ in range(6)}
    others = [f.quote(db, issued="2024-12-01") for _ in range(4)]
    run_id = "manual__sizes"
    planned = tasks.plan(purpose, context(run_id))
    before = tasks.check_before(purpose, context(run_id), planned)
    op = ApproveDeletion(task_id="approve_deletion", approvals=policy.approvals)
    ti = FakeTI({"plan": planned, "check_before": before})
    op.execute(context(run_id, ti=ti))
    assert "| 6 | 10 | 60% |" in op.body

    db.execute("DELETE FROM app.quotes WHERE id = ANY(%s)", (others,))  # the application, meanwhile
    before_again = tasks.check_before(purpose, context(run_id), planned)
    ti.xcoms[("check_before", "return_value")] = before_again
    assert "100%" in op.question(context(run_id, ti=ti))["body"]

    with pytest.raises(AirflowFailException, match="the figures changed while the question waited"):
        op.execute_complete(context(run_id, ti=ti), approve_event())
    with pytest.raises(Exception, match="no approval of its plan"):
        run_units(purpose, context(run_id, {"plan": planned, "check_before": before_again}), planned)
    assert due <= f.ids(db, "quotes"), "the table was emptied at a share no one was shown"


def test_a_run_planned_in_preview_purges_nothing_when_its_purpose_is_enforced_before_its_purge(
    db, s3, storage, policy, source_dsn, monkeypatch, tmp_path
):
    """A purpose in preview: its run plans, gates and previews (nothing deleted, no approval asked,
    a preview asks none). Before the run's purge_archives task starts, the purpose is set to
    enforce (the one-line switch, made early, while a run is under way). The purge of that run
    read the mode from the policy of the moment and purged an archive object for good, in a run
    whose every other step was a preview (found by a review). It previews, as its plan did."""
    import os
    from pathlib import Path

    from retention import tasks
    from retention.archive.engine import RetentionEngine
    from retention.archive.run import RunContext
    from retention.archive.store import ArchiveStore
    from retention.policy import default_policy

    old = f.quote(db, issued="2022-06-01")  # archived in 2023, its archive period ended in 2024
    db.commit()
    RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage)).archive_and_delete(
        RunContext("quotes", "earlier", f.midnight("2023-07-01"))
    )
    (key,) = db.execute(
        "SELECT object_key FROM retention.archive_manifest WHERE run_id = 'earlier' AND state = 'committed'"
    ).fetchone()
    assert old not in f.ids(db, "quotes")

    enforced_file = os.environ["RETENTION_POLICY_FILE"]
    preview_file = tmp_path / "retention_policy.preview.yaml"
    preview_file.write_text(
        Path(enforced_file).read_text(encoding="utf-8").replace("mode: enforce", "mode: preview"), encoding="utf-8"
    )
    monkeypatch.setenv("RETENTION_POLICY_FILE", str(preview_file))
    in_preview = default_policy().purpose("quotes")
    run_id = "scheduled__preview_then_enforce"
    ctx = context(run_id)
    planned = tasks.plan(in_preview, ctx)
    assert planned["dry_run"] and planned["mode"] == "preview"
    ctx["ti"].xcoms[("plan", "return_value")] = planned

    monkeypatch.setenv("RETENTION_POLICY_FILE", enforced_file)  # set to enforce meanwhile
    purged = tasks.purge_archives(default_policy().purpose("quotes"), ctx)
    (state,) = db.execute("SELECT state FROM retention.archive_manifest WHERE object_key = %s", (key,)).fetchone()
    assert state == "committed", f"a run planned in preview purged its archive object ({purged})"
    assert purged["dry_run"]
