"""The two commands install the Debian packages they need (tools/system_packages.sh), or say the
one command to run: as root with apt-get they install; otherwise they stop and print it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "system_packages.sh"


def run(*args: str, user: str | None = None, path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": path or os.environ["PATH"], "LANG": "C"}
    command = [shutil.which("bash"), str(SCRIPT), *args]
    if user:
        command = [shutil.which("runuser"), "-u", user, "--", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_nothing_to_do_when_the_packages_are_there():
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL server binaries absent on this machine")
    result = run("postgresql")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to act as another user")
def test_without_root_the_command_to_run_is_printed(tmp_path):
    # A PATH where chromium and redis-server cannot be found, run as an unprivileged user.
    (tmp_path / "bin").mkdir()
    for tool in ("bash", "ls", "id"):
        (tmp_path / "bin" / tool).symlink_to(shutil.which(tool))
    result = run("chromium", "redis", user="nobody", path=str(tmp_path / "bin"))
    assert result.returncode == 1
    assert "sudo apt-get install -y chromium redis-server" in result.stderr


def test_an_unknown_package_is_refused():
    result = run("postgres")
    assert result.returncode == 2 and "unknown package 'postgres'" in result.stderr
