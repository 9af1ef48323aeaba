"""The Retention page's counts, kept between two countings: per purpose, what retention.status
counted (due, held, waiting, overdue, waiting past end), the instant it is for, and how far it can
be trusted. Table retention.status_counts (include/sql/schema/040_status_counts.sql).

Counting every rule live takes seconds at 100,000 customers (the same statements as a run's
plan), too long for a page that must answer in 0.3 s. So the page reads the latest counts and has
them counted again in the background (retention_ui.recount); the watch DAG stores its own counts
here too. Each purpose's counts are, for a reader at instant ``now``:

- **fresh**: counted less than ``ttl`` seconds ago, and nothing known has changed them since;
- **aged**: older than ``ttl`` but younger than ``max_age``, nothing known has changed them: shown
  with their age while a recount runs. What can have changed them is the application's own
  writes (a new row, a contract ending): no delete, no hold, no date change;
- **outdated**: withheld (the figures are None), because since counting began a run, an erasure
  or anyone deleted rows, a legal hold was placed or released, a table was truncated, the policy
  changed, the date moved on (a Paris midnight: every cutoff moves; the overdue line; the age of
  the oldest waiting record), or they are older than ``max_age``, or were never counted. The
  alarms' figures they had are kept apart (``last_overdue``, ``last_waiting_alarm``) so that an
  alarm is never hidden while counting again.

What changed is told by a *marker* read before counting and compared with the current one: the
audit log's highest id (a run or a subject request writes it as it commits), the source tables'
deleted-rows counters (pg_stat_user_tables, flushed within seconds of a commit), the active legal
holds, and the tables' storage ids (a TRUNCATE gives a new one). Counts, ids and hashes only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass

from retention import status
from retention.policy import Policy, fingerprint
from retention.policy.periods import local_date, local_midnight

log = logging.getLogger(__name__)

# Figures of retention.status.PurposeStatus stored here; the archive totals are read live.
COUNTED_FIELDS = ("due", "deletable", "held", "waiting", "overdue", "rules", "waiting_past_end")

_MARKER_SQL = """
SELECT
  (SELECT coalesce(max(id), 0) FROM retention.audit_log),
  (SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables WHERE schemaname = %(schema)s),
  (SELECT md5(coalesce(string_agg(id || ':' || table_name || ':' || record_id, ',' ORDER BY id), ''))
     FROM retention.legal_holds WHERE released_at IS NULL OR released_at > now()),
  (SELECT md5(coalesce(string_agg(c.oid || ':' || c.relfilenode, ',' ORDER BY c.oid), ''))
     FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE n.nspname IN (%(schema)s, 'retention') AND c.relkind = 'r')
"""

# Why counts are outdated, by the part of the marker that moved.
MARKER_REASONS = {
    "audit_log": "a run or a subject request changed records since",
    "deleted": "rows were deleted since",
    "holds": "legal holds were placed or released since",
    "tables": "tables were truncated or rewritten since",
}


def marker(conn, policy: Policy) -> dict:
    """What deletes, holds and truncates have done so far (see the module's docstring)."""
    audit, deleted, holds, tables = conn.execute(_MARKER_SQL, {"schema": policy.source_schema}).fetchone()
    return {"audit_log": int(audit), "deleted": int(deleted), "holds": holds, "tables": tables}


def valid_until(
    counted_at: dt.datetime, overdue_days: int, policy: Policy, purpose: status.PurposeStatus
) -> dt.datetime:
    """The first instant after ``counted_at`` at which time alone changes one of the purpose's
    figures: the next Paris midnight (every cutoff moves), the next move of the overdue line
    (``now - overdue_days`` crosses a Paris midnight; so does the grace of waiting records), and
    the next whole day of each oldest waiting record (its ``oldest_days``; counted from its due
    day's midnight, which is never later than its due instant: at worst a recount too early)."""
    tz = policy.tz
    day = dt.timedelta(days=1)
    candidates = [local_midnight(local_date(counted_at, tz) + day, tz)]
    # retention.status subtracts overdue_days in the arithmetic of now's own time zone (UTC for
    # the page and the watch): the line moves when that crosses a Paris midnight, 23:00 or 01:00
    # Paris time around a change of clocks.
    earlier = counted_at - dt.timedelta(days=overdue_days)
    crossing = local_midnight(local_date(earlier, tz) + day, tz).astimezone(counted_at.tzinfo)
    candidates.append(crossing + dt.timedelta(days=overdue_days))
    for waiting in purpose.waiting_past_end:
        # oldest_days is a difference of instants: it grows every 24 hours after the due day.
        oldest_due = local_midnight(dt.date.fromisoformat(waiting["oldest_due"]), tz).astimezone(dt.UTC)
        candidates.append(oldest_due + dt.timedelta(days=waiting["oldest_days"] + 1))
    return min(c for c in candidates if c > counted_at)


def count_and_store(
    conn,
    policy: Policy,
    now: dt.datetime,
    overdue_days: int,
    *,
    names: Collection[str] | None = None,
    counted_by: str,
    best_effort: bool = False,
) -> list[status.PurposeStatus]:
    """Count the purposes (all, or ``names``) at ``now`` with retention.status and store their
    counts, each purpose replaced in one transaction. ``conn`` must be writable (autocommit).
    ``best_effort``: a failure to store is logged, not raised (the watch's alarms do not depend
    on the page's copy)."""
    mark = marker(conn, policy)  # before counting: a change made while counting outdates the counts
    started = time.perf_counter()
    statuses = status.purposes_status(conn, policy, now, overdue_days, names=names)
    took_ms = int((time.perf_counter() - started) * 1000)
    try:
        with conn.transaction():
            for purpose in statuses:
                counted = {k: v for k, v in asdict(purpose).items() if k in COUNTED_FIELDS}
                conn.execute(
                    "INSERT INTO retention.status_counts (overdue_days, purpose, counted_at, valid_until, marker,"
                    " policy_sha256, counted_by, took_ms, status)"
                    " VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s::jsonb)"
                    " ON CONFLICT (overdue_days, purpose) DO UPDATE SET counted_at = excluded.counted_at,"
                    " valid_until = excluded.valid_until, marker = excluded.marker,"
                    " policy_sha256 = excluded.policy_sha256, counted_by = excluded.counted_by,"
                    " took_ms = excluded.took_ms, status = excluded.status"
                    # Never replace counts with older ones (a slow counting finishing after a newer one).
                    " WHERE retention.status_counts.counted_at <= excluded.counted_at",
                    (
                        overdue_days,
                        purpose.purpose,
                        now,
                        valid_until(now, overdue_days, policy, purpose),
                        json.dumps(mark),
                        fingerprint(policy, policy.purposes[purpose.purpose]),
                        counted_by,
                        took_ms,
                        json.dumps(counted),
                    ),
                )
    except Exception:
        if not best_effort:
            raise
        log.warning("counts not stored in retention.status_counts (the page counts again)", exc_info=True)
    return statuses


@dataclass
class Counted:
    """One purpose's stored counts as a reader at ``now`` may use them."""

    purpose: str
    state: str  # fresh | aged | outdated
    counts: dict | None  # the COUNTED_FIELDS; None when outdated
    counted_at: dt.datetime | None = None
    valid_until: dt.datetime | None = None
    counted_by: str | None = None
    took_ms: int | None = None
    reason: str | None = None
    # The alarms' figures of outdated counts (overdue records; records waiting past their end
    # with no decision to wait, for more than overdue_days): shown while counting again.
    last_overdue: int | None = None
    last_waiting_alarm: int | None = None

    def freshness(self, now: dt.datetime) -> dict:
        """How fresh the figures are, as the page and the JSON say it."""
        return {
            "state": self.state,
            "counted_at": self.counted_at.isoformat() if self.counted_at else None,
            "age_s": round((now - self.counted_at).total_seconds(), 1) if self.counted_at else None,
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "counted_by": self.counted_by,
            "took_s": round(self.took_ms / 1000, 1) if self.took_ms is not None else None,
            "reason": self.reason,
            "last_overdue": self.last_overdue,
            "last_waiting_alarm": self.last_waiting_alarm,
        }


def read(
    conn, policy: Policy, now: dt.datetime, overdue_days: int, ttl: dt.timedelta, max_age: dt.timedelta
) -> dict[str, Counted]:
    """Every purpose of the policy, in its order: its stored counts judged at ``now``."""
    current = marker(conn, policy)
    rows = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT purpose, counted_at, valid_until, marker, policy_sha256, counted_by, took_ms, status"
            " FROM retention.status_counts WHERE overdue_days = %s",
            (overdue_days,),
        )
    }
    found = {}
    for name, purpose in policy.purposes.items():
        if name not in rows:
            found[name] = Counted(name, "outdated", None, reason="never counted")
            continue
        counted_at, until, mark, sha, by, took_ms, counts = rows[name]
        reason = None
        changed = [part for part in MARKER_REASONS if mark.get(part) != current[part]]
        if changed:
            reason = MARKER_REASONS[changed[0]]
        elif sha != fingerprint(policy, purpose):
            reason = "the policy changed since"
        elif now >= until:
            reason = f"the date moved on (counts valid until {until.isoformat()})"
        elif now - counted_at > max_age:
            reason = f"counted more than {int(max_age.total_seconds() // 60)} minutes ago"
        if reason is not None:
            waiting_alarm = sum(w["past_grace"] for w in counts["waiting_past_end"] if w["alarm"])
            found[name] = Counted(
                name, "outdated", None, counted_at, until, by, took_ms, reason, int(counts["overdue"]), waiting_alarm
            )
        else:
            state = "fresh" if now - counted_at <= ttl else "aged"
            found[name] = Counted(name, state, counts, counted_at, until, by, took_ms)
    return found
