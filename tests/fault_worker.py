"""Run one retention engine call in its own process and SIGKILL it at a named protocol step.

    python -m tests.fault_worker OP PURPOSE DSN ENDPOINT ARCHIVE_BUCKET DOCUMENTS_BUCKET
                                 LOGICAL_DATE RUN_ID STEP [OCCURRENCE] [BATCH_SIZE]

OP is ``archive`` (archive_and_delete) or ``purge`` (purge_archives). STEP is one of STEPS
(or ``none``); the process kills itself with SIGKILL (no cleanup, no rollback sent, no
``finally``) the OCCURRENCE-th time it reaches the step. The engine is patched here, in the
child process, by wrapping its methods: the engine's code reads no test setting.
Exit status 0 when the call finished without reaching the step.

    python -m tests.fault_worker --serve

imports the engine once, then for each line of arguments (tab-separated) read on stdin forks a
child that runs that call as above, and answers one line: the child's exit status (-9 when it
was killed), then the base64 of its output. The imports (pyarrow, ADBC, pandas: seconds on a
busy machine) are paid once per test session instead of once per fault.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

# step -> (object to patch: "engine" or "store", method, "before" or "after" the original runs)
STEPS = {
    # the 'uploading' intent is committed (autocommit connection); nothing copied or uploaded
    "after_intent": ("store", "copy_documents", "before"),
    # object uploaded and read back; the DELETE not yet run
    "after_upload": ("store", "put_verified", "after"),
    # DELETE + manifest 'committed' + audit + disposals written, the transaction not committed
    "after_delete": ("engine", "_delete_rows", "after"),
    # the batch is committed; Object Lock not yet applied
    "after_commit": ("engine", "_finish_commit", "before"),
    # Object Lock applied (on a non-empty set of versions); the source files not yet deleted
    "after_lock": ("engine", "_apply_locks", "after"),
    # purge: every version of an object deleted from S3; its manifest row not yet 'purged'
    "purge_after_s3_delete": ("store", "delete_all_versions", "after"),
}


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(engine, step: str, occurrence: int) -> None:
    where, method, when = STEPS[step]
    target = engine if where == "engine" else engine.store
    original = getattr(target, method)
    seen = [0]

    def counts(args) -> bool:
        # A step reached with nothing to do is not the step (recovery calls these with empty lists).
        if method == "_apply_locks":
            return bool(args[1])
        if method == "delete_all_versions":
            return bool(list(args[1]))
        return True

    def wrapper(*args, **kwargs):
        hit = counts(args if where == "engine" else (None, *args))
        if hit:
            seen[0] += 1
        fire = hit and seen[0] == occurrence
        if fire and when == "before":
            print(f"SIGKILL before {method} (occurrence {occurrence})", flush=True)
            die()
        result = original(*args, **kwargs)
        if fire:
            print(f"SIGKILL after {method} (occurrence {occurrence})", flush=True)
            die()
        return result

    setattr(target, method, wrapper)


def main(argv: list[str]) -> int:
    op, purpose, dsn, endpoint, archive_bucket, documents_bucket, logical, run_id, step = argv[:9]
    occurrence = int(argv[9]) if len(argv) > 9 else 1
    batch_size = int(argv[10]) if len(argv) > 10 else 1
    os.environ["RETENTION_ARCHIVE_BUCKET"] = archive_bucket
    os.environ["RETENTION_DOCUMENTS_BUCKET"] = documents_bucket

    from retention.archive.engine import RetentionEngine
    from retention.archive.run import RunContext
    from retention.archive.store import ArchiveStore
    from retention.policy import default_policy

    from tools import devstack

    policy = default_policy()
    store = ArchiveStore(devstack.s3_client(endpoint), policy.storage_settings())
    engine = RetentionEngine(policy, purpose, dsn, store, lock_timeout=5)
    if step != "none":
        arm(engine, step, occurrence)
    ctx = RunContext(purpose, run_id, dt.datetime.fromisoformat(logical), batch_size=batch_size)
    if op == "archive":
        outcomes = engine.archive_and_delete(ctx)
        print("deleted", sum(o.deleted for o in outcomes))
    elif op == "purge":
        print("purge", engine.purge_archives(ctx))
    else:
        raise SystemExit(f"unknown op {op!r}")
    return 0


def serve() -> int:
    import base64
    import tempfile

    import retention.archive.engine  # noqa: F401 - the slow imports, once, before any fork

    import tools.devstack  # noqa: F401

    for line in sys.stdin:
        args = line.rstrip("\n").split("\t")
        with tempfile.TemporaryFile() as out:
            pid = os.fork()
            if pid == 0:  # the worker: runs the call, dies at the step (or exits)
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                code = 1
                try:
                    code = main(args)
                except BaseException:  # noqa: BLE001 - reported through the output
                    import traceback

                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.seek(0)
            sys.stdout.write(f"{rc} {base64.b64encode(out.read()).decode()}\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
