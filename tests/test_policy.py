"""The policy file as validated data: the real file loads, broken files are rejected clearly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from retention.paths import POLICY_FILE
from retention.policy import PolicyError, load_policy
from retention.policy.periods import Period

DESIGN_TABLE = {  # DESIGN.md §2: (purpose, rule) -> (live, tier, archive)
    ("quotes", "unconverted_quotes"): ("12 months", "intermediate", "12 months"),
    ("contracts", "claims"): ("0 months", "probative", "5 years"),
    ("contracts", "ended_contracts"): ("0 months", "probative", "5 years"),
    ("contracts", "payment_references"): ("0 months", "none", None),
    ("prospects", "prospects"): ("3 years", "probative", "5 years"),
    ("prospects", "former_customers"): ("3 years", "probative", "5 years"),
    ("call_recordings", "contracting_recordings"): ("2 years", "none", None),
    ("call_recordings", "quality_and_claims_recordings"): ("6 months", "none", None),
    ("call_recordings", "call_analyses"): ("1 year", "none", None),
    ("aml", "aml_records"): ("0 months", "probative", "5 years"),
    ("fraud", "unqualified_alerts"): ("6 months", "none", None),
    ("fraud", "not_relevant_alerts"): ("0 days", "none", None),
    ("fraud", "relevant_alerts"): ("0 months", "probative", "5 years"),
    ("job_applications", "candidates_not_recruited"): ("2 years", "none", None),
    # DESIGN.md §2, second table: the rest of the policy's schedule (issue 9).
    ("subscriber_services", "chat_messages"): ("0 months", "probative", "5 years"),
    ("subscriber_services", "vet_consultations"): ("0 months", "probative", "5 years"),
    ("marketing", "email_history"): ("3 years", "none", None),
    ("marketing", "email_contacts"): ("3 years", "none", None),
    ("marketing", "phone_history"): ("3 years", "none", None),
    ("marketing", "phone_contacts"): ("3 years", "none", None),
    ("information_requests", "handled_requests"): ("0 days", "none", None),
    ("rights_requests", "checked_identity_documents"): ("0 days", "none", None),
    ("rights_requests", "marketing_objections"): ("3 years", "none", None),
    ("cookie_consents", "cookie_choices"): ("6 months", "none", None),
}


@pytest.fixture
def policy_data() -> dict:
    return yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True) if not isinstance(data, str) else data)
    return path


def test_real_policy_matches_the_design_schedule():
    policy = load_policy()
    assert set(policy.purposes) == {
        "quotes",
        "contracts",
        "prospects",
        "call_recordings",
        "aml",
        "fraud",
        "job_applications",
        "subscriber_services",
        "marketing",
        "information_requests",
        "rights_requests",
        "cookie_consents",
    }
    for (purpose, rule_name), (live, tier, archive) in DESIGN_TABLE.items():
        rule = next(r for r in policy.purposes[purpose].rules if r.name == rule_name)
        assert rule.live == Period.parse(live), rule_name
        assert rule.tier == tier, rule_name
        assert rule.archive == (Period.parse(archive) if archive else None), rule_name


def test_quotes_are_gone_after_24_months():
    rule = load_policy().purposes["quotes"].rules[0]
    assert rule.gone_after == Period(months=24)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["purposes"]["quotes"]["rules"][0].update(live="twelve months"),
            "purpose 'quotes', rule 'unconverted_quotes', field 'live'",
        ),
        (
            lambda d: d["purposes"]["aml"]["rules"][0].update(tier="cold"),
            "purpose 'aml', rule 'aml_records', field 'tier'",
        ),
        (
            lambda d: d["purposes"]["quotes"]["rules"][0].update(table="quotes; DROP TABLE x"),
            "purpose 'quotes', rule 'unconverted_quotes', field 'table'",
        ),
        (
            lambda d: d["purposes"]["fraud"]["rules"][0].update(archive="5 years"),
            "purpose 'fraud', rule 'unqualified_alerts'",
        ),
        (lambda d: d["purposes"]["contracts"]["rules"][1].pop("archive"), "purpose 'contracts', rule 'claims'"),
        (
            lambda d: d["purposes"]["contracts"].update(max_delete_fraction=1.5),
            "purpose 'contracts', field 'max_delete_fraction'",
        ),
        (lambda d: d["purposes"]["quotes"].update(retention_days=3), "purpose 'quotes', field 'retention_days'"),
        (lambda d: d["purposes"]["prospects"].pop("legal_basis_fr"), "purpose 'prospects', field 'legal_basis_fr'"),
        (
            lambda d: d["purposes"]["aml"].update(data_categories_fr=[]),
            "purpose 'aml', field 'data_categories_fr'",
        ),
        (lambda d: d.update(timezone="Europe/Atlantis"), "field 'timezone'"),
        (
            lambda d: d["purposes"]["quotes"]["rules"].append(dict(d["purposes"]["quotes"]["rules"][0])),
            "purpose 'quotes', field 'rules'",
        ),
        # A period written as a mapping reached the dataclass's fields unchecked: -12 months made
        # every quote due at once (its cutoff: the logical date), archived objects purged at once.
        (
            lambda d: d["purposes"]["quotes"]["rules"][0].update(live={"months": -12}),
            "purpose 'quotes', rule 'unconverted_quotes', field 'live'",
        ),
        (
            lambda d: d["purposes"]["aml"]["rules"][0].update(archive={"months": -60}),
            "purpose 'aml', rule 'aml_records', field 'archive'",
        ),
        # YAML's `yes` / `on` / `true` read as 1.0: the mass-deletion guard off, a whole table
        # deleted without a question.
        (
            lambda d: d["purposes"]["contracts"].update(max_delete_fraction=True),
            "purpose 'contracts', field 'max_delete_fraction'",
        ),
    ],
    ids=[
        "bad-period",
        "bad-tier",
        "sql-in-identifier",
        "archive-on-none",
        "missing-archive",
        "fraction-range",
        "unknown-key",
        "missing-field",
        "no-data-categories",
        "bad-timezone",
        "duplicate-rule",
        "period-as-mapping",
        "archive-as-mapping",
        "fraction-boolean",
    ],
)
def test_broken_policy_is_rejected_naming_file_purpose_and_field(tmp_path, policy_data, mutate, expected):
    data = copy.deepcopy(policy_data)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_rule_without_sql_file_is_rejected(tmp_path, policy_data):
    policy_data["purposes"]["quotes"]["rules"][0]["name"] = "no_such_rule"
    with pytest.raises(PolicyError, match="purpose 'quotes', rule 'no_such_rule'.*no SQL file"):
        load_policy(write(tmp_path, policy_data))


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "purposes: [unclosed\n"])
def test_not_a_policy_at_all(tmp_path, text):
    with pytest.raises(PolicyError, match="policy.yaml"):
        load_policy(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")


def test_storage_env_overrides(monkeypatch):
    monkeypatch.setenv("RETENTION_ARCHIVE_BUCKET", "my-archive")
    monkeypatch.setenv("RETENTION_PROBATIVE_STORAGE_CLASS", "STANDARD")
    monkeypatch.setenv("RETENTION_PROBATIVE_OBJECT_LOCK", "false")
    storage = load_policy().storage_settings()
    assert storage.archive_bucket == "my-archive"
    assert storage.tiers["probative"].storage_class == "STANDARD"
    assert storage.tiers["probative"].object_lock is False


def test_durations_live_only_in_the_policy_file():
    """No SQL file holds a literal interval: every cutoff is a bind parameter."""
    sql_dir = POLICY_FILE.parent / "sql"
    for path in sql_dir.glob("*/*.sql"):
        if path.parent.name == "schema":
            continue
        text = path.read_text().lower()
        # The planner adds `<clock> < %(cutoff__<rule>)s`; a rule file only filters.
        assert "interval" not in text and "cutoff" not in text, path


def test_processor_erasure_is_on_the_payment_references_only_and_needs_tier_none(tmp_path, policy_data):
    policy = load_policy()
    flagged = [(p, r.name) for p, spec in policy.purposes.items() for r in spec.rules if r.erase_at_processor]
    assert flagged == [("contracts", "payment_references")]
    rules = policy_data["purposes"]["contracts"]["rules"]
    next(r for r in rules if r["name"] == "claims")["erase_at_processor"] = "stripe"
    with pytest.raises(PolicyError, match="erase_at_processor needs tier 'none'"):
        load_policy(write(tmp_path, policy_data))
