"""Build one retention DAG per purpose of the policy: wiring only, no SQL, S3 or GX here.

Parse-time cost is the policy file (validated here, so a bad file is an import error in the
UI) and airflow.sdk; everything heavy is imported inside the tasks (retention.tasks).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, CronTriggerTimetable, Param, dag, task

from retention.airflow_names import (
    OWNER,
    SOURCE_WRITERS_POOL,
    START_DATE,
    SUBJECT_REQUESTS_DAG_ID,
    archive_alias,
    dag_id_for,
)
from retention.alerts import notify_failure, run_deadline
from retention.approval_tasks import ApproveDeletion, ApproveErasure
from retention.policy import DEFAULT_BATCH_SIZE, Policy, Purpose, default_policy
from retention.rights.requests import REQUEST_ID_PATTERN


def doc_md(purpose_name: str, purpose: Purpose, policy: Policy) -> str:
    """The DAG's documentation, generated from the policy (what the DPO reads in the UI)."""
    rows = "\n".join(
        f"| `{r.name}` | `{r.table}` | `{r.clock}` | {r.live} | {r.tier}"
        f"{' ' + str(r.archive) if r.archive else ''} | {r.gone_after} | {r.description} |"
        for r in purpose.rules
    )
    mode = (
        "**Mode: PREVIEW.** Every run (scheduled, manual, backfill) reports exactly what an enforced run would "
        "do and changes nothing. Switching to enforce is one line of `include/retention_policy.yaml` "
        f"(`mode: enforce` under `{purpose_name}`), see docs/operating.md."
        if purpose.mode == "preview"
        else "**Mode: ENFORCE.** Runs archive, delete and purge."
    )
    return f"""# Retention: {purpose.title}

{mode}

> **Finalité (politique de confidentialité)** : {purpose.purpose_fr}
>
> **Base légale** : {purpose.legal_basis_fr} (`{purpose.legal_basis}`)
>
> **Durée de conservation** : {purpose.retention_fr}

Each daily run, at its **logical date** D (Europe/Paris calendar): selects the records whose
clock + live period <= D (SQL in `include/sql/{purpose_name}/`), archives them to S3 (verified
Parquet, manifest), deletes them from the source in the same transaction as the audit entry,
and purges archive objects whose archive period has ended. Records under an active legal hold
are kept and reported; parents whose children are still kept wait and are reported.

| rule | table | clock | live | archive tier | gone after | records |
|---|---|---|---|---|---|---|
{rows}

**Params**: `dry_run` (count and report only), `batch_size` (most rows per transaction and per
archive object), `max_delete_fraction` (mass-deletion guard: a run that would delete a larger
share of a table waits, before deleting anything, for an approver shown its plan's figures
(task `approve_deletion`, under Browse > Required Actions); rejected or unanswered in
{policy.approvals.wait_hours:g} h, it fails and nothing is deleted; raising the param for one run
skips the question).
Backfills use the cutoff of their own logical date. A trigger with a logical date in the future
is refused (Airflow would never start it, and it would block the DAG); one without a logical
date acts as of the moment the run starts.
"""


def build_retention_dag(purpose_name: str, policy: Policy | None = None) -> DAG:
    policy = policy or default_policy()
    purpose = policy.purpose(purpose_name)
    alias = archive_alias(purpose_name)

    @dag(
        dag_id=dag_id_for(purpose_name),
        description=purpose.title,
        doc_md=doc_md(purpose_name, purpose, policy),
        schedule=CronTriggerTimetable("0 0 * * *", timezone="Europe/Paris"),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["retention", purpose_name, purpose.legal_basis, f"mode:{purpose.mode}"],
        # A run not finished some hours after it was queued e-mails (Airflow's deadline alert).
        deadline=run_deadline(policy.alerts.run_deadline_hours),
        default_args={
            "owner": OWNER,
            "retries": 2,
            # The delay between tries is Airflow's [core] default_task_retry_delay (5 minutes
            # unless set; the Celery stack tests shorten it).
            # An e-mail through `smtp_default` when a task fails for good (retention.alerts).
            "on_failure_callback": notify_failure,
        },
        params={
            "dry_run": Param(False, type="boolean", description="Count and report what would happen; change nothing."),
            "batch_size": Param(
                DEFAULT_BATCH_SIZE,
                type="integer",
                minimum=1,
                maximum=1_000_000,
                description="Most rows per transaction and per archive object.",
            ),
            "max_delete_fraction": Param(
                purpose.max_delete_fraction,
                type="number",
                exclusiveMinimum=0,
                maximum=1,
                description="Mass-deletion guard: largest share of a table one run may delete.",
            ),
            "range_rows": Param(
                250_000,
                type="integer",
                minimum=1,
                description=(
                    "A rule with more deletable rows is spread over units (mapped tasks) of about this many"
                    " rows; on a partitioned table a partition that may go whole is one unit, whatever its size."
                ),
            ),
        },
        render_template_as_native_obj=True,
    )
    def retention_dag():
        @task
        def plan(**context) -> dict:
            """The run's plan, made once: counts per rule at the logical date (due, held, waiting),
            table sizes, the policy's fingerprint; handed to the gate and the archive step."""
            from retention import tasks

            return tasks.plan(purpose, context)

        @task
        def check_before(planned: dict, **context) -> dict:
            """Data-quality gate before anything is deleted (Great Expectations, in SQL), and the
            mass-deletion guard on the plan."""
            from retention import tasks

            return tasks.check_before(purpose, context, planned)

        @task(multiple_outputs=True)
        def prepare_units(planned: dict, **context) -> dict:
            """Recover what a crashed run left (the purpose's lock held exclusively), then the
            units of the approved plan per rule: one per id range of a large rule."""
            from retention import tasks

            return tasks.prepare_units(purpose, context, planned)

        @task
        def rule_units(units: list) -> list:
            """One rule's units (Airflow maps only over a task's return value)."""
            return units

        @task(pool=SOURCE_WRITERS_POOL)
        def archive_unit(planned: dict, unit: dict, **context) -> dict:
            """One rule, one id range: archive the due rows to S3 (verified), then delete them
            with the audit entry, at most what the approved plan counted; the purpose's lock is
            held in shared mode (units of the run run side by side, a recovery never)."""
            from retention import tasks

            return tasks.archive_unit(purpose, context, planned, unit)

        @task(outlets=[alias])
        def archive_and_delete(planned: dict, unit_results: list, **context) -> dict:
            """The units' counts merged per rule; an Asset event per archive tier written to
            (counts and object keys in its extra)."""
            from retention import tasks

            return tasks.archive_and_delete_units(purpose, context, planned, unit_results)

        @task
        def purge_archives(**context) -> dict:
            """Delete archive objects whose archive period has ended (never under a legal hold)."""
            from retention import tasks

            return tasks.purge_archives(purpose, context)

        @task
        def check_after(before: dict, archived: dict, **context) -> dict:
            """Data-quality gate after the run: nothing due left, counts and archives consistent."""
            from retention import tasks

            return tasks.check_after(purpose, context, before, archived)

        @task(trigger_rule="all_done", show_return_value_in_logs=False)
        def report(**context) -> dict:
            """The run's summary whatever happened upstream: the table once in the log, the summary
            (a dict) as XCom (also under key `summary`), the run's note with a link to its evidence;
            on a failure, what failed and what was left unchanged (then it fails too, so the run
            stays red)."""
            from retention import run_report

            return run_report.report(purpose, context)

        planned = plan()
        before = check_before(planned)
        # Over the mass-deletion guard, the run waits here for a person (Required Actions).
        approved = ApproveDeletion(task_id="approve_deletion", approvals=policy.approvals)
        prepared = prepare_units(planned)
        # Rules in policy order, children before parents: rule k+1's units start once all of
        # rule k's succeeded.
        previous, unit_results = prepared, []
        for rule in purpose.rules:
            listed = rule_units.override(task_id=f"units_{rule.name}")(prepared[rule.name])
            units = archive_unit.override(task_id=f"archive_{rule.name}").partial(planned=planned).expand(unit=listed)
            previous >> units
            previous = units
            unit_results.append(units)
        archived = archive_and_delete(planned, unit_results)
        purged = purge_archives()
        checked = check_after(before, archived)
        planned >> before >> approved >> prepared
        previous >> archived >> purged >> checked >> report()

    return retention_dag()


SUBJECT_REQUESTS_DOC = """# Data-subject requests: access / portability and erasure

One run per request. **A request by e-mail** is recorded first on the **Retention** page (form
"Data-subject request", which triggers the run) or with `python -m retention.rights.requests
submit`, and its run gets the request id alone: an address in a run's conf would stay in
Airflow's database, shown to every reader of this DAG, so it is refused. **A request by id** can
also be triggered here (**Trigger DAG w/ config**) or through the REST API:

- `request_id`: your reference of the request (letters, digits, `.`, `_`, `=`, `-`, with a letter
  or digit); a re-run with the same id finishes an interrupted one; a finished one is final;
- `action`: `access` (Art. 15 / 20: a JSON + files export) or `erasure` (Art. 17); empty for a
  recorded request (its own);
- `subject_kind`: `customer`, `prospect` or `candidate` (job application), with `subject_id`;
  empty for a recorded request;
- `received_on`: the date the request was received (the answer is due one month later);
- `marketing_objection`: also put the person's e-mail / phone on the marketing objection list;
- `preview` (default **on**): report what would be exported or erased, change nothing. An
  erasure previewed then waits (task `approve_erasure`, under Browse > Required Actions) for an
  approver shown what it would erase and keep: approved, the run erases (task `erase`, after
  checking the figures are still the ones approved); rejected or unanswered, nothing is erased.

**Erasure** deletes the live rows and files of purposes whose legal basis is neither a legal
obligation nor a running contract, and rewrites the intermediate archive objects without the
person's rows; it keeps (and reports, with the legal basis and until when) probative and
restricted archives, legal-obligation records, records under a legal hold, and anything the
policy does not describe. **Access** writes `exports/<request_id>/export.zip` to the archive
bucket (SSE); the report gives a presigned URL valid one hour, and an index of every part:
source (live / intermediate / probative), purpose, legal basis, kept until.

The report (XCom `return_value`, table `retention.subject_requests`) holds ids, keys, counts
and checksums only.
"""


def build_subject_requests_dag(policy: Policy | None = None) -> DAG:
    policy = policy or default_policy()

    @dag(
        dag_id=SUBJECT_REQUESTS_DAG_ID,
        description="Data-subject requests: access / portability export and erasure, live and archived",
        doc_md=SUBJECT_REQUESTS_DOC,
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,  # one request at a time: each takes the purposes' locks in turn
        tags=["retention", "subject_requests"],
        default_args={
            "owner": OWNER,
            # A re-run finishes an interrupted request (the object rewrites are write-ahead).
            "retries": 2,
            "retry_delay": dt.timedelta(minutes=2),
            "on_failure_callback": notify_failure,
        },
        params={
            "request_id": Param(
                "", type="string", pattern=REQUEST_ID_PATTERN, description="Your reference of the request."
            ),
            # Empty for a request recorded on the Retention page or with `retention.rights.requests
            # submit` (by e-mail: no address in a run's conf, docs/subject-requests.md): the recorded one applies.
            "action": Param(
                None,
                type=["null", "string"],
                enum=[None, "access", "erasure"],
                description="access or erasure (empty: the recorded request's).",
            ),
            "subject_kind": Param(
                None,
                type=["null", "string"],
                enum=[None, "customer", "prospect", "candidate"],
                description="Who, by id (by e-mail: record the request on the Retention page).",
            ),
            "subject_id": Param(
                None, type=["null", "integer"], minimum=1, description="The customer/prospect/candidate id."
            ),
            "received_on": Param(
                None, type=["null", "string"], format="date", description="Date received (default: today)."
            ),
            "marketing_objection": Param(False, type="boolean", description="Also record an objection to marketing."),
            "preview": Param(True, type="boolean", description="Report what would be done; change nothing."),
        },
    )
    def retention_subject_requests():
        @task(show_return_value_in_logs=False)
        def handle_request(**context) -> dict:
            """Find everything of the subject (live, both archive tiers), then export or erase."""
            from retention import tasks

            return tasks.subject_request(context)

        @task(show_return_value_in_logs=False)
        def erase(approval: dict, **context) -> dict:
            """After an approved preview: preview again and, with the same figures, erase."""
            from retention import approval_tasks

            return approval_tasks.erase_approved(context, approval)

        # An erasure previewed waits here for a person (Required Actions), then `erase` runs.
        approval = ApproveErasure(task_id="approve_erasure", approvals=policy.approvals)
        handle_request() >> approval
        erase(approval.output)

    return retention_subject_requests()
