"""What is due, overdue, held and archived, read from the source database: read-only.

Used by the Retention page (plugins/retention_ui) and by the watch DAG. Every figure is a count,
a byte size, an object key or a record id of the bookkeeping schema `retention`: never a row's
contents. The counts come from the planner: the same select the engine locks and deletes
(retention.planner), counted: one pass per rule and date.

One vocabulary, here, in the run report and on the Retention page: a record is *due* at an
instant when its schedule is past (clock + live <= the Paris date); of the due records, *held*
ones are under a legal hold, *waiting* ones are still referenced by a row of another table, and
the rest are *deletable*: what the run at that instant archives and deletes (a preview: would).
A record is *overdue* when it was already deletable `overdue_days` days earlier and is still
there.

A record *waits past its own end* when it is due, not held, and a row of another table still
references it. Per rule and child table: how many, how long (the oldest one's due date), and
what the policy's `dependents` decide for that link; an *alarm* when the decision is
`keep_parent_and_alert` (or none) and some have waited more than `overdue_days` days.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import asdict, dataclass, field

from retention.approvals import approvals_of_run
from retention.planner import Planner
from retention.policy import Policy, Purpose, Rule
from retention.policy.periods import cutoff, due_date

# Decisions under which a parent waiting past its end is an alarm (None: the policy decides nothing).
ALARMING_DECISIONS = (None, "keep_parent_and_alert")

AUDIT_DELETE_ACTIONS = ("archived_and_deleted", "deleted")


@dataclass
class RuleStatus:
    rule: str
    table: str
    tier: str
    due: int = 0  # past the schedule: deletable + held + waiting
    deletable: int = 0
    held: int = 0
    waiting: int = 0
    overdue: int = 0


@dataclass
class PurposeStatus:
    purpose: str
    title: str
    mode: str
    due: int = 0  # past the schedule: deletable + held + waiting
    deletable: int = 0
    held: int = 0
    waiting: int = 0
    overdue: int = 0
    archive_bytes: dict[str, int] = field(default_factory=dict)
    archive_objects: dict[str, int] = field(default_factory=dict)
    rules: list[RuleStatus] = field(default_factory=list)
    # Records waiting past their own end, per rule and child table (see waiting_past_end).
    waiting_past_end: list[dict] = field(default_factory=list)

    @property
    def waiting_alarm(self) -> int:
        """Records that have waited past their end for more than overdue_days without a
        decision to let them wait."""
        return sum(w["past_grace"] for w in self.waiting_past_end if w["alarm"])

    def as_dict(self) -> dict:
        return asdict(self) | {"waiting_alarm": self.waiting_alarm}


def purpose_mode(purpose: Purpose) -> str:
    """preview or enforce; a policy without the field enforces (the engine's behaviour today)."""
    return str(getattr(purpose, "mode", "enforce") or "enforce")


def rule_counts(conn, planner: Planner, rule: Rule, at: dt.datetime) -> tuple[int, int, int]:
    """(deletable, held, waiting) for the run at `at`, as that run counts them (projected: a
    parent whose children an earlier rule of the purpose deletes is deletable, not waiting)."""
    outcome, _ = planner.count(conn, rule, at, projected=True)
    return outcome.deletable, outcome.held, sum(outcome.waiting.values())


def rule_now(
    conn, planner: Planner, rule: Rule, now: dt.datetime, overdue_days: int
) -> tuple[tuple[int, int, int], list[dict]]:
    """One pass of the rule at ``now``: (deletable, held, waiting), and its records waiting past
    their own end (due, not held, a row of another table still references them): per child
    table, how many, how many for more than ``overdue_days`` days, since when (the oldest one's
    due date) and the policy's decision on that link. As the next run counts them (projected)."""
    tz = planner.policy.tz
    query = (
        "SELECT due.held, due.waiting_for, count(*), count(*) FILTER (WHERE due.clock < %(grace_cutoff)s),"
        f" min(due.clock) FROM ({planner.select(rule, projected=True)}) AS due"
        # A row another rule selects too is kept (the before-gate fails on it): not deletable.
        " WHERE due.held OR due.waiting_for IS NOT NULL OR due.claimed_by IS NULL GROUP BY 1, 2 ORDER BY 1, 2"
    )
    grace = cutoff(now - dt.timedelta(days=overdue_days), rule.live, tz)
    deletable = held = waiting = 0
    found = []
    for is_held, child, records, past_grace, oldest_clock in conn.execute(
        query, planner.params(now) | {"grace_cutoff": grace}
    ):
        if is_held:
            held += records
            continue
        if child is None:
            deletable += records
            continue
        waiting += records
        decision = planner.policy.decision(rule.table, child)
        oldest_due = due_date(oldest_clock, rule.live, tz)
        found.append(
            {
                "rule": rule.name,
                "table": rule.table,
                "waiting_on": child,
                "decision": decision or "undecided",
                "records": int(records),
                "past_grace": int(past_grace),
                "oldest_due": oldest_due.astimezone(tz).date().isoformat(),
                "oldest_days": max((now - oldest_due).days, 0),
                "alarm": decision in ALARMING_DECISIONS and past_grace > 0,
            }
        )
    return (deletable, held, waiting), found


def archive_totals(conn) -> dict[str, dict[str, tuple[int, int]]]:
    """Per purpose and tier: (objects, bytes) of the committed archive objects."""
    archives: dict[str, dict[str, tuple[int, int]]] = {}
    for purpose, tier, objects, size in conn.execute(
        "SELECT purpose, tier, count(*), coalesce(sum(byte_size), 0) FROM retention.archive_manifest "
        "WHERE state = 'committed' GROUP BY 1, 2"
    ):
        archives.setdefault(purpose, {})[tier] = (int(objects), int(size))
    return archives


def purposes_status(
    conn, policy: Policy, now: dt.datetime, overdue_days: int, names: Collection[str] | None = None
) -> list[PurposeStatus]:
    """Per purpose and rule: due now, of which deletable, held and waiting; overdue by more than
    `overdue_days`; what waits past its own end; archive objects and bytes per tier (committed manifest rows). Only
    the purposes in ``names`` when given (in the policy's order).

    Turns JIT compilation off for the connection: the rule statements' nested hold and waiting
    subqueries are estimated at hundreds of millions of cost units, so PostgreSQL compiled them
    (33 s of JIT for 2 s of execution for one rule at 20,000 customers)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if overdue_days < 0:
        raise ValueError("overdue_days must be >= 0")
    conn.execute("SET jit = off")
    earlier = now - dt.timedelta(days=overdue_days)
    archives = archive_totals(conn)
    result = []
    for name, purpose in policy.purposes.items():
        if names is not None and name not in names:
            continue
        status = PurposeStatus(purpose=name, title=purpose.title, mode=purpose_mode(purpose))
        planner = Planner.load(conn, policy, name)
        for rule in purpose.rules:
            (deletable, held, waiting), waits = rule_now(conn, planner, rule, now, overdue_days)
            overdue = rule_counts(conn, planner, rule, earlier)[0]
            due = deletable + held + waiting
            status.rules.append(
                RuleStatus(rule.name, rule.table, rule.tier, due, deletable, held, waiting, overdue=overdue)
            )
            status.waiting_past_end += waits
            status.due += due
            status.deletable += deletable
            status.held += held
            status.waiting += waiting
            status.overdue += overdue
        for tier, (objects, size) in sorted(archives.get(name, {}).items()):
            status.archive_objects[tier] = objects
            status.archive_bytes[tier] = size
        result.append(status)
    return result


def deletions_per_day(conn, tz: str, days: int, now: dt.datetime) -> list[dict]:
    """Rows archived-and-deleted and deleted (unarchived) per Paris day and purpose."""
    rows = conn.execute(
        "SELECT (at AT TIME ZONE %(tz)s)::date AS day, purpose, action, sum(record_count) "
        "FROM retention.audit_log WHERE action = ANY(%(actions)s) AND at >= %(since)s "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        {"tz": tz, "actions": list(AUDIT_DELETE_ACTIONS), "since": now - dt.timedelta(days=days)},
    ).fetchall()
    return [{"day": day.isoformat(), "purpose": p, "action": a, "records": int(n)} for day, p, a, n in rows]


def archive_by_purge_month(conn) -> list[dict]:
    """What will be purged when: committed archive objects and bytes per tier and purge month."""
    rows = conn.execute(
        "SELECT tier, purge_month, count(*), coalesce(sum(byte_size), 0), coalesce(sum(row_count), 0) "
        "FROM retention.archive_manifest WHERE state = 'committed' GROUP BY 1, 2 ORDER BY 2, 1"
    ).fetchall()
    return [
        {"tier": t, "purge_month": m, "objects": int(o), "bytes": int(b), "records": int(r)} for t, m, o, b, r in rows
    ]


def legal_holds(conn, now: dt.datetime) -> list[dict]:
    """Holds in force: what they cover (table, record id), why, since when."""
    rows = conn.execute(
        "SELECT id, table_name, record_id, reason, placed_at FROM retention.legal_holds "
        "WHERE released_at IS NULL OR released_at > now() ORDER BY placed_at, id"
    ).fetchall()
    return [
        {
            "id": i,
            "table": t,
            "record_id": r,
            "reason": reason,
            "placed_at": placed.isoformat(),
            "age_days": (now - placed).days,
        }
        for i, t, r, reason, placed in rows
    ]


def open_retirements(conn, now: dt.datetime, older_than: dt.timedelta) -> list[dict]:
    """Partitions between their table and the archive for longer than ``older_than``: a run was
    interrupted between a partition's detach and its drop (retention.archive.partitions) and no
    run of the purpose has finished it since. Names, ids and dates only."""
    rows = conn.execute(
        "SELECT purpose, table_name, partition_name, run_id, created_at FROM retention.partition_retirements"
        " WHERE state = 'detaching' AND created_at < %s ORDER BY created_at, id",
        (now - older_than,),
    ).fetchall()
    return [
        {
            "purpose": purpose,
            "table": table,
            "partition": partition,
            "run_id": run_id,
            "since": since.isoformat(),
            "hours": int((now - since).total_seconds() // 3600),
        }
        for purpose, table, partition, run_id, since in rows
    ]


def archives_past_their_end(
    conn, policy: Policy, now: dt.datetime, overdue_days: int, purposes: Collection[str] | None = None
) -> list[dict]:
    """Archive objects still stored more than ``overdue_days`` days after their purge date, none
    of their records under a legal hold, per purpose and rule (``purposes``: those only; None:
    every purpose of the manifest, those the policy no longer names too). Either the purge did
    not run (a purpose removed from the policy, or in preview, or failing) or it keeps them for
    someone to decide (a period lengthened or a clock changed since they were archived): kept
    on the safe side, but past the end the policy promised. Counts, names and dates only.

    Raises PolicyError when the purge's checks refuse the policy (check_hold_coverage_in: a table
    of the hold coverage renamed since, a hold naming one): the coverage's and the clocks' SQL
    below read those tables, and failed with UndefinedTable, failing the watch and the Retention
    page with it (found by a review: customers renamed)."""
    from retention.archive.purge import clock_not_due
    from retention.planner import check_hold_coverage_in
    from retention.policy.coverage import covered_records_sql, object_covered

    check_hold_coverage_in(conn, policy)

    # Not an object its purge keeps because the record its clock is read from runs again (a
    # contract set back to running: kept_clock_not_due): kept rightly, until that clock is due,
    # with nothing to decide (found by a review: it alarmed every day, 're-date them'). Live
    # records only: the purge's other arm (the record archived since with a later end) reads the
    # whole manifest per object (30 objects past their date, a manifest of 100,000: 5 s).
    clock_runs = " OR ".join(
        f"(m.purpose = '{name}' AND {clock_not_due(policy, purpose, now, archived_since=False)})"
        for name, purpose in policy.purposes.items()
    )
    # Each purpose's clock test is estimated per row at its subqueries' cost, most never run: JIT
    # compiled it for seconds on the page (300 objects past their date, 100,000 customers: 8 s).
    conn.execute("SET jit = off")
    rows = conn.execute(
        f"WITH covered AS ({covered_records_sql(policy)})"
        " SELECT m.purpose, m.rule, count(*), min(m.purge_after), count(*) FILTER (WHERE m.owner_ids IS NULL)"
        " FROM retention.archive_manifest AS m"
        " WHERE m.state = 'committed' AND m.purge_after < %s"
        " AND (%s::text[] IS NULL OR m.purpose = ANY(%s::text[]))"
        f" AND NOT {object_covered('m')}"
        + (f" AND NOT ({clock_runs})" if clock_runs else "")
        + " GROUP BY m.purpose, m.rule ORDER BY m.purpose, m.rule",
        (now - dt.timedelta(days=overdue_days), *([sorted(purposes)] * 2 if purposes is not None else [None, None])),
    ).fetchall()
    found = []
    for purpose, rule_name, objects, oldest, owners_unknown in rows:
        named = policy.purposes.get(purpose)
        found.append(
            {
                "purpose": purpose,
                "rule": rule_name,
                "objects": objects,
                "oldest_purge_date": oldest.astimezone(policy.tz).date().isoformat(),
                "in_policy": named is not None and any(r.name == rule_name for r in named.rules),
                # Its purpose's purge still decides them (keeps them: their rule unknown), the rule
                # renamed or removed; none does when the purpose itself is no longer named.
                "purpose_in_policy": named is not None,
                # Archived before owners were recorded: the purge keeps them as if held until
                # `python -m retention.archive.backfill_owners` fills them in.
                "owners_not_recorded": owners_unknown,
                "days": (now - oldest).days,
            }
        )
    return found


def access_exports(conn, now: dt.datetime, recent_days: int = 60) -> list[dict]:
    """Exports of access requests still held (when each goes), then those deleted in the last
    ``recent_days`` days (when, how many versions): request ids, keys and dates only."""
    rows = conn.execute(
        "SELECT request_id, object_key, produced_at, delete_after, deleted_at, outcome, versions_deleted"
        " FROM retention.access_exports WHERE deleted_at IS NULL OR deleted_at >= %s"
        " ORDER BY deleted_at IS NOT NULL, coalesce(deleted_at, delete_after), id",
        (now - dt.timedelta(days=recent_days),),
    ).fetchall()
    return [
        {
            "request_id": request_id,
            "key": key,
            "produced_at": produced.isoformat(),
            "held": deleted is None,
            # When it goes (still held), or when it went.
            "deleted_on": (deleted or due).isoformat(),
            "outcome": outcome,
            "versions_deleted": versions,
        }
        for request_id, key, produced, due, deleted, outcome, versions in rows
    ]


def runs(conn, limit: int = 50) -> list[dict]:
    """The latest runs that left an audit or manifest trace, newest first."""
    rows = conn.execute(
        "SELECT run_id, purpose, max(logical_date), sum(record_count) FILTER (WHERE action = ANY(%(actions)s)), "
        "max(at) FROM retention.audit_log GROUP BY 1, 2 ORDER BY 5 DESC LIMIT %(limit)s",
        {"actions": list(AUDIT_DELETE_ACTIONS), "limit": limit},
    ).fetchall()
    return [
        {"run_id": r, "purpose": p, "logical_date": d.isoformat(), "deleted": int(n or 0), "last_at": at.isoformat()}
        for r, p, d, n, at in rows
    ]


def run_evidence(conn, policy: Policy, purpose_name: str, run_id: str, always: bool = False) -> dict | None:
    """The evidence of one run of one purpose (two DAGs share the id of a scheduled date): the
    rules applied, counts per rule and action, and every archive object written or purged (key,
    SHA-256, version, size, rows). None if the run left no trace, unless ``always`` (a preview
    run leaves none: its report is its evidence)."""
    audit = conn.execute(
        "SELECT purpose, rule, table_name, action, sum(record_count), sum(byte_count), count(*), min(logical_date) "
        "FROM retention.audit_log WHERE run_id = %(run)s AND purpose = %(purpose)s "
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 4",
        {"run": run_id, "purpose": purpose_name},
    ).fetchall()
    # Written by the run, purged by it, or rewritten by its purge without the rows past their own
    # end (an object written per month, before objects were written per end day).
    objects = conn.execute(
        "SELECT purpose, rule, table_name, tier, bucket, object_key, state, purge_month,"
        " (purge_after AT TIME ZONE %(tz)s)::date, row_count, byte_size, sha256, version_id, locked_until,"
        " committed_at, purged_at,"
        " CASE WHEN purge_run_id = %(run)s THEN 'purged' WHEN run_id = %(run)s THEN 'written' ELSE 'rows_purged' END"
        " FROM retention.archive_manifest WHERE (run_id = %(run)s OR purge_run_id = %(run)s"
        "  OR id IN (SELECT old_manifest_id FROM retention.object_rewrites WHERE request_id = 'purge:' || %(run)s))"
        " AND purpose = %(purpose)s ORDER BY id",
        {"run": run_id, "purpose": purpose_name, "tz": policy.timezone},
    ).fetchall()
    approvals = approvals_of_run(conn, purpose_name, run_id)  # who approved (or refused) its plan
    if not audit and not objects and not approvals and not always:
        return None
    logical = min((a[7] for a in audit), default=None)
    purpose = policy.purposes.get(purpose_name)
    rules = [
        {
            "rule": r.name,
            "table": r.table,
            "clock": r.clock,
            "live": str(r.live),
            "tier": r.tier,
            "archive": str(r.archive) if r.archive else None,
            "sql": f"include/sql/{purpose_name}/{(r.with_parent.rule if r.with_parent else r.name)}.sql",
        }
        for r in (purpose.rules if purpose else ())
    ]

    def _iso(value):
        return value.isoformat() if value is not None else None

    return {
        "run_id": run_id,
        "purpose": purpose_name,
        "mode": purpose_mode(purpose) if purpose else None,
        "logical_date": _iso(logical),
        "rules": rules,
        "counts": [
            {
                "rule": rule,
                "table": table,
                "action": action,
                "records": int(n),
                "bytes": int(b or 0),
                "audit_rows": int(c),
            }
            for _, rule, table, action, n, b, c, _ in audit
        ],
        "objects": [
            {
                "rule": rule,
                "table": table,
                "tier": tier,
                "bucket": bucket,
                "key": key,
                "state": state,
                "purge_month": month,
                # The day its rows' archive period ends (each object holds the rows ending that day;
                # one written per month before holds rows ending up to that day).
                "purge_date": purge_date.isoformat(),
                "rows": rows,
                "bytes": size,
                "sha256": sha,
                "version_id": version,
                "locked_until": _iso(locked),
                "committed_at": _iso(committed),
                "purged_at": _iso(purged),
                "event": event,
            }
            for (
                _,
                rule,
                table,
                tier,
                bucket,
                key,
                state,
                month,
                purge_date,
                rows,
                size,
                sha,
                version,
                locked,
                committed,
                purged,
                event,
            ) in objects
        ],
        "approvals": approvals,
    }
