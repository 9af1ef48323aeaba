"""The DAGs of the purposes added for the rest of the schedule (issue 9) run with dag.test() at
the boundary dates of their scenarios, through Airflow's own task runner, gates included, with
the same assertions as tests/test_dags_run.py."""

from __future__ import annotations

import json

import pytest

from tests import scenarios_policy as scenarios
from tests.dag_runs import run_dag, task_states, xcoms
from tests.outcome import assert_scenario_outcome, snapshot
from tests.test_dags_run import PERSONAL_VALUES

pytestmark = pytest.mark.integration
HASHED = ("camille.martin", "+33612345678")


@pytest.mark.parametrize("purpose", list(scenarios.BUILDERS))
def test_dag_run_enforces_the_schedule(purpose, airflow_db, db, s3, storage, policy):
    scenario = scenarios.BUILDERS[purpose](db, s3, storage)
    dag_run = run_dag(purpose, scenario.logical_date, batch_size=2)
    states = task_states(dag_run)
    assert set(states.values()) == {"success"}, states
    assert_scenario_outcome(db, s3, storage, policy, scenario)

    values = xcoms(dag_run)
    report = values["report"]
    report_text = report if isinstance(report, str) else json.dumps(report)
    for rule in policy.purposes[purpose].rules:
        assert f"| {rule.name} |" in report_text
    everything = json.dumps(values, default=str)
    leaked = [v for v in PERSONAL_VALUES + HASHED if v in everything]
    assert not leaked, "XCom must hold counts, keys and ids only"

    before = snapshot(db, purpose)
    second = run_dag(purpose, scenario.logical_date)
    assert set(task_states(second).values()) == {"success"}
    assert snapshot(db, purpose) == before, "a second run is a no-op"


def test_shipped_policy_previews_the_new_purposes():
    from retention.paths import POLICY_FILE
    from retention.policy import load_policy

    shipped = load_policy(POLICY_FILE)
    for purpose in scenarios.BUILDERS:
        assert shipped.purposes[purpose].mode == "preview", purpose
