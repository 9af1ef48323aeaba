"""The approval steps of the DAGs: Airflow's human-in-the-loop ``ApprovalOperator`` (standard
provider), asking what retention.approvals words, recording the answer as evidence.

- ``ApproveDeletion`` (every purpose's DAG, between the before-gate and the archive step): asks
  only when the run's plan would delete more of a table than ``max_delete_fraction``; otherwise
  it returns at once ("not needed"). The archive step checks the approval again
  (retention.approvals.require_deletion_approval), so marking this task "success" by hand
  deletes nothing.
- ``ApproveErasure`` (the subject-requests DAG, after ``handle_request``): asks only after the
  preview of an erasure that found something to erase; ``erase_approved`` (the ``erase`` task)
  then previews again and erases if the figures are the ones approved.

The task waits in Airflow's ``awaiting_input`` state (no worker slot, no triggerer); an approver
answers under Browse > Required Actions, or on the task's page. Who may answer and how long the
run waits come from the policy file (``approvals``). **Approve**: the run goes on. **Reject**, or
no answer in time: the task fails at once (no retry: a person decided, or no one did), nothing is
deleted, and its failure e-mail goes (retention.alerts). Each answer, and a wait that ran out, is
a row of ``retention.approvals`` (who, when, the figures shown, the hash they cover).

Imported at parse time by the DAG factory (the operator classes): the standard provider's HITL
module only; the database and the engine are imported when a task runs.
"""

from __future__ import annotations

import datetime as dt
import logging

from airflow.providers.standard.exceptions import HITLRejectException, HITLTimeoutError
from airflow.providers.standard.operators.hitl import ApprovalOperator

from retention.approvals import DELETION, ERASURE
from retention.policy.model import Approvals

log = logging.getLogger(__name__)


# The XCom key of the figures an approval step showed (and their hash).
ASKED = "asked"


def gate_table_rows(context) -> dict | None:
    """The before gate's row count per table (its report, XCom of ``check_before``)."""
    report = context["ti"].xcom_pull(task_ids="check_before")
    return report.get("table_rows") if isinstance(report, dict) else None


class _Approval(ApprovalOperator):
    """What both approvals share: approvers and wait from the policy, the answer recorded, a
    rejection or a wait run out failing the task without retry."""

    kind = ""

    def __init__(self, *, approvals: Approvals, **kwargs) -> None:
        super().__init__(
            subject="(written when the run asks)",
            fail_on_reject=True,
            assigned_users=[{"id": user, "name": user} for user in approvals.approvers] or None,
            response_timeout=dt.timedelta(hours=approvals.wait_hours),
            **kwargs,
        )

    def question(self, context) -> dict | None:
        """{"subject", "body", "figures", "sha256", ...}: what to ask; None: nothing to approve."""
        raise NotImplementedError

    def not_asked(self, context) -> dict:
        raise NotImplementedError

    def execute(self, context):
        asked = self.question(context)
        if asked is None:
            result = self.not_asked(context)
            log.info("no approval needed: %s", result["reason"])
            return result
        self.subject, self.body = asked["subject"], asked["body"]
        # What the approver is shown, kept with the task (a resumed task keeps its XComs; a new
        # try starts without them and asks again): the answer is about these figures.
        context["ti"].xcom_push(key=ASKED, value={k: v for k, v in asked.items() if k not in ("subject", "body")})
        log.info("asking for approval (figures SHA-256 %s): %s", asked["sha256"][:12], self.subject)
        return super().execute(context)  # parks the task until someone answers

    def execute_complete(self, context, event):
        from airflow.sdk.exceptions import AirflowFailException

        # The answer is recorded for what was shown. The XComs the question is made of may have
        # changed while it waited (an upstream task cleared and run again): the run then stops,
        # its approval bound to the figures shown, which it will not delete.
        shown = context["ti"].xcom_pull(task_ids=self.task_id, key=ASKED)
        now = self.question(context)
        asked = shown or now
        try:
            answer = super().execute_complete(context=context, event=event)
        except HITLTimeoutError as exc:
            self._record(context, asked, "timed_out", None, dt.datetime.now(dt.UTC))
            raise AirflowFailException(
                f"no answer to the approval within {_duration(self.response_timeout)}: {self.stopped}; the evidence "
                "(retention.approvals) records the wait that ran out"
            ) from exc
        except HITLRejectException as exc:
            by = (event.get("responded_by_user") or {}).get("id")
            self._record(context, asked, "rejected", by, event["responded_at"])
            raise AirflowFailException(f"rejected by {by}: {self.stopped}") from exc
        by = answer["responded_by_user"]["id"]
        at = answer["responded_at"]
        self._record(context, asked, "approved", by, at)
        if shown is not None and (now is None or now["sha256"] != shown["sha256"]):
            raise AirflowFailException(
                f"approved by {by}, but the figures changed while the question waited (SHA-256 "
                f"{shown['sha256'][:12]} shown, {now['sha256'][:12] if now else 'nothing to approve'} now): "
                f"{self.stopped}. Clear this task to ask again on the figures as they are"
            )
        log.info("approved by %s at %s", by, at.isoformat())
        return {"decision": "approved", "decided_by": by, "decided_at": at.isoformat(), "sha256": asked["sha256"]}

    stopped = "nothing was changed"

    def _record(self, context, asked: dict | None, decision: str, by: str | None, at: dt.datetime) -> None:
        from retention import approvals
        from retention.tasks import source_dsn

        if asked is None:  # the XComs it asked from are gone (a cleared upstream): nothing to bind
            return
        approvals.record(
            source_dsn(),
            kind=self.kind,
            dag_id=context["ti"].dag_id,
            run_id=context["run_id"],
            plan_sha256=asked["sha256"],
            figures=asked["figures"],
            decision=decision,
            decided_by=by,
            decided_at=at,
            purpose=asked.get("purpose"),
            request_id=asked.get("request_id"),
        )


def _duration(wait: dt.timedelta) -> str:
    seconds = wait.total_seconds()
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


class ApproveDeletion(_Approval):
    """A run whose plan exceeds the mass-deletion guard waits here for an approver."""

    kind = DELETION
    stopped = "nothing was archived, deleted or purged"

    def question(self, context) -> dict | None:
        from retention import approvals

        planned = context["ti"].xcom_pull(task_ids="plan")
        max_fraction = float(context["params"]["max_delete_fraction"])
        gate_rows = gate_table_rows(context)
        if not planned or not approvals.over_guard(planned, max_fraction, gate_rows):
            return None
        figures = approvals.deletion_figures(planned, max_fraction, gate_rows)
        digest = approvals.deletion_digest(planned, gate_rows)
        subject, body = approvals.deletion_question(context["ti"].dag_id, context["run_id"], figures, digest)
        return {
            "subject": subject,
            "body": body,
            "figures": figures,
            "sha256": digest,
            "purpose": planned["purpose"],
        }

    def not_asked(self, context) -> dict:
        planned = context["ti"].xcom_pull(task_ids="plan") or {}
        reason = (
            "a dry run or a preview deletes nothing"
            if planned.get("dry_run")
            else "every table's share is within max_delete_fraction"
        )
        return {"decision": "not_needed", "reason": reason}


class ApproveErasure(_Approval):
    """An erasure request previewed in this run waits here for an approver, then ``erase`` runs."""

    kind = ERASURE
    stopped = "nothing was erased"

    def question(self, context) -> dict | None:
        from retention import approvals

        report = context["ti"].xcom_pull(task_ids="handle_request")
        if not report or report.get("action") != "erasure" or not report.get("preview"):
            return None
        figures = approvals.erasure_figures(report)
        if not approvals.erasure_to_approve(figures):
            return None
        digest = approvals.sha256_of(figures)
        subject, body = approvals.erasure_question(context["ti"].dag_id, context["run_id"], figures, digest)
        return {
            "subject": subject,
            "body": body,
            "figures": figures,
            "sha256": digest,
            "request_id": report["request_id"],
        }

    def not_asked(self, context) -> dict:
        report = context["ti"].xcom_pull(task_ids="handle_request") or {}
        if report.get("action") != "erasure":
            reason = "not an erasure"
        elif not report.get("preview"):
            reason = "run with preview off: handle_request erased"
        else:
            reason = "the preview found nothing to erase"
        return {"decision": "not_needed", "reason": reason}


def erase_approved(context, approval: dict) -> dict:
    """The ``erase`` task: after an approved preview, preview again and, if the figures are the
    ones approved, erase (retention.rights). Anything else: nothing to do, said so."""
    from airflow.sdk.exceptions import AirflowFailException

    from retention import approvals, tasks

    if not approval or approval.get("decision") != "approved":
        return {"erasure": "not asked", "reason": (approval or {}).get("reason", "no approval asked")}
    again = approvals.erasure_figures(tasks.subject_request(context, preview=True))
    digest = approvals.sha256_of(again)
    if digest != approval["sha256"]:
        # On a retry the change may be this task's own earlier try, stopped part way (found by a
        # review: the message said nothing was erased).
        earlier = (
            ": nothing was erased"
            if context["ti"].try_number <= 1
            else " (an earlier try of this task may have erased part of it: the request's evidence and that try's "
            "log say what): this try erased nothing"
        )
        error = approvals.FiguresChangedError(
            f"the request's preview changed since it was approved (figures SHA-256 {approval['sha256'][:12]} "
            f"approved, {digest[:12]} now){earlier}; trigger the request again to preview and approve"
        )
        raise AirflowFailException(str(error)) from error
    report = tasks.subject_request(context, preview=False)
    return report | {"approval": approval}
