"""The evidence of a request (``retention.subject_requests``): ids, keys, counts and checksums,
never the data; the subject by id, or by the address's keyed hash. The row is compared (and
written if new) before anything else of the request is, and its report is added at the end;
the evidence of a finished request is final: a run under its id is refused before anything is
written. Once done, the request's address in the inbox is replaced by its keyed hash
(retention.rights.requests).
"""

from __future__ import annotations

import json

from retention.rights import requests as inbox
from retention.rights.requests import SubjectRequest, SubjectRequestError


def record_start(conn, req: SubjectRequest, report: dict) -> None:
    """The evidence row of a new request, or the run id of a request resumed. Compared before
    anything is written, in one transaction: a request refused (another action or subject
    under its id, or a finished one) changes nothing, and a finished request's evidence is
    final."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO retention.subject_requests (request_id, action, subject_kind, subject_ref, received_at,"
            " respond_by, state, run_id) VALUES (%s, %s, %s, %s, %s, %s, 'running', %s)"
            " ON CONFLICT (request_id) DO NOTHING",
            (
                req.request_id,
                req.action,
                req.kind,
                req.subject_ref,
                report["received_at"],
                report["respond_by"],
                req.run_id,
            ),
        )
        action, kind, ref, state, run_id = conn.execute(
            "SELECT action, subject_kind, subject_ref, state, run_id FROM retention.subject_requests"
            " WHERE request_id = %s FOR UPDATE",
            (req.request_id,),
        ).fetchone()
        if (action, kind) != (req.action, req.kind) or ref not in req.subject_refs:
            raise SubjectRequestError(
                f"request {req.request_id!r} was recorded for another action or subject; use a new request id"
            )
        if state == "done":
            raise SubjectRequestError(
                f"request {req.request_id!r} is finished (its evidence is final); a new request needs a new id"
            )
        if run_id != req.run_id:
            conn.execute(
                "UPDATE retention.subject_requests SET run_id = %s WHERE request_id = %s",
                (req.run_id, req.request_id),
            )


def record_end(conn, req: SubjectRequest, report: dict) -> None:
    """The run's report added to the evidence; once done, the request's address (if it came
    through the inbox) is replaced by its keyed hash, in the same transaction."""
    evidence = {k: v for k, v in report.items() if k != "export"}
    if "export" in report:  # the link is a credential: the evidence keeps where, not how
        evidence["export"] = {k: v for k, v in report["export"].items() if k != "url"}
    incomplete = bool(report.get("incomplete"))
    with conn.transaction():
        conn.execute(
            "UPDATE retention.subject_requests SET reports = reports || jsonb_build_array(%s::jsonb),"
            " state = CASE WHEN %s THEN 'running' ELSE 'done' END,"
            " finished_at = CASE WHEN %s THEN NULL ELSE now() END WHERE request_id = %s",
            (json.dumps(evidence), incomplete, incomplete, req.request_id),
        )
        if not incomplete:
            inbox.clear_identifiers(conn, req.request_id, req.subject_ref)
