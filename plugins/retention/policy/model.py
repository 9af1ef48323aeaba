"""The retention policy's model: what include/retention_policy.yaml may say, validated (the file is
read by ``retention.policy.loading``).

The policy is the whole public interface of the project: durations, tiers and tables live
there and nowhere else. Validation is strict (unknown keys, bad periods, identifiers that
could not safely reach SQL are errors) and every error names the file, the purpose and the
field, so a broken file shows in the Airflow UI as an import error and nothing runs.
"""

from __future__ import annotations

import os
import re
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from retention.policy.periods import Period

# Identifiers taken from configuration reach SQL: a strict pattern, checked here once.
IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"
ARCHIVED_TIERS = ("intermediate", "probative")
# What happens to a row that still references a record whose own period is over (the policy's
# `dependents`): it goes with that record, or the record waits for it (the watch alarms on the
# waits of `keep_parent_and_alert`, and on every wait the policy does not decide).
Decision = Literal["go_with_parent", "keep_parent", "keep_parent_and_alert"]
# Most in need of someone's attention first (a parent waiting on several tables is reported on
# the first: retention.planner).
DECISION_ATTENTION: tuple[Decision, ...] = ("keep_parent_and_alert", "keep_parent", "go_with_parent")
# Legal bases (split on "_and_") under which a row must be kept for its own period: a
# `go_with_parent` decision on such a table is refused (it would delete the row early).
KEPT_FOR_A_LEGAL_REASON = ("legal_obligation",)
# Rows per transaction and per archive object: what bounds a run's memory (~3 MB of Parquet
# and ~30 MB of Arrow for 100k quotes). Fewer, larger batches cut per-object round trips.
DEFAULT_BATCH_SIZE = 100_000


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file, purpose and field."""


def written_period(value: object) -> object:
    """A period as the file writes it (``'12 months'``), or one the code built (a Period; None where
    there is none). Anything else is refused: a mapping (``{months: -12}``) reached the dataclass's
    fields unchecked, and a negative period made every row due at once (found by a review)."""
    if value is None or isinstance(value, Period):
        return value
    if isinstance(value, str):
        return Period.parse(value)
    raise ValueError(f"{value!r} is not a period like '12 months', '5 years' or '0 days'")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParentLink(_Strict):
    """Where a rule generated from a `go_with_parent` decision comes from: its rows are the rows
    of its table whose ``column`` points to a row of the parent rule ``rule`` (table ``table``)."""

    rule: str = Field(pattern=IDENTIFIER)
    table: str = Field(pattern=IDENTIFIER)
    column: str = Field(pattern=IDENTIFIER)


class Rule(_Strict):
    """One line of the retention schedule: which rows of one table, from which clock."""

    name: str = Field(pattern=IDENTIFIER)
    description: str = Field(min_length=1)
    table: str = Field(pattern=IDENTIFIER)
    clock: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}$")
    live: Period
    tier: Literal["intermediate", "probative", "none"]
    archive: Period | None = None
    # The rows' data is also held by a processor: erased there (plugins/retention/processor.py)
    # before the rows are deleted; a row the processor did not confirm stays.
    erase_at_processor: Literal["stripe"] | None = None
    # The rule's own legal basis where the purpose has several (call recordings: a legal
    # obligation to contract, a legitimate interest for quality); the purpose's otherwise.
    # Read by the erasure of a data-subject request (retention.rights.subject_rights).
    legal_basis: str | None = Field(None, pattern=IDENTIFIER)
    # Set by the Policy for the rules it generates from `dependents` (go_with_parent), never
    # written in the file: the child rows of a parent rule, on the parent's clock and periods.
    with_parent: ParentLink | None = None

    @field_validator("live", "archive", mode="before")
    @classmethod
    def _parse_period(cls, value: object) -> object:
        return written_period(value)

    @model_validator(mode="after")
    def _archive_matches_tier(self) -> Rule:
        if self.tier == "none" and self.archive is not None:
            raise ValueError("tier 'none' keeps no archive: remove 'archive'")
        if self.tier != "none" and self.archive is None:
            raise ValueError(f"tier {self.tier!r} needs an 'archive' period")
        if self.tier != "none" and not (self.archive.months or self.archive.days):
            # Rows whose archive period is over when archived are deleted unarchived (as tier
            # 'none'): a zero period would delete, say, AML evidence without keeping it (a review).
            raise ValueError(f"tier {self.tier!r} needs an 'archive' period longer than 0 (or tier 'none')")
        if self.archive is not None:
            self.live + self.archive  # noqa: B018 - raises on mixed units
        if self.erase_at_processor and self.tier != "none":
            raise ValueError("erase_at_processor needs tier 'none' (nothing of the data is kept)")
        return self

    @property
    def archived(self) -> bool:
        return self.tier != "none"

    @property
    def clock_table(self) -> str:
        """The table of the clock column (the rule's own, or a parent's it joins)."""
        return self.clock.partition(".")[0]

    @property
    def clock_column(self) -> str:
        return self.clock.partition(".")[2]

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
    # The categories of personal data the purpose's records hold, in the policy's words (its
    # "Quelles données collectons-nous ?"): the register of processing activities states them
    # (Art. 30(1)(c), retention.register).
    data_categories_fr: tuple[str, ...] = Field(min_length=1)
    # A number: strict, for YAML reads `yes` / `on` / `true` as 1.0, the mass-deletion guard off.
    max_delete_fraction: float = Field(gt=0, le=1, strict=True)
    # preview: every run reports exactly what it would do and changes nothing (the default
    # shipped for every purpose); enforce: runs archive, delete and purge.
    mode: Literal["preview", "enforce"]
    rules: tuple[Rule, ...]
    # An erasure request (Art. 17) erases the purpose's records unless their legal basis keeps
    # them (retention.rights.subject_rights); 'keep': overriding legitimate grounds the controller
    # relies on for the whole purpose (Art. 17(1)(c), 21(1)), e.g. fraud prevention. Reported.
    on_erasure_request: Literal["by_legal_basis", "keep"] = "by_legal_basis"
    # Its key under `purposes` (set by the Policy, not written in the file): the object is
    # handed from task to engine to gate, and says itself which purpose it is.
    name: str = ""

    @field_validator("rules", mode="before")
    @classmethod
    def _some_rules(cls, rules: object) -> object:
        # Checked on the raw list: an error inside one rule must not also read as "no rules".
        if isinstance(rules, list | tuple) and not rules:
            raise ValueError("a purpose needs at least one rule")
        return rules

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    @property
    def schedule_rules(self) -> tuple[Rule, ...]:
        """The rules written in the file (without those generated from `dependents`)."""
        return tuple(r for r in self.rules if r.with_parent is None)

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
        """Deployment overrides (docs/production.md)."""
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


class LegalHolds(_Strict):
    """What a hold on a record of each table also covers: ``<child table>.<column>`` entries
    whose column holds the parent's id, followed transitively (retention.policy.coverage)."""

    covers: dict[str, tuple[str, ...]]

    @field_validator("covers")
    @classmethod
    def _well_formed(cls, covers: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        column_ref = IDENTIFIER[:-1] + r"\." + IDENTIFIER[1:]
        edges: dict[str, set[str]] = {}
        for parent, children in covers.items():
            if not re.match(IDENTIFIER, parent):
                raise ValueError(f"table name {parent!r} must match {IDENTIFIER}")
            for child in children:
                if not re.match(column_ref, child):
                    raise ValueError(f"{parent}: {child!r} is not '<table>.<column>'")
                edges.setdefault(parent, set()).add(child.split(".")[0])

        def reaches(start: str, target: str, seen: frozenset = frozenset()) -> bool:
            return any(c == target or (c not in seen and reaches(c, target, seen | {c})) for c in edges.get(start, ()))

        cycles = sorted(t for t in edges if reaches(t, t))
        if cycles:
            raise ValueError(f"coverage must not loop back on itself; it does through {cycles}")
        return covers


class AccessExports(_Strict):
    """The export of an access request (retention.rights.subject_rights, ``exports/<request>/export.zip``
    in the archive bucket) is the person's whole file: deleted, every version, ``kept_for``
    after it was produced (retention.rights.exports)."""

    kept_for: Period = Period(days=30)

    @field_validator("kept_for", mode="before")
    @classmethod
    def _parse_period(cls, value: object) -> object:
        return written_period(value)

    @field_validator("kept_for")
    @classmethod
    def _not_zero(cls, value: Period) -> Period:
        if value == Period():
            raise ValueError("an export kept 0 days would be deleted before it is delivered: at least '1 day'")
        return value


# The records the retention itself produces (the policy's `own_records`, docs/housekeeping.md):
# each needs a period, and those that prove the archive must outlive it.
OWN_RECORDS = (
    "audit_log",
    "audit_ids_without_archive",
    "manifest_purged",
    "document_disposals",
    "subject_request_evidence",
    "access_exports",
    "airflow_dag_runs",
    "airflow_task_instances",
    "airflow_xcom",
    "airflow_log",
    "airflow_import_errors",
    "task_logs",
    "gx_validation_results",
    "data_docs",
)
# They prove what became of archived records: kept at least as long as the longest archive.
PROVES_THE_ARCHIVE = ("audit_log", "manifest_purged")
# Airflow's db clean removes a run's task instances and XCom with the run: a longer period for
# them would be a promise nothing keeps.
GOES_WITH_THE_DAG_RUN = ("airflow_task_instances", "airflow_xcom")


class OwnRecord(_Strict):
    """One kind of the project's own records: how long it is kept, on what basis, and the
    DPO's choice in words. The period stays text here: Policy checks it knowing what it must
    cover, and names the record in its message."""

    period: str | None = None
    basis: str = Field(min_length=1)
    choice: str = Field(min_length=1)


def _days_at_least(period: Period) -> int:
    return period.days + 28 * period.months


def _days_at_most(period: Period) -> int:
    return period.days + 31 * period.months


def covers(longer: Period, shorter: Period) -> bool:
    """Whether ``longer`` is at least ``shorter`` from any start date (days and months compared
    at their worst: a month of 28 days against one of 31)."""
    if bool(longer.months) == bool(shorter.months) or not (longer.days or shorter.days):
        return (longer.months, longer.days) >= (shorter.months, shorter.days)
    return _days_at_least(longer) >= _days_at_most(shorter)


class Housekeeping(_Strict):
    """The housekeeping DAG's mode: preview (reports what would go, changes nothing) or enforce."""

    mode: Literal["preview", "enforce"] = "preview"


class Approvals(_Strict):
    """Who answers what a run asks in the Airflow UI (human-in-the-loop, retention.approval_tasks):
    a run over the mass-deletion guard, an erasure after its preview; and how long a run waits."""

    # Airflow user ids as the auth manager knows them (SimpleAuthManager: the user name; FAB: the
    # numeric id). Empty: anyone the auth manager lets act on the DAG may answer.
    approvers: tuple[str, ...] = ()
    # Unanswered this long, the run fails (and its failure e-mail goes): nothing is deleted.
    wait_hours: float = Field(default=18, gt=0, le=24 * 7)

    @field_validator("approvers")
    @classmethod
    def _named(cls, approvers: tuple[str, ...]) -> tuple[str, ...]:
        if any(not a.strip() for a in approvers):
            raise ValueError("an approver is an Airflow user id, not empty")
        return approvers


class Alerts(_Strict):
    """Airflow's own deadline alert on every purpose's run (retention.alerts)."""

    # A run not finished this long after it was queued (a daily run: its scheduled time) e-mails.
    run_deadline_hours: float = Field(default=6, gt=0, le=24 * 7)


class Policy(_Strict):
    version: Literal[1]
    timezone: str
    source_schema: str = Field(pattern=IDENTIFIER)
    purposes: dict[str, Purpose] = Field(min_length=1)
    legal_holds: LegalHolds
    # ``<parent table>: {<child table>.<column>: decision}``: what happens to a row that still
    # references a record whose own period is over (Decision). Links not listed wait, alarmed.
    dependents: dict[str, dict[str, Decision]] = Field(default_factory=dict)
    access_exports: AccessExports = AccessExports()
    # The retention's own records (OWN_RECORDS), applied by the housekeeping DAG.
    own_records: dict[str, OwnRecord]
    housekeeping: Housekeeping = Housekeeping()
    approvals: Approvals = Approvals()
    alerts: Alerts = Alerts()
    storage: Storage
    # The text of each rule file, ``(purpose, rule)``, as this policy first read it (at load):
    # retention.policy.loading.rule_text.
    _rule_texts: dict[tuple[str, str], str] = PrivateAttr(default_factory=dict)

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
        for name, purpose in purposes.items():
            if not re.match(IDENTIFIER, name):
                raise ValueError(f"purpose name {name!r} must match {IDENTIFIER}")
            if purpose.name not in ("", name):
                raise ValueError(f"purpose {name!r}: 'name' is the purpose's key, not a field to set")
        return {name: purpose.model_copy(update={"name": name}) for name, purpose in purposes.items()}

    @field_validator("dependents")
    @classmethod
    def _dependents_well_formed(cls, dependents: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        column_ref = IDENTIFIER[:-1] + r"\." + IDENTIFIER[1:]
        for parent, links in dependents.items():
            if not re.match(IDENTIFIER, parent):
                raise ValueError(f"table name {parent!r} must match {IDENTIFIER}")
            for child in links:
                if not re.match(column_ref, child):
                    raise ValueError(f"{parent}: {child!r} is not '<table>.<column>'")
        return dependents

    @model_validator(mode="after")
    def _rules_that_go_with_their_parent(self) -> Policy:
        """Check the `dependents` decisions against the rules and the hold coverage, then add,
        for each `go_with_parent` link and each rule of the parent's table, a rule that takes
        the children of that rule's rows on its clock, periods and tier, just before it (so the
        parent no longer waits for them: retention.planner counts rows an earlier rule deletes
        as gone). The children then go through the same protocol as any row: locked, re-checked
        under the holds lock (a held child stays, and keeps its parent), archived, deleted."""
        by_table: dict[str, list[tuple[str, Rule]]] = {}
        for name, purpose in self.purposes.items():
            for rule in purpose.rules:
                if rule.with_parent is not None:
                    raise ValueError(
                        f"purpose {name!r}, rule {rule.name!r}: 'with_parent' is set from `dependents`, "
                        "not written in the file"
                    )
                by_table.setdefault(rule.table, []).append((name, rule))
        going: dict[str, list[tuple[str, str]]] = {}  # parent table -> [(child table, column)]
        for parent, links in self.dependents.items():
            if parent not in by_table:
                raise ValueError(f"dependents: no rule of the policy has table {parent!r}, so none of its rows waits")
            for child, decision in links.items():
                if decision != "go_with_parent":
                    continue
                table, column = child.split(".")
                where = f"dependents: {parent} -> {child}: go_with_parent"
                if table == parent:
                    raise ValueError(f"{where}: a table cannot go with itself")
                if child not in self.legal_holds.covers.get(parent, ()):
                    raise ValueError(
                        f"{where} needs the same link in legal_holds.covers.{parent} (a hold on the parent must "
                        "keep the child, and the child's archive must name the parent among its owners)"
                    )
                if table not in by_table:
                    raise ValueError(f"{where}: no rule of the policy describes {table!r} (its legal basis is unknown)")
                for purpose_name, rule in by_table[table]:
                    purpose = self.purposes[purpose_name]
                    if rule.erase_at_processor:
                        raise ValueError(
                            f"{where}: rule {rule.name!r} of purpose {purpose_name!r} erases {table!r} at the payment "
                            f"processor ({rule.erase_at_processor}) before its rows go: a rule going with the parent "
                            "would delete them without the processor's confirmation; decide keep_parent or "
                            "keep_parent_and_alert"
                        )
                    basis = set((rule.legal_basis or purpose.legal_basis).split("_and_"))
                    if basis & set(KEPT_FOR_A_LEGAL_REASON) or purpose.on_erasure_request == "keep":
                        raise ValueError(
                            f"{where}: rule {rule.name!r} of purpose {purpose_name!r} keeps {table!r} for a legal "
                            "reason (a legal obligation, or overriding grounds): its rows must not go before their "
                            "own period; decide keep_parent or keep_parent_and_alert"
                        )
                going.setdefault(parent, []).append((table, column))
        if not going:
            return self
        purposes = {}
        for name, purpose in self.purposes.items():
            rules: list[Rule] = []
            for rule in purpose.rules:
                for table, column in sorted(going.get(rule.table, ())):
                    rules.append(_going_with(rule, table, column))
                rules.append(rule)
            names = [r.name for r in rules]
            clashes = sorted({n for n in names if names.count(n) > 1})
            if clashes:
                raise ValueError(f"purpose {name!r}: the rules generated from `dependents` clash: {clashes}")
            purposes[name] = purpose.model_copy(update={"rules": tuple(rules)})
        # The model is frozen once built; this is its construction.
        object.__setattr__(self, "purposes", purposes)
        return self

    @model_validator(mode="after")
    def _own_records_periods(self) -> Policy:
        """Every own record has a period; the audit and the manifest outlive the longest archive
        they prove; the exports' period is the one the watch applies."""
        unknown = sorted(set(self.own_records) - set(OWN_RECORDS))
        if unknown:
            raise ValueError(f"own_records: unknown records {unknown}; known: {list(OWN_RECORDS)}")
        longest = self.longest_archive()
        for name in OWN_RECORDS:
            must = (
                f"; it must cover at least {longest[0]} (the longest archive period it proves: {longest[1]})"
                if name in PROVES_THE_ARCHIVE and longest
                else ""
            )
            record = self.own_records.get(name)
            if record is None or record.period is None:
                raise ValueError(f"own_records.{name}: missing period{must}")
            try:
                period = Period.parse(record.period)
            except ValueError:
                raise ValueError(
                    f"own_records.{name}: period {record.period!r} is not a period like '90 days' or '5 years' "
                    f"(zero or more){must}"
                ) from None
            if must and not covers(period, longest[0]):
                raise ValueError(f"own_records.{name}: period {period} is shorter than the archive it proves{must}")
        exports = self.own_period("access_exports")
        if exports != self.access_exports.kept_for:
            raise ValueError(
                f"own_records.access_exports: period {exports} differs from access_exports.kept_for "
                f"({self.access_exports.kept_for}), the one the watch applies: write the same period"
            )
        for name in GOES_WITH_THE_DAG_RUN:
            if not covers(self.own_period("airflow_dag_runs"), self.own_period(name)):
                raise ValueError(
                    f"own_records.{name}: period {self.own_period(name)} is longer than airflow_dag_runs "
                    f"({self.own_period('airflow_dag_runs')}): Airflow removes them with their run"
                )
        return self

    def own_period(self, name: str) -> Period:
        """The period of one of the project's own records (OWN_RECORDS), validated at load."""
        return Period.parse(self.own_records[name].period)

    def longest_archive(self) -> tuple[Period, str] | None:
        """The longest archive period of the schedule and where it is (None without archives)."""
        found = [
            (rule.archive, f"purpose {name!r}, rule {rule.name!r}")
            for name, purpose in self.purposes.items()
            for rule in purpose.schedule_rules
            if rule.archive is not None
        ]
        longest = None
        for archive, where in found:
            if longest is None or not covers(longest[0], archive):
                longest = (archive, where)
        return longest

    def decision(self, parent: str, child_table: str, column: str | None = None) -> Decision | None:
        """The policy's decision on the rows of ``child_table`` (through ``column``, or any of its
        columns: the one that most needs attention) that reference a ``parent`` row whose period
        is over; None when the policy does not decide (the parent waits, and the watch alarms)."""
        found = [
            decision
            for ref, decision in self.dependents.get(parent, {}).items()
            if ref.split(".")[0] == child_table and column in (None, ref.split(".")[1])
        ]
        return min(found, key=DECISION_ATTENTION.index) if found else None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def purpose(self, name: str) -> Purpose:
        try:
            return self.purposes[name]
        except KeyError:
            raise PolicyError(f"no purpose {name!r} in the policy; known: {sorted(self.purposes)}") from None

    def written_rules_on(self, table: str) -> list[tuple[str, Rule]]:
        """(purpose name, rule) of every rule written in the file on the table (without those
        generated from `dependents`: a child going with its parent is the policy's decision)."""
        return [
            (name, rule)
            for name, purpose in self.purposes.items()
            for rule in purpose.schedule_rules
            if rule.table == table
        ]

    def rule_file_text(self, purpose: str, rule: str, read) -> str:
        """The text of a rule's file as this policy first read it (``read()``), the same at every
        later call whatever the file has become (retention.policy.loading.rule_text)."""
        key = (purpose, rule)
        if key not in self._rule_texts:
            self._rule_texts[key] = read()
        return self._rule_texts[key]

    def storage_settings(self) -> Storage:
        return self.storage.with_env_overrides(dict(os.environ))

    def with_mode(self, mode: Literal["preview", "enforce"]) -> Policy:
        """The same schedule with every purpose in ``mode`` (what a benchmark measures)."""
        purposes = {name: p.model_copy(update={"mode": mode}) for name, p in self.purposes.items()}
        return self.model_copy(update={"purposes": purposes})


def _going_with(parent: Rule, table: str, column: str) -> Rule:
    """The rule that takes the rows of ``table`` whose ``column`` points to a row of ``parent``,
    on the parent rule's clock, periods, tier and legal basis (its filter: retention.policy
    .rule_filter)."""
    name = f"{parent.name}__{table}"
    if len(name) > 63:
        raise ValueError(f"the rule generated for {table} with {parent.name!r}, {name!r}, is longer than 63 characters")
    return Rule(
        name=name,
        description=(
            f"Rows of {table} (through {column}) of the records of rule {parent.name}, archived or deleted "
            "with them (`dependents`: go_with_parent)."
        ),
        table=table,
        clock=parent.clock,
        live=parent.live,
        tier=parent.tier,
        archive=parent.archive,
        legal_basis=parent.legal_basis,
        with_parent=ParentLink(rule=parent.name, table=parent.table, column=column),
    )
