"""What each task of a retention DAG does, given the Airflow context.

Imported inside the tasks only (it pulls in the engine: pyarrow, psycopg, boto3). Every return
value goes to XCom, so it holds counts, keys and ids only, never row contents.

The purpose is passed as the policy's ``Purpose`` object (its ``name`` says which), from the
DAG's wiring down to the engine and the gates. The plan is made once per run (``plan``) and
handed on: the before-gate judges it, the archive step executes it (retention.archive.engine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging

from retention.archive.engine import RetentionEngine
from retention.archive.run import (
    RANGE_ROWS,
    FutureLogicalDateError,
    PlanMismatchError,
    RunContext,
    Unit,
    plan_units,
    refuse_future,
)
from retention.archive.store import ArchiveStore
from retention.connections import RIGHTS_CONN_ID, SOURCE_CONN_ID
from retention.planner import Plan, RuleOutcome
from retention.policy import DEFAULT_BATCH_SIZE, Purpose, default_policy

log = logging.getLogger(__name__)

ARCHIVE_CONN_ID = "archive_s3"


@contextlib.contextmanager
def _no_retry_on(*errors: type[Exception]):
    """A deterministic failure (a failed quality gate) fails the task at once instead of waiting
    out its retries; transient ones (S3 down, the purpose lock held) keep their retries."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except errors as exc:
        raise AirflowFailException(str(exc)) from exc


def source_dsn(conn_id: str = SOURCE_CONN_ID) -> str:
    """libpq connection string of an Airflow Postgres connection, every extra applied
    (retention.connections); psycopg and ADBC both take it."""
    from retention.connections import conninfo

    return conninfo(conn_id)


def archive_store() -> ArchiveStore:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from retention.archive.store import client_config

    # The connection's own botocore settings (its extra's config_kwargs) kept, the pool enlarged.
    hook = S3Hook(aws_conn_id=ARCHIVE_CONN_ID)
    client = hook.get_client_type(config=client_config(hook.config))
    return ArchiveStore(client, default_policy().storage_settings())


def as_purpose(purpose: Purpose | str) -> Purpose:
    return default_policy().purpose(purpose) if isinstance(purpose, str) else purpose


def engine(purpose: Purpose | str) -> RetentionEngine:
    return RetentionEngine(default_policy(), as_purpose(purpose), source_dsn(), archive_store())


def run_context(purpose: Purpose | str, context: dict) -> RunContext:
    """The run's logical date decides every cutoff (a backfill acts as of its own date); a
    date in the future fails every task at once. In preview mode every run is a dry run."""
    logical_date = context.get("logical_date") or context["dag_run"].run_after
    logical_date = dt.datetime.fromtimestamp(logical_date.timestamp(), tz=dt.UTC)
    with _no_retry_on(FutureLogicalDateError):
        refuse_future(logical_date)
    params = context["params"]
    purpose = as_purpose(purpose)
    mode = purpose.mode
    return RunContext(
        purpose=purpose.name,
        run_id=context["run_id"],
        logical_date=logical_date,
        batch_size=int(params.get("batch_size", DEFAULT_BATCH_SIZE)),
        dry_run=bool(params.get("dry_run", False)) or mode == "preview",
        mode=mode,
        attempt=max(int(getattr(context.get("ti"), "try_number", 1) or 1), 1),
    )


def executed_as(purpose: Purpose | str, context: dict, planned: dict | None) -> RunContext:
    """The run's context as its archive step executed it: the mode and dry run its plan recorded.
    A unit deletes only when the policy it runs with has the plan's fingerprint, which holds the
    mode (retention.archive.engine.check_plan), so the plan's mode is the one the run deleted in,
    whatever the policy says when a later task runs (found by a review: a purpose set to preview
    after its run's units deleted had the run reported as a preview that changed nothing)."""
    ctx = run_context(purpose, context)
    if not planned or "dry_run" not in planned or planned.get("mode") not in ("preview", "enforce"):
        return ctx
    return dataclasses.replace(ctx, mode=planned["mode"], dry_run=bool(planned["dry_run"]))


def check_before(purpose: Purpose, context: dict, planned: dict | None = None) -> dict:
    """A failed gate fails the task without retry: the data won't fix itself in 5 minutes. The
    mass-deletion guard judges the run's plan (``planned``, the plan task's XCom); over it, the
    run's approve_deletion step asks a person (retention.approval_tasks)."""
    from retention import gates

    ctx = run_context(purpose, context)
    with _no_retry_on(gates.QualityGateError):
        return gates.run_before_gates(
            default_policy(),
            as_purpose(purpose),
            source_dsn(),
            ctx,
            float(context["params"]["max_delete_fraction"]),
            plan=planned,
            ask_approval=True,
        )


def plan(purpose: Purpose, context: dict) -> dict:
    """The run's plan, evaluated once and handed on (XCom: counts, ids, the policy's
    fingerprint). An enforced run writes the held and waiting ids to the audit log here."""
    ctx = run_context(purpose, context)
    eng = engine(purpose)
    approved = eng.make_plan(ctx, audit=True, range_rows=int(context["params"].get("range_rows", RANGE_ROWS)))
    outcomes, sizes = approved.rules, approved.table_rows
    fractions = {t: (n / sizes[t] if sizes[t] else 0.0) for t, n in approved.deletable_by_table().items()}
    for o in outcomes:
        log.info(
            "plan %s: due=%d held=%d waiting=%s (ids held %s, waiting %s)",
            o.rule,
            o.due,
            o.held,
            o.waiting,
            o.held_ids,
            o.waiting_ids,
        )
    return approved.as_dict() | {
        "mode": ctx.mode,
        "dry_run": ctx.dry_run,
        "delete_fraction": {t: round(f, 6) for t, f in fractions.items()},
    }


def archive_and_delete(purpose: Purpose, context: dict, planned: dict) -> dict:
    """Execute the approved plan (a plan made with another policy is refused, without retry)."""
    ctx = run_context(purpose, context)
    require_approval(purpose, context, ctx, planned)
    with _no_retry_on(PlanMismatchError):
        outcomes = engine(purpose).archive_and_delete(ctx, Plan.from_dict(planned))
    emit_archive_events(purpose, context, ctx)
    return {"mode": ctx.mode, "dry_run": ctx.dry_run, "rules": [o.as_dict() for o in outcomes]}


def require_approval(purpose: Purpose, context: dict, ctx: RunContext, planned: dict) -> None:
    """Nothing is deleted by a run over the mass-deletion guard without an approval of its own plan
    (retention.approvals), whatever the state of its approve_deletion task; refused without retry."""
    from retention.approval_tasks import gate_table_rows
    from retention.approvals import ApprovalMissingError, require_deletion_approval

    if ctx.dry_run:
        return
    with _no_retry_on(ApprovalMissingError):
        approved = require_deletion_approval(
            source_dsn(),
            as_purpose(purpose).name,
            ctx.run_id,
            planned,
            float(context["params"]["max_delete_fraction"]),
            gate_table_rows(context),
        )
    if approved:
        log.info("plan approved by %s at %s", approved["decided_by"], approved["decided_at"])


def prepare_units(purpose: Purpose, context: dict, planned: dict) -> dict[str, list[dict]]:
    """The first task of the archive step: under the purpose's lock held exclusively, finish
    what a crashed run left (recovery removes 'uploading' orphans: it must never run beside a
    unit's upload); then, per rule, the units of the approved plan (the mapped tasks' input)."""
    ctx = run_context(purpose, context)
    plan = Plan.from_dict(planned)
    with _no_retry_on(PlanMismatchError):
        recovered = engine(purpose).recover_before_units(ctx, plan)
    if recovered["orphans_removed"] or recovered["locks_applied"]:
        log.info("recovery before the units: %s", recovered)
    units = plan_units(plan)
    log.info("units per rule: %s", {rule_units[0].rule: len(rule_units) for rule_units in units})
    return {rule_units[0].rule: [u.as_dict() for u in rule_units] for rule_units in units}


def archive_unit(purpose: Purpose, context: dict, planned: dict, unit: dict) -> dict:
    """One unit (a mapped task): the engine on one rule and id range of the approved plan,
    holding the purpose's lock in shared mode. Returns the unit's counts (XCom)."""
    ctx = run_context(purpose, context)
    share = Unit(**unit)
    require_approval(purpose, context, ctx, planned)
    with _no_retry_on(PlanMismatchError):
        outcomes = engine(purpose).archive_and_delete(ctx, Plan.from_dict(planned), share)
    result = {"unit": share.as_dict(), "outcome": outcomes[0].as_dict() if outcomes else None}
    log.info("unit %s: %s", share.as_dict(), result["outcome"] and {"deleted": outcomes[0].deleted})
    return result


def merge_units(plan: Plan, unit_results: list[dict]) -> list[RuleOutcome]:
    """The run's outcome per rule: the plan's counts (due, held, waiting), plus what each unit of
    the rule deleted, archived and left beyond the plan."""
    merged = {o.rule: o.planned() for o in plan.rules}
    for result in unit_results:
        done = result and result.get("outcome")
        if not done:
            continue
        total = merged[done["rule"]]
        for key in ("deleted", "objects", "archive_bytes", "documents", "documents_kept_shared", "beyond_plan"):
            setattr(total, key, getattr(total, key) + done.get(key, 0))
        for day, rows in done.get("archived_until", {}).items():
            total.archived_until[day] = total.archived_until.get(day, 0) + rows
        for key, n in done.get("processor", {}).items():
            total.processor[key] = total.processor.get(key, 0) + n
        for summed, key in ((total.partitions, "partitions"), (total.vacuum, "vacuum")):
            for name, n in done.get(key, {}).items():
                summed[name] = summed.get(name, 0) + n
    return list(merged.values())


def audited_before_of_units(plan: Plan, unit_results: list[dict]) -> list[int]:
    """The deletions the run's report leaves out: the plan's ``audited_before`` when every unit
    was made by it (a run cleared whole), none when one is an earlier plan's (its ``plan`` task
    cleared alone: that unit spent every deletion of the run, and the report counts them all)."""
    before = len(plan.audited_before)
    units = [r.get("unit") or {} for r in unit_results if r]
    return plan.audited_before if all(u.get("audited_before", 0) == before for u in units) else []


def recount_from_records(
    conn, outcomes: list[RuleOutcome], purpose: str, run_id: str, tz: str, audited_before: list[int] = ()
) -> None:
    """Per rule, what the run committed since its plan, from its records rather than its units'
    results (a unit's result is its last try's: a try killed after some of its batches committed,
    its worker lost, left them uncounted there): rows deleted, objects and archive bytes from the
    audit log, rows archived per end day from the manifest, both written in each batch's
    transaction. The audit rows committed before the plan (``Plan.audited_before``: a run
    cleared whole) and their objects are the first execution's, not counted by this plan."""
    before = list(audited_before)
    audited = {
        rule: (int(d), int(o), int(b))
        for rule, d, o, b in conn.execute(
            "SELECT rule, coalesce(sum(record_count), 0), count(object_key), coalesce(sum(byte_count), 0)"
            " FROM retention.audit_log WHERE run_id = %s AND purpose = %s"
            " AND action IN ('archived_and_deleted', 'deleted') AND id <> ALL(%s::bigint[]) GROUP BY rule",
            (run_id, purpose, before),
        )
    }
    archived: dict[str, dict[str, int]] = {}
    for rule, day, rows in conn.execute(
        "SELECT rule, to_char(purge_after AT TIME ZONE %s, 'YYYY-MM-DD'), sum(row_count)"
        " FROM retention.archive_manifest WHERE run_id = %s AND purpose = %s AND state = 'committed'"
        " AND object_key NOT IN (SELECT object_key FROM retention.audit_log"
        "  WHERE id = ANY(%s::bigint[]) AND object_key IS NOT NULL)"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        (tz, run_id, purpose, before),
    ):
        archived.setdefault(rule, {})[day] = int(rows)
    for outcome in outcomes:
        outcome.deleted, outcome.objects, outcome.archive_bytes = audited.get(outcome.rule, (0, 0, 0))
        outcome.archived_until = archived.get(outcome.rule, {})


def archive_and_delete_units(purpose: Purpose, context: dict, planned: dict, unit_results: list) -> dict:
    """After every unit succeeded: their counts merged per rule, and one Asset event per archive
    tier the run wrote to (the manifest covers every unit). In the mode the units ran in (the
    plan's: ``executed_as``)."""
    ctx = executed_as(purpose, context, planned)
    results = [r for per_rule in unit_results for r in (per_rule or [])]
    plan = Plan.from_dict(planned)
    outcomes = merge_units(plan, results)
    if not ctx.dry_run:
        import psycopg

        with psycopg.connect(source_dsn(), autocommit=True) as conn:
            recount_from_records(
                conn,
                outcomes,
                as_purpose(purpose).name,
                ctx.run_id,
                default_policy().timezone,
                audited_before_of_units(plan, results),
            )
    emit_archive_events(purpose, context, ctx)
    return {"mode": ctx.mode, "dry_run": ctx.dry_run, "units": len(results), "rules": [o.as_dict() for o in outcomes]}


MAX_KEYS_IN_EVENT = 100


def written_archives(purpose: Purpose | str, run_id: str) -> dict[str, dict]:
    """Per tier, the archive objects this run of this purpose committed (the manifest): counts,
    bytes and object keys, never row contents. A retried task's event covers its earlier tries."""
    import psycopg

    purpose = as_purpose(purpose).name
    with psycopg.connect(source_dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tier, rule, object_key, row_count, coalesce(byte_size, 0), cardinality(document_keys)"
            " FROM retention.archive_manifest WHERE purpose = %s AND run_id = %s AND state = 'committed'"
            " ORDER BY tier, object_key",
            (purpose, run_id),
        ).fetchall()
    tiers: dict[str, dict] = {}
    for tier, rule, key, records, size, documents in rows:
        t = tiers.setdefault(
            tier, {"tier": tier, "objects": 0, "records": 0, "bytes": 0, "documents": 0, "rules": {}, "object_keys": []}
        )
        t["objects"] += 1
        t["records"] += records
        t["bytes"] += size
        t["documents"] += documents
        t["rules"][rule] = t["rules"].get(rule, 0) + records
        if len(t["object_keys"]) < MAX_KEYS_IN_EVENT:
            t["object_keys"].append(key)
    for t in tiers.values():
        t["object_keys_truncated"] = t["objects"] > len(t["object_keys"])
    return tiers


def emit_archive_events(purpose: Purpose | str, context: dict, ctx: RunContext) -> dict[str, dict]:
    """One Asset event per archive tier this run wrote objects to, through the task's AssetAlias
    outlet; none for a dry run, a preview run, or a run that archived nothing."""
    from retention.airflow_names import archive_alias, archive_asset

    if ctx.dry_run:
        return {}
    purpose = as_purpose(purpose).name
    written = written_archives(purpose, ctx.run_id)
    alias = archive_alias(purpose)
    policy = default_policy()
    for tier, extra in written.items():
        extra = {"purpose": purpose, "run_id": ctx.run_id, "logical_date": ctx.logical_date.isoformat(), **extra}
        context["outlet_events"][alias].add(archive_asset(policy, purpose, tier), extra=extra)
        log.info(
            "asset event for %s tier %s: %d objects, %d records", purpose, tier, extra["objects"], extra["records"]
        )
    return written


def purge_archives(purpose: Purpose, context: dict) -> dict:
    """The archive purge of the run: a preview when the run's plan was one (a preview or a dry
    run), even if the purpose was set to enforce since, as when the policy says preview now
    (retention.archive.engine). ``dry_run`` in the result: whether it previewed."""
    ctx = run_context(purpose, context)
    planned = context["ti"].xcom_pull(task_ids="plan")
    if isinstance(planned, dict) and planned.get("dry_run") and not ctx.dry_run:
        ctx = dataclasses.replace(ctx, dry_run=True, mode=planned.get("mode", ctx.mode))
    result = engine(purpose).purge_archives(ctx)
    log.info(
        "purge: %d objects (%d records) purged, %d kept under legal hold, %d kept as the policy now keeps longer",
        result["purged_objects"],
        result["purged_records"],
        result["held_objects"],
        result.get("kept_policy_longer", 0),
    )
    return result | {"dry_run": ctx.dry_run}


def check_after(purpose: Purpose, context: dict, before: dict, archived: dict) -> dict:
    from retention import gates

    ctx = run_context(purpose, context)
    with _no_retry_on(gates.QualityGateError):
        return gates.run_after_gates(
            default_policy(), as_purpose(purpose), source_dsn(), archive_store(), ctx, before, archived
        )


def paris_time(at: dt.datetime) -> str:
    """An instant as the DPO reads it: the policy's time zone (Europe/Paris), e.g. 2025-02-28 00:00 CET."""
    return at.astimezone(default_policy().tz).strftime("%Y-%m-%d %H:%M %Z")


def archived_until(days: dict[str, int]) -> str:
    """When the rows archived by the run go (each on its own day): one date, or the first and
    last of a backlog's."""
    if not days:
        return "-"
    first, last = min(days), max(days)
    return first if first == last else f"{first} .. {last} ({len(days)} days)"


def run_date_label(context: dict) -> str:
    """The run's date as its report says it. A manual run may have no logical date (REST
    `"logical_date": null`): it acts as of its start (``run_context``), and the report says so."""
    logical_date = context.get("logical_date")
    if logical_date is not None:
        return f"logical date {paris_time(logical_date)}"
    return f"no logical date (a manual run: as of its start, {paris_time(context['dag_run'].run_after)})"


def report(
    purpose: Purpose | str, context: dict, planned: dict, archived: dict, purged: dict, before: dict, after: dict
) -> str:
    """A Markdown summary: counts per rule, bytes per tier; logged, and the ``table`` of the
    report's summary (retention.run_report).

    One vocabulary (as on the Retention page): *due* = past the schedule; of which held, waiting,
    and the rest archived and deleted, or in a preview or dry run, what a run *would archive /
    delete* (nothing was written, so no object, byte or file column)."""
    ctx = executed_as(purpose, context, planned)  # the mode the run deleted in, not the policy's now
    purpose = as_purpose(purpose).name
    would = ctx.dry_run  # a preview is a dry run: the figures say what an enforced run would do
    purge_would = would or bool(purged.get("dry_run"))
    if ctx.mode == "preview":
        title = "PREVIEW mode: what an enforced run would do; nothing changed"
    else:
        title = "DRY RUN, nothing changed" if ctx.dry_run else "run summary"
    lines = [
        f"## retention_{purpose}: {title}",
        f"mode {ctx.mode}, {run_date_label(context)}, run {ctx.run_id}",
        "due: past the schedule; of which "
        + ("would archive / delete" if would else "deleted (archived first where the tier says)")
        + ", held (legal hold), waiting (still referenced by another table's rows)",
        "",
    ]
    if would:
        lines += [
            "| rule | table | tier | due | would archive / delete | held | waiting |",
            "|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| rule | table | tier | due | deleted | held | waiting | objects | archived until | archive bytes | files "
            "| files kept (shared) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    bytes_by_tier: dict[str, int] = {}
    for r in archived["rules"]:
        waiting = sum(r["waiting"].values())
        if would:
            deletable = r["due"] - r["held"] - waiting - sum(r.get("claimed", {}).values())
            lines.append(
                f"| {r['rule']} | {r['table']} | {r['tier']} | {r['due']} | {deletable} | {r['held']} | {waiting} |"
            )
            continue
        lines.append(
            f"| {r['rule']} | {r['table']} | {r['tier']} | {r['due']} | {r['deleted']} | {r['held']} | {waiting} "
            f"| {r['objects']} | {archived_until(r.get('archived_until', {}))} | {r['archive_bytes']} "
            f"| {r['documents']} | {r.get('documents_kept_shared', 0)} |"
        )
        bytes_by_tier[r["tier"]] = bytes_by_tier.get(r["tier"], 0) + r["archive_bytes"]
    shares = ", ".join(f"{t}={f:.2%}" for t, f in sorted(planned.get("delete_fraction", {}).items()))
    purge = (
        f"{purged['purged_objects']} objects ({purged['purged_records']} records) purged, "
        f"{purged.get('rows_purged', 0)} records removed on their own end date from "
        f"{purged.get('rewritten_objects', 0)} objects written per month, {purged['held_objects']} kept under legal hold"
        + (
            f", {purged['rows_kept_to_object_date']} records kept to their object's date (own end unknown)"
            if purged.get("rows_kept_to_object_date")
            else ""
        )
        + (
            f", {purged['kept_policy_longer']} objects kept past their date: the policy now keeps their rule"
            " longer than when they were archived, or no longer names it (re-date them: docs/operating.md)"
            if purged.get("kept_policy_longer")
            else ""
        )
        + (
            f", {purged['kept_clock_not_due']} objects kept past their date: the record their clock is read"
            " from (a contract) runs again or ends later"
            if purged.get("kept_clock_not_due")
            else ""
        )
    )
    lines.append("")
    if would:
        lines += [f"share of each table it would delete: {shares}", f"archive purge it would do: {purge}"]
    else:
        lines += [
            "bytes per tier: "
            + (", ".join(f"{t}={b}" for t, b in sorted(bytes_by_tier.items()) if t != "none") or "none"),
            f"share of each table deleted: {shares}",
            f"archive purge it would do (the purpose is in preview now): {purge}"
            if purge_would
            else f"archive purge: {purge}",
        ]
    lines.append(f"quality gates: before {before.get('before', 'n/a')}, after {after.get('after', 'n/a')}")
    for r in archived["rules"]:
        if r.get("processor"):
            lines.append(
                f"payment processor ({r['rule']}): " + ", ".join(f"{k}={n}" for k, n in sorted(r["processor"].items()))
            )
    for r in archived["rules"]:
        if r.get("partitions"):
            p = r["partitions"]
            lines.append(
                f"partitions ({r['rule']}): {p['dropped']} retired whole ({p['rows']} rows, detached and dropped), "
                f"{p['kept']} kept for the row path (a row held, waiting or not due, or a write, a hold or a DBA's "
                "change in the way while it was retired: the task log says which)"
            )
        if r.get("vacuum"):
            v = r["vacuum"]
            lines.append(
                f"vacuum ({r['table']}): dead tuples {v['dead_tuples_before']} -> {v['dead_tuples_after']}, "
                f"size {v['bytes_before']} -> {v['bytes_after']} bytes"
            )
    if not would:
        # Approved, not deleted: the re-check under lock kept them (a hold placed, a child added, a
        # clock moved since the plan) or they went meanwhile. No id: the next run's plan audits them.
        kept = {r["rule"]: n for r in archived["rules"] if (n := RuleOutcome.from_dict(r).deletable - r["deleted"]) > 0}
        if kept:
            lines.append(
                "kept at execution (approved by the plan, then kept by the re-check under lock: a hold placed, a "
                "child added or the row changed since the plan, or gone meanwhile; the next run decides again): "
                + ", ".join(f"{rule}={n}" for rule, n in kept.items())
            )
    beyond = {r["rule"]: r["beyond_plan"] for r in archived["rules"] if r.get("beyond_plan")}
    if beyond:
        lines.append(
            "left for the next run (deletable beyond the approved plan): "
            + ", ".join(f"{rule}={n}" for rule, n in beyond.items())
        )
    summary = "\n".join(lines)
    log.info("%s", summary)
    return summary


def subject_request(context: dict, preview: bool | None = None) -> dict:
    """An access or erasure request (retention.rights.subject_rights). The report it returns (XCom)
    holds ids, keys, counts and, for an export, a short-lived presigned URL: never the data.

    The request is the one recorded under the run's request id (retention.subject_requests: the
    Retention page's form, the CLI), or for a request by id, the run's params. An address in the
    run's conf is refused: Airflow would keep it."""
    import psycopg

    from retention.rights import requests as inbox
    from retention.rights.requests import SubjectRequest, SubjectRequestError
    from retention.rights.subject_rights import SubjectRights

    params = context["params"]
    dsn = source_dsn(RIGHTS_CONN_ID)  # as retention_rights: what a request needs, no more
    with _no_retry_on(SubjectRequestError, ValueError):
        inbox.refuse_identifiers_in_conf(context["dag_run"].conf)
        request_id = inbox.check_request_id(str(params["request_id"]))
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Addresses of requests never finished go 3 months after receipt (their hash stays).
            inbox.clear_unfinished(conn, dt.datetime.now(dt.UTC))
            received = inbox.load(conn, request_id)
        if preview is None:  # the run's param; the erase step after an approval says it
            preview = bool(params.get("preview", True))
        common = {"request_id": request_id, "preview": preview, "run_id": context["run_id"]}
        if received is not None:
            req = SubjectRequest(**common, **_recorded_request(received, params))
        else:
            req = SubjectRequest(**common, **_request_from_params(params, context))
        # Invalid or refused fails at once; S3, a lock held by a retention run: retried.
        return SubjectRights(default_policy(), dsn, archive_store()).handle(req)


def _recorded_request(received, params: dict) -> dict:
    """The request as recorded; a param that says otherwise is refused (a typo in the request id
    would otherwise run another person's request)."""
    from retention.rights.requests import SubjectRequestError

    recorded = {
        "action": received.action,
        "subject_kind": received.kind,
        "subject_id": received.subject_id,
        "received_on": received.received_on.isoformat(),
        "marketing_objection": received.marketing_objection,
    }
    differing = sorted(k for k, v in recorded.items() if params.get(k) not in (None, False, v))
    if differing:
        raise SubjectRequestError(
            f"request {received.request_id!r} was recorded with other {', '.join(differing)}: trigger it with its "
            "request_id (and preview) alone"
        )
    if received.cleared:
        raise SubjectRequestError(
            f"request {received.request_id!r} is finished (or was recorded over 3 months ago and never finished: "
            "its address is gone); a new request needs a new id"
        )
    return {
        "action": received.action,
        "kind": received.kind,
        "subject_id": received.subject_id,
        "email": received.email,
        "received_at": received.received_at(),
        "marketing_objection": received.marketing_objection,
    }


def _request_from_params(params: dict, context: dict) -> dict:
    """A request by id, from the run's params (an address never comes this way)."""
    from retention.rights.requests import SubjectRequestError

    if not params.get("action") or not params.get("subject_kind"):
        raise SubjectRequestError(
            f"no request {params['request_id']!r} is recorded: record it on the Retention page (or with "
            "`python -m retention.rights.requests submit`), or give action, subject_kind and subject_id"
        )
    received = params.get("received_on")
    received_at = (
        dt.datetime.combine(dt.date.fromisoformat(received), dt.time(12), tzinfo=default_policy().tz)
        if received
        else context["dag_run"].run_after
    )
    subject_id = params.get("subject_id")
    return {
        "action": params["action"],
        "kind": params["subject_kind"],
        "subject_id": int(subject_id) if subject_id is not None else None,
        "received_at": dt.datetime.fromtimestamp(received_at.timestamp(), tz=dt.UTC),
        "marketing_objection": bool(params.get("marketing_objection", False)),
    }
