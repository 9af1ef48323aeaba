"""Retention watch, an Airflow DAG: an alarm (a failed task and an e-mail) when a purpose has
overdue records or has not succeeded for two days. The check lives in plugins/retention/watch.py;
this file only wires it.
"""

from __future__ import annotations

from retention.watch import build_watch_dag

dag = build_watch_dag()
