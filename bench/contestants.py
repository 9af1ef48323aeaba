"""One contestant, run in its own process: ``python -m bench.contestants '<json spec>'``.

Prints one JSON object on its last stdout line: wall time of the work (connections included,
interpreter start and imports excluded), CPU time, peak RSS of this process, rows deleted,
archive keys and bytes. Each contestant imports only what it uses, so the peak RSS is its own.

Peak RSS is ``VmHWM`` of /proc/self/status, the high-water mark of this process's own memory.
``getrusage(RUSAGE_SELF).ru_maxrss`` is reported too but is not used: Linux carries the
parent's RSS at the fork over the exec (measured: a child of a 600 MiB parent reports 610 MiB
ru_maxrss, 9 MiB VmHWM), so it would charge the bench's own memory to whichever contestant
runs after a large verification.

The spec carries the DSN, the S3 endpoint and buckets, the logical date, the cutoff and the
rule's SQL (include/sql/quotes/unconverted_quotes.sql), the batch size, a work folder, and
``profile`` (cProfile around the work) / ``phases`` (time the engine's steps) for the profile run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import sys
import time
from pathlib import Path

from tools.devstack import s3_client


def selection(rule_sql: str) -> str:
    """The rows the rule makes due at the cutoff, held ones excluded: the same for all three."""
    return (
        f"SELECT q.* FROM app.quotes AS q JOIN ({rule_sql}) AS due USING (id)"
        " WHERE NOT due.held AND due.waiting_for IS NULL"
    )


def run_limit(spec: dict, timer) -> dict:
    """COPY the rows out as text into a file, one upload of it, one DELETE of the same ids."""
    import psycopg

    client = s3_client(spec["s3_endpoint"])
    path = Path(spec["workdir"]) / "limit.tsv"
    key = f"limit/{spec['run_id']}/quotes.tsv"
    params = {spec["cutoff_param"]: dt.datetime.fromisoformat(spec["cutoff"])}
    steps = _Steps()
    with timer:
        with psycopg.connect(spec["dsn"]) as conn:
            with (
                open(path, "wb") as out,
                conn.cursor().copy(f"COPY ({selection(spec['rule_sql'])}) TO STDOUT", params) as copy,
            ):
                for chunk in copy:
                    out.write(chunk)
            steps("copy_out")
            with open(path, "rb") as lines:
                ids = [int(line[: line.index(b"\t")]) for line in lines]
            steps("parse_ids")
            client.upload_file(str(path), spec["archive_bucket"], key)
            steps("upload")
            deleted = conn.execute("DELETE FROM app.quotes WHERE id = ANY(%s)", (ids,)).rowcount
            conn.commit()
            steps("delete_commit")
    size = path.stat().st_size
    path.unlink()
    return {"deleted": deleted, "keys": [key], "archive_bytes": size, "objects": 1, "steps": steps.done}


def run_pandas(spec: dict, timer) -> dict:
    """What a data engineer writes by hand: read_sql, to_parquet, upload, delete."""
    import pandas as pd
    import sqlalchemy as sa

    client = s3_client(spec["s3_endpoint"])
    engine = sa.create_engine(spec["dsn"].replace("postgresql://", "postgresql+psycopg://", 1))
    path = Path(spec["workdir"]) / "pandas.parquet"
    key = f"pandas/{spec['run_id']}/quotes.parquet"
    steps = _Steps()
    with timer:
        with engine.begin() as conn:
            df = pd.read_sql(
                selection(spec["rule_sql"]),
                conn,
                params={spec["cutoff_param"]: dt.datetime.fromisoformat(spec["cutoff"])},
            )
            steps("read_sql")
            df.to_parquet(path, index=False)
            steps("to_parquet")
            client.upload_file(str(path), spec["archive_bucket"], key)
            steps("upload")
            deleted = conn.exec_driver_sql(
                "DELETE FROM app.quotes WHERE id = ANY(%(ids)s)", {"ids": df["id"].tolist()}
            ).rowcount
        steps("delete_commit")
    engine.dispose()
    size = path.stat().st_size
    path.unlink()
    return {"deleted": deleted, "keys": [key], "archive_bytes": size, "objects": 1, "steps": steps.done}


def engine_modules():
    """(engine module, store module) of the plugins on sys.path: this layout, or a candidate's
    from before retention/archive/ (``--candidate before=<old checkout>/plugins``)."""
    import importlib

    try:
        return importlib.import_module("retention.archive.engine"), importlib.import_module("retention.archive.store")
    except ModuleNotFoundError:
        return importlib.import_module("retention.engine"), importlib.import_module("retention.archive_store")


def run_engine(spec: dict, timer) -> dict:
    """The project's engine, the DAGs' code path: read-back verification, audit, manifest on."""
    from retention.policy import default_policy

    engine_module, store_module = engine_modules()
    RetentionEngine, RunContext = engine_module.RetentionEngine, engine_module.RunContext  # noqa: N806
    ArchiveStore = store_module.ArchiveStore  # noqa: N806

    policy = default_policy().with_mode("enforce")  # the shipped preview mode would only count
    storage = policy.storage_settings()  # buckets from RETENTION_*_BUCKET, set by the bench
    assert storage.archive_bucket == spec["archive_bucket"], (storage.archive_bucket, spec["archive_bucket"])
    store = ArchiveStore(s3_client(spec["s3_endpoint"]), storage)
    engine = RetentionEngine(policy, spec.get("purpose", "quotes"), spec["dsn"], store)
    ctx = RunContext(
        spec.get("purpose", "quotes"),
        spec["run_id"],
        dt.datetime.fromisoformat(spec["logical_date"]),
        batch_size=spec["batch_size"],
    )
    phases = _time_phases(engine, store) if spec.get("phases") else None
    source = _source_digest()
    # Imports are not timed (module docstring), and the engine imports its Arrow reader's driver
    # only when it connects (0.25 s: it imports pyarrow.dataset and pandas).
    import adbc_driver_postgresql.dbapi  # noqa: F401

    with timer:
        outcomes = engine.archive_and_delete(ctx)
    result = {
        "deleted": sum(o.deleted for o in outcomes),
        "archive_bytes": sum(o.archive_bytes for o in outcomes),
        "objects": sum(o.objects for o in outcomes),
        "rules": [o.as_dict() for o in outcomes],
        "engine_source": source,
    }
    if phases is not None:
        result["phases"] = phases
    return result


def run_purpose(spec: dict, timer) -> dict:
    """Full daily run of one purpose, its DAG's steps in the DAG's order, at one logical date, each
    timed: plan (evaluated once, with the held and waiting ids audited), before-gate on that
    plan, archive_and_delete of that plan, purge_archives, after-gate.

    The gates are called through bench.gates (one place to follow a change of their signature).
    A failed gate is reported, not raised. A before-gate refused by the mass-deletion guard alone
    (a first run on generated data clears a backlog) is re-run as the operator would re-trigger
    the DAG, with the ``max_delete_fraction`` param raised to 1, when ``spec["raise_guard"]``; its
    time is reported apart (``before_gate_refused``). Any other failed before-gate stops the run
    there, as the DAG does (nothing deleted); a failed after-gate is recorded beside the figures."""
    from retention.archive.engine import RetentionEngine
    from retention.archive.run import RunContext
    from retention.archive.store import ArchiveStore
    from retention.policy import default_policy

    from bench import gates

    policy = default_policy().with_mode("enforce")
    purpose = spec["purpose"]
    store = ArchiveStore(s3_client(spec["s3_endpoint"]), policy.storage_settings())
    engine = RetentionEngine(policy, purpose, spec["dsn"], store)
    ctx = RunContext(
        purpose, spec["run_id"], dt.datetime.fromisoformat(spec["logical_date"]), batch_size=spec["batch_size"]
    )
    started = time.perf_counter()
    # Timed apart, like the other imports: Airflow's task SDK (loaded in every task process before
    # the task's code runs; the processor's connection is read through it) and what the gate
    # tasks import first (GX).
    import airflow.sdk  # noqa: F401

    gates.preload()
    import_s = time.perf_counter() - started
    gate_error = gates.gate_error()
    status = {"before_gate": "not run", "after_gate": "not run"}
    outcomes, planned = [], None
    with timer:
        steps = _Steps()
        planned = engine.make_plan(ctx, audit=True)  # the plan task: handed to the gate and the archive step
        steps("plan")
        try:
            before = gates.before(policy, purpose, spec["dsn"], ctx, plan=planned)
            status["before_gate"] = before.get("before", "ok")
        except gate_error as exc:
            status["before_gate"] = "FAILED: " + str(exc)[:2000]
            if spec.get("raise_guard") and _only_mass_deletion_guard(str(exc)):
                steps("before_gate_refused")
                status["before_gate_refused"] = status["before_gate"]
                try:
                    before = gates.before(policy, purpose, spec["dsn"], ctx, max_delete_fraction=1.0, plan=planned)
                    status["before_gate"] = before.get("before", "ok") + " (max_delete_fraction raised to 1)"
                except gate_error as again:
                    status["before_gate"] = "FAILED: " + str(again)[:2000]
        steps("before_gate")
        if not status["before_gate"].startswith("FAILED"):
            outcomes = engine.archive_and_delete(ctx, planned)
            steps("archive_and_delete")
            engine.purge_archives(ctx)
            steps("purge")
            archived = {"mode": ctx.mode, "dry_run": ctx.dry_run, "rules": [o.as_dict() for o in outcomes]}
            try:
                after = gates.after(policy, purpose, spec["dsn"], store, ctx, before, archived)
                status["after_gate"] = after.get("after", "ok")
            except gate_error as exc:
                status["after_gate"] = "FAILED: " + str(exc)[:2000]
            steps("after_gate")
    return {
        "steps": steps.done,
        "gates_import_s": import_s,
        "plan_s": steps.done.get("plan"),
        "gates": status,
        "table_rows": planned.table_rows if planned else {},
        "deleted": sum(o.deleted for o in outcomes),
        "archive_bytes": sum(o.archive_bytes for o in outcomes),
        "objects": sum(o.objects for o in outcomes),
        "rules": [o.as_dict() for o in outcomes],
    }


def _only_mass_deletion_guard(message: str) -> bool:
    """A gate failure whose failed expectations (its "  - " lines) are all the mass-deletion guard."""
    failed = [line for line in message.splitlines() if line.startswith("  - ")]
    return bool(failed) and all(line.startswith("  - mass_deletion_guard ") for line in failed)


CONTESTANTS = {
    "limit": run_limit,
    "pandas": run_pandas,
    "engine": run_engine,
    "purpose": run_purpose,
}


def _source_digest() -> dict[str, str]:
    """Which engine code ran (the plugins are edited concurrently: a run records its own)."""
    import hashlib

    return {
        Path(m.__file__).name: hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest()[:16] for m in engine_modules()
    }


class _Steps:
    """Seconds since the previous call, by step name (a few perf_counter calls: no overhead)."""

    def __init__(self):
        self.done: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.done[name] = round(now - self._last, 3)
        self._last = now


class _Timer:
    """Wall and CPU time of the work; cProfile around it when asked."""

    def __init__(self, profile_path: str | None):
        self.profile_path = profile_path
        self.profiler = None
        self.wall_s = self.cpu_s = 0.0

    def __enter__(self):
        if self.profile_path:
            import cProfile

            self.profiler = cProfile.Profile()
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        if self.profiler:
            self.profiler.enable()
        return self

    def __exit__(self, *exc):
        if self.profiler:
            self.profiler.disable()
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu
        if self.profiler:
            self.profiler.dump_stats(self.profile_path)
        return False


def _time_phases(engine, store) -> dict:
    """Wrap the engine's steps with timers (profile run only: the measured runs are untouched)."""

    totals: dict[str, list] = {}

    def wrap(owner, name, label):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                slot = totals.setdefault(label, [0, 0.0])
                slot[0] += 1
                slot[1] += time.perf_counter() - started

        setattr(owner, name, timed)

    for name in (
        "_audit_exceptions",
        "recover",
        "_lock_batch",
        "_recheck",
        "_read_rows",
        "_record_intents",
        "_delete_rows",
        "_finish_commit",
        "_audit",
        "_within_allowance",
    ):
        wrap(engine, name, name)
    # The module-level helpers the batch protocol calls (profiled on this repository's engine only)
    import retention.archive.protocol as steps_module

    for name, label in (
        ("parquet_bytes", "parquet_bytes"),
        ("parquet_row_count", "parquet_row_count (read-back)"),
        ("typed", "typed"),
        ("owners_of_row_sets", "owners_of_row_sets"),
        ("has_waiters", "has_waiters"),
    ):
        wrap(steps_module, name, label)
    wrap(store, "put_verified", "store.put_verified")
    wrap(store.client, "put_object", "s3.put_object")
    wrap(store.client, "get_object", "s3.get_object")
    return totals


def main(argv: list[str] | None = None) -> None:
    spec = json.loads((argv or sys.argv[1:])[0])
    timer = _Timer(spec.get("profile"))
    # A candidate (bench.run --candidate) is the engine from another plugins folder.
    result = CONTESTANTS[spec.get("kind") or spec["contestant"]](spec, timer)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hwm_kib = next(
        int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
    )
    if "phases" in result:
        result["phases"] = {k: {"calls": n, "s": round(s, 3)} for k, (n, s) in result["phases"].items()}
    result.update(
        contestant=spec["contestant"],
        wall_s=timer.wall_s,
        cpu_s=timer.cpu_s,
        peak_rss_mb=hwm_kib / 1024,
        ru_maxrss_mb=usage.ru_maxrss / 1024,
        pid=os.getpid(),
    )
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
