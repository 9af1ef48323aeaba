"""The retention policy file read and validated (include/retention_policy.yaml, or
RETENTION_POLICY_FILE), its rule files found and checked (include/sql/<purpose>/<rule>.sql), and
the fingerprint of what decides a purpose's deletions.

Every error names the file, the purpose and the field, so a broken file shows in the Airflow UI
as an import error and nothing runs. Parsed once per process and file (``default_policy``).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from retention.paths import POLICY_FILE, SQL_DIR
from retention.policy.model import Policy, PolicyError, Purpose, Rule
from retention.policy.rule_files import RuleFileError, RuleFilter, parse_rule_filter


def fingerprint(policy: Policy, purpose: Purpose) -> str:
    """SHA-256 of everything that decides what a run of the purpose deletes: the purpose as
    parsed (rules, periods, tiers, mode), the schema, time zone, legal holds and storage of the
    policy, and the text of the purpose's rule files. A plan carries it; the engine refuses to
    execute a plan whose fingerprint is not the policy's it runs with (retention.archive.engine)."""
    digest = hashlib.sha256()
    for part in (
        policy.timezone,
        policy.source_schema,
        policy.legal_holds.model_dump_json(),
        policy.storage.model_dump_json(),
        purpose.model_dump_json(),
    ):
        digest.update(part.encode() + b"\0")
    for rule in purpose.schedule_rules:  # a generated rule's filter is its parent rule's file
        digest.update(rule_text(policy, purpose.name, rule).encode() + b"\0")
    return digest.hexdigest()


def rule_sql_path(purpose: str, rule: Rule) -> Path:
    return SQL_DIR / purpose / f"{rule.name}.sql"


def rule_text(policy: Policy, purpose: str, rule: Rule) -> str:
    """The text of the rule's file as the policy read it when it was loaded: the one text the
    statements are built from and the fingerprint hashes, whatever the file becomes while the
    policy is in use (found by a review: an edit landing while the plan counted, or between the
    plan's check and the run's statements, had the run delete by a filter no plan counted)."""
    return policy.rule_file_text(purpose, rule.name, lambda: rule_sql_path(purpose, rule).read_text(encoding="utf-8"))


def rule_filter(policy: Policy, purpose: str, rule: Rule) -> RuleFilter:
    """The rule's file (as the policy read it: ``rule_text``), parsed and checked against the rule
    (include/sql/README.md). A rule generated from a `go_with_parent` decision has no file: its
    filter joins the parent row and applies the parent rule's own filter to it."""
    if rule.with_parent is not None:
        return _child_filter(policy, purpose, rule)
    return _parsed_filter(rule_text(policy, purpose, rule), policy.source_schema, rule.table, rule.clock)


def _child_filter(policy: Policy, purpose: str, rule: Rule) -> RuleFilter:
    link = rule.with_parent
    parent_rule = next(r for r in policy.purpose(purpose).rules if r.name == link.rule)
    parent = rule_filter(policy, purpose, parent_rule)
    if rule.table in parent.joined_tables:
        raise RuleFileError(f"the parent rule {link.rule!r} joins {rule.table!r} itself: it cannot take its children")
    schema = policy.source_schema
    text = (
        f"JOIN {schema}.{link.table} AS {link.table} ON {link.table}.id = {rule.table}.{link.column} {parent.joins}"
        + (f" WHERE {parent.where}" if parent.where else "")
    )
    return _parsed_filter(text, schema, rule.table, rule.clock)


@functools.cache
def _parsed_filter(text: str, schema: str, table: str, clock: str) -> RuleFilter:
    return parse_rule_filter(text, schema=schema, table=table, clock=clock)


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML's last-one-wins for a repeated key would silently replace a rule or a purpose.

    On libyaml's parser when PyYAML has it (its wheels do): the pure-Python scanner takes
    0.35 s on this file, most of every DAG file's parse time; libyaml about 0.02 s."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice (first on line {seen[key] + 1}, again on line "
                    f"{key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def policy_path() -> Path:
    """The policy file: include/retention_policy.yaml, or RETENTION_POLICY_FILE (another
    deployment's schedule, or a test's)."""
    return Path(os.environ.get("RETENTION_POLICY_FILE") or POLICY_FILE)


def _describe(error: ValidationError, data: dict) -> str:
    lines = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc)
        if len(loc) >= 2 and loc[0] == "purposes":
            purpose = loc[1]
            rest = loc[2:]
            if len(rest) >= 2 and rest[0] == "rules" and rest[1].isdigit():
                rules = (data.get("purposes", {}).get(purpose) or {}).get("rules") or []
                idx = int(rest[1])
                rule_name = (
                    rules[idx].get("name", f"#{idx + 1}")
                    if idx < len(rules) and isinstance(rules[idx], dict)
                    else f"#{idx + 1}"
                )
                field = ".".join(rest[2:]) or "(rule)"
                where = f"purpose {purpose!r}, rule {rule_name!r}, field {field!r}"
            else:
                where = f"purpose {purpose!r}, field {'.'.join(rest) or '(purpose)'!r}"
        elif where:
            where = f"field {where!r}"
        else:
            where = "the policy"
        lines.append(f"  - {where}: {err['msg']}")
    return "\n".join(lines)


def load_policy(path: Path | str = POLICY_FILE) -> Policy:
    """Read and validate a policy file; raise PolicyError naming the file, purpose and field."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the retention policy: {exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{path}: invalid retention policy:\n{_describe(exc, data)}") from None
    for purpose_name, purpose in policy.purposes.items():
        for rule in purpose.schedule_rules:
            sql_file = rule_sql_path(purpose_name, rule)
            shown = sql_file.relative_to(SQL_DIR.parent.parent)
            if not sql_file.is_file():
                raise PolicyError(
                    f"{path}: purpose {purpose_name!r}, rule {rule.name!r}, field 'name': no SQL file {shown}"
                )
            try:
                rule_filter(policy, purpose_name, rule)
            except RuleFileError as exc:
                raise PolicyError(
                    f"{path}: purpose {purpose_name!r}, rule {rule.name!r} (table {rule.table!r}, clock "
                    f"{rule.clock!r}): {shown} {exc}"
                ) from None
        for rule in purpose.rules:
            if rule.with_parent is None:
                continue
            try:
                rule_filter(policy, purpose_name, rule)
            except RuleFileError as exc:
                raise PolicyError(
                    f"{path}: purpose {purpose_name!r}, rule {rule.name!r} (generated from `dependents`: "
                    f"{rule.with_parent.table} -> {rule.table}.{rule.with_parent.column}): {exc}"
                ) from None
    return policy


def default_policy() -> Policy:
    """The deployment's policy file, parsed once per process and file (DAG files share it), and
    again once it or a rule file changed (a policy keeps the rule files' text it read)."""
    path = policy_path()
    rule_files = tuple(sorted((p.name, p.parent.name, p.stat().st_mtime_ns) for p in SQL_DIR.glob("*/*.sql")))
    return _cached_policy(path, path.stat().st_mtime_ns if path.exists() else 0, SQL_DIR, rule_files)


@functools.cache
def _cached_policy(path: Path, mtime_ns: int, sql_dir: Path, rule_files: tuple) -> Policy:
    return load_policy(path)
