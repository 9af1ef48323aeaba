"""Where the project's files are, resolved from this file (never from the working directory)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = REPO_ROOT / "include"
SQL_DIR = INCLUDE_DIR / "sql"
SCHEMA_DIR = SQL_DIR / "schema"
POLICY_FILE = INCLUDE_DIR / "retention_policy.yaml"


def data_docs_dir() -> Path | None:
    """Where the quality gates' Great Expectations Data Docs go: $RETENTION_DATA_DOCS_DIR, else
    <AIRFLOW_HOME>/retention_data_docs, else <repo>/.local/data_docs. "off" turns them off (the
    gates still run, through their Checkpoints, without the Data Docs action). The HTML site is
    its `site/` folder (served by the Retention page), the validation results its `validations/`."""
    configured = os.environ.get("RETENTION_DATA_DOCS_DIR")
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "none") else Path(configured)
    home = os.environ.get("AIRFLOW_HOME")
    return Path(home) / "retention_data_docs" if home else REPO_ROOT / ".local" / "data_docs"
