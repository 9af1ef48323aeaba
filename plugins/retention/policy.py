"""The retention policy file, loaded and validated (include/retention_policy.yaml).

The policy is the whole public interface of the project: durations, tiers and tables live
there and nowhere else. Validation is strict (unknown keys, bad periods, identifiers that
could not safely reach SQL are errors) and every error names the file, the purpose and the
field, so a broken file shows in the Airflow UI as an import error and nothing runs.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from retention.paths import POLICY_FILE, SQL_DIR
from retention.periods import Period

# Identifiers taken from configuration reach SQL: a strict pattern, checked here once.
IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"
ARCHIVED_TIERS = ("intermediate", "probative")
# Rows per transaction and per archive object: what bounds a run's memory (~3 MB of Parquet
# and ~30 MB of Arrow for 100k quotes). Fewer, larger batches cut per-object round trips.
DEFAULT_BATCH_SIZE = 100_000


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file, purpose and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """One line of the retention schedule: which rows of one table, from which clock."""

    name: str = Field(pattern=IDENTIFIER)
    description: str = Field(min_length=1)
    table: str = Field(pattern=IDENTIFIER)
    clock: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}$")
    live: Period
    tier: Literal["intermediate", "probative", "none"]
    archive: Period | None = None

    @field_validator("live", "archive", mode="before")
    @classmethod
    def _parse_period(cls, value: object) -> object:
        return Period.parse(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _archive_matches_tier(self) -> Rule:
        if self.tier == "none" and self.archive is not None:
            raise ValueError("tier 'none' keeps no archive: remove 'archive'")
        if self.tier != "none" and self.archive is None:
            raise ValueError(f"tier {self.tier!r} needs an 'archive' period")
        if self.archive is not None:
            self.live + self.archive  # noqa: B018 - raises on mixed units
        return self

    @property
    def archived(self) -> bool:
        return self.tier != "none"

    @property
    def gone_after(self) -> Period:
        """From the clock, when nothing of the record may remain anywhere."""
        return self.live + self.archive if self.archive else self.live


class Purpose(_Strict):
    """A processing purpose of the privacy policy: one DAG."""

    title: str = Field(min_length=1)
    purpose_fr: str = Field(min_length=1)
    legal_basis: str = Field(pattern=IDENTIFIER)
    legal_basis_fr: str = Field(min_length=1)
    retention_fr: str = Field(min_length=1)
    max_delete_fraction: float = Field(gt=0, le=1)
    rules: tuple[Rule, ...] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        names = [r.name for r in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique, repeated: {duplicates}")
        return rules


class TierStorage(_Strict):
    prefix: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    storage_class: str = Field(pattern=r"^[A-Z_]+$")
    object_lock: bool


class Storage(_Strict):
    archive_bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    documents_bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    tiers: dict[Literal["intermediate", "probative"], TierStorage]

    @field_validator("tiers")
    @classmethod
    def _every_tier(cls, tiers: dict) -> dict:
        missing = set(ARCHIVED_TIERS) - set(tiers)
        if missing:
            raise ValueError(f"storage for tiers {sorted(missing)} is missing")
        return tiers

    def with_env_overrides(self, env: dict[str, str]) -> Storage:
        """Deployment overrides (README: "Pointing it at AWS")."""
        data = self.model_dump()
        data["archive_bucket"] = env.get("RETENTION_ARCHIVE_BUCKET", data["archive_bucket"])
        data["documents_bucket"] = env.get("RETENTION_DOCUMENTS_BUCKET", data["documents_bucket"])
        for tier, conf in data["tiers"].items():
            upper = tier.upper()
            conf["storage_class"] = env.get(f"RETENTION_{upper}_STORAGE_CLASS", conf["storage_class"])
            lock = env.get(f"RETENTION_{upper}_OBJECT_LOCK")
            if lock is not None:
                conf["object_lock"] = lock.strip().lower() in ("1", "true", "yes", "on")
        return Storage.model_validate(data)


class Policy(_Strict):
    version: Literal[1]
    timezone: str
    source_schema: str = Field(pattern=IDENTIFIER)
    purposes: dict[str, Purpose] = Field(min_length=1)
    storage: Storage

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (KeyError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("purposes")
    @classmethod
    def _purpose_names(cls, purposes: dict[str, Purpose]) -> dict[str, Purpose]:
        for name in purposes:
            if not re.match(IDENTIFIER, name):
                raise ValueError(f"purpose name {name!r} must match {IDENTIFIER}")
        return purposes

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def purpose(self, name: str) -> Purpose:
        try:
            return self.purposes[name]
        except KeyError:
            raise PolicyError(f"no purpose {name!r} in the policy; known: {sorted(self.purposes)}") from None

    def storage_settings(self) -> Storage:
        return self.storage.with_env_overrides(dict(os.environ))


def rule_sql_path(purpose: str, rule: Rule) -> Path:
    return SQL_DIR / purpose / f"{rule.name}.sql"


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
        else:
            where = f"field {where!r}"
        lines.append(f"  - {where}: {err['msg']}")
    return "\n".join(lines)


def load_policy(path: Path | str = POLICY_FILE) -> Policy:
    """Read and validate a policy file; raise PolicyError naming the file, purpose and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
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
        for rule in purpose.rules:
            sql_file = rule_sql_path(purpose_name, rule)
            if not sql_file.is_file():
                raise PolicyError(
                    f"{path}: purpose {purpose_name!r}, rule {rule.name!r}, field 'name': "
                    f"no SQL file {sql_file.relative_to(SQL_DIR.parent.parent)}"
                )
    return policy


@functools.cache
def default_policy() -> Policy:
    """The project's policy file, parsed once per process (DAG files share it)."""
    return load_policy(POLICY_FILE)
