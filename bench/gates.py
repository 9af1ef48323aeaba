"""The quality gates (plugins/retention/gates/) as the bench calls them.

The only place the bench touches the gates' signatures, so a change of ``run_before_gates`` /
``run_after_gates`` is a one-line fix here. The arguments are the DAG's
(retention.tasks.check_before / check_after): the purpose's own max_delete_fraction and the
run's plan, the after gate given the before report and the archive task's result.
"""

from __future__ import annotations


def before(policy, purpose: str, dsn: str, ctx, max_delete_fraction: float | None = None, plan=None) -> dict:
    """The before-gate with the purpose's max_delete_fraction (the DAG param's default) unless
    given, judging the run's ``plan`` (the plan task's) as in the DAG."""
    from retention.gates import run_before_gates

    fraction = policy.purpose(purpose).max_delete_fraction if max_delete_fraction is None else max_delete_fraction
    return run_before_gates(policy, purpose, dsn, ctx, fraction, plan=plan)


def after(policy, purpose: str, dsn: str, store, ctx, before_report: dict, archived: dict) -> dict:
    from retention.gates import run_after_gates

    return run_after_gates(policy, purpose, dsn, store, ctx, before_report, archived)


def gate_error():
    """The exception class a failed gate raises (reported, not fatal, in the bench)."""
    from retention.gates import QualityGateError

    return QualityGateError


def preload() -> None:
    """Import the gates' modules (GX is a 5 s import): timed apart from the gates themselves."""
    import great_expectations  # noqa: F401
    import retention.gates  # noqa: F401
