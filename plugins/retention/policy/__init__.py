"""The retention schedule, as validated data: the policy file's model (``model``), the file read
and checked (``loading``), its calendar periods (``periods``), the rule files that narrow a rule
(``rule_files``) and the one definition of what a legal hold covers (``coverage``).

Everything else stands on this package and nothing here imports from above it. Light: DAG files
import it at parse time. The model's public names are re-exported here.
"""

from __future__ import annotations

from retention.policy.loading import (
    default_policy,
    fingerprint,
    load_policy,
    policy_path,
    rule_filter,
    rule_sql_path,
)
from retention.policy.model import (
    DECISION_ATTENTION,
    DEFAULT_BATCH_SIZE,
    Policy,
    PolicyError,
    Purpose,
    Rule,
    Storage,
)

__all__ = [
    "DECISION_ATTENTION",
    "DEFAULT_BATCH_SIZE",
    "Policy",
    "PolicyError",
    "Purpose",
    "Rule",
    "Storage",
    "default_policy",
    "fingerprint",
    "load_policy",
    "policy_path",
    "rule_filter",
    "rule_sql_path",
]
