"""A run's evidence (the page /retention/runs/<purpose>/<run id>, its JSON and CSV): what the
run committed (audit log, manifest), its gates and its report, counts, keys and ids only.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

from fastapi import HTTPException

from retention_ui.airflow_runs import gate_results, report_summary
from retention_ui.source import connect


def evidence(purpose: str, run_id: str) -> dict:
    """A run's evidence: what it committed (audit log, manifest), its gates, and its report (the
    `report` task's summary; a preview run's only trace)."""
    from retention import status
    from retention.airflow_names import dag_id_for
    from retention.policy import default_policy

    policy = default_policy()
    dag_id = dag_id_for(purpose)
    report = report_summary(dag_id, run_id) if purpose in policy.purposes else None
    with connect() as conn:
        found = status.run_evidence(conn, policy, purpose, run_id, always=report is not None)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no retention trace for run {run_id!r} of {purpose!r}")
    if report is not None:
        found["logical_date"] = found["logical_date"] or report.get("logical_date")
        found["mode"] = report.get("mode", found["mode"])
    found["dag_id"] = dag_id
    found["gates"] = gate_results(found["dag_id"], run_id)
    found["report"] = report
    found["generated_at"] = dt.datetime.now(dt.UTC).isoformat()
    return found


EVIDENCE_CSV_COLUMNS = (
    "section",
    "rule",
    "table",
    "action_or_tier",
    "records",
    "bytes",
    "key",
    "sha256",
    "version_id",
    "state",
    "purge_date",
    "detail",
)


def evidence_csv(ev: dict) -> str:
    """One flat table: the rules, the counts, the objects and the gates of a run."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EVIDENCE_CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    head = f"run_id={ev['run_id']}; purpose={ev['purpose']}; mode={ev['mode']}; logical_date={ev['logical_date']}"
    writer.writerow({"section": "run", "detail": head})
    for r in ev["rules"]:
        writer.writerow(
            {
                "section": "rule",
                "rule": r["rule"],
                "table": r["table"],
                "action_or_tier": r["tier"],
                "detail": f"clock={r['clock']}; live={r['live']}; archive={r['archive']}; sql={r['sql']}",
            }
        )
    for c in ev["counts"]:
        writer.writerow(
            {
                "section": "count",
                "rule": c["rule"],
                "table": c["table"],
                "action_or_tier": c["action"],
                "records": c["records"],
                "bytes": c["bytes"],
            }
        )
    for o in ev["objects"]:
        writer.writerow(
            {
                "section": "object",
                "rule": o["rule"],
                "table": o["table"],
                "action_or_tier": o["tier"],
                "records": o["rows"],
                "bytes": o["bytes"],
                "key": f"s3://{o['bucket']}/{o['key']}",
                "sha256": o["sha256"],
                "version_id": o["version_id"],
                "state": o["state"],
                "purge_date": o["purge_date"],
                "detail": o["event"],
            }
        )
    for a in ev.get("approvals", []):  # who approved (or refused) the plan, on which figures
        writer.writerow(
            {
                "section": f"approval:{a['kind']}",
                "sha256": a["plan_sha256"],
                "state": a["decision"],
                "detail": f"by={a['decided_by'] or '-'}; at={a['decided_at']}; "
                + json.dumps(a["figures"].get("tables", {}), sort_keys=True),
            }
        )
    report = ev.get("report") or {}
    for r in report.get("rules", []):
        waiting = r.get("waiting", 0)
        waiting = sum(waiting.values()) if isinstance(waiting, dict) else waiting
        figures = f"due={r.get('due', '')}; deletable={r.get('deletable', '')}; held={r.get('held', 0)}"
        writer.writerow(
            {
                "section": "report",
                "rule": r["rule"],
                "table": r["table"],
                "action_or_tier": r.get("tier", ""),
                "records": r.get("deleted", 0),
                "bytes": r.get("archive_bytes", 0),
                "state": "would" if report.get("previewed") else "done",
                "detail": f"{figures}; waiting={waiting}; deleted={r.get('deleted', 0)}",
            }
        )
    for task_id, gate in sorted(ev.get("gates", {}).items()):
        results = gate.get("results", []) if isinstance(gate, dict) else []
        for g in results:
            writer.writerow(
                {
                    "section": f"gate:{task_id}",
                    "rule": g.get("rule") or "",
                    "table": g.get("table"),
                    "action_or_tier": g.get("expectation"),
                    "state": {True: "ok", False: "failed", None: "skipped"}.get(g.get("success")),
                    "detail": json.dumps(g.get("observed", {}), sort_keys=True, default=str),
                }
            )
    return out.getvalue()


def evidence_filename(ev: dict) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ev["run_id"])
    return f"evidence-{ev['purpose']}-{safe}"
