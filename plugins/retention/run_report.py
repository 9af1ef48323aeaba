"""The `report` task whatever happened upstream: the summary as structured XCom, the table once
in the log, the run's note, dates in Europe/Paris, and, when a task failed, which one and what
was left unchanged.

When every upstream task succeeded, the Markdown table is `retention.tasks.report`'s. When one
failed, the table is built from what the run committed (the audit log of this run and purpose),
so the DPO sees what was done and what was not. Either way the summary (a dict: figures, the
table, the evidence page's path) is the task's return value, also under the XCom key `summary`;
its few figures become the run's note (retention.run_note); and the task fails after reporting
when an upstream task failed, so that the run stays red.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
UPSTREAM = ("plan", "check_before", "approve_deletion", "archive_and_delete", "purge_archives", "check_after")
FAILED_STATES = ("failed", "upstream_failed")

UNCHANGED = {
    "check_before": "the quality gate before the run failed: nothing was archived, deleted or purged.",
    "plan": "planning failed: nothing was archived, deleted or purged.",
    "approve_deletion": (
        "the run was over the mass-deletion guard and its plan was not approved (rejected, or no answer in "
        "time): nothing was archived, deleted or purged."
    ),
    "archive_and_delete": (
        "archive-and-delete failed: batches committed before the failure are archived (verified) and "
        "deleted, as counted below from the audit log; every other row is still in the source, and "
        "an archive object written without its commit is removed by the next run."
    ),
    "purge_archives": "the archive purge failed: objects not yet purged stay in the archive until the next run.",
    "check_after": "the quality gate after the run failed: the deletions counted below are committed; see its log.",
}


def unit_task_ids(context: dict) -> list[str]:
    """The tasks that make up the archive step of a run spread over units: ``prepare_units``,
    ``units_<rule>`` and the mapped ``archive_<rule>`` (retention.dag_factory)."""
    dag = context.get("dag")
    task_ids = list(getattr(dag, "task_ids", []) or [])
    return [
        t
        for t in task_ids
        if t == "prepare_units" or t.startswith("units_") or (t.startswith("archive_") and t != "archive_and_delete")
    ]


def upstream_states(context: dict) -> dict[str, str]:
    """The states of the run's steps. A failed unit of the archive step (a mapped
    ``archive_<rule>``, reported as ``archive_<rule>_<map index>``) is the archive step failing:
    ``archive_and_delete`` is reported failed, and the units that failed under ``failed_units``."""
    ti = context["ti"]
    units = unit_task_ids(context)
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=list(UPSTREAM) + units, run_ids=[ti.run_id])
    found = {task: str(state) for task, state in (states.get(ti.run_id) or {}).items()}
    failed_units = sorted(t for t, state in found.items() if t not in UPSTREAM and state == "failed")
    result = {t: state for t, state in found.items() if t in UPSTREAM}
    if failed_units:
        result["archive_and_delete"] = "failed"
        result["failed_units"] = ", ".join(failed_units)
    return result


def _as_of(context: dict):
    """The instant the run acts as of: its logical date, or for a run without one, its start."""
    return context.get("logical_date") or context["dag_run"].run_after


def _paris(context: dict, policy) -> str:
    return _as_of(context).astimezone(policy.tz).strftime("%Y-%m-%d %H:%M %Z")


def _count(value) -> int:
    """A rule's waiting count: per blocking table in the run's outcome, one number in the audit's."""
    return sum(value.values()) if isinstance(value, dict) else int(value or 0)


def committed_counts(purpose: str, run_id: str) -> list[dict]:
    """What this run of this purpose committed, per rule (the audit log)."""
    import psycopg

    from retention.tasks import source_dsn

    with psycopg.connect(source_dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT rule, table_name, "
            "coalesce(sum(record_count) FILTER (WHERE action IN ('archived_and_deleted', 'deleted')), 0), "
            "coalesce(sum(record_count) FILTER (WHERE action = 'held'), 0), "
            "coalesce(sum(record_count) FILTER (WHERE action = 'waiting'), 0), "
            "count(object_key) FILTER (WHERE action = 'archived_and_deleted'), "
            "coalesce(sum(byte_count) FILTER (WHERE action = 'archived_and_deleted'), 0), "
            "coalesce(sum(record_count) FILTER (WHERE action = 'object_purged'), 0) "
            "FROM retention.audit_log WHERE run_id = %s AND purpose = %s GROUP BY 1, 2 ORDER BY 1",
            (run_id, purpose),
        ).fetchall()
    return [
        {
            "rule": r,
            "table": t,
            "deleted": int(d),
            "held": int(h),
            "waiting": int(w),
            "objects": int(o),
            "archive_bytes": int(b),
            "purged_records": int(p),
        }
        for r, t, d, h, w, o, b, p in rows
    ]


def summary_dict(purpose: str, context: dict, pulled: dict, states: dict, table: str, rules: list[dict]) -> dict:
    """The report as data. Per rule and in ``totals``: due (past the schedule), of which
    deletable, held and waiting, and what was deleted; ``previewed``: a preview or dry run, whose
    deletable is what it would archive / delete (it deleted nothing)."""
    from retention.policy import default_policy
    from retention.run_note import evidence_path
    from retention.status import purpose_mode

    policy = default_policy()
    # The mode the run planned and deleted in (its plan's: retention.tasks.executed_as), not the
    # policy's when the report runs: a purpose set to preview after its run deleted is reported
    # as what the run did.
    planned = pulled.get("plan") if isinstance(pulled.get("plan"), dict) else {}
    mode = planned.get("mode") if planned.get("mode") in ("preview", "enforce") else None
    mode = mode or purpose_mode(policy.purpose(purpose))
    dry_run = bool(context["params"].get("dry_run", False))
    rules = [{k: v for k, v in r.items() if k not in ("held_ids", "waiting_ids")} for r in rules]
    for r in rules:
        if "due" in r:  # the run's outcome; the audit log (a failed run) counts what was committed
            r["deletable"] = r["due"] - r["held"] - _count(r["waiting"]) - _count(r.get("claimed", {}))
    failed = [t for t in UPSTREAM if states.get(t) == "failed"]
    not_run = [t for t in UPSTREAM if states.get(t) == "upstream_failed"]
    first = (failed or not_run or [None])[0]
    bytes_per_tier: dict[str, int] = {}
    for r in rules:
        if r.get("tier", "none") != "none":
            bytes_per_tier[r["tier"]] = bytes_per_tier.get(r["tier"], 0) + r.get("archive_bytes", 0)
    gates = {
        "before": (pulled.get("check_before") or {}).get("before", states.get("check_before", "n/a")),
        "after": (pulled.get("check_after") or {}).get("after", states.get("check_after", "n/a")),
    }
    totals = {key: sum(r.get(key, 0) for r in rules) for key in ("due", "deleted", "held", "objects", "archive_bytes")}
    return {
        "purpose": purpose,
        "run_id": context["run_id"],
        "logical_date": _as_of(context).isoformat(),
        "logical_date_paris": _paris(context, policy),
        "mode": mode,
        "dry_run": dry_run,
        "previewed": mode == "preview" or dry_run,
        "outcome": "failed" if failed or not_run else "success",
        "task_states": states,
        "failed_tasks": failed,
        "not_run": not_run,
        "left_unchanged": UNCHANGED.get(first) if first else None,
        "rules": rules,
        "totals": totals
        | {
            "deletable": sum(r.get("deletable", 0) for r in rules),
            "waiting": sum(_count(r.get("waiting")) for r in rules),
        },
        "bytes_per_tier": bytes_per_tier,
        "purge": pulled.get("purge_archives"),
        "approval": pulled.get("approve_deletion"),
        "gates": gates,
        "table": table,
        "evidence_path": evidence_path(purpose, context["run_id"], _base_url()),
    }


def _base_url() -> str:
    from airflow.sdk.configuration import conf

    return conf.get("api", "base_url", fallback="") or ""


def finished_retirements(conn, purpose: str, run_id: str) -> list[tuple[str, str, str, str]]:
    """(table, partition, state, run that left it) of the partition retirements an interrupted
    run left open that this run finished (retention.archive.partition_finish): 'dropped' (its
    rows archived and audited under that run) or 'kept' (attached again, no row deleted)."""
    return conn.execute(
        "SELECT table_name, partition_name, state, run_id FROM retention.partition_retirements"
        " WHERE purpose = %s AND finished_by = %s AND run_id <> finished_by ORDER BY id",
        (purpose, run_id),
    ).fetchall()


def failure_table(purpose: str, context: dict, states: dict, committed: list[dict]) -> str:
    from retention import tasks

    first = next((t for t in UPSTREAM if states.get(t) == "failed"), None) or next(
        t for t in UPSTREAM if states.get(t) in FAILED_STATES
    )
    lines = [
        f"## retention_{purpose}: RUN FAILED at {first}",
        f"{tasks.run_date_label(context)}, run {context['run_id']}",
        "",
        "tasks: " + ", ".join(f"{t}={states.get(t, 'n/a')}" for t in UPSTREAM),
        *([f"failed units of the archive step: {states['failed_units']}"] if states.get("failed_units") else []),
        f"left unchanged: {UNCHANGED[first]}",
        "",
        "committed by this run (audit log):",
        "",
        "| rule | table | deleted | held | waiting | objects | archive bytes | purged records |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rule']} | {r['table']} | {r['deleted']} | {r['held']} | {r['waiting']} | {r['objects']} "
        f"| {r['archive_bytes']} | {r['purged_records']} |"
        for r in committed
    ] or ["| (nothing) | | 0 | 0 | 0 | 0 | 0 | 0 |"]
    return "\n".join(lines)


def report(purpose, context: dict) -> dict:
    """Render the run's report and note; fail (after logging it) when an upstream task failed.
    ``purpose``: the policy's Purpose object (or its name). Returns the summary (XCom)."""
    from airflow.sdk.exceptions import AirflowFailException

    from retention import tasks

    purpose_obj = tasks.as_purpose(purpose)
    purpose = purpose_obj.name

    ti = context["ti"]
    pulled = {t: ti.xcom_pull(task_ids=t) for t in UPSTREAM}
    states = upstream_states(context)
    failed = [t for t in UPSTREAM if states.get(t) in FAILED_STATES]
    if not failed and all(pulled.get(t) is not None for t in UPSTREAM):
        # It logs the table itself (once: the task does not log its return value).
        table = tasks.report(
            purpose_obj,
            context,
            pulled["plan"],
            pulled["archive_and_delete"],
            pulled["purge_archives"],
            pulled["check_before"],
            pulled["check_after"],
        )
        rules = list((pulled["archive_and_delete"] or {}).get("rules", []))
    else:
        committed = committed_counts(purpose, context["run_id"])
        table = failure_table(purpose, context, states, committed)
        rules = committed
        log.info("%s", table)
    import psycopg

    from retention.run_note import finished_retirement_text

    with psycopg.connect(tasks.source_dsn(), autocommit=True) as conn:
        finished = [
            {"table": table_name, "partition": partition, "state": state, "left_by": left_by}
            for table_name, partition, state, left_by in finished_retirements(conn, purpose, context["run_id"])
        ]
    if finished:
        text = "\n".join(finished_retirement_text(r) for r in finished)
        log.info("%s", text)
        table += "\n\n" + text
    summary = summary_dict(purpose, context, pulled, states, table, rules) | {"finished_retirements": finished}
    ti.xcom_push(key="summary", value=summary)
    write_note(context, summary)
    if failed:
        broken = [t for t in failed if states.get(t) == "failed"] or failed
        raise AirflowFailException(f"retention_{purpose}: {', '.join(broken)} failed; the report says what was done")
    return summary


def write_note(context: dict, summary: dict) -> None:
    """The run's note (retention.run_note): set through the REST API, or logged why not; the
    report never fails for it."""
    from retention import run_note

    ours = run_note.note_text(summary, summary["evidence_path"])
    outcome = run_note.publish(f"retention_{summary['purpose']}", context["run_id"], ours)
    if outcome == "set":
        log.info("run note set; evidence: %s", summary["evidence_path"])
    else:
        log.warning("run note %s; evidence: %s", outcome, summary["evidence_path"])
