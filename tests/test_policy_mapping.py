"""Every row of the privacy policy's retention table (and the cookie-consent choices) maps to
at least one rule of include/retention_policy.yaml, or to a documented reason why not.

The rows are parsed from the policy's text (docs/politique_de_confidentialite.txt, the text
extracted from the published PDF): a row is a "Finalités" cell, its "Bases légales" cell and
its "Durées de conservation" cell, in that order. The mapping is docs/policy_mapping.yaml.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import yaml
from retention.paths import POLICY_FILE
from retention.policy import load_policy

REPO_ROOT = Path(__file__).resolve().parents[1]
POLICY_TEXT = REPO_ROOT / "docs" / "politique_de_confidentialite.txt"
MAPPING = REPO_ROOT / "docs" / "policy_mapping.yaml"
TABLE_START = "Finalités Bases légales Durées de conservation"
TABLE_END = "Qui sont les destinataires"
# The opening of a "Bases légales" cell: the GDPR art. 6 bases as the policy words them,
# possibly per population ("Pour les clients : exécution d'un contrat...").
LEGAL_BASIS = re.compile(
    r"^(Pour les (clients|prospects)\s*:\s*)?(Exécution|Notre intérêt légitime|Obligations? légales?|Se conformer)",
    re.I,
)
# A "Durées de conservation" paragraph speaks of keeping, archiving, storing or deleting, or of a duration.
RETENTION = re.compile(r"conserv|archiv|stock|supprim|\b(ans?|mois|jours?)\b", re.I)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("’", "'")
    return re.sub(r"\s+", " ", text).strip()


def policy_text() -> str:
    return POLICY_TEXT.read_text(encoding="utf-8")


def parse_rows(text: str) -> list[dict[str, str]]:
    """The table's rows: {"finalite", "base_legale", "conservation"} in the policy's order."""
    start, end = text.index(TABLE_START), text.index(TABLE_END)
    paragraphs = [normalise(p) for p in re.split(r"\n\s*\n", text[start + len(TABLE_START) : end])]
    paragraphs = [p for p in paragraphs if p]
    is_basis = [bool(LEGAL_BASIS.match(p)) for p in paragraphs]
    # A row's basis may span several paragraphs (one per population): group consecutive ones.
    groups: list[list[int]] = []
    for i, basis in enumerate(is_basis):
        if basis and groups and groups[-1][-1] == i - 1:
            groups[-1].append(i)
        elif basis:
            groups.append([i])
    starts = []  # where each row's purpose cell begins
    for g, group in enumerate(groups):
        # The purpose cell: the paragraphs just before the basis that are not the previous
        # row's retention text.
        floor = groups[g - 1][-1] + 1 if g else 0
        begin = group[0]
        while begin > floor and not RETENTION.search(paragraphs[begin - 1]):
            begin -= 1
        starts.append(begin)
    rows = []
    for g, group in enumerate(groups):
        until = starts[g + 1] if g + 1 < len(groups) else len(paragraphs)
        rows.append(
            {
                "finalite": " ".join(paragraphs[starts[g] : group[0]]),
                "base_legale": " ".join(paragraphs[i] for i in group),
                "conservation": " ".join(paragraphs[group[-1] + 1 : until]),
            }
        )
    return rows


@pytest.fixture(scope="module")
def mapping() -> dict:
    return yaml.safe_load(MAPPING.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def policy():
    return load_policy(POLICY_FILE)


def test_the_policy_text_has_thirteen_rows_each_with_purpose_basis_and_duration():
    rows = parse_rows(policy_text())
    assert len(rows) == 13, [r["finalite"][:50] for r in rows]
    for row in rows:
        assert row["finalite"] and row["base_legale"] and RETENTION.search(row["conservation"]), row


def _check_entry(entry: dict, policy, where: str) -> None:
    rules = entry.get("rules") or {}
    reasons = entry.get("not_enforced_here") or []
    assert rules or reasons, f"{where}: neither a rule nor a documented reason"
    for purpose, names in rules.items():
        assert purpose in policy.purposes, f"{where}: no purpose {purpose!r} in the policy file"
        known = {r.name for r in policy.purposes[purpose].rules}
        assert names and set(names) <= known, f"{where}: unknown rules {sorted(set(names) - known)} of {purpose}"
    for reason in reasons:
        assert reason.get("what") and len(reason.get("reason", "")) > 40, f"{where}: a reason must say why"


def test_every_row_maps_to_a_rule_or_a_documented_reason(mapping, policy):
    rows = parse_rows(policy_text())
    entries = mapping["policy_rows"]
    used = set()
    for row in rows:
        matches = [i for i, e in enumerate(entries) if normalise(row["finalite"]).startswith(normalise(e["finalite"]))]
        assert len(matches) == 1, f"row {row['finalite'][:60]!r}: {len(matches)} mapping entries"
        used.add(matches[0])
        _check_entry(entries[matches[0]], policy, row["finalite"][:60])
    unused = [entries[i]["finalite"] for i in range(len(entries)) if i not in used]
    assert not unused, f"mapping entries that match no row of the policy: {unused}"


def test_cookie_consent_choices_map_to_a_rule_of_the_same_duration(mapping, policy):
    text = normalise(policy_text())
    found = re.search(
        r"Vos choix d'accepter ou de refuser les Cookies seront conservés pendant une durée de ([^.]*)\.", text
    )
    assert found, "the cookie policy no longer states how long consent choices are kept"
    months = re.search(r"\((\d+)\) mois", found.group(1))
    assert months, found.group(1)
    for entry in mapping["cookie_policy"]:
        assert normalise(entry["excerpt"]) in text, f"not in the policy text: {entry['excerpt']!r}"
        _check_entry(entry, policy, entry["excerpt"][:60])
    choices = [e for e in mapping["cookie_policy"] if normalise(e["excerpt"]) in found.group(0)]
    assert len(choices) == 1 and choices[0].get("rules"), "the consent choices need a rule"
    for purpose, names in choices[0]["rules"].items():
        for rule in policy.purposes[purpose].rules:
            if rule.name in names:
                assert (rule.live.months, rule.live.days) == (int(months.group(1)), 0), rule.name


def test_every_rule_of_the_policy_file_answers_a_row(mapping, policy):
    named = {
        (purpose, rule)
        for entry in mapping["policy_rows"] + mapping["cookie_policy"]
        for purpose, rules in (entry.get("rules") or {}).items()
        for rule in rules
    }
    every = {(p, r.name) for p, spec in policy.purposes.items() for r in spec.rules}
    assert every - named == set(), "rules that answer no row of the policy"


def test_the_schedule_page_lists_every_rule(policy):
    schedule = (REPO_ROOT / "docs" / "schedule.md").read_text(encoding="utf-8")
    rows = [line for line in schedule.splitlines() if line.startswith("| `retention_")]
    for purpose, spec in policy.purposes.items():
        for rule in spec.rules:
            assert any(
                row.startswith(f"| `retention_{purpose}` |") and f"`{rule.name}`" in row.split("|")[2] for row in rows
            ), f"docs/schedule.md's table: no row for {purpose}.{rule.name}"


def test_the_readme_table_lists_every_purpose(policy):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    dag_cells = [line.split("|")[1] for line in readme.splitlines() if line.startswith("| `retention_")]
    for purpose in policy.purposes:
        assert any(f"`retention_{purpose}`" in cell for cell in dag_cells), f"README's DAG table: no {purpose}"
