"""The data-quality gates run before and after a purpose's run (Great Expectations Core, in SQL).

``run_before_gates`` validates the source before anything is deleted, ``run_after_gates`` the
source and the archive after the run; a failure raises ``QualityGateError``. The rooms, from
the entry point down:

- ``run``: the two gates, in the order they check;
- ``checks``: what is checked, as data (one ``Check`` per expectation and table, per phase);
- ``figures``: the figures read for them (snapshot, rows deleted per the audit log);
- ``deletion_guard``: the before-gate's mass-deletion guard, judged on the run's plan;
- ``sql_checks``: the after-gate's checks computed in SQL (nothing due left, manifest = audit,
  nothing kept past its purge date);
- ``archive_readback``: the run's archive objects read back from S3 against their manifest rows;
- ``gx``: how GX validates the checks (ephemeral context, suites, Checkpoints, counts only);
- ``data_docs``: the Data Docs site the Checkpoints update (served by the Retention page);
- ``results``: a gate's result lines, report, summary and ``QualityGateError``.

Reports hold counts, types, column names and object keys, never row contents. Imported by the
tasks only, never when a DAG file is parsed; GX itself (a 5 s import) only when a gate runs.
"""

from __future__ import annotations

from retention.gates.results import QualityGateError
from retention.gates.run import run_after_gates, run_before_gates

__all__ = ["QualityGateError", "run_after_gates", "run_before_gates"]
