"""Counting the Retention page's figures again, in the background of the api-server.

The page reads stored counts (retention.status_counts) and, when some are not fresh, asks this
module for a recount: one at a time per process (a thread), one at a time over every api-server
worker (a PostgreSQL advisory lock, so two workers do not both count). Under that lock it counts
only the purposes still not fresh, unless asked for counts made after a given instant
(``/retention/api/summary?fresh=true``). A failure is kept (its type) for the page to show; the
next request tries again.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# One recount at a time over all api-server workers (and any other process using this key).
ADVISORY_KEY = "retention:status_counts"


@dataclass
class Job:
    overdue_days: int
    # Counts made at or after this instant are wanted (None: any fresh ones will do).
    since: dt.datetime | None
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class Recounter:
    """The process's recounts, one running at a time per overdue_days."""

    def __init__(self, connect, settings):
        self._connect = connect  # () -> a writable psycopg connection, autocommit
        self._settings = settings  # () -> (ttl, max_age) as timedeltas
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}

    def last_error(self, overdue_days: int) -> str | None:
        job = self._jobs.get(overdue_days)
        return job.error if job is not None and job.done.is_set() else None

    def running(self, overdue_days: int) -> bool:
        job = self._jobs.get(overdue_days)
        return job is not None and not job.done.is_set()

    def ensure(self, overdue_days: int, since: dt.datetime | None = None) -> Job:
        """The running recount for ``overdue_days`` if it will do, else a new one started now.
        With ``since``, only a recount started at or after it will do."""
        with self._lock:
            job = self._jobs.get(overdue_days)
            if job is not None and not job.done.is_set() and (since is None or job.started_at >= since):
                return job
            previous = job
            job = Job(overdue_days, since)
            self._jobs[overdue_days] = job
            threading.Thread(
                target=self._run, args=(job, previous), name=f"retention-recount-{overdue_days}", daemon=True
            ).start()
            return job

    def _run(self, job: Job, previous: Job | None) -> None:
        from retention import status_counts
        from retention.policy import default_policy

        try:
            if previous is not None:
                previous.done.wait()  # the same counts twice at once would only slow both
            policy = default_policy()
            with self._connect() as conn:
                conn.execute("SET TIME ZONE 'UTC'")
                conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (ADVISORY_KEY,))
                now = dt.datetime.now(dt.UTC)
                # Another worker may have counted while this one waited for the lock.
                ttl, max_age = self._settings()
                stored = status_counts.read(conn, policy, now, job.overdue_days, ttl, max_age)
                names = [
                    name
                    for name, counted in stored.items()
                    if counted.state != "fresh" or (job.since is not None and counted.counted_at < job.since)
                ]
                if names:
                    status_counts.count_and_store(conn, policy, now, job.overdue_days, names=names, counted_by="page")
        except Exception as exc:  # shown on the page; the next request tries again
            from retention.policy import PolicyError

            # A policy the database refuses (a hold naming a table renamed since, a coverage
            # entry naming no column): its message names tables and columns only, and says what
            # to correct, where the DPO looks; other errors by their class (their text may quote data).
            job.error = f"PolicyError: {exc}" if isinstance(exc, PolicyError) else type(exc).__name__
            log.warning("recounting the Retention page's figures failed", exc_info=True)
        finally:
            job.done.set()
