"""A throwaway PostgreSQL cluster and S3 server (moto) for one bench run, on free loopback ports.

The same building blocks as the tests and the demo (tools.devstack); state lives in a temporary
folder that is removed at the end. Only the processes started here are stopped.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tools import devstack


@dataclass
class BenchStack:
    root: Path
    pg: devstack.Postgres
    s3: devstack.S3Server

    @property
    def dsn(self) -> str:
        return self.pg.dsn(devstack.SOURCE_DB)

    def database_dsn(self, name: str) -> str:
        return self.pg.dsn(name)

    @property
    def s3_endpoint(self) -> str:
        return self.s3.endpoint_url

    def s3_client(self):
        return devstack.s3_client(self.s3_endpoint)

    def fresh_buckets(self, tag: str) -> tuple[str, str]:
        """Empty the S3 server (moto keeps every object in its memory) and create two new buckets.

        Fresh buckets rather than emptied ones, as in the tests: the archive bucket has Object Lock."""
        req = urllib.request.Request(self.s3_endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=30).read()
        archive, documents = f"bench-archive-{tag}", f"bench-documents-{tag}"
        devstack.ensure_buckets(self.s3_client(), archive, documents)
        return archive, documents


def start(keep: bool = False) -> BenchStack:
    root = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    root.chmod(0o755)  # the postgres system user must reach its data folder inside
    pg = devstack.Postgres(root / "pg", devstack.free_port(), secrets.token_urlsafe(12))
    s3 = devstack.S3Server(devstack.free_port(), root / "moto.log")
    stack = BenchStack(root, pg, s3)
    try:
        pg.start()
        pg.ensure_database(devstack.SOURCE_DB)
        s3.start()
    except BaseException:
        stop(stack)
        raise
    return stack


def stop(stack: BenchStack) -> None:
    try:
        stack.s3.stop()
    finally:
        try:
            stack.pg.stop()
        finally:
            shutil.rmtree(stack.root, ignore_errors=True)
