"""The "Run evidence" button on every task of a retention purpose's DAG (Airflow's global operator
extra links, retention_ui_plugin.py): the run's evidence page on the Retention page, where its
report is one table. Computed by the api-server from the task's DAG and run ids alone: no XCom,
no call from the worker, the same on LocalExecutor and Celery.
"""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink


class RunEvidenceLink(BaseOperatorLink):
    name = "Run evidence"

    def get_link(self, operator, *, ti_key) -> str:
        """The evidence page of the task's run; "" (no button) outside the purposes' DAGs."""
        from airflow.configuration import conf
        from retention.policy import default_policy
        from retention.run_note import evidence_path

        purpose = ti_key.dag_id.removeprefix("retention_")
        if ti_key.dag_id == purpose or purpose not in default_policy().purposes:
            return ""
        return evidence_path(purpose, ti_key.run_id, conf.get("api", "base_url", fallback=""))
