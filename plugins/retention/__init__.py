"""GDPR retention engine shared by the retention DAGs.

Kept import-light on purpose: DAG files import ``retention.policy`` and ``retention.dag_factory``
at parse time, so nothing here may pull in pandas, pyarrow, boto3 or Great Expectations at
module level. The heavy modules (``engine``, ``checks``) are imported inside tasks.
"""
