"""The before-gate's checks on the run's plan: the mass-deletion guard (a run that would delete
more than ``max_delete_fraction`` of a table fails the gate, so nothing is deleted; reported, not
enforced, on a dry run) and the rules' overlap (a due row that another rule selects too).
"""

from __future__ import annotations

from collections import Counter

from retention.archive.run import RetentionError, RunContext
from retention.gates.figures import connect
from retention.gates.results import gate_result
from retention.planner import Plan, Planner
from retention.policy import Policy, Purpose


def deletion_share_results(
    policy: Policy,
    purpose: Purpose,
    dsn: str,
    ctx: RunContext,
    table_rows: dict,
    max_fraction: float,
    plan: Plan | None = None,
) -> list[dict]:
    """The mass-deletion guard, from the run's plan (due - held - waiting per rule, summed per
    table): the same SQL that selects the rows to delete, projected over the run (a parent whose
    children go earlier in the run counts), and the most the engine will delete. Without a plan
    the planner is run here. On a dry run it is reported, not enforced (nothing will be deleted)."""
    deletable: Counter = Counter()
    if plan is None:
        with connect(dsn) as conn:
            outcomes = Planner.load(conn, policy, purpose).plan(conn, ctx.logical_date)
    else:
        if plan.purpose != purpose.name or plan.logical_date != ctx.logical_date:
            raise RetentionError(f"the plan is for {plan.purpose!r} at {plan.logical_date}, not this run's")
        outcomes = plan.rules
    for outcome in outcomes:
        deletable[outcome.table] += outcome.deletable
    results = []
    for table, count in deletable.items():
        rows = table_rows[table]
        share = count / rows if rows else float(count > 0)
        qualified = f"{policy.source_schema}.{table}"
        result = gate_result(
            "mass_deletion_guard",
            qualified,
            share <= max_fraction,
            would_delete=count,
            table_rows=rows,
            fraction=round(share, 4),
            max_delete_fraction=max_fraction,
        )
        if share > max_fraction:
            result["message"] = (
                f"this run would delete {_percent(share)} of {qualified} ({count:,} of {rows:,} rows) > "
                f"max_delete_fraction={_percent(max_fraction)}; raise the max_delete_fraction param for this "
                "run if intended"
            )
        if ctx.dry_run:
            result["enforced"] = False
        results.append(result)
    return results + overlap_results(policy, purpose, outcomes)


def overlap_results(policy: Policy, purpose: Purpose, outcomes) -> list[dict]:
    """One failed result per pair of rules that select the same due rows (``RuleOutcome.claimed``):
    each rule would delete them on its own period, the shorter first. The planner keeps them
    from both; the policy must be mended. Enforced on a dry run too: a preview shows it."""
    results = []
    for outcome in outcomes:
        for other, rows in sorted(outcome.claimed.items()):
            qualified = f"{policy.source_schema}.{outcome.table}"
            result = gate_result(
                "rules_select_disjoint_rows", qualified, False, rule=outcome.rule, other_rule=other, rows=rows
            )
            other_purpose, other_rule = other.split(".", 1)
            result["message"] = (
                f"{rows:,} due rows of {qualified} that rule {purpose.name}.{outcome.rule} selects are selected by "
                f"rule {other} too: two rules must never select the same row (each would delete it on its own "
                f"period). Both keep them; mend include/sql/{purpose.name}/{outcome.rule}.sql or "
                f"include/sql/{other_purpose}/{other_rule}.sql"
            )
            results.append(result)
    return results


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}".removesuffix(".0") + "%"


def awaiting_approval(results: list[dict]) -> list[dict]:
    """In a DAG run, a share over the guard is a question for a person, not a failed gate: the run's
    approve_deletion step asks it (the archive step deletes nothing without the answer)."""
    for result in results:
        if (
            result["expectation"] == "mass_deletion_guard"
            and result["success"] is False
            and result.get("enforced", True)
            and "error" not in result["observed"]
        ):
            result["enforced"] = False
            result["awaiting_approval"] = True
            result["message"] = result["message"].replace(
                "raise the max_delete_fraction param for this run if intended",
                "the run's approve_deletion step asks for an approval before anything is deleted",
            )
    return results
