"""Data-subject requests: access / portability (Art. 15, 20) and erasure (Art. 17), across the
live database and both archive tiers.

``SubjectRights.handle`` runs one request, a value (retention.rights.requests.SubjectRequest)
handed through one module per step:

1. ``evidence``: the request's evidence row is compared (and written if new) before anything
   else; a finished request, or another subject under its id, is refused there;
2. ``find``: every record of the subject, live and archived (the holds' coverage graph, the
   archive objects' recorded owners and identifier hashes), settled against partitions being
   retired whole (``retirements``: a partition between its table and the archive is waited for);
3. ``decide`` (with ``ends``): each record's purpose, legal basis and own end date, and whether
   it may be erased or is kept, and why (when in doubt it stays);
4. ``access`` (the index and the export), or ``erase`` (the live rows and their files) then
   ``erase_archived`` (each archive object rewritten without the subject's rows);
5. ``evidence``: the report added; the inbox's address replaced by its keyed hash.

The steps share ``context`` (the policy, the store, the connections, the objects read back
once per request) and write one ``report``. Reports, logs and the evidence hold ids, keys,
counts and checksums only; the e-mail of a request by address is stored as its keyed hash. The
request itself comes from the inbox (retention.rights.requests), where the address waits only
while it is needed.

Preview (the default of the DAG) finds and decides everything and changes nothing: no row,
object, export or evidence row is written.
"""

from __future__ import annotations

import logging

from retention.archive.store import ArchiveStore
from retention.planner import check_hold_coverage_in
from retention.policy import Policy
from retention.rights.access import Gathered, export, gather
from retention.rights.context import PURPOSE_LOCK_TIMEOUT, RequestContext
from retention.rights.erase import erase
from retention.rights.evidence import record_end, record_start
from retention.rights.find import Found, find
from retention.rights.report import new_report, report_found, report_objects_read
from retention.rights.requests import SubjectRequest, SubjectRequestError
from retention.rights.retirements import find_settled, settled

log = logging.getLogger(__name__)

# An access searches again when a row it found live is gone by the export's read (archived
# meanwhile), at most this many times.
SEARCHES_FOR_MOVING_ROWS = 5


class IncompleteRequestError(RuntimeError):
    """An archive object changed between the request's reading and its rewrite (another
    request rewrote it, or a purge): a retry reads it again and finishes."""


class SubjectRights:
    """Finds, exports and erases one subject's data (one request at a time per call)."""

    def __init__(self, policy: Policy, dsn: str, store: ArchiveStore, lock_timeout: float = PURPOSE_LOCK_TIMEOUT):
        self.policy = policy
        self.dsn = dsn
        self.store = store
        self.lock_timeout = lock_timeout

    def handle(self, req: SubjectRequest) -> dict:
        """Run the request; returns its report (ids, keys, counts, checksums: no personal data)."""
        report = new_report(req, self.policy.tz)
        ctx = RequestContext(self.policy, self.dsn, self.store, self.lock_timeout)  # nothing read back yet
        with ctx.connect() as conn:
            if req.action == "erasure":
                # As every run and purge (Planner.load, ArchivePurge): a hold naming a table renamed
                # since, or a coverage entry naming no link, would keep nothing, silently (found by
                # a review: a held candidate was erased). Refused before anything is read or erased.
                tables = {rule.table for purpose in self.policy.purposes.values() for rule in purpose.rules}
                check_hold_coverage_in(conn, self.policy, tables)
            if not req.preview:
                record_start(conn, req, report)
            # The search, and for an access every read of the export (for an erasure's preview,
            # of its decisions), settled against partitions being retired (an erasure settles its
            # own steps: retention.rights.erase).
            if req.action == "access":
                found, gathered = settled(ctx, req, lambda check: self._gathered(ctx, conn, req, report, check))
            elif req.preview:
                found = settled(ctx, req, lambda check: self._previewed(ctx, conn, req, report, check))
            else:
                found = find_settled(ctx, conn, req)
            report_found(report, found)
            if req.kind == "email":
                # An address resolves to every row holding it, which may be several people (a
                # shared household address): the counts per table, so that the preview shows
                # how many records the address matched before an erasure acts on all of them.
                report["subject"]["matched"] = found.matched
                report["subject"]["matched_archived"] = found.matched_archived
                report["identifiers_not_recorded"] = found.identifiers_not_recorded
            if req.action == "access":
                export(ctx, conn, req, gathered, report)
            elif not req.preview:
                erase(ctx, conn, req, found, report)
            report_objects_read(report, found, ctx.objects_read)  # every object read, in the evidence
            if not req.preview:
                record_end(conn, req, report)
        if report.get("incomplete"):
            # Not a success: the subject's rows may now be in the object that replaced the one
            # read (its owners include the subject, so a retry finds and rewrites it).
            raise IncompleteRequestError(
                f"request {req.request_id!r}: an archive object changed while it was being rewritten; "
                "what was erased stays erased, retry the request to finish"
            )
        log.info(
            "subject request %s (%s, %s): found %s live, %s archived rows; preview=%s",
            req.request_id,
            req.action,
            req.kind,
            sum(report["found"]["live"].values()),
            sum(sum(t.values()) for tier, t in report["found"].items() if tier != "live"),
            req.preview,
        )
        return report

    @staticmethod
    def _previewed(ctx: RequestContext, conn, req: SubjectRequest, report: dict, check) -> Found:
        """An erasure's preview: the search and the reads of its decisions, settled together
        (each search decides afresh: what an earlier one reported is dropped)."""
        report["kept"], report["objects"] = [], []
        found = find(ctx, conn, req)
        erase(ctx, conn, req, found, report)  # preview: decides and reports, changes nothing
        check()
        return found

    @staticmethod
    def _gathered(ctx: RequestContext, conn, req: SubjectRequest, report: dict, check) -> tuple[Found, Gathered]:
        for _ in range(SEARCHES_FOR_MOVING_ROWS):  # a live row archived between the search and its read
            found = find(ctx, conn, req)
            gathered = gather(ctx, conn, found, report)
            read = sum(len(rows) for path, rows in gathered.parts.items() if path.startswith("live/"))
            if read == sum(len(ids) for ids in found.live.values()):
                break
        else:
            raise SubjectRequestError(
                f"the subject's rows kept leaving their tables while the request read them ({SEARCHES_FOR_MOVING_ROWS} "
                "searches): nothing was changed; retry the request"
            )
        check()
        return found, gathered
