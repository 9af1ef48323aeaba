"""Data-subject requests (access / portability, erasure), an Airflow DAG triggered by hand or REST
with params. The work is done by plugins/retention/rights/ (subject_rights.py); this file only wires it.
"""

from __future__ import annotations

from retention.dag_factory import build_subject_requests_dag

dag = build_subject_requests_dag()
