"""A real `airflow api-server` (uvicorn, the plugins loaded, SimpleAuthManager) on a free loopback
port, on the test session's metadata database and connections. Started once per session
(tests/conftest.py `api_server`): its start costs ~15 s."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools import devstack

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ApiServer:
    url: str
    passwords: dict[str, str]  # user name -> password
    data_docs: Path | None = None  # the Data Docs folder it serves (RETENTION_DATA_DOCS_DIR), if on


@contextlib.contextmanager
def running_api_server(home: Path, roles: dict[str, str], data_docs: Path | None = None) -> Iterator[ApiServer]:
    """``roles``: user name -> SimpleAuthManager role (viewer, op, admin...); ``data_docs``: the
    gates' Data Docs folder it serves (else the session's setting: off)."""
    passwords = {user: secrets.token_urlsafe(12) for user in roles}
    passwords_file = home / "passwords.json"
    passwords_file.write_text(json.dumps(passwords))
    port = devstack.free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{user}:{role}" for user, role in roles.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__WEBSERVER__EXPOSE_CONFIG": "False",
        "PYTHONPATH": f"{REPO_ROOT / 'plugins'}:{REPO_ROOT}",
    }
    if data_docs is not None:
        env["RETENTION_DATA_DOCS_DIR"] = str(data_docs)
    log = home / "api-server.log"
    cmd = [str(Path(sys.executable).parent / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd + ["--workers", "1"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=home)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"api-server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        devstack.wait_until(healthy, 120, "the Airflow api-server", log)
        yield ApiServer(url, passwords, data_docs)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
