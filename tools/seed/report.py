"""The report of a seed: rows per table (schema `app`, then the legal holds), counted in the
database or from what was generated, and printed one table a line. Counts only: no values.
"""

from __future__ import annotations

from typing import Any

from tools.seed.tables import TABLES


def table_counts(cur: Any) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        counts[table] = cur.execute(f"SELECT count(*) FROM app.{table}").fetchone()[0]
    counts["legal_holds"] = cur.execute("SELECT count(*) FROM retention.legal_holds").fetchone()[0]
    return counts


def generated_counts(tables: dict[str, list[Any]], holds: list[Any]) -> dict[str, int]:
    counts = {table: len(tables[table]) for table in TABLES}
    counts["legal_holds"] = len(holds)
    return counts


def print_counts(counts: dict[str, int]) -> None:
    width = max(map(len, counts))
    for table, count in counts.items():
        print(f"{table:<{width}}  {count:>10,}")
