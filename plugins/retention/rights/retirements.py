"""A request's search, settled against partitions being retired whole.

From its detach to its drop, a partition retired whole (retention.archive.partitions) is in
neither place a request looks: a query of its table no longer reads it, and its archive objects
are committed only with the drop. A subject's rows in it would be missed: an access would not
report them, an erasure would not erase them (and the drop would then commit them to the
archive). So a search counts only when no retirement of a table the subject's rows may be in
was open, began or ended while it ran (``retention.partition_retirements``, read before and
after the search's last read); otherwise the request waits for the
purpose's run (its advisory lock) and searches again. A retirement still open when no run holds
the lock was left by an interrupted run: the purpose's next run finishes it, and the request stops
with an error that says so, having changed nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from retention.archive.locks import acquire_purpose_lock, release_purpose_lock
from retention.rights.context import RequestContext
from retention.rights.find import Found, find, subject_tables
from retention.rights.requests import SubjectRequest

T = TypeVar("T")

# Searches made before giving up when retirements keep moving under them (each wait lets the
# purpose's run end first, so a second search is normally the last).
SEARCHES = 4
NOTHING_DONE = "nothing was changed"


class RetirementInTheWayError(RuntimeError):
    """A partition is between its table and the archive and no run is finishing it now, or
    retirements kept moving under the search: the request changed nothing; retry later."""


@dataclass(frozen=True)
class Retirement:
    id: int
    purpose: str
    run_id: str
    table: str
    partition: str
    open: bool


class _Moved(Exception):
    def __init__(self, retirements: list[Retirement]):
        super().__init__(f"{len(retirements)} partition retirement(s) moved during the search")
        self.retirements = retirements


class _Watch:
    """The retirements of the subject's tables as they stood before a search, compared with them
    after it: one open before (it may close during the search), open after, or new is in the way."""

    def __init__(self, conn, tables: set[str]):
        self.conn = conn
        self.tables = tables
        self.before = self._retirements()

    def _retirements(self) -> dict[int, Retirement]:
        return {i: r for i, r in _retirements(self.conn).items() if r.table in self.tables}

    def check(self) -> None:
        after = self._retirements()
        moved = {i: r for i, r in after.items() if r.open or i not in self.before}
        moved.update((i, r) for i, r in self.before.items() if r.open)
        if moved:
            raise _Moved(list(moved.values()))


def settled(
    ctx: RequestContext, req: SubjectRequest, search: Callable[[Callable[[], None]], T], done: str = NOTHING_DONE
) -> T:
    """``search(check)``, repeated until no retirement of a table the subject's rows may be in
    moved while it ran. ``search`` calls ``check()`` after its last read (inside its transaction,
    before any write it commits): it raises when one moved, which rolls that transaction back
    before the wait. ``done``: what the request has changed so far, for the error if it stops."""
    for _ in range(SEARCHES):
        with ctx.connect() as conn:
            watch = _Watch(conn, subject_tables(ctx, conn, req))
            try:
                return search(watch.check)
            except _Moved as moved:
                _wait_for_runs(ctx, moved.retirements, done)
    raise RetirementInTheWayError(
        f"partitions kept being retired while the request searched ({SEARCHES} searches): {done}; "
        "retry the request when the retention runs are over"
    )


def find_settled(
    ctx: RequestContext, conn, req: SubjectRequest, seed: dict[str, set[int]] | None = None, done: str = NOTHING_DONE
) -> Found:
    """retention.rights.find.find, settled against partitions being retired."""

    def search(check: Callable[[], None]) -> Found:
        found = find(ctx, conn, req, seed)
        check()
        return found

    return settled(ctx, req, search, done)


def _retirements(conn) -> dict[int, Retirement]:
    # Every record, open or not: one begun and ended between two reads shows as a new id.
    return {
        row[0]: Retirement(*row)
        for row in conn.execute(
            "SELECT id, purpose, run_id, table_name, partition_name, state = 'detaching'"
            " FROM retention.partition_retirements"
        )
    }


def _wait_for_runs(ctx: RequestContext, moved: list[Retirement], done: str) -> None:
    """Each moved retirement's purpose: its run waited for (the lock taken, then released). One
    still open under the lock was left by an interrupted run: stop."""
    for purpose in sorted({r.purpose for r in moved}):
        with ctx.connect() as conn:
            acquire_purpose_lock(
                conn,
                purpose,
                ctx.lock_timeout,
                on_timeout=f"a run of purpose {purpose!r} is retiring partitions whose rows the request must see "
                f"(waited {ctx.lock_timeout:.0f}s): {done}; retry the request after the run",
            )
            try:
                ids = [r.id for r in moved if r.purpose == purpose]
                left = conn.execute(
                    "SELECT table_name, partition_name, run_id FROM retention.partition_retirements"
                    " WHERE id = ANY(%s) AND state = 'detaching' ORDER BY id",
                    (ids,),
                ).fetchall()
            finally:
                release_purpose_lock(conn, purpose)
        if left:
            table, partition, run_id = left[0]
            raise RetirementInTheWayError(
                f"partition {partition} of {table} was left detached by an interrupted run of purpose {purpose!r} "
                f"(run {run_id}): its rows are neither in the table nor in the archive until the purpose's next "
                f"run finishes its retirement (in preview mode: attaches it again); {done}: retry the request after "
                "that run"
            )
