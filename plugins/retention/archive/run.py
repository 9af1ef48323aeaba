"""What a run is: its context (purpose, logical date, run id, batch size, mode), its shares
(units of one rule and id range, for a run spread over workers), the refusal of a future
logical date, and the errors a run stops with.

No I/O and no heavy import: the tasks, the gates and the rights requests share these.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from retention.future_dates import FUTURE_TOLERANCE  # a run dated later than now + this is refused
from retention.planner import Plan
from retention.policy import DEFAULT_BATCH_SIZE

# Ids run up to this (bigint): the upper bound of a rule's batches when the run is not split.
MAX_ID = 2**63 - 1
# A rule with more deletable rows than this is spread over several units (mapped tasks), one
# per range of ids of about this many rows (retention.dag_factory).
RANGE_ROWS = 250_000
# At most this many units per rule (Airflow's max_map_length is 1024): a smaller range size is
# widened to fit.
MAX_UNITS_PER_RULE = 64


class RetentionError(RuntimeError):
    """A run stopped on purpose; the message says why and what was (not) changed."""


class PurposeLockedError(RetentionError):
    pass


class FutureLogicalDateError(RetentionError):
    pass


class PlanMismatchError(RetentionError):
    """The approved plan is not the one this run would execute (policy changed, other date)."""


class CommittedBatchError(RetentionError):
    """A step after a batch's commit failed: the rows are archived and deleted; the next run
    finishes the step (locks, file disposals)."""


def refuse_future(logical_date: dt.datetime, now: dt.datetime | None = None) -> None:
    """Airflow takes any logical date (trigger dialog, REST, `dags test`): a run dated in the
    future would apply future cutoffs, deleting and purging before their time."""
    now = now or dt.datetime.now(dt.UTC)
    if logical_date > now + FUTURE_TOLERANCE:
        raise FutureLogicalDateError(
            f"logical date {logical_date.isoformat()} is after now ({now.isoformat(timespec='seconds')}): "
            "a retention run acts as of its logical date, so a future date would delete and purge records "
            "before their time. Nothing was changed; trigger the run with a logical date in the past."
        )


@dataclass(frozen=True)
class RunContext:
    """What a run is: which purpose, for which logical date, under which run id.

    ``dry_run`` is what the run does: the per-run param, or the purpose's preview mode."""

    purpose: str
    run_id: str
    logical_date: dt.datetime
    batch_size: int = DEFAULT_BATCH_SIZE
    dry_run: bool = False
    mode: str = "enforce"
    # The task's try (Airflow's try_number): a retried unit names its objects apart from those of
    # a try killed before its commit, whose upload intents keep their keys until the next
    # run's recovery removes them.
    attempt: int = 1

    def __post_init__(self) -> None:
        if self.logical_date.tzinfo is None:
            raise ValueError("logical_date must be timezone-aware")
        if not 1 <= self.batch_size <= 1_000_000:
            raise ValueError(f"batch_size must be between 1 and 1,000,000, got {self.batch_size}")
        if self.mode not in ("preview", "enforce"):
            raise ValueError(f"mode must be 'preview' or 'enforce', got {self.mode!r}")


@dataclass(frozen=True)
class Unit:
    """A share of a run: one rule, its ids ``first_id..last_id``, at most ``rows`` of them (the
    plan's count for that range; None: the rule's whole deletable count). ``audited_before``: how
    many of the run's deletions were audited before the plan that made it (``Plan.audited_before``:
    the run's audit log only grows, so a plan with as many counted without the same ones)."""

    rule: str
    first_id: int = 1
    last_id: int = MAX_ID
    rows: int | None = None
    audited_before: int = 0

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "rows": self.rows,
            "audited_before": self.audited_before,
        }


def plan_units(plan: Plan) -> list[list[Unit]]:
    """Per rule, in policy order, the units of the plan: one per id range of a large rule
    (``Plan.ranges``), else one for the whole rule. Each rule has at least one unit, so that the
    rules' mapped tasks chain (a rule with nothing to delete has one unit that deletes nothing)."""
    before = len(plan.audited_before)
    return [
        [Unit(o.rule, r.first_id, r.last_id, r.rows, before) for r in plan.ranges.get(o.rule, [])]
        or [Unit(o.rule, rows=o.deletable, audited_before=before)]
        for o in plan.rules
    ]


def deletions_audited(conn, run_id: str, purpose: str) -> list[int]:
    """The ids of the audit rows of a run's deletions committed so far, in the caller's
    snapshot: none on a run's first plan, some when it is cleared whole and plans and checks again
    (``Plan.audited_before``, the before gate's ``audited_before``)."""
    rows = conn.execute(
        "SELECT id FROM retention.audit_log WHERE run_id = %s AND purpose = %s"
        " AND action IN ('archived_and_deleted', 'deleted') ORDER BY id",
        (run_id, purpose),
    ).fetchall()
    return [i for (i,) in rows]
