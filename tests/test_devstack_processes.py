"""How the local stack (tools/devstack.py) stops what it started, on real processes: a process
killed alone (``kill -9`` on a Celery worker's main process, as a user simulates a lost machine)
leaves its children alive in its process group; ``make down`` and the next ``make demo`` end
them instead of leaving them running after the stack is gone."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import psutil
import pytest

from tools import devstack

# A leader with a child in its group, as a Celery worker and its pool.
LEADER_AND_CHILD = ["bash", "-c", "sleep 300 & wait"]


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def killed_alone(tmp_path):
    """A process started as _spawn starts a worker, then SIGKILL to it alone: (config, its child)."""
    config = SimpleNamespace(state=tmp_path)
    pid = devstack._spawn(config, "worker9", LEADER_AND_CHILD, dict(os.environ))
    leader = psutil.Process(pid)
    for _ in range(100):
        if leader.children():
            break
        time.sleep(0.05)
    (child,) = leader.children()
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([leader], timeout=10)
    try:
        yield config, child
    finally:
        if alive(child):
            child.kill()


def test_status_says_stopped_and_down_ends_what_the_killed_process_left(killed_alone, capsys):
    config, child = killed_alone
    assert devstack._running_pid(config, "worker9") is None, "status: stopped"
    assert alive(child), "orphaned, still running"
    devstack._stop(config, "worker9")
    psutil.wait_procs([child], timeout=10)
    assert not alive(child)
    assert "stopped 1 process(es) left by worker9" in capsys.readouterr().out
    assert not devstack._pid_file(config, "worker9").exists()


def test_starting_again_ends_what_the_killed_process_left(killed_alone):
    config, child = killed_alone
    pid = devstack._spawn(config, "worker9", LEADER_AND_CHILD, dict(os.environ))
    try:
        psutil.wait_procs([child], timeout=10)
        assert not alive(child)
        assert devstack._running_pid(config, "worker9") == pid
    finally:
        devstack._stop(config, "worker9", grace=5)
    assert not devstack._pid_file(config, "worker9").exists()
