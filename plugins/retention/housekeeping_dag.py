"""The housekeeping DAG: every day, the project's own records past the periods of the policy's
`own_records` removed, and the audit chain verified (docs/housekeeping.md). Wiring here (light
at parse time); what each task does is retention.housekeeping, imported inside the tasks.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, CronTriggerTimetable, dag, task

from retention.airflow_names import OWNER, START_DATE
from retention.alerts import notify_failure

HOUSEKEEPING_DAG_ID = "retention_housekeeping"

DOC = """# Retention housekeeping

Every day at 06:00 (Europe/Paris), before the watch: the project's **own records** kept only as
long as the policy's `own_records` say (docs/housekeeping.md). In **preview** (the policy's
`housekeeping.mode`, shipped) every task reports what would go and removes nothing.

- `verify_audit`: the audit chain recomputed and compared with the heads in the archive; the
  result shown on the Retention page. A break **fails** the run (e-mail) and nothing is pruned:
  every task below waits for it, Airflow's records and the log files too.
- `write_chain_heads`: each chain's head stored under Object Lock for the audit's period.
- `prune_own_rows`: audit rows and finished requests' evidence (with the chain's checkpoint),
  manifest rows of purged objects, document disposals, the audit's ids whose archive is gone,
  through the housekeeping role's functions.
- `clean_airflow_metadata`: DAG runs, task instances, XCom, the log table and import errors,
  by Airflow's own db clean (no archive tables left), through `retention_airflow_db`.
- `delete_old_files`: task log files, GX validation results and Data Docs pages.
- `record`: the figures in `retention.housekeeping_runs` (counts only), for the page.
"""


def _enforce() -> bool:
    from retention.policy import default_policy

    return default_policy().housekeeping.mode == "enforce"


def _housekeeping_conn():
    import psycopg

    from retention.connections import HOUSEKEEPING_CONN_ID
    from retention.tasks import source_dsn

    return psycopg.connect(source_dsn(HOUSEKEEPING_CONN_ID), autocommit=True)


def build_housekeeping_dag() -> DAG:
    @dag(
        dag_id=HOUSEKEEPING_DAG_ID,
        description="The project's own records past their period; the audit chain verified",
        doc_md=DOC,
        schedule=CronTriggerTimetable("0 6 * * *", timezone="Europe/Paris"),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["retention", "housekeeping"],
        default_args={"owner": OWNER, "retries": 0, "on_failure_callback": notify_failure},
    )
    def retention_housekeeping():
        @task
        def verify_audit() -> dict:
            """The chain intact and matching the heads in the archive; fails on a break."""
            from airflow.sdk.exceptions import AirflowFailException

            from retention import housekeeping
            from retention.tasks import archive_store

            with _housekeeping_conn() as conn:
                try:
                    return housekeeping.verify_audit(conn, archive_store())
                except housekeeping.AuditBroken as exc:
                    raise AirflowFailException(f"the audit chain is broken: {exc}") from exc

        @task
        def write_chain_heads(verified: dict) -> list:
            from retention import audit
            from retention.tasks import archive_store

            with _housekeeping_conn() as conn:
                return audit.write_chain_head(archive_store(), conn)

        @task
        def prune_own_rows(heads: list) -> dict:
            from retention import housekeeping
            from retention.policy import default_policy

            with _housekeeping_conn() as conn:
                return housekeeping.prune_own_rows(conn, default_policy(), dt.datetime.now(dt.UTC), enforce=_enforce())

        @task
        def clean_airflow_metadata() -> dict:
            from retention import housekeeping
            from retention.policy import default_policy

            return housekeeping.clean_airflow_metadata(
                housekeeping.metadata_url(), default_policy(), dt.datetime.now(dt.UTC), enforce=_enforce()
            )

        @task
        def delete_old_files() -> dict:
            from retention import housekeeping
            from retention.policy import default_policy

            return housekeeping.delete_files(
                default_policy(), dt.datetime.now(dt.UTC), housekeeping.file_roots(), enforce=_enforce()
            )

        @task
        def record(rows: dict, metadata: dict, files: dict, **context) -> dict:
            from retention import housekeeping

            results = {"retention_schema": rows, "airflow_metadata": metadata, "files": files}
            with _housekeeping_conn() as conn:
                housekeeping.record_run(conn, context["run_id"], enforce=_enforce(), results=results)
            return {"mode": "enforce" if _enforce() else "preview"} | results

        # Nothing is removed once the chain is found broken: neither the retention schema's rows
        # nor Airflow's records and the log files, what the break is investigated with.
        verified = verify_audit()
        rows = prune_own_rows(write_chain_heads(verified))
        metadata, files = clean_airflow_metadata(), delete_old_files()
        verified >> [metadata, files]
        record(rows, metadata, files)

    return retention_housekeeping()
