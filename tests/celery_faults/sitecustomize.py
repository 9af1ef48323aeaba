"""A pause point in the archive units of the Celery stack tests (tests/test_celery_stack.py),
loaded by the workers' Python because the test puts this folder first on their PYTHONPATH;
the engine's code reads no test setting.

When ``RETENTION_TEST_FAULT_DIR`` is set, the engine's modules are wrapped as they are imported:
``ArchiveStore.put_verified`` (an object uploaded and read back; the rows not deleted) and
``BatchProtocol._delete_rows`` (DELETE, manifest and audit written; the transaction not
committed). The test arms a step by writing ``<dir>/<step>.armed`` containing N; the task
process that reaches the step for the N-th time first claims it (an atomic rename to
``<step>.paused``), writes its PID there and sleeps until the test kills its worker with
SIGKILL. Every other process, and the retry, passes through.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import time
from pathlib import Path

FAULT_DIR = os.environ.get("RETENTION_TEST_FAULT_DIR")
# module -> (class, method, step)
WRAPPED = {
    "retention.archive.store": ("ArchiveStore", "put_verified", "after_upload"),
    "retention.archive.protocol": ("BatchProtocol", "_delete_rows", "after_delete"),
}
_seen: dict[str, int] = {}


def _maybe_pause(step: str) -> None:
    folder = Path(FAULT_DIR)
    armed = folder / f"{step}.armed"
    if not armed.exists():
        return
    _seen[step] = _seen.get(step, 0) + 1
    try:
        if _seen[step] != int(armed.read_text() or 1):
            return
        paused = folder / f"{step}.paused"
        os.rename(armed, paused)  # one process only
    except (FileNotFoundError, ValueError):
        return
    paused.write_text(json.dumps({"pid": os.getpid(), "worker": os.environ.get("DEVSTACK_CELERY_WORKER")}))
    while True:  # until the test kills the worker
        time.sleep(1)


def _wrap(module) -> None:
    cls_name, method, step = WRAPPED[module.__name__]
    cls = getattr(module, cls_name)
    original = getattr(cls, method)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        _maybe_pause(step)
        return result

    setattr(cls, method, wrapper)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in WRAPPED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _wrap(module)

        spec.loader.exec_module = exec_module
        return spec


if FAULT_DIR:
    sys.meta_path.insert(0, _Finder())
