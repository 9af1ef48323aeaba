"""Retention housekeeping, an Airflow DAG: the project's own records past the periods of the
policy's `own_records`, and the audit chain verified daily. The work lives in
plugins/retention/housekeeping.py; this file only wires it.
"""

from __future__ import annotations

from retention.housekeeping_dag import build_housekeeping_dag

dag = build_housekeeping_dag()
