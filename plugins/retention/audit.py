"""The audit trail a data-protection officer can verify (docs/audit.md).

The database chains every row of ``retention.audit_log``, and every row of
``retention.subject_requests`` once final (include/sql/schema/040_audit_chain.sql): a link per
row in ``retention.audit_chain`` with the row's hash and the chain hash (SHA-256 of the previous
link's chain hash, the link's position and the row's hash). This module checks it from outside
the database:

- ``verify`` recomputes every hash here, in Python, from the rows themselves (not from anything
  the database computed), and names the first row changed, removed or inserted out of place;
  then compares the chain with the heads stored in the archive bucket under Object Lock, so a
  database superuser who rewrites the whole chain is caught too;
- ``write_chain_head`` stores each chain's head there (daily, from the housekeeping DAG), under
  Object Lock COMPLIANCE for the audit's period.

    python -m retention.audit verify --dsn URL [--no-heads] [--record]
    python -m retention.audit write-head --dsn URL

Exit status of verify: 0 when every chain is intact, 1 otherwise (the first problem is printed
first). Reads ids, counts, keys and hashes only: the rows hold no personal data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CHAINS = ("audit_log", "subject_requests")
# Where the heads go in the archive bucket: <prefix>/<chain>/<seq, 20 digits>-<UTC time>.json.
HEAD_PREFIX = "audit-chain"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

# The columns each chain's rows are hashed over, in order (040_audit_chain.sql: the same order).
_AUDIT_LOG_COLUMNS = (
    "id",
    "run_id",
    "logical_date",
    "purpose",
    "rule",
    "table_name",
    "action",
    "record_count",
    "byte_count",
    "object_key",
    "record_ids_sha256",
    "at",
)
_SUBJECT_REQUEST_COLUMNS = (
    "request_id",
    "action",
    "subject_kind",
    "subject_ref",
    "received_at",
    "respond_by",
    "state",
    "run_id",
    "reports",
    "created_at",
    "finished_at",
)
_TIMES = {"logical_date", "at", "received_at", "respond_by", "created_at", "finished_at"}


class AuditError(RuntimeError):
    """The chain's head could not be stored as it must be."""


# ------------------------------------------------------------------ the canonical content


def _field(value: str | None) -> str:
    """``<length in bytes>:<text>``, or ``~`` for NULL (retention.chain_field)."""
    return "~" if value is None else f"{len(value.encode())}:{value}"


def _text(column: str, value) -> str | None:
    if value is None:
        return None
    if column in _TIMES:  # microseconds since the Unix epoch (retention.chain_time)
        return str((value - _EPOCH) // _MICROSECOND)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


def row_content(chain: str, row: dict) -> str:
    """The text the database hashed for a row of ``chain`` (jsonb as the database prints it)."""
    columns = _AUDIT_LOG_COLUMNS if chain == "audit_log" else _SUBJECT_REQUEST_COLUMNS
    return chain + "".join(_field(_text(c, row[c])) for c in columns)


def row_hash(chain: str, row: dict) -> bytes:
    return hashlib.sha256(row_content(chain, row).encode()).digest()


def genesis(chain: str) -> bytes:
    return hashlib.sha256(f"retention audit chain {chain}".encode()).digest()


def link_hash(previous: bytes, seq: int, row_digest: bytes) -> bytes:
    return hashlib.sha256(previous + seq.to_bytes(8, "big", signed=True) + row_digest).digest()


def ids_digest(ids_text: str | None) -> bytes | None:
    """The digest of an id list, from its text as PostgreSQL prints it (``{1,2,3}``)."""
    return None if ids_text is None else hashlib.sha256(ids_text.encode()).digest()


# ------------------------------------------------------------------ verification


@dataclass
class Problem:
    chain: str
    row: str | None  # the row's id (audit_log) or request id (subject_requests)
    seq: int | None
    what: str

    def __str__(self) -> str:
        return self.what


@dataclass
class ChainReport:
    chain: str
    links: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    checkpoint: dict | None = None
    heads_compared: int = 0
    heads_before_checkpoint: int = 0
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "links": self.links,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "checkpoint": self.checkpoint,
            "heads_compared": self.heads_compared,
            "heads_before_checkpoint": self.heads_before_checkpoint,
            "problems": len(self.problems),
        }


@dataclass
class Verification:
    chains: dict[str, ChainReport]
    heads_read: bool
    checked_at: dt.datetime

    @property
    def problems(self) -> list[Problem]:
        return [p for report in self.chains.values() for p in report.problems]

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def message(self) -> str:
        if self.problems:
            first = self.problems[0]
            more = len(self.problems) - 1
            return f"BROKEN: {first}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
        counts = ", ".join(f"{c} {r.links} links (up to seq {r.last_seq})" for c, r in self.chains.items())
        heads = "" if self.heads_read else "; chain heads in the archive NOT compared"
        return f"intact: {counts}{heads}"


def _row_name(chain: str, key: str | None) -> str:
    return f"{chain} row {'id ' if chain == 'audit_log' else 'request_id '}{key}"


# The policy's own record whose period each chain is pruned after (retention.prune_audit).
_CHAIN_RECORDS = {"audit_log": "audit_log", "subject_requests": "subject_request_evidence"}
# The slack retention.check_cut gives a cut (calendar months), and a day for the time of day.
_PRUNE_SLACK = dt.timedelta(days=5)


def prunable_until(policy, chain: str, now: dt.datetime) -> dt.datetime:
    """The latest a link may have been chained for a prune to have removed it by ``now``: a cut
    is at most the chain's period (the policy's ``own_records``) before the prune, give or take
    retention.check_cut's four days."""
    period = policy.own_period(_CHAIN_RECORDS[chain])
    start = period.latest_start(now.astimezone(dt.UTC).date())
    return dt.datetime.combine(start, dt.time(), dt.UTC) + _PRUNE_SLACK


def _pruned_too_early(store, policy, chain: str, now: dt.datetime):
    """Whether the link a stored head names, removed by a prune, was chained too recently for
    any prune to have removed it: within the chain's period in the policy, and within the period
    in force when the head was written (its own Object Lock runs that long: a period lengthened
    since does not make an earlier prune look early)."""
    bound = prunable_until(policy, chain, now)

    def check(head: dict) -> bool:
        chained = head.get("chained_at")
        if not chained or dt.datetime.fromisoformat(chained) < bound:
            return False
        _, until = store.locked_until(head["key"], head.get("version_id"))
        if until is None:
            return True
        kept = until - dt.datetime.fromisoformat(head["written_at"])
        return dt.datetime.fromisoformat(chained) >= now - kept + _PRUNE_SLACK + dt.timedelta(days=1)

    return check


def verify(conn, store=None, now: dt.datetime | None = None, policy=None) -> Verification:
    """Recompute both chains from the rows, in one snapshot; with a ``store``, compare them with
    the heads stored in the archive bucket (a head naming a link a prune removed: that link was
    past the chain's period in ``policy``, default the shipped one). Never raises on a broken
    chain: the result says."""
    from psycopg.pq import TransactionStatus

    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("verify reads one snapshot of its own: pass a connection outside a transaction")
    now = now or dt.datetime.now(dt.UTC)
    # The stored heads first: every head names links committed before the snapshot below.
    heads = stored_heads(store) if store is not None else {}
    if heads and policy is None:
        from retention.policy import default_policy

        policy = default_policy()
    reports = {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for chain in CHAINS:
            too_early = _pruned_too_early(store, policy, chain, now) if heads.get(chain) else None
            reports[chain] = _verify_chain(conn, chain, heads.get(chain, []), too_early)
    return Verification(reports, store is not None, now)


def _verify_chain(conn, chain: str, heads: list[dict], pruned_too_early=None) -> ChainReport:
    report = ChainReport(chain)
    problems = report.problems
    checkpoints = conn.execute(
        "SELECT seq, chain_hash, first_seq, links_removed, rows_removed, first_at, last_at, cut_before, created_at"
        " FROM retention.audit_checkpoints WHERE chain = %s ORDER BY seq",
        (chain,),
    ).fetchall()
    known_checkpoints = {row[0]: bytes(row[1]) for row in checkpoints}
    if checkpoints:
        seq, digest, first_seq, links, rows, first_at, last_at, cut, created = checkpoints[-1]
        start_seq, previous = seq, bytes(digest)
        report.checkpoint = {
            "seq": seq,
            "links_removed_total": sum(c[3] for c in checkpoints),
            "last_cut_before": cut.isoformat(),
            "covered_until": last_at.isoformat() if last_at else None,
            "created_at": created.isoformat(),
        }
    else:
        start_seq, previous = 0, genesis(chain)
    # A prune removes every link up to its checkpoint: one still there means a checkpoint written
    # without its prune, which would hide the rows before it from this verification (found by a
    # review: a changed row kept in the audit behind a forged checkpoint verified).
    for seq, key in conn.execute(
        "SELECT seq, row_key FROM retention.audit_chain WHERE chain = %s AND seq <= %s ORDER BY seq LIMIT 5",
        (chain, start_seq),
    ):
        problems.append(
            Problem(
                chain,
                key,
                seq,
                f"{_row_name(chain, key)} (seq {seq}) is still chained at or before the checkpoint (seq {start_seq}): "
                "a checkpoint was written without its prune",
            )
        )
    # The heads stored in the archive: which link each names, and with which hash.
    wanted: dict[int, list[dict]] = {}
    for head in heads:
        # A link at or before the checkpoint was removed by a prune: chained past the chain's
        # period, or the checkpoint hides rows removed early (found by a review: rows written
        # this week removed with their links behind a checkpoint copying the last one's hash).
        if checkpoints and 0 < head["seq"] <= start_seq and pruned_too_early is not None:
            if pruned_too_early(head):
                problems.append(
                    Problem(
                        chain,
                        None,
                        head["seq"],
                        f"{chain}: the link at seq {head['seq']} named by the head stored in the archive on "
                        f"{head['written_at']} was chained on {head['chained_at']}, within the chain's period: no "
                        f"prune may have removed it, yet the chain starts after the checkpoint at seq {start_seq} "
                        "(rows removed)",
                    )
                )
        if head["seq"] < start_seq:
            report.heads_before_checkpoint += 1
        elif head["seq"] == start_seq:
            report.heads_compared += 1
            if bytes.fromhex(head["chain_hash"]) != previous:
                problems.append(
                    Problem(
                        chain,
                        None,
                        start_seq,
                        f"{chain}: the chain's start (seq {start_seq}) differs from the head stored in the archive on "
                        f"{head['written_at']}: the chain was rewritten",
                    )
                )
        else:
            wanted.setdefault(head["seq"], []).append(head)
        named = head.get("checkpoint")
        if named and known_checkpoints.get(named["seq"]) != bytes.fromhex(named["chain_hash"]):
            problems.append(
                Problem(
                    chain,
                    None,
                    named["seq"],
                    f"{chain}: the checkpoint at seq {named['seq']} named by the head stored on {head['written_at']} "
                    "is missing or differs: the checkpoints were rewritten",
                )
            )

    expected_seq = start_seq + 1
    last_key = None
    for seq, key, stored_row_hash, stored_chain_hash, row, ids_text in _links(conn, chain, start_seq):
        report.links += 1
        report.first_seq = report.first_seq if report.first_seq is not None else seq
        stored_row_hash, stored_chain_hash = bytes(stored_row_hash), bytes(stored_chain_hash)
        if seq != expected_seq:
            after = f"after {_row_name(chain, last_key)} (seq {expected_seq - 1})" if last_key else "at its start"
            problems.append(
                Problem(
                    chain,
                    key,
                    seq,
                    f"{chain}: links {expected_seq}..{seq - 1} are missing {after}, before {_row_name(chain, key)} "
                    f"(seq {seq}): rows removed",
                )
            )
        elif row is None:
            problems.append(Problem(chain, key, seq, f"{_row_name(chain, key)} (seq {seq}) was removed"))
        else:
            digest = row_hash(chain, row)
            if digest != stored_row_hash:
                problems.append(Problem(chain, key, seq, f"{_row_name(chain, key)} (seq {seq}) was changed"))
            elif link_hash(previous, seq, digest) != stored_chain_hash:
                problems.append(
                    Problem(
                        chain,
                        key,
                        seq,
                        f"{_row_name(chain, key)} (seq {seq}) does not follow the link before it: inserted out of "
                        "place, or the chain was rewritten",
                    )
                )
            elif chain == "audit_log" and ids_text is not None and ids_digest(ids_text) != row["record_ids_sha256"]:
                problems.append(
                    Problem(chain, key, seq, f"{_row_name(chain, key)} (seq {seq}): its record_ids were changed")
                )
        for head in wanted.pop(seq, []):
            report.heads_compared += 1
            if bytes.fromhex(head["chain_hash"]) != stored_chain_hash:
                problems.append(
                    Problem(
                        chain,
                        key,
                        seq,
                        f"{chain}: the chain at {_row_name(chain, key)} (seq {seq}) differs from the head stored in "
                        f"the archive on {head['written_at']}: the chain was rewritten",
                    )
                )
        # The next link follows this one as stored: one problem is reported once, not at every
        # link after it.
        previous, expected_seq, last_key = stored_chain_hash, seq + 1, key
    report.last_seq = expected_seq - 1

    head = conn.execute("SELECT seq, chain_hash FROM retention.audit_chain_heads WHERE chain = %s", (chain,)).fetchone()
    if head is not None and (head[0], bytes(head[1])) != (report.last_seq, previous):
        problems.append(
            Problem(
                chain,
                last_key,
                head[0],
                f"{chain}: the chain ends at seq {report.last_seq} but its head names seq {head[0]}: "
                + ("rows removed from its end" if head[0] > report.last_seq else "links written around the chain"),
            )
        )
    for seq in sorted(wanted):
        written = wanted[seq][0]["written_at"]
        problems.append(
            Problem(
                chain,
                None,
                seq,
                f"{chain}: the head stored in the archive on {written} names seq {seq}, the chain ends at seq "
                f"{report.last_seq}: rows removed from its end, or the chain was rewritten",
            )
        )
    for key in _unchained(conn, chain):
        problems.append(
            Problem(chain, key, None, f"{_row_name(chain, key)} is not in the chain: inserted out of place")
        )
    return report


def _links(conn, chain: str, after_seq: int):
    """(seq, row key, row hash, chain hash, the row or None, the ids' text) in chain order,
    streamed (a server-side cursor)."""
    if chain == "audit_log":
        columns = ", ".join(f"a.{c}" for c in _AUDIT_LOG_COLUMNS)
        query = (
            f"SELECT c.seq, c.row_key, c.row_hash, c.chain_hash, a.id IS NOT NULL, {columns}, a.record_ids::text"
            " FROM retention.audit_chain AS c LEFT JOIN retention.audit_log AS a ON a.id = c.row_key::bigint"
            " WHERE c.chain = 'audit_log' AND c.seq > %s ORDER BY c.seq"
        )
        names = _AUDIT_LOG_COLUMNS
    else:
        columns = ", ".join(f"r.{c}" + ("::text" if c == "reports" else "") for c in _SUBJECT_REQUEST_COLUMNS)
        query = (
            f"SELECT c.seq, c.row_key, c.row_hash, c.chain_hash, r.request_id IS NOT NULL, {columns}, NULL"
            " FROM retention.audit_chain AS c LEFT JOIN retention.subject_requests AS r ON r.request_id = c.row_key"
            " WHERE c.chain = 'subject_requests' AND c.seq > %s ORDER BY c.seq"
        )
        names = _SUBJECT_REQUEST_COLUMNS
    with conn.cursor(name=f"retention_audit_{chain}") as cur:
        cur.itersize = 2000
        cur.execute(query, (after_seq,))
        for seq, key, digest, chain_digest, found, *values in cur:
            row = dict(zip(names, values[:-1], strict=True)) if found else None
            if row is not None and row.get("record_ids_sha256") is not None:
                row["record_ids_sha256"] = bytes(row["record_ids_sha256"])
            yield seq, key, digest, chain_digest, row, values[-1]


def _unchained(conn, chain: str, limit: int = 20) -> list[str]:
    """Rows that should be in the chain and are not (at most ``limit``, oldest first)."""
    if chain == "audit_log":
        query = (
            "SELECT a.id::text FROM retention.audit_log AS a WHERE NOT EXISTS (SELECT 1 FROM retention.audit_chain"
            " AS c WHERE c.chain = 'audit_log' AND c.row_key = a.id::text) ORDER BY a.id LIMIT %s"
        )
    else:
        query = (
            "SELECT r.request_id FROM retention.subject_requests AS r WHERE r.state = 'done' AND NOT EXISTS ("
            "SELECT 1 FROM retention.audit_chain AS c WHERE c.chain = 'subject_requests'"
            " AND c.row_key = r.request_id) ORDER BY r.finished_at, r.request_id LIMIT %s"
        )
    return [row[0] for row in conn.execute(query, (limit,))]


def record_verification(conn, verification: Verification) -> None:
    """The result, for the Retention page (retention.audit_verifications)."""
    conn.execute(
        "INSERT INTO retention.audit_verifications (checked_at, intact, message, chains) VALUES (%s, %s, %s, %s)",
        (
            verification.checked_at,
            verification.intact,
            verification.message[:2000],
            json.dumps(
                {c: r.as_dict() for c, r in verification.chains.items()} | {"heads_read": verification.heads_read}
            ),
        ),
    )


def last_verification(conn) -> dict | None:
    row = conn.execute(
        "SELECT checked_at, intact, message FROM retention.audit_verifications ORDER BY checked_at DESC, id DESC"
        " LIMIT 1"
    ).fetchone()
    return None if row is None else {"checked_at": row[0], "intact": row[1], "message": row[2]}


# ------------------------------------------------------------------ chain heads in the archive


def head_retention(policy, now: dt.datetime) -> dt.datetime:
    """How long a head stays locked: the audit's own period (the policy's own_records.audit_log,
    never shorter than the longest archive period: retention.policy)."""
    from retention.policy.periods import local_midnight

    today = now.astimezone(policy.tz).date()
    until = policy.own_period("audit_log").add_to(today)
    return local_midnight(until + dt.timedelta(days=1), policy.tz)


def write_chain_head(store, conn, *, retain_until: dt.datetime | None = None, now: dt.datetime | None = None) -> list:
    """Store each chain's head (its last link, and the checkpoint it starts from) in the archive
    bucket, under Object Lock COMPLIANCE until ``retain_until`` (default: ``head_retention``).
    Returns what was written. Raises AuditError when the bucket has no Object Lock: a head that
    could be rewritten proves nothing."""
    from retention.policy import default_policy

    now = now or dt.datetime.now(dt.UTC)
    retain_until = retain_until or head_retention(default_policy(), now)
    if not store.lock_supported():
        raise AuditError(
            f"the archive bucket {store.archive_bucket!r} has no Object Lock: the audit chain's head cannot be "
            "stored where nobody can rewrite it (docs/audit.md)"
        )
    written = []
    with conn.transaction():
        for chain in CHAINS:
            head = conn.execute(
                "SELECT seq, chain_hash, chained_at FROM retention.audit_chain_heads WHERE chain = %s", (chain,)
            ).fetchone()
            seq, digest, chained_at = head if head else (0, genesis(chain), None)
            checkpoint = conn.execute(
                "SELECT seq, chain_hash FROM retention.audit_checkpoints WHERE chain = %s ORDER BY seq DESC LIMIT 1",
                (chain,),
            ).fetchone()
            body = {
                "chain": chain,
                "seq": seq,
                "chain_hash": bytes(digest).hex(),
                "chained_at": chained_at.isoformat() if chained_at else None,
                "written_at": now.isoformat(),
                "checkpoint": {"seq": checkpoint[0], "chain_hash": bytes(checkpoint[1]).hex()} if checkpoint else None,
            }
            key = f"{HEAD_PREFIX}/{chain}/{seq:020d}-{now.astimezone(dt.UTC):%Y%m%dT%H%M%S%fZ}.json"
            store.put_locked(key, json.dumps(body, sort_keys=True).encode(), retain_until)
            written.append({"key": key, "seq": seq, "retain_until": retain_until.isoformat()})
    return written


def stored_heads(store) -> dict[str, list[dict]]:
    """Every head stored in the archive bucket, per chain, oldest link first."""
    found: dict[str, list[dict]] = {}
    for key, versions in store.list_versions(f"{HEAD_PREFIX}/").items():
        for version in versions:
            if version.delete_marker:
                continue
            body = json.loads(store.read_version(key, version.version_id))
            found.setdefault(body["chain"], []).append(body | {"key": key, "version_id": version.version_id})
    for heads in found.values():
        heads.sort(key=lambda h: (h["seq"], h["written_at"]))
    return found


# ------------------------------------------------------------------ command line


def _store():
    import boto3

    from retention.archive.store import ArchiveStore, client_config
    from retention.policy import default_policy

    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=client_config())
    return ArchiveStore(client, default_policy().storage_settings())


def main(argv: list[str] | None = None) -> int:
    import psycopg

    parser = argparse.ArgumentParser(prog="python -m retention.audit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="recompute the chains; exit 1 when one is broken")
    check.add_argument("--no-heads", action="store_true", help="do not compare with the heads stored in the archive")
    check.add_argument("--record", action="store_true", help="record the result for the Retention page")
    commands.add_parser("write-head", help="store the chains' heads in the archive bucket under Object Lock")
    for command in commands.choices.values():
        command.add_argument("--dsn", default=os.environ.get("SOURCE_DSN"), help="libpq URI of the source database")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or SOURCE_DSN) is required")
    with psycopg.connect(args.dsn) as conn:
        if args.command == "write-head":
            for head in write_chain_head(_store(), conn):
                print(f"stored {head['key']} (locked until {head['retain_until']})")
            return 0
        result = verify(conn, None if args.no_heads else _store())
        if args.record:
            record_verification(conn, result)
            conn.commit()
    print(result.message)
    for problem in result.problems[1:20]:
        print(f"  also: {problem}")
    for chain, report in result.chains.items():
        print(f"  {chain}: {json.dumps(report.as_dict(), sort_keys=True)}")
    return 0 if result.intact else 1


if __name__ == "__main__":
    sys.exit(main())
