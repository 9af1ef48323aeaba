"""Retention DAG for the `information_requests` purpose: Information requests (chat, contact form) from customers and prospects.

An Airflow DAG: the rules, periods and documentation come from include/retention_policy.yaml; the work is done
by the shared engine in plugins/retention. This file only wires them.
"""

from __future__ import annotations

from retention.dag_factory import build_retention_dag

dag = build_retention_dag("information_requests")
