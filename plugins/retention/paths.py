"""Where the project's files are, resolved from this file (never from the working directory)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = REPO_ROOT / "include"
SQL_DIR = INCLUDE_DIR / "sql"
SCHEMA_DIR = SQL_DIR / "schema"
POLICY_FILE = INCLUDE_DIR / "retention_policy.yaml"
