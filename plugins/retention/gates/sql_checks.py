"""The after-gate's checks computed in SQL rather than by GX.

Nothing due is left (each rule's own SQL, through the planner), the manifest agrees with the
audit log, and no archive object is kept past its purge date. Each ends as a result line of
the same shape as GX's (``retention.gates.results``).
"""

from __future__ import annotations

from collections import Counter

from retention.archive.purge import clock_not_due, policy_keeps_longer
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.gates.results import MAX_LISTED, gate_result
from retention.planner import Planner
from retention.policy import Policy
from retention.policy.coverage import covered_records_sql, object_covered


def due_left_results(
    planner: Planner, conn, ctx: RunContext, dry_run: bool, archived: dict | None = None
) -> list[dict]:
    """Each rule's SQL at the logical date: no due row that is neither held nor waiting remains,
    except the rows the archive step found beyond the approved plan and left for the next run
    (reported with the result)."""
    beyond: Counter = Counter()
    for r in (archived or {}).get("rules", []):
        beyond[r["rule"]] += r.get("beyond_plan", 0)
    results = []
    for rule in planner.purpose.rules:
        table = f"{planner.schema}.{rule.table}"
        if dry_run:
            results.append(gate_result("no_due_record_remains", table, None, rule=rule.name, skipped="dry run"))
            continue
        remaining = planner.remaining(conn, rule, ctx.logical_date)
        left = {"left_beyond_plan": beyond[rule.name]} if beyond[rule.name] else {}
        results.append(
            gate_result(
                "no_due_record_remains",
                table,
                remaining <= beyond[rule.name],
                rule=rule.name,
                remaining=remaining,
                **left,
            )
        )
    return results


def manifest_matches_audit(conn, ctx: RunContext, purpose: str) -> dict:
    manifest_rows, audit_rows = conn.execute(
        "SELECT (SELECT coalesce(sum(row_count), 0) FROM retention.archive_manifest"
        "        WHERE run_id = %(run)s AND purpose = %(purpose)s AND state = 'committed'),"
        "       (SELECT coalesce(sum(record_count), 0) FROM retention.audit_log"
        "        WHERE run_id = %(run)s AND purpose = %(purpose)s AND action = 'archived_and_deleted')",
        {"run": ctx.run_id, "purpose": purpose},
    ).fetchone()
    return gate_result(
        "manifest_total_equals_audit",
        "retention.archive_manifest",
        manifest_rows == audit_rows,
        manifest_rows=int(manifest_rows),
        audit_archived_and_deleted=int(audit_rows),
    )


def kept_beyond_purge(conn, policy: Policy, store: ArchiveStore, ctx: RunContext, purpose: str, dry_run: bool) -> dict:
    """No committed object of the purpose past its purge date, nor an unlocked one holding a row
    past its own end date (an object written per month before: the purge rewrites it without
    those rows), unless a legal hold keeps it (the purge's own test, retention.policy.coverage; those are
    reported). Skipped on a dry run."""
    if dry_run:
        return gate_result("no_archive_kept_beyond_purge_date", "retention.archive_manifest", None, skipped="dry run")
    unlocked = [name for name, tier in store.storage.tiers.items() if not tier.object_lock]
    # Objects the purge keeps because the policy now keeps their rule longer than when they were
    # archived (retention.archive.purge.policy_keeps_longer): reported, not overdue.
    periods = conn.execute(
        "SELECT DISTINCT rule, gone_after, clock FROM retention.archive_manifest"
        " WHERE purpose = %s AND state = 'committed' AND purge_after <= %s"
        " AND (gone_after IS NOT NULL OR clock IS NOT NULL)",
        (purpose, ctx.logical_date),
    ).fetchall()
    longer = [(r, g, c) for r, g, c in periods if policy_keeps_longer(policy.purposes[purpose], r, g, c)]
    # Objects whose rows' clock record (a parent's clock: a contract set back to running) is live
    # and not due (retention.archive.purge.clock_not_due): kept by the purge, reported, not overdue.
    clock_kept = clock_not_due(policy, policy.purposes[purpose], ctx.logical_date)
    overdue, held, keys, unknown, kept_longer, kept_clock = conn.execute(
        f"WITH covered AS ({covered_records_sql(policy)})"
        " SELECT count(*) FILTER (WHERE NOT held AND NOT kept_longer AND NOT clock_kept),"
        "       count(*) FILTER (WHERE held AND NOT kept_longer AND NOT clock_kept),"
        "       (array_agg(object_key ORDER BY purge_after)"
        "        FILTER (WHERE NOT held AND NOT kept_longer AND NOT clock_kept))[1:%(n)s],"
        "       count(*) FILTER (WHERE NOT held AND NOT kept_longer AND NOT clock_kept AND owners_unknown),"
        "       count(*) FILTER (WHERE kept_longer AND purge_after <= %(date)s),"
        "       count(*) FILTER (WHERE clock_kept AND NOT kept_longer AND purge_after <= %(date)s)"
        f" FROM (SELECT m.object_key, m.purge_after, {object_covered('m')} AS held,"
        "              m.owner_ids IS NULL AS owners_unknown,"
        "              EXISTS (SELECT 1 FROM unnest(%(lr)s::text[], %(lg)s::text[], %(lc)s::text[]) AS l(r, g, c)"
        "                WHERE l.r = m.rule AND l.g IS NOT DISTINCT FROM m.gone_after"
        "                AND l.c IS NOT DISTINCT FROM m.clock)"
        f"                AS kept_longer, coalesce({clock_kept}, false) AS clock_kept"
        "       FROM retention.archive_manifest AS m"
        "       WHERE m.purpose = %(purpose)s AND m.state = 'committed' AND (m.purge_after <= %(date)s"
        "         OR (m.tier = ANY(%(unlocked)s) AND m.earliest_purge_after IS DISTINCT FROM m.purge_after"
        "             AND coalesce(m.earliest_purge_after, date_trunc('month', m.purge_after AT TIME ZONE %(tz)s)"
        "                 AT TIME ZONE %(tz)s) <= %(date)s))) AS x",
        {
            "purpose": purpose,
            "date": ctx.logical_date,
            "n": MAX_LISTED,
            "unlocked": unlocked,
            "tz": policy.timezone,
            "lr": [r for r, _, _ in longer],
            "lg": [g for _, g, _ in longer],
            "lc": [c for _, _, c in longer],
        },
    ).fetchone()
    return gate_result(
        "no_archive_kept_beyond_purge_date",
        "retention.archive_manifest",
        overdue == 0,
        overdue_objects=overdue,
        kept_under_legal_hold=held,
        overdue_keys=keys or [],
        **({"kept_as_the_policy_now_keeps_longer": kept_longer} if kept_longer else {}),
        **({"kept_as_their_clock_record_is_not_due": kept_clock} if kept_clock else {}),
        **({"owners_not_recorded": unknown, "fix": "python -m retention.archive.backfill_owners"} if unknown else {}),
    )
