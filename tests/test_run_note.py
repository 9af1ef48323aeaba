"""The run's note (retention.run_note): the few figures an engineer scans on the run's page and
the link to its evidence, written by the `report` task through Airflow's REST API (a real
api-server, tests/api_server.py); a note someone wrote is kept; a refusal never fails the run."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests import factories as f
from tests.dag_runs import run_dag, task_states, xcoms

SUMMARY = {
    "purpose": "quotes",
    "outcome": "success",
    "mode": "preview",
    "dry_run": False,
    "previewed": True,
    "failed_tasks": [],
    "not_run": [],
    "left_unchanged": None,
    "logical_date_paris": "2025-02-28 00:00 CET",
    "totals": {"due": 127, "deletable": 125, "deleted": 0, "held": 2, "waiting": 0, "objects": 0, "archive_bytes": 0},
    "purge": {"purged_objects": 3, "purged_records": 12},
    "gates": {"before": "12/12 expectations passed", "after": "9/9 expectations passed"},
}
EVIDENCE = "/retention/runs/quotes/scheduled__2025-02-27T23%3A00%3A00%2B00%3A00"


def test_a_preview_note_says_what_it_would_do():
    from retention.run_note import NOTE_MAX_CHARS, note_text

    note = note_text(SUMMARY, EVIDENCE)
    # The first line is what the run's page shows: the link, the state, the figures, the gates.
    assert note.splitlines()[0] == (
        f"[Run evidence]({EVIDENCE}) · **retention_quotes PREVIEW, nothing changed**: "
        "due 127, would archive / delete 125, held 2, waiting 0; gates 12/12, 9/9"
    )
    assert "- as of 2025-02-28 00:00 CET" in note and "would purge 3 objects (12 records)" in note
    assert "deleted" not in note and len(note) <= NOTE_MAX_CHARS


def test_an_enforced_and_a_failed_note():
    from retention.run_note import note_text

    enforced = SUMMARY | {"mode": "enforce", "previewed": False}
    enforced["totals"] = SUMMARY["totals"] | {"deleted": 125, "objects": 4, "archive_bytes": 1_234_567}
    note = note_text(enforced, EVIDENCE)
    assert "**retention_quotes enforced**: due 127, deleted 125, held 2, waiting 0; gates 12/12, 9/9" in note
    assert "- archived: 4 objects, 1,234,567 bytes; purged 3 objects (12 records)" in note and "would" not in note
    failed = enforced | {"outcome": "failed", "failed_tasks": ["archive_and_delete"], "left_unchanged": "rows stay."}
    failed["gates"] = {"before": "12/12 expectations passed", "after": "upstream_failed"}
    note = note_text(failed, EVIDENCE)
    assert "**retention_quotes RUN FAILED at archive_and_delete**: committed: deleted 125, held 2, waiting 0" in note
    assert "gates 12/12, upstream_failed" in note and "- left unchanged: rows stay." in note


def test_a_note_says_which_partitions_left_by_an_interrupted_run_this_run_finished():
    """A crash between a partition's detach and its drop: the next run drops it (or, in preview
    mode, attaches it again); its note says so, with the run that left it."""
    from retention.run_note import note_text

    summary = SUMMARY | {
        "finished_retirements": [
            {"table": "chat_messages", "partition": "chat_messages_2026_03", "state": "kept", "left_by": "crashed"},
            {"table": "chat_messages", "partition": "chat_messages_2026_04", "state": "dropped", "left_by": "crashed"},
        ]
    }
    note = note_text(summary, EVIDENCE)
    assert "- partition chat_messages_2026_03, left detached by the interrupted run crashed: attached again" in note
    assert (
        "- partition chat_messages_2026_04, left detached by the interrupted run crashed: dropped (rows archived,"
        " audited under that run)" in note
    )
    assert "left detached" not in note_text(SUMMARY, EVIDENCE)


def test_a_note_someone_wrote_is_kept_above_the_report():
    from retention.run_note import NOTE_MAX_CHARS, merged_with, note_text

    ours = note_text(SUMMARY, EVIDENCE)
    assert merged_with(None, ours) == ours
    human = "Re-run after incident INC-42 (S3 outage)."
    merged = merged_with(human, ours)
    assert merged == f"{human}\n\n---\n\n{ours}"
    # A retried report replaces its own part and keeps theirs; an earlier report alone is replaced.
    newer = note_text(SUMMARY | {"logical_date_paris": "2025-03-01 00:00 CET"}, EVIDENCE)
    assert merged_with(merged, newer) == f"{human}\n\n---\n\n{newer}"
    assert merged_with(ours, newer) == newer
    # Never cut what someone wrote: no room, no report in the note.
    assert merged_with("x" * (NOTE_MAX_CHARS - 10), ours) is None


def test_the_evidence_path_follows_the_base_url():
    from retention.run_note import evidence_path

    run = "manual__2025-03-01T10:00:00+00:00"
    assert evidence_path("quotes", run) == "/retention/runs/quotes/manual__2025-03-01T10%3A00%3A00%2B00%3A00"
    assert evidence_path("quotes", run, "https://airflow.example.test/ops/").startswith("/ops/retention/runs/quotes/")


def _api_connection(api_server, password: str) -> str:
    return json.dumps({"conn_type": "http", "host": api_server.url, "login": "reporter", "password": password})


def _note(api_server, dag_run) -> str | None:
    import httpx

    with httpx.Client(base_url=api_server.url, timeout=10) as client:
        token = client.post("/auth/token", json={"username": "dpo", "password": api_server.passwords["dpo"]})
        run = client.get(
            f"/api/v2/dags/{dag_run.dag_id}/dagRuns/{quote(dag_run.run_id, safe='')}",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )
    run.raise_for_status()
    return run.json()["note"]


@pytest.mark.integration
def test_the_report_sets_the_run_note_through_the_api(api_server, airflow_db, db, s3, storage, monkeypatch):
    for _ in range(2):
        f.quote(db, issued="2024-01-10")
    held = f.quote(db, issued="2024-01-10")
    f.legal_hold(db, "quotes", held)
    monkeypatch.setenv(
        "AIRFLOW_CONN_RETENTION_AIRFLOW_API", _api_connection(api_server, api_server.passwords["reporter"])
    )
    dag_run = run_dag("quotes", f.midnight("2025-03-01"))
    assert set(task_states(dag_run).values()) == {"success"}
    summary = xcoms(dag_run)["report"]
    from retention.run_note import note_text

    ours = note_text(summary, summary["evidence_path"])
    note = _note(api_server, dag_run)
    assert note == ours
    assert note.startswith(f"[Run evidence](/retention/runs/quotes/{quote(dag_run.run_id, safe='')}) · ")
    assert "**retention_quotes enforced**: due 3, deleted 2, held 1, waiting 0; gates " in note.splitlines()[0]
    # A note someone wrote on the run is kept above the report's; a retried report replaces its own.
    import httpx
    from retention.run_note import publish

    human = "Re-run after incident INC-42."
    with httpx.Client(base_url=api_server.url, timeout=10) as client:
        login = {"username": "operator", "password": api_server.passwords["operator"]}
        token = client.post("/auth/token", json=login).json()["access_token"]
        client.patch(
            f"/api/v2/dags/retention_quotes/dagRuns/{quote(dag_run.run_id, safe='')}",
            json={"note": human},
            headers={"Authorization": f"Bearer {token}"},
        ).raise_for_status()
    for _ in range(2):
        assert publish("retention_quotes", dag_run.run_id, ours) == "set"
        assert _note(api_server, dag_run) == f"{human}\n\n---\n\n{ours}"


@pytest.mark.integration
def test_a_refused_note_never_fails_the_run(api_server, airflow_db, db, s3, storage, monkeypatch, caplog):
    """The API refuses (a wrong password): the report logs why, the run is green, no note."""
    import logging

    from retention.run_note import publish

    caplog.set_level(logging.WARNING, logger="retention.run_report")
    f.quote(db, issued="2024-01-10")
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_AIRFLOW_API", _api_connection(api_server, "not-the-password"))
    dag_run = run_dag("quotes", f.midnight("2025-03-02"))
    assert set(task_states(dag_run).values()) == {"success"}
    assert _note(api_server, dag_run) is None
    assert "run note not set: POST /auth/token answered 401" in caplog.text
    monkeypatch.setenv(
        "AIRFLOW_CONN_RETENTION_AIRFLOW_API", _api_connection(api_server, api_server.passwords["reporter"])
    )
    assert publish("retention_quotes", "no-such-run", "x").endswith("answered 404")
    monkeypatch.setattr("retention.run_note.NOTE_MAX_CHARS", 5)  # no room left on the run
    assert publish("retention_quotes", dag_run.run_id, "[Run evidence](x)") == (
        "not set: the note already on the run leaves no room for the report's"
    )
    monkeypatch.delenv("AIRFLOW_CONN_RETENTION_AIRFLOW_API")
    assert publish("retention_quotes", dag_run.run_id, "x") == (
        "not set: no connection 'retention_airflow_api' (see docs/run_reports.md)"
    )


@pytest.mark.integration
def test_a_run_that_deleted_is_reported_so_when_the_purpose_is_set_to_preview_before_its_report(
    db, s3, storage, policy, monkeypatch, tmp_path
):
    """An enforced run's units delete 3 quotes; the DPO then sets the purpose to preview (the
    dag-processor re-parses, the remaining tasks of the run read the new mode). The run's archive
    step, purge and report must say what it did: it deleted 3 quotes. The report took the mode of
    the policy at the time it ran: 'PREVIEW mode: ... nothing changed', 'would archive / delete',
    previewed in the summary (the run's note and evidence): deleted rows recorded as not deleted
    (found by a review)."""
    import os
    from pathlib import Path

    from retention import run_report, tasks
    from retention.policy import default_policy

    from tests.test_approval_binding import context

    purpose = policy.purpose("quotes")
    due = {f.quote(db, issued="2023-06-01") for _ in range(3)}
    kept = {f.quote(db, issued="2024-12-01") for _ in range(7)}
    run_id = "manual__then_preview"
    ctx = context(run_id, logical_date=f.midnight("2025-03-01"))
    planned = tasks.plan(purpose, ctx)
    ctx["ti"].xcoms[("plan", "return_value")] = planned
    units = tasks.prepare_units(purpose, ctx, planned)
    results = [tasks.archive_unit(purpose, ctx, planned, u) for rule_units in units.values() for u in rule_units]
    assert f.ids(db, "quotes") == kept, "the enforced units deleted the due quotes"

    # The purpose set to preview while the run goes on: its next tasks parse the new policy.
    text = Path(os.environ["RETENTION_POLICY_FILE"]).read_text(encoding="utf-8")
    preview_file = tmp_path / "retention_policy.preview.yaml"
    preview_file.write_text(text.replace("mode: enforce", "mode: preview"), encoding="utf-8")
    monkeypatch.setenv("RETENTION_POLICY_FILE", str(preview_file))
    now_preview = default_policy().purpose("quotes")
    assert now_preview.mode == "preview"

    archived = tasks.archive_and_delete_units(now_preview, ctx, planned, [results])
    purged = tasks.purge_archives(now_preview, ctx)
    table = tasks.report(now_preview, ctx, planned, archived, purged, {"before": "ok"}, {"after": "ok"})
    pulled = {"plan": planned, "archive_and_delete": archived, "purge_archives": purged}
    summary = run_report.summary_dict("quotes", ctx, pulled, {}, table, archived["rules"])
    assert sum(r["deleted"] for r in archived["rules"]) == len(due), archived
    assert "nothing changed" not in table and "would archive / delete" not in table.split("\n", 3)[2], table
    assert "| unconverted_quotes | quotes | intermediate | 3 | 3 | 0 | 0 | 1 |" in table, table
    assert not summary["previewed"] and summary["mode"] == "enforce", (summary["mode"], summary["previewed"])
    # The purge, after the switch, previewed (the policy says preview): the report says so.
    assert purged["dry_run"] and "archive purge it would do" in table
