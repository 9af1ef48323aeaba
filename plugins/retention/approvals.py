"""Approvals: what a run asks a person before it deletes, what it shows, and the evidence kept.

Two questions are asked in the Airflow UI (the operators are in retention.approval_tasks):

- **a deletion over the mass-deletion guard**: a run whose plan would delete more of a table than
  ``max_delete_fraction`` waits for an approver, shown the plan's figures (per rule and table:
  due, held, waiting, would delete; the share of each table; the mode);
- **an erasure after its preview**: a data-subject erasure previewed in a run waits for an
  approver, shown what it would erase and what it keeps, then erases in the same run.

An approval covers the figures it showed and nothing else: it is recorded with the SHA-256 of the
plan (or the preview's figures) in ``retention.approvals``, and the archive step of a run over the
guard deletes nothing unless its run has an approval of its own plan's hash
(``require_deletion_approval``); an erasure previews again before erasing and stops if the
figures changed. Counts, ids and keys only: the figures never hold row contents.

No Airflow and no heavy import at module level: the tasks and the Retention page use it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from retention.archive.run import RetentionError

DELETION = "deletion"
ERASURE = "erasure"


class ApprovalMissingError(RetentionError):
    """A run over the mass-deletion guard reached its archive step without an approval of its plan."""


class FiguresChangedError(RetentionError):
    """What an erasure would do now is not what its approval showed."""


def sha256_of(figures: dict) -> str:
    """The hash an approval is bound to: of the figures as JSON, keys sorted."""
    return hashlib.sha256(json.dumps(figures, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- a deletion over the guard


def deletable(rule: dict) -> int:
    """A planned rule's rows to delete: due, minus held, minus waiting (retention.planner.RuleOutcome)."""
    return rule["due"] - rule["held"] - sum(rule.get("waiting", {}).values())


def share(count: int, rows: int) -> float:
    """The share of a table a run deletes, as the mass-deletion guard computes it."""
    return count / rows if rows else float(count > 0)


def table_rows(planned: dict, gate_rows: dict | None = None) -> dict[str, int]:
    """Each table's rows as the guard counts them: the plan's count, or the before gate's (taken
    later: ``gate_rows``, its report's ``table_rows``) when smaller. A table the application
    emptied meanwhile makes the same deletion a larger share: the gate says so, and the approval
    and archive steps must judge it as the gate did."""
    rows = dict(planned.get("table_rows", {}))
    for table, count in (gate_rows or {}).items():
        if table in rows:
            rows[table] = min(rows[table], count)
    return rows


def deletion_digest(planned: dict, gate_rows: dict | None = None) -> str:
    """What an approval of a deletion binds: the plan and the table sizes the guard was judged
    on (found by a review: with the plan's hash alone, a table emptied while the question waited
    went at a share no one was shown)."""
    return sha256_of({"plan": planned, "table_rows": table_rows(planned, gate_rows)})


def over_guard(planned: dict, max_fraction: float, gate_rows: dict | None = None) -> dict[str, dict]:
    """The tables the plan would delete more of than ``max_fraction``: would delete, rows, share.
    Empty for a dry run or a preview (nothing is deleted). The approval step and the archive step
    both decide from the plan's figures and the before gate's row counts (``table_rows``), so they
    agree with each other and with the gate."""
    if planned.get("dry_run"):
        return {}
    by_table: dict[str, int] = {}
    for rule in planned["rules"]:
        by_table[rule["table"]] = by_table.get(rule["table"], 0) + deletable(rule)
    rows = table_rows(planned, gate_rows)
    over = {}
    for table, count in sorted(by_table.items()):
        fraction = share(count, rows.get(table, 0))
        if fraction > max_fraction:
            over[table] = {"would_delete": count, "table_rows": rows.get(table, 0), "share": round(fraction, 4)}
    return over


def deletion_figures(planned: dict, max_fraction: float, gate_rows: dict | None = None) -> dict:
    """What the approver is shown of a run's plan, and what the evidence keeps: counts only."""
    rows = table_rows(planned, gate_rows)
    by_table: dict[str, int] = {}
    for rule in planned["rules"]:
        by_table[rule["table"]] = by_table.get(rule["table"], 0) + deletable(rule)
    return {
        "purpose": planned["purpose"],
        "logical_date": planned["logical_date"],
        "mode": planned.get("mode"),
        "max_delete_fraction": max_fraction,
        "rules": [
            {
                "rule": r["rule"],
                "table": r["table"],
                "tier": r["tier"],
                "due": r["due"],
                "held": r["held"],
                "waiting": sum(r.get("waiting", {}).values()),
                "would_delete": deletable(r),
            }
            for r in planned["rules"]
        ],
        "tables": {
            t: {"would_delete": n, "table_rows": rows.get(t, 0), "share": round(share(n, rows.get(t, 0)), 4)}
            for t, n in sorted(by_table.items())
        },
        "over_guard": sorted(over_guard(planned, max_fraction, gate_rows)),
    }


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.2f}".rstrip("0").rstrip(".") + "%"


def deletion_question(dag_id: str, run_id: str, figures: dict, plan_sha256: str) -> tuple[str, str]:
    """The subject and the Markdown body the approver reads in the Airflow UI."""
    over = figures["over_guard"]
    tables = figures["tables"]
    subject = (
        f"{dag_id}: approve deleting "
        + ", ".join(f"{_percent(tables[t]['share'])} of {t}" for t in over)
        + f" (over max_delete_fraction {_percent(figures['max_delete_fraction'])})?"
    )
    from retention.policy import default_policy

    # In the policy's time zone, as every date the DPO reads.
    logical = dt.datetime.fromisoformat(figures["logical_date"]).astimezone(default_policy().tz)
    lines = [
        f"**{dag_id}**, run `{run_id}`, mode **{figures['mode']}**, logical date {logical:%Y-%m-%d %H:%M %Z}.",
        "",
        f"This run would delete more than **{_percent(figures['max_delete_fraction'])}** of "
        + ", ".join(f"`{t}`" for t in over)
        + " (the mass-deletion guard). Nothing has been deleted. **Approve** to archive then delete "
        "exactly this plan (at most these counts); **Reject** to stop the run (nothing deleted).",
        "",
        "| table | would delete | rows in table | share |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {t}{' **(over the guard)**' if t in over else ''} | {v['would_delete']:,} | {v['table_rows']:,} "
        f"| {_percent(v['share'])} |"
        for t, v in tables.items()
    ]
    lines += ["", "| rule | table | tier | due | held | waiting | would delete |", "|---|---|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['rule']} | {r['table']} | {r['tier']} | {r['due']:,} | {r['held']:,} | {r['waiting']:,} "
        f"| {r['would_delete']:,} |"
        for r in figures["rules"]
    ]
    lines += [
        "",
        f"The approval covers this plan only (SHA-256 `{plan_sha256[:16]}…`): if the run plans again, "
        "or the policy changes, it deletes nothing without a new approval.",
    ]
    return subject, "\n".join(lines)


def require_deletion_approval(
    dsn: str, purpose: str, run_id: str, planned: dict, max_fraction: float, gate_rows: dict | None = None
) -> dict | None:
    """Before a unit of the archive step deletes: a plan over the guard needs an approval of this
    very plan (its hash) recorded for this run, and no later answer on it (a rejection after an
    approval, the question asked again); without one, ``ApprovalMissingError`` (nothing is
    deleted). Returns the approval (None when the plan is within the guard or deletes nothing)."""
    over = over_guard(planned, max_fraction, gate_rows)
    if not over:
        return None
    import psycopg

    digest = deletion_digest(planned, gate_rows)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT decided_by, decided_at, decision FROM retention.approvals WHERE kind = 'deletion'"
            " AND purpose = %s AND run_id = %s AND plan_sha256 = %s ORDER BY id DESC LIMIT 1",
            (purpose, run_id, digest),
        ).fetchone()
    if row is None or row[2] != "approved":
        answer = (
            "no approval of its plan" if row is None else f"the last answer on its plan is {row[2]!r} (by {row[0]})"
        )
        raise ApprovalMissingError(
            f"run {run_id!r} of {purpose!r} would delete more than max_delete_fraction={max_fraction} of "
            f"{', '.join(sorted(over))}, and {answer} (SHA-256 {digest[:12]}): nothing was deleted. Its "
            "approve_deletion task asks for one; an approval given for another plan does not count."
        )
    return {"decided_by": row[0], "decided_at": row[1].isoformat(), "plan_sha256": digest}


# ---------------------------------------------------------------- an erasure after its preview


def erasure_figures(report: dict) -> dict:
    """What an erasure's preview says it would do, as the approver sees it and the hash covers:
    rows found and to erase per source and table, archive objects to rewrite, what is kept and
    why. Counts, keys and reasons only (the preview report holds no personal data)."""
    return {
        "request_id": report["request_id"],
        "action": report["action"],
        "subject": report["subject"],
        "found": report["found"],
        "would_erase": {k: v for k, v in report.get("erased", {}).items() if k in ("live", "intermediate")},
        "objects": sorted((o["key"], o["table"], o["subject_rows"], o["action"]) for o in report.get("objects", [])),
        "kept": sorted(
            (
                (k["source"], k["table"], k["reason"], k.get("kept_until") or "", k["records"])
                for k in report.get("kept", [])
            ),
        ),
        "marketing_objection": report.get("marketing_objection"),
    }


def erasure_to_approve(figures: dict) -> bool:
    """Something to erase (live rows, archived rows, an objection to record): worth asking."""
    erase = figures["would_erase"]
    return bool(
        sum(erase.get("live", {}).values())
        or sum(erase.get("intermediate", {}).values())
        or figures.get("marketing_objection") == "would_record"
    )


def erasure_question(dag_id: str, run_id: str, figures: dict, digest: str) -> tuple[str, str]:
    subject_ref = figures["subject"]
    who = f"{subject_ref['kind']} {subject_ref['ref']}"
    erase = figures["would_erase"]
    subject = f"{dag_id}: approve erasure request {figures['request_id']} ({who})?"
    lines = [
        f"Erasure request **{figures['request_id']}** ({who}), run `{run_id}`. The preview changed nothing. "
        "**Approve** to erase what it found in this run; **Reject** to stop (nothing erased).",
        "",
        "| where | table | would erase |",
        "|---|---|---:|",
    ]
    lines += [f"| live | {t} | {n:,} |" for t, n in sorted(erase.get("live", {}).items())]
    lines += [f"| intermediate archive | {t} | {n:,} |" for t, n in sorted(erase.get("intermediate", {}).items())]
    rewrites = [o for o in figures["objects"] if o[3] == "would_rewrite"]
    lines += ["", f"Archive objects rewritten without the person's rows: {len(rewrites)}."]
    if figures.get("marketing_objection") == "would_record":
        lines.append("The person's objection to marketing is recorded.")
    if figures["kept"]:
        lines += ["", "Kept (and reported to the person):", "", "| where | table | why | until | records |"]
        lines += ["|---|---|---|---|---:|"]
        lines += [f"| {s} | {t} | {why} | {until or '-'} | {n:,} |" for s, t, why, until, n in figures["kept"]]
    lines += [
        "",
        f"The approval covers these figures only (SHA-256 `{digest[:16]}…`): the run previews again before "
        "erasing and stops, erasing nothing, if they changed.",
    ]
    return subject, "\n".join(lines)


# ---------------------------------------------------------------- the evidence


def record(
    dsn: str,
    *,
    kind: str,
    dag_id: str,
    run_id: str,
    plan_sha256: str,
    figures: dict,
    decision: str,
    decided_by: str | None,
    decided_at: dt.datetime,
    purpose: str | None = None,
    request_id: str | None = None,
) -> None:
    """One answer (or its absence) in ``retention.approvals``."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO retention.approvals (kind, dag_id, run_id, purpose, request_id, plan_sha256, figures,"
            " decision, decided_by, decided_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                kind,
                dag_id,
                run_id,
                purpose,
                request_id,
                plan_sha256,
                json.dumps(figures, default=str),
                decision,
                decided_by,
                decided_at,
            ),
        )


def approvals_of_run(conn, purpose: str, run_id: str) -> list[dict]:
    """The approvals a run of a purpose asked for, for its evidence (the Retention page)."""
    rows = conn.execute(
        "SELECT kind, decision, decided_by, decided_at, plan_sha256, figures FROM retention.approvals"
        " WHERE purpose = %s AND run_id = %s ORDER BY id",
        (purpose, run_id),
    ).fetchall()
    return [
        {
            "kind": kind,
            "decision": decision,
            "decided_by": by,
            "decided_at": at.isoformat(),
            "plan_sha256": digest,
            "figures": figures,
        }
        for kind, decision, by, at, digest, figures in rows
    ]
