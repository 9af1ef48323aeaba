"""A gate's report: one result line per expectation, the summary table, the failure it raises.

Every check, whether GX validated it or the gate computed it in SQL, ends as one result line of
the same shape (expectation, table, success, observed counts); a gate's report is their list
with a pass count and a summary table, logged, returned as the task's XCom and, on a failure,
raised as ``QualityGateError``. Counts, types, column names and object keys only, never row
contents.
"""

from __future__ import annotations

import logging

from retention.archive.run import RetentionError, RunContext

log = logging.getLogger(__name__)

MAX_LISTED = 5  # object keys listed in a result (the counts cover them all)


class QualityGateError(RetentionError):
    """A data-quality gate failed; the message names the expectations, tables and counts."""


def gate_result(
    expectation: str,
    table: str,
    success: bool | None,
    *,
    column: str | None = None,
    where: str | None = None,
    rule: str | None = None,
    **observed,
) -> dict:
    """One line of a gate's report; success None = skipped."""
    result: dict = {"expectation": expectation, "table": table, "success": success}
    if column:
        result["column"] = column
    if rule:
        result["rule"] = rule
    if where:
        result["where"] = where
    result["observed"] = observed
    return result


def gate_report(phase: str, results: list[dict]) -> dict:
    checked = [r for r in results if r["success"] is not None]
    passed = sum(r["success"] is True for r in checked)
    asked = sum(bool(r.get("awaiting_approval")) for r in results)
    return {
        phase: f"{passed}/{len(checked)} expectations passed"
        + (f", {asked} over the mass-deletion guard: approval asked" if asked else ""),
        "skipped": len(results) - len(checked),
        "results": results,
        "summary": _summary_table(results),
    }


def short_message(error: object, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label(result: dict) -> str:
    label = result["expectation"] + (f"({result['column']})" if result.get("column") else "")
    label += f"[{result['rule']}]" if result.get("rule") else ""
    return label + (f" where {result['where']}" if result.get("where") else "")


def _status(result: dict) -> str:
    if result["success"] is None:
        return "skipped"
    if result["success"]:
        return "ok"
    if result.get("awaiting_approval"):
        return "approval asked"
    return "FAILED" if result.get("enforced", True) else "reported"


def _observed_text(result: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in result["observed"].items())


def _summary_table(results: list[dict]) -> str:
    rows = [("expectation", "table", "success", "observed")]
    rows += [(_label(r), r["table"], _status(r), _observed_text(r)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}" for row in rows)


def log_summary(title: str, results: list[dict]) -> None:
    log.info("%s\n%s", title, _summary_table(results))


def raise_on_failures(phase: str, purpose: str, ctx: RunContext, results: list[dict], consequence: str) -> None:
    failures = [r for r in results if r["success"] is False and r.get("enforced", True)]
    if not failures:
        return
    lines = [f"  - {_label(r)} on {r['table']}: {r.get('message') or _observed_text(r)}" for r in failures]
    raise QualityGateError(
        f"{phase}-gate of purpose {purpose!r} failed at logical date {ctx.logical_date.isoformat()}: "
        f"{len(failures)} of {sum(r['success'] is not None for r in results)} expectations failed; "
        f"{consequence}.\n" + "\n".join(lines)
    )
