"""Approvals through Airflow's human-in-the-loop (retention.approval_tasks, retention.approvals).

A run over the mass-deletion guard waits in `approve_deletion` (Airflow's `awaiting_input`
state) showing its plan's figures; an erasure previewed waits in `approve_erasure`. The runs are
dag.test() runs in this process, which keep waiting while a task awaits input; the answers go
through Airflow's own REST API (the api-server app built in-process, SimpleAuthManager, the HITL
endpoint the UI uses), from a thread; a wait that runs out is resolved by the scheduler's own
timeout sweep. The approvers come from the policy file (`approvals.approvers`): here `approver`.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import secrets
import time
from pathlib import Path

import pytest

from tests import factories as f
from tests.dag_runs import load_dag, task_states, xcoms
from tests.test_alerts import _text, inbox  # noqa: F401 - the SMTP inbox fixture

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]
D = f.midnight("2025-03-01")
USERS = {"approver": "user", "other": "admin", "viewer": "viewer"}


@pytest.fixture(scope="module")
def approvers_policy(tmp_path_factory):
    """The session's (enforced) policy with `approver` as the only one who may answer."""
    import os

    import yaml

    data = yaml.safe_load(Path(os.environ["RETENTION_POLICY_FILE"]).read_text(encoding="utf-8"))
    data["approvals"] = {"approvers": ["approver"], "wait_hours": 18}
    path = tmp_path_factory.mktemp("policy") / "retention_policy.approvers.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETENTION_POLICY_FILE", str(path))
        yield path


@pytest.fixture(scope="module")
def api(airflow_db, approvers_policy):
    """Airflow's api-server app (the REST API the UI answers through), its users by role."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "AIRFLOW__CORE__AUTH_MANAGER",
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        )
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{u}:{r}" for u, r in USERS.items()))
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))
        mp.setenv("AIRFLOW__API__SECRET_KEY", secrets.token_urlsafe(32))
        from airflow.api_fastapi.app import create_app, get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from fastapi.testclient import TestClient

        from tests.dag_runs import sync_dags

        sync_dags()
        client = TestClient(create_app("core"), base_url="http://127.0.0.1")
        auth = get_auth_manager()
        tokens = {u: auth.generate_jwt(SimpleAuthManagerUser(username=u, role=r)) for u, r in USERS.items()}
        yield client, tokens


def answer(api, user: str, question: dict, option: str):
    client, tokens = api
    url = (
        f"/api/v2/dags/{question['dag_id']}/dagRuns/{question['run_id']}/taskInstances/"
        f"{question['task_id']}/-1/hitlDetails"
    )
    return client.patch(
        url,
        json={"chosen_options": [option], "params_input": {}},
        headers={"Authorization": f"Bearer {tokens[user]}"},
    )


def waiting_question(dag_id: str, task_id: str, timeout: float = 240) -> dict:
    """The question a task of a run of ``dag_id`` is waiting on (Airflow's hitl_detail row)."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            found = (
                session.query(HITLDetail, TaskInstance)
                .join(TaskInstance, TaskInstance.id == HITLDetail.ti_id)
                .filter(TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id)
                .filter(TaskInstance.state == "awaiting_input")
                .one_or_none()
            )
            if found:
                detail, ti = found
                return {
                    "dag_id": dag_id,
                    "run_id": ti.run_id,
                    "task_id": task_id,
                    "subject": detail.subject,
                    "body": detail.body,
                    "options": list(detail.options),
                    "assigned": [u["id"] for u in detail.assigned_users],
                    "trigger_timeout": ti.trigger_timeout,
                }
        time.sleep(0.5)
    raise AssertionError(f"no task {task_id} of {dag_id} waited for an answer within {timeout:.0f}s")


def run_answering(dag, conf: dict, respond, logical_date=D):
    """dag.test() here (it keeps polling while a task awaits input) and ``respond`` in a thread.
    Should ``respond`` fail before answering, the question is rejected so that the run ends."""
    for task in dag.tasks:
        task.retries = 0

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        responder = pool.submit(respond)
        dag_run = dag.test(logical_date=logical_date, run_conf=conf)
        responder.result(timeout=60)
    return dag_run


def _rescue(api, question: dict | None) -> None:
    if question is not None:
        answer(api, "approver", question, "Reject")


def over_the_guard(db) -> dict:
    """6 quotes due, 4 not: the run would delete 60% of app.quotes, over max_delete_fraction 0.5."""
    due = {f.quote(db, issued="2023-06-01") for _ in range(6)}
    kept = {f.quote(db, issued="2024-12-01") for _ in range(4)}
    return {"due": due, "kept": kept}


def approvals(db) -> list[dict]:
    return [
        r[0]
        for r in db.execute(
            "SELECT to_jsonb(a) - 'id' - 'recorded_at' FROM retention.approvals AS a ORDER BY id"
        ).fetchall()
    ]


def test_a_run_over_the_guard_waits_for_its_approver_then_deletes(api, approvers_policy, db, s3, storage):
    from retention.approvals import deletion_digest

    quotes = over_the_guard(db)
    dag = load_dag("quotes")
    seen: dict = {}

    def respond():
        question = None
        try:
            question = waiting_question("retention_quotes", "approve_deletion")
            seen.update(question)
            # Waiting: nothing deleted yet, whatever the time taken.
            assert f.ids(db, "quotes") == quotes["due"] | quotes["kept"]
            assert answer(api, "other", question, "Approve").status_code == 403, "not an approver (even admin)"
            assert answer(api, "viewer", question, "Approve").status_code == 403
            response = answer(api, "approver", question, "Approve")
            assert response.status_code == 200, response.text
        except BaseException:
            _rescue(api, question)
            raise

    dag_run = run_answering(dag, {"max_delete_fraction": 0.5}, respond)

    assert set(task_states(dag_run).values()) == {"success"}, task_states(dag_run)
    assert f.ids(db, "quotes") == quotes["kept"], "approved: the 6 due quotes archived and deleted"
    # What the approver was shown: the plan's figures per table and rule, the share, the mode.
    assert seen["subject"] == ("retention_quotes: approve deleting 60% of quotes (over max_delete_fraction 50%)?")
    body = seen["body"]
    assert "mode **enforce**" in body and "Nothing has been deleted" in body
    assert "| quotes **(over the guard)** | 6 | 10 | 60% |" in body
    assert "| unconverted_quotes | quotes | intermediate | 6 | 0 | 0 | 6 |" in body
    assert seen["options"] == ["Approve", "Reject"] and seen["assigned"] == ["approver"]
    waited = seen["trigger_timeout"] - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=17) < waited < dt.timedelta(hours=18), "the policy's wait_hours"

    # The evidence: who, when, on which figures, bound to the plan's hash.
    planned = xcoms(dag_run)["plan"]
    [recorded] = approvals(db)
    assert recorded["decision"] == "approved" and recorded["decided_by"] == "approver"
    assert recorded["kind"] == "deletion" and recorded["purpose"] == "quotes"
    gate_rows = xcoms(dag_run)["check_before"]["table_rows"]
    assert recorded["run_id"] == dag_run.run_id and recorded["plan_sha256"] == deletion_digest(planned, gate_rows)
    assert recorded["figures"]["tables"] == {"quotes": {"would_delete": 6, "table_rows": 10, "share": 0.6}}
    assert xcoms(dag_run)["approve_deletion"]["decided_by"] == "approver"
    before = xcoms(dag_run)["check_before"]
    guard = next(r for r in before["results"] if r["expectation"] == "mass_deletion_guard")
    assert guard["awaiting_approval"] and "approval asked" in before["summary"]

    from retention import status
    from retention.policy import default_policy

    evidence = status.run_evidence(db, default_policy(), "quotes", dag_run.run_id)
    assert [(a["decision"], a["decided_by"]) for a in evidence["approvals"]] == [("approved", "approver")]
    text = json.dumps(recorded) + body
    assert "Camille" not in text and "example.fr" not in text, "ids and counts only"


def test_a_rejected_plan_deletes_nothing_and_fails_the_run(api, approvers_policy, db, s3, storage, inbox):  # noqa: F811
    quotes = over_the_guard(db)
    dag = load_dag("quotes")

    def respond():
        question = waiting_question("retention_quotes", "approve_deletion")
        assert answer(api, "approver", question, "Reject").status_code == 200

    dag_run = run_answering(dag, {"max_delete_fraction": 0.5}, respond)
    states = task_states(dag_run)
    assert states["approve_deletion"] == "failed" and dag_run.state == "failed"
    assert states["archive_unconverted_quotes"] == "upstream_failed" and states["report"] == "failed"
    assert f.ids(db, "quotes") == quotes["due"] | quotes["kept"]
    assert [(a["decision"], a["decided_by"]) for a in approvals(db)] == [("rejected", "approver")]
    subjects = [m["Subject"] for m in inbox.messages]
    assert subjects == [
        f"[retention] FAILED retention_quotes.{task} (run {dag_run.run_id})" for task in ("approve_deletion", "report")
    ]
    body = _text(inbox.messages[0])
    assert "rejected by approver: nothing was archived, deleted or purged" in body
    assert "AirflowFailException (from HITLRejectException)" in body


def test_an_unanswered_approval_times_out_into_a_failed_run_that_alerts(
    api,
    approvers_policy,
    db,
    s3,
    storage,
    inbox,  # noqa: F811
):
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    quotes = over_the_guard(db)
    dag = load_dag("quotes")
    dag.get_task("approve_deletion").response_timeout = dt.timedelta(seconds=2)  # the policy's hours, shortened

    def respond():
        question = None
        try:
            question = waiting_question("retention_quotes", "approve_deletion")
            time.sleep(max(0.0, (question["trigger_timeout"] - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)
            # The scheduler's own sweep of waits that ran out (dag.test() runs no scheduler).
            SchedulerJobRunner(job=Job(), executors=[]).check_awaiting_input_timeouts()
        except BaseException:
            _rescue(api, question)
            raise

    dag_run = run_answering(dag, {"max_delete_fraction": 0.5}, respond)
    states = task_states(dag_run)
    assert states["approve_deletion"] == "failed" and dag_run.state == "failed", states
    assert f.ids(db, "quotes") == quotes["due"] | quotes["kept"], "no answer: nothing deleted"
    [recorded] = approvals(db)
    assert (recorded["decision"], recorded["decided_by"]) == ("timed_out", None)
    [first, _report] = inbox.messages
    assert first["Subject"] == f"[retention] FAILED retention_quotes.approve_deletion (run {dag_run.run_id})"
    body = _text(first)
    assert "no answer to the approval within 2 s: nothing was archived, deleted or purged" in body
    summary = xcoms_summary(dag_run)
    assert summary["failed_tasks"] == ["approve_deletion"]
    assert summary["left_unchanged"].startswith(
        "the run was over the mass-deletion guard and its plan was not approved"
    )


def xcoms_summary(dag_run) -> dict:
    from tests.test_alerts import _summary

    return _summary(dag_run)


def test_no_deletion_without_an_approval_of_that_very_plan(api, approvers_policy, db, s3, storage):
    """The approval step marked "success" by hand (dag.test's mark_success_pattern) asks no one:
    the archive step finds no approval of its plan and deletes nothing. SAFETY."""
    quotes = over_the_guard(db)
    dag = load_dag("quotes")
    for task in dag.tasks:
        task.retries = 0
    dag_run = dag.test(logical_date=D, run_conf={"max_delete_fraction": 0.5}, mark_success_pattern="approve_deletion")
    states = task_states(dag_run)
    assert states["approve_deletion"] == "success" and states["archive_unconverted_quotes"] == "failed", states
    assert f.ids(db, "quotes") == quotes["due"] | quotes["kept"]
    assert dag_run.state == "failed"


def test_an_approval_covers_only_the_plan_it_showed(db, source_dsn):
    """require_deletion_approval: an approval of another plan (re-planned, other counts), of
    another run, or a rejection does not let a run over the guard delete. SAFETY."""
    from retention import approvals as ap

    planned = {
        "purpose": "quotes",
        "logical_date": D.isoformat(),
        "dry_run": False,
        "mode": "enforce",
        "rules": [{"rule": "unconverted_quotes", "table": "quotes", "tier": "intermediate", "due": 6, "held": 0}],
        "table_rows": {"quotes": 10},
    }
    replanned = planned | {"table_rows": {"quotes": 11}}
    figures = ap.deletion_figures(planned, 0.5)
    now = dt.datetime.now(dt.UTC)

    def approve(plan: dict, run_id: str, decision: str = "approved") -> None:
        ap.record(
            source_dsn,
            kind="deletion",
            dag_id="retention_quotes",
            run_id=run_id,
            plan_sha256=ap.deletion_digest(plan),
            figures=figures,
            decision=decision,
            decided_by="approver",
            decided_at=now,
            purpose="quotes",
        )

    assert ap.require_deletion_approval(source_dsn, "quotes", "run-1", planned, 0.6) is None, "within the guard"
    assert ap.require_deletion_approval(source_dsn, "quotes", "run-1", planned | {"dry_run": True}, 0.5) is None
    approve(replanned, "run-1")
    approve(planned, "run-2")
    approve(planned, "run-1", "rejected")
    with pytest.raises(ap.ApprovalMissingError, match="the last answer on its plan is 'rejected'"):
        ap.require_deletion_approval(source_dsn, "quotes", "run-1", planned, 0.5)
    approve(planned, "run-1")
    assert ap.require_deletion_approval(source_dsn, "quotes", "run-1", planned, 0.5)["decided_by"] == "approver"


def _erasure_conf(candidate: int, request_id: str) -> dict:
    return {
        "request_id": request_id,
        "action": "erasure",
        "subject_kind": "candidate",
        "subject_id": candidate,
        "received_on": "2025-02-20",
        "preview": True,
    }


def test_an_erasure_is_approved_after_its_preview_and_done_in_the_same_run(api, approvers_policy, db, s3, storage):
    candidate = f.job_application(db, last_contact="2024-11-01")
    other = f.job_application(db, last_contact="2024-11-01")
    dag = load_dag("subject_requests")
    seen: dict = {}

    def respond():
        question = None
        try:
            question = waiting_question("retention_subject_requests", "approve_erasure")
            seen.update(question)
            assert f.ids(db, "job_applications") == {candidate, other}, "previewed: nothing erased yet"
            response = answer(api, "approver", question, "Approve")
            assert response.status_code == 200, response.text
        except BaseException:
            _rescue(api, question)
            raise

    dag_run = run_answering(dag, _erasure_conf(candidate, "DSR-approve-1"), respond, logical_date=None)
    assert set(task_states(dag_run).values()) == {"success"}, task_states(dag_run)
    assert f.ids(db, "job_applications") == {other}, "erased in the same run, after the approval"
    assert seen["subject"] == (
        f"retention_subject_requests: approve erasure request DSR-approve-1 (candidate {candidate})?"
    )
    assert "| live | job_applications | 1 |" in seen["body"]
    erased = xcoms(dag_run)["erase"]
    assert erased["preview"] is False and erased["erased"]["live"] == {"job_applications": 1}
    assert erased["approval"]["decided_by"] == "approver"
    [recorded] = approvals(db)
    assert (recorded["kind"], recorded["request_id"], recorded["decision"]) == ("erasure", "DSR-approve-1", "approved")
    assert recorded["figures"]["would_erase"]["live"] == {"job_applications": 1}
    state = db.execute("SELECT state FROM retention.subject_requests WHERE request_id = 'DSR-approve-1'").fetchone()
    assert state == ("done",)


def test_an_erasure_whose_figures_changed_after_the_approval_erases_nothing(api, approvers_policy, db, s3, storage):
    """A new quote of the customer written while the question waited: the preview before erasing
    no longer matches what was approved (one more quote); the run stops, nothing erased. SAFETY."""
    customer = f.customer(db, ended="2024-10-01")
    shown = f.quote(db, issued="2024-09-01", customer_id=customer)
    dag = load_dag("subject_requests")
    added: list[int] = []

    def respond():
        question = None
        try:
            question = waiting_question("retention_subject_requests", "approve_erasure")
            assert "| live | quotes | 1 |" in question["body"]
            added.append(f.quote(db, issued="2024-09-15", customer_id=customer))
            assert answer(api, "approver", question, "Approve").status_code == 200
        except BaseException:
            _rescue(api, question)
            raise

    conf = _erasure_conf(customer, "DSR-changed-1") | {"subject_kind": "customer"}
    dag_run = run_answering(dag, conf, respond, logical_date=None)
    states = task_states(dag_run)
    assert states["approve_erasure"] == "success" and states["erase"] == "failed", states
    assert f.ids(db, "quotes") == {shown, *added} and f.ids(db, "customers") == {customer}, "nothing erased"
    assert db.execute("SELECT count(*) FROM retention.subject_requests").fetchone()[0] == 0, "never started"


def test_an_access_request_or_an_erasure_without_preview_asks_no_one(approvers_policy, airflow_db, db, s3, storage):
    candidate = f.job_application(db, last_contact="2024-11-01")
    dag = load_dag("subject_requests")
    for task in dag.tasks:
        task.retries = 0
    conf = _erasure_conf(candidate, "DSR-direct-1") | {"preview": False}
    dag_run = dag.test(logical_date=None, run_conf=conf)
    assert set(task_states(dag_run).values()) == {"success"}
    assert xcoms(dag_run)["approve_erasure"] == {
        "decision": "not_needed",
        "reason": "run with preview off: handle_request erased",
    }
    assert xcoms(dag_run)["erase"] == {"erasure": "not asked", "reason": "run with preview off: handle_request erased"}
    assert f.ids(db, "job_applications") == set() and approvals(db) == []
