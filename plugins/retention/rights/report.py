"""A request's report: ids, keys, counts and checksums, never the data. What was found per
source and table, and what is kept, counted per table, reason and own end date.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import replace

from retention.policy import Policy
from retention.policy.periods import Period, due_date
from retention.rights.decide import KEPT_BECAUSE, Decision, basis
from retention.rights.find import ArchivedObject, Found
from retention.rights.requests import SubjectRequest

RESPONSE_PERIOD = Period(months=1)  # Art. 12(3): one month from receipt


def new_report(req: SubjectRequest, tz: dt.tzinfo) -> dict:
    """The report of a request before anything is found: what was asked, and when it is due."""
    received = req.received_at.astimezone(dt.UTC)
    respond_by = due_date(received, RESPONSE_PERIOD, tz)
    return {
        "request_id": req.request_id,
        "action": req.action,
        "subject": {"kind": req.kind, "ref": req.subject_ref},
        "received_at": received.isoformat(),
        "respond_by": respond_by.isoformat(),
        "preview": req.preview,
        "found": {"live": {}, "intermediate": {}, "probative": {}},
        "files": {},
        "objects": [],
        "kept": [],
        "owners_not_recorded": 0,
    }


def report_found(report: dict, found: Found) -> None:
    """The subject's records found, counted per table, live and per archive tier."""
    report["found"]["live"] = {t: len(v) for t, v in sorted(found.live.items())}
    by_tier: dict[str, Counter] = defaultdict(Counter)
    for obj in found.objects:
        by_tier[obj.tier][obj.table] += len(set(obj.subject_ids) - obj.elsewhere)
    for tier, counts in by_tier.items():
        report["found"][tier] = dict(sorted(counts.items()))
    report["owners_not_recorded"] = found.owners_not_recorded


def _kept_entry(policy: Policy, source: str, table: str, d: Decision) -> dict:
    legal_basis = basis(policy, d.purpose, d.rule) if d.purpose else None
    return {
        "source": source,
        "table": table,
        "purpose": d.purpose,
        "rule": d.rule,
        "reason": d.reason,
        "why": KEPT_BECAUSE[d.reason],
        "legal_basis": legal_basis,
        "kept_until": d.until,
    }


def add_kept(policy: Policy, report: dict, source: str, table: str, d: Decision, n: int = 1) -> None:
    """Counted per table, reason and own end date (records ending on other days: other entries)."""
    entry = _kept_entry(policy, source, table, d)
    for kept in report["kept"]:
        if {k: v for k, v in kept.items() if k != "records"} == entry:
            kept["records"] += n
            return
    report["kept"].append(entry | {"records": n})


def add_kept_archived(policy: Policy, report: dict, obj: ArchivedObject, d: Decision) -> None:
    for until, n in sorted(Counter(obj.until[i] for i in obj.subject_ids).items()):
        add_kept(policy, report, obj.tier, obj.table, replace(d, until=until), n)


def report_objects_read(report: dict, found: Found, objects_read: list[tuple[str, str | None, str]]) -> None:
    """Every archive object the request read back (the subject's, the other candidates, those
    read for a parent's clock) in ``report["objects"]``: key, version id, SHA-256; an object the
    erasure already lists gains its version id."""
    listed = {(e["key"], e["sha256"]): e for e in report["objects"]}
    mine = {(o.key, o.version_id, o.sha256): o for o in found.objects}
    for key, version, sha in objects_read:
        entry = listed.get((key, sha))
        if entry is not None:
            entry.setdefault("version_id", version)
            continue
        obj = mine.get((key, version, sha))
        entry = {"key": key, "version_id": version, "sha256": sha, "action": "read"}
        if obj is not None:
            entry |= {"tier": obj.tier, "table": obj.table, "subject_rows": len(obj.subject_ids)}
        report["objects"].append(entry)
