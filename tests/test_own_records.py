"""The project's own records under the policy (issue 23 §1): every one has a period, a basis
and the DPO's choice; the audit and the manifest outlive the longest archive they prove; a
missing, negative or too short period is refused at load, naming the record and what it must
cover. Unit tests (no service)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from retention.paths import POLICY_FILE
from retention.policy import PolicyError, load_policy
from retention.policy.model import OWN_RECORDS, covers
from retention.policy.periods import Period


@pytest.fixture
def policy_data() -> dict:
    return yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))


def load(tmp_path: Path, data: dict):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return load_policy(path)


def test_the_shipped_periods():
    policy = load_policy()
    assert set(policy.own_records) == set(OWN_RECORDS)
    shipped = {name: str(policy.own_period(name)) for name in OWN_RECORDS}
    assert shipped == {
        "audit_log": "5 years",
        "audit_ids_without_archive": "30 days",
        "manifest_purged": "5 years",
        "document_disposals": "5 years",
        "subject_request_evidence": "5 years",
        "access_exports": "30 days",
        "airflow_dag_runs": "90 days",
        "airflow_task_instances": "90 days",
        "airflow_xcom": "90 days",
        "airflow_log": "1 year",
        "airflow_import_errors": "30 days",
        "task_logs": "90 days",
        "gx_validation_results": "90 days",
        "data_docs": "90 days",
    }
    assert all(record.basis and record.choice for record in policy.own_records.values())
    assert policy.longest_archive() == (Period(months=60), "purpose 'contracts', rule 'reimbursements'")


@pytest.mark.parametrize("record", ["audit_log", "manifest_purged"])
@pytest.mark.parametrize("period", ["4 years", "59 months", "999 days"])
def test_a_period_shorter_than_the_archive_it_proves_is_refused(tmp_path, policy_data, record, period):
    policy_data["own_records"][record]["period"] = period
    with pytest.raises(PolicyError) as err:
        load(tmp_path, policy_data)
    assert f"own_records.{record}: period {period} is shorter than the archive it proves" in str(err.value)
    assert "it must cover at least 5 years (the longest archive period it proves: purpose '" in str(err.value)


def test_a_longer_archive_raises_what_the_audit_must_cover(tmp_path, policy_data):
    policy_data["purposes"]["aml"]["rules"][0]["archive"] = "10 years"
    with pytest.raises(PolicyError, match=r"own_records.audit_log: .*at least 10 years .*purpose 'aml'"):
        load(tmp_path, policy_data)
    policy_data["own_records"]["audit_log"]["period"] = "10 years"
    policy_data["own_records"]["manifest_purged"]["period"] = "121 months"
    assert load(tmp_path, policy_data).own_period("manifest_purged") == Period(months=121)


@pytest.mark.parametrize("record", ["audit_log", "manifest_purged"])
def test_a_missing_period_is_refused_naming_what_it_must_cover(tmp_path, policy_data, record):
    del policy_data["own_records"][record]["period"]
    with pytest.raises(PolicyError, match=rf"own_records.{record}: missing period; it must cover at least 5 years"):
        load(tmp_path, policy_data)


@pytest.mark.parametrize("record", ["task_logs", "airflow_xcom", "subject_request_evidence"])
def test_a_missing_record_is_refused(tmp_path, policy_data, record):
    del policy_data["own_records"][record]
    with pytest.raises(PolicyError, match=rf"own_records.{record}: missing period"):
        load(tmp_path, policy_data)


@pytest.mark.parametrize("record", ["audit_log", "airflow_dag_runs"])
def test_a_negative_period_is_refused(tmp_path, policy_data, record):
    policy_data["own_records"][record]["period"] = "-90 days"
    with pytest.raises(PolicyError, match=rf"own_records.{record}: period '-90 days' is not a period"):
        load(tmp_path, policy_data)


def test_no_own_records_section_is_refused(tmp_path, policy_data):
    del policy_data["own_records"]
    with pytest.raises(PolicyError, match="field 'own_records': Field required"):
        load(tmp_path, policy_data)


def test_unknown_record_and_missing_basis_are_refused(tmp_path, policy_data):
    data = copy.deepcopy(policy_data)
    data["own_records"]["backups"] = {"period": "1 year", "basis": "x", "choice": "y"}
    with pytest.raises(PolicyError, match=r"own_records: unknown records \['backups'\]"):
        load(tmp_path, data)
    del policy_data["own_records"]["task_logs"]["basis"]
    with pytest.raises(PolicyError, match=r"field 'own_records.task_logs.basis': Field required"):
        load(tmp_path, policy_data)


def test_exports_period_is_the_watch_one(tmp_path, policy_data):
    policy_data["own_records"]["access_exports"]["period"] = "60 days"
    with pytest.raises(PolicyError, match=r"differs from access_exports.kept_for \(30 days\)"):
        load(tmp_path, policy_data)


def test_task_instances_cannot_outlive_their_run(tmp_path, policy_data):
    policy_data["own_records"]["airflow_xcom"]["period"] = "1 year"
    with pytest.raises(PolicyError, match=r"own_records.airflow_xcom: .* longer than airflow_dag_runs \(90 days\)"):
        load(tmp_path, policy_data)


def test_covers_compares_days_and_months_at_their_worst():
    assert covers(Period(months=60), Period(months=60))
    assert not covers(Period(months=59), Period(months=60))
    assert covers(Period(days=1860), Period(months=60))  # 60 x 31
    assert not covers(Period(days=1859), Period(months=60))
    assert covers(Period(months=2), Period(days=56))  # 2 x 28
    assert not covers(Period(months=2), Period(days=57))
    assert covers(Period(days=1), Period())
