"""Retention DAG for the `marketing` purpose: Promotional e-mails to account holders and promotional phone calls.

An Airflow DAG: the rules, periods and documentation come from include/retention_policy.yaml; the work is done
by the shared engine in plugins/retention. This file only wires them.
"""

from __future__ import annotations

from retention.dag_factory import build_retention_dag

dag = build_retention_dag("marketing")
