"""What the steps of one data-subject request share: the policy, the archive store, the coverage
graph (what belongs to whom), the connections to the source database, and the archive objects
read back once per request.

A ``RequestContext`` is made for each request (retention.rights.subject_rights), so that an
object read back by one request is never served to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import psycopg
import pyarrow as pa

from retention.archive import rewrite as object_rewrite
from retention.archive.db import connect
from retention.archive.store import ArchiveStore
from retention.policy import Policy
from retention.policy.coverage import parents_of

# How long a request waits for a purpose's advisory lock (a retention run of the purpose).
PURPOSE_LOCK_TIMEOUT = 60.0


@dataclass
class RequestContext:
    """One request's policy, store and lock timeout, and the objects it has read back."""

    policy: Policy
    dsn: str
    store: ArchiveStore
    lock_timeout: float = PURPOSE_LOCK_TIMEOUT
    parents: dict[str, list[tuple[str, str]]] = field(init=False)  # the coverage graph's links up
    _read: dict[tuple[str, str | None, str], pa.Table] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.parents = parents_of(self.policy)

    @property
    def schema(self) -> str:
        return self.policy.source_schema

    @property
    def tz(self) -> ZoneInfo:
        return self.policy.tz

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        return connect(self.dsn, "retention:subject_request", autocommit)

    @property
    def objects_read(self) -> list[tuple[str, str | None, str]]:
        """(key, version id, SHA-256) of every archive object the request has read back."""
        return list(self._read)

    def read_object(self, key: str, version: str | None, sha256: str) -> pa.Table:
        """An object's rows, read back once per request (checked against the manifest's SHA-256)."""
        if (key, version, sha256) not in self._read:
            self._read[(key, version, sha256)] = object_rewrite.read_object(self.store, key, version, sha256)
        return self._read[(key, version, sha256)]
