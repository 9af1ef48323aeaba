"""Each purpose's rules through the engine against real PostgreSQL and S3: exactly the due rows
go, the archive holds exactly them, files follow their rows, and a second run is a no-op."""

from __future__ import annotations

import pytest
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore

from tests import scenarios, scenarios_policy
from tests.outcome import assert_scenario_outcome, snapshot

pytestmark = pytest.mark.integration


BUILDERS = scenarios.BUILDERS | scenarios_policy.BUILDERS  # the first seven purposes, then the rest


@pytest.mark.parametrize("purpose", list(BUILDERS))
def test_purpose_run(purpose, db, s3, storage, policy, source_dsn):
    scenario = BUILDERS[purpose](db, s3, storage)
    engine = RetentionEngine(policy, purpose, source_dsn, ArchiveStore(s3, storage), lock_timeout=2)

    planned = {o.rule: o for o in engine.plan(RunContext(purpose, "plan", scenario.logical_date))}
    outcomes = {
        o.rule: o for o in engine.archive_and_delete(RunContext(purpose, "run1", scenario.logical_date, batch_size=2))
    }

    assert_scenario_outcome(db, s3, storage, policy, scenario)
    for rule, count in scenario.held.items():
        assert outcomes[rule].held == planned[rule].held == count, rule
    for rule, count in scenario.waiting.items():
        assert sum(outcomes[rule].waiting.values()) == count, rule
    assert sum(o.deleted for o in outcomes.values()) == sum(len(v) for v in scenario.deleted.values())

    before = snapshot(db, purpose)
    again = engine.archive_and_delete(RunContext(purpose, "run2", scenario.logical_date))
    assert sum(o.deleted for o in again) == 0
    assert snapshot(db, purpose) == before
