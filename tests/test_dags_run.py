"""Every purpose's DAG runs with dag.test() at a logical date, through Airflow's own task runner,
against the real PostgreSQL and S3 servers: the same assertions as the engine tests, plus
params (dry_run, batch_size), the report, XCom without personal data, and backfills."""

from __future__ import annotations

import json
import re

import pytest

from tests import factories as f
from tests import scenarios, scenarios_policy
from tests.dag_runs import asset_events, run_dag, task_states, xcoms
from tests.outcome import assert_scenario_outcome, snapshot

pytestmark = pytest.mark.integration
PERSONAL_VALUES = ("Camille", "Martin", "example.fr", "+336", "Manon", "Petit", "cus_test", "pm_test", "4242")
HASHED = ("camille.martin", "+33612345678")  # what the suppression list keeps only as hashes

BUILDERS = scenarios.BUILDERS | scenarios_policy.BUILDERS  # the first seven purposes, then the rest
# A second DAG run (gates included) is a no-op: shown on two purposes, one with files, probative
# objects and the processor; tests/test_purposes_engine.py re-runs every purpose's engine.
RERUN = ("quotes", "contracts")


def personal_values_in(text: str) -> list[str]:
    """The personal values found in text. The card's last four digits count only as a number of their
    own: inside a longer run of digits or hex (a checksum, an object key's hash, a duration) they are
    chance, and a CI run once failed on one."""
    found = []
    for value in PERSONAL_VALUES + HASHED:
        pattern = rf"(?<![0-9A-Za-z]){value}(?![0-9A-Za-z])" if value.isdigit() else re.escape(value)
        if re.search(pattern, text):
            found.append(value)
    return found


@pytest.mark.parametrize("purpose", list(BUILDERS))
def test_dag_run_enforces_the_schedule(purpose, airflow_db, db, s3, storage, policy):
    scenario = BUILDERS[purpose](db, s3, storage)
    dag_run = run_dag(purpose, scenario.logical_date, batch_size=2)
    states = task_states(dag_run)
    assert set(states.values()) == {"success"}, states
    assert_scenario_outcome(db, s3, storage, policy, scenario)

    values = xcoms(dag_run)
    report = values["report"]  # the structured summary; its table is what the log shows
    report_text = report["table"]
    # One meaning of due: past the schedule, of which deletable (here: deleted), held and waiting.
    archived = {r["rule"]: r for r in values["archive_and_delete"]["rules"]}
    for r in report["rules"]:
        waiting = sum(r["waiting"].values())
        assert r["due"] == r["deletable"] + r["held"] + waiting == archived[r["rule"]]["due"], r
        assert r["deleted"] == r["deletable"] == archived[r["rule"]]["deleted"], r
    for rule in policy.purposes[purpose].rules:
        assert f"| {rule.name} |" in report_text
    paris = scenario.logical_date.astimezone(policy.tz).strftime("%Y-%m-%d %H:%M %Z")
    assert f"logical date {paris}," in report_text, "the rendered table shows the date in Europe/Paris"
    everything = json.dumps(values, default=str)
    assert not personal_values_in(everything), "XCom must hold counts, keys and ids only"
    assert_asset_events(db, storage, policy, purpose, dag_run)

    if purpose in RERUN:
        before = snapshot(db, purpose)
        second = run_dag(purpose, scenario.logical_date)
        assert set(task_states(second).values()) == {"success"}
        assert snapshot(db, purpose) == before, "a second run is a no-op"
        assert asset_events(second) == {}, "a run that archived nothing emits no Asset event"


def assert_asset_events(db, storage, policy, purpose, dag_run):
    """One event per archive tier the run wrote to, its extra = the manifest's counts and keys."""
    written = db.execute(
        "SELECT tier, count(*), sum(row_count), array_agg(object_key ORDER BY object_key)"
        " FROM retention.archive_manifest WHERE purpose = %s AND run_id = %s AND state = 'committed' GROUP BY 1",
        (purpose, dag_run.run_id),
    ).fetchall()
    # Airflow stores the URI normalized (no trailing slash).
    expected = {
        f"s3://{storage.archive_bucket}/{storage.tiers[t].prefix}/{purpose}": (n, r, k) for t, n, r, k in written
    }
    events = asset_events(dag_run)
    assert set(events) == set(expected), (events, expected)
    for uri, extra in events.items():
        objects, records, keys = expected[uri]
        assert (extra["objects"], extra["records"], extra["object_keys"]) == (objects, records, keys)
        assert extra["purpose"] == purpose and extra["run_id"] == dag_run.run_id
        assert sum(extra["rules"].values()) == records
    everything = json.dumps(events)
    assert not personal_values_in(everything), "Asset events hold counts and keys only"


def test_dry_run_param_changes_nothing(airflow_db, db, s3, storage, policy):
    scenario = scenarios.quotes(db, s3, storage)
    before = snapshot(db, "quotes")
    dag_run = run_dag("quotes", scenario.logical_date, dry_run=True)
    assert set(task_states(dag_run).values()) == {"success"}
    assert snapshot(db, "quotes") == before
    assert "DRY RUN" in xcoms(dag_run)["report"]["table"]
    assert asset_events(dag_run) == {}, "a dry run emits no Asset event"


def test_backfill_run_uses_its_own_logical_date(airflow_db, db, s3, storage, policy):
    early = f.quote(db, issued="2023-01-10")
    late = f.quote(db, issued="2023-06-10")
    dag_run = run_dag("quotes", f.midnight("2024-02-01"))
    assert set(task_states(dag_run).values()) == {"success"}
    assert f.ids(db, "quotes") == {late}
    assert early not in f.ids(db, "quotes")


def test_failed_run_deletes_nothing_when_s3_is_down(airflow_db, db, s3, storage, policy, monkeypatch):
    import json as _json
    import os

    quote = f.quote(db, issued="2020-01-01")
    conn = _json.loads(os.environ["AIRFLOW_CONN_ARCHIVE_S3"])
    from tools.devstack import free_port

    conn["extra"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
    conn["extra"]["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 1}
    monkeypatch.setenv("AIRFLOW_CONN_ARCHIVE_S3", _json.dumps(conn))
    dag_run = run_dag("quotes", f.midnight("2025-01-01"))
    states = task_states(dag_run)
    assert states["archive_and_delete"] == "failed" or states["check_after"] != "success", states
    assert f.ids(db, "quotes") == {quote}


def test_a_rule_spread_over_units_deletes_exactly_the_due_rows(airflow_db, db, s3, storage, policy):
    """range_rows=3: the 7 deletable quotes go in three mapped tasks (ids in ranges of 3, 3, 1);
    the held one and the recent ones stay, and the report and Asset events cover every unit."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    due = [f.quote(db, issued="2023-06-01") for _ in range(7)]  # archived until 2025-06
    held = f.quote(db, issued="2023-06-01")
    f.legal_hold(db, "quotes", held)
    recent = [f.quote(db, issued="2024-12-01") for _ in range(2)]
    dag_run = run_dag("quotes", f.midnight("2025-02-28"), batch_size=2, range_rows=3)
    assert set(task_states(dag_run).values()) == {"success"}, task_states(dag_run)
    with create_session() as session:
        units = (
            session.query(TaskInstance.map_index, TaskInstance.state)
            .filter(TaskInstance.run_id == dag_run.run_id, TaskInstance.task_id == "archive_unconverted_quotes")
            .order_by(TaskInstance.map_index)
            .all()
        )
    assert [(i, str(s)) for i, s in units] == [(0, "success"), (1, "success"), (2, "success")]
    assert f.ids(db, "quotes") == {held, *recent}
    archived = db.execute(
        "SELECT array_agg(i ORDER BY i) FROM retention.archive_manifest, unnest(record_ids) AS i"
        " WHERE run_id = %s AND state = 'committed'",
        (dag_run.run_id,),
    ).fetchone()[0]
    assert archived == due
    values = xcoms(dag_run)
    (rule,) = values["archive_and_delete"]["rules"]
    assert (rule["due"], rule["held"], rule["deleted"], values["archive_and_delete"]["units"]) == (8, 1, 7, 3)
    assert "| unconverted_quotes | quotes | intermediate | 8 | 7 | 1 |" in values["report"]["table"]
    assert_asset_events(db, storage, policy, "quotes", dag_run)
