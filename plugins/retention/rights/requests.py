"""Data-subject requests as received: what a valid request looks like (the checks, and
``SubjectRequest``, the request as it runs), and the inbox that holds a request's identifiers
while it needs them, so that Airflow never stores them.

Airflow keeps a run's conf in its metadata database for as long as the run exists and shows it
to every user who can read the DAG. A request by e-mail is therefore recorded here first, in
``retention.subject_request_inbox`` (the project's own database), and its run is triggered with
its request id alone (``{"request_id": ..., "preview": ...}``): by the Retention page's form, or by

    python -m retention.rights.requests submit --dsn URI --request-id DSR-2024-0042 \\
        --action erasure --email -          # the address is read from stdin (not in shell history)

which prints the request id, then the REST trigger (docs/subject-requests.md). The run
reads the request from the inbox; once it is done, the address is replaced by its keyed hash
(retention.identifiers), and an unfinished request's address goes the same way 3 months after
it was recorded (the longest response period, Art. 12(3)).

Light: no pyarrow or engine import (the api-server's form uses it; the archive's store module
is light); psycopg only when connecting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from retention import identifiers
from retention.archive.store import safe_key_part
from retention.identifiers import normalise_email
from retention.rights import suppression

ACTIONS = ("access", "erasure")
ID_KINDS = ("customer", "prospect", "candidate")
SUBJECT_KINDS = (*ID_KINDS, "email")
# A request id names the export's key (exports/<id>/) and the audit run id: a letter or digit
# required, so "." and ".." (a path segment a browser or S3 client normalises away) are refused.
REQUEST_ID_PATTERN = r"^(?=.*[A-Za-z0-9])[A-Za-z0-9._=-]{1,100}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
MAX_EMAIL_LENGTH = 254  # RFC 5321's path limit
MAX_BIGINT = 2**63 - 1
# An unfinished request's address is replaced by its hash this long after it was recorded: the
# response period is one month, extended by two more at most (Art. 12(3)).
KEEP_UNFINISHED = dt.timedelta(days=92)
PARIS = ZoneInfo("Europe/Paris")
# The advice every refusal of an address in a run's conf gives.
NEW_ROUTE = (
    "an address never goes in a run's conf (Airflow keeps it, and shows it to every reader of the DAG): "
    "record the request on the Retention page (form 'Data-subject request') or with "
    "`python -m retention.rights.requests submit`, then trigger the DAG with its request_id alone"
)


class SubjectRequestError(RuntimeError):
    """The request is invalid or refused (a retry would not help); the message says why and
    never repeats an identifier's value."""


def check_request_id(request_id) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise SubjectRequestError(
            "request_id must be 1 to 100 characters among letters, digits and . _ = -, with at least one "
            "letter or digit (not '.' or '..')"
        )
    return request_id


def check_email(email) -> str:
    """The normalised address; refuses what cannot be one (no value repeated in the message)."""
    if not isinstance(email, str) or not email.strip():
        raise SubjectRequestError("a request by e-mail needs the address")
    if any(ord(c) < 32 or ord(c) == 127 for c in email):
        raise SubjectRequestError("the e-mail address holds a control character (a NUL, a line break...)")
    address = normalise_email(email)
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or len(address) > MAX_EMAIL_LENGTH or any(c.isspace() for c in address):
        raise SubjectRequestError("a request by e-mail needs one address (name@domain, no spaces, 254 characters)")
    return address


def check_subject_id(subject_id, kind: str) -> int:
    if isinstance(subject_id, bool) or not isinstance(subject_id, int) or not 1 <= subject_id <= MAX_BIGINT:
        raise SubjectRequestError(f"a request for a {kind} needs its id (a positive integer)")
    return subject_id


def check_subject(action, kind, subject_id, email) -> None:
    if action not in ACTIONS:
        raise SubjectRequestError(f"action must be one of {ACTIONS}")
    if kind not in SUBJECT_KINDS:
        raise SubjectRequestError(f"subject kind must be one of {SUBJECT_KINDS}")
    if kind == "email":
        check_email(email)
        if subject_id is not None:
            raise SubjectRequestError("a request by e-mail takes no subject id")
    else:
        check_subject_id(subject_id, kind)
        if email is not None:
            raise SubjectRequestError(f"a request for a {kind} takes its id, not an address")


def refuse_identifiers_in_conf(conf: dict | None) -> None:
    """A run's conf names a request, never a person by address."""
    conf = conf or {}
    if (
        conf.get("email")
        or conf.get("subject_kind") == "email"
        or any(isinstance(v, str) and "@" in v for v in conf.values())
    ):
        raise SubjectRequestError(NEW_ROUTE)


# ---------------------------------------------------------------------- the request as it runs


@dataclass(frozen=True)
class SubjectRequest:
    """A request as it runs (retention.rights.subject_rights), checked when it is made."""

    request_id: str
    action: str
    kind: str
    received_at: dt.datetime
    subject_id: int | None = None
    email: str | None = field(default=None, repr=False)  # never in a log line or a traceback
    preview: bool = True
    marketing_objection: bool = False
    run_id: str = ""

    def __post_init__(self) -> None:
        # Refused before anything is read or written (a NUL would reach PostgreSQL as a DataError).
        check_request_id(self.request_id)
        if safe_key_part(self.request_id) != self.request_id:
            raise SubjectRequestError("request_id must not start or end with '_'")
        check_subject(self.action, self.kind, self.subject_id, self.email)
        if self.received_at.tzinfo is None:
            raise SubjectRequestError("received_at must be timezone-aware")

    @property
    def audit_run_id(self) -> str:
        """The run id of the request's rows in the audit log, file disposals and manifest."""
        return f"subject_request__{self.request_id}"

    @property
    def subject_ref(self) -> str:
        """What the evidence says about the subject: an id, or the address's keyed hash."""
        if self.kind != "email":
            return str(self.subject_id)
        try:
            return identifiers.email_ref(self.email)
        except identifiers.IdentifierKeyError as exc:
            raise SubjectRequestError(str(exc)) from exc

    @property
    def subject_refs(self) -> set[str]:
        """The references an earlier run of this request may have recorded: also the plain SHA-256
        of the address that releases before the keyed hash recorded."""
        legacy = {f"sha256:{suppression.email_hash(self.email)}"} if self.kind == "email" else set()
        return {self.subject_ref} | legacy


# ---------------------------------------------------------------------- the inbox


@dataclass(frozen=True)
class Received:
    """A request as the inbox holds it (``email`` is None once cleared)."""

    request_id: str
    action: str
    kind: str
    subject_id: int | None
    email: str | None
    received_on: dt.date
    marketing_objection: bool
    cleared: bool

    def received_at(self) -> dt.datetime:
        """Noon, Paris time, of the day received (the response is due one month later)."""
        return dt.datetime.combine(self.received_on, dt.time(12), tzinfo=PARIS).astimezone(dt.UTC)


_COLUMNS = (
    "request_id, action, subject_kind, subject_id, email, received_on, marketing_objection, identifiers_cleared_at"
)


def _received(row) -> Received:
    request_id, action, kind, subject_id, email, received_on, objection, cleared_at = row
    return Received(request_id, action, kind, subject_id, email, received_on, objection, cleared_at is not None)


def submit(
    conn,
    *,
    request_id: str,
    action: str,
    kind: str,
    subject_id: int | None = None,
    email: str | None = None,
    received_on: dt.date | None = None,
    marketing_objection: bool = False,
    submitted_by: str,
) -> Received:
    """Record a request (validated first; nothing written when refused). Submitting the same
    request again is accepted (to trigger its next run, e.g. after the preview); the same id with
    anything else, or for a finished request, is refused."""
    check_request_id(request_id)
    check_subject(action, kind, subject_id, email)
    if marketing_objection and action != "erasure":
        raise SubjectRequestError("a marketing objection goes with an erasure request")
    address = check_email(email) if kind == "email" else None
    received_on = received_on or dt.datetime.now(PARIS).date()
    if received_on > dt.datetime.now(PARIS).date():
        raise SubjectRequestError("received_on is in the future")
    with conn.transaction():
        existing = conn.execute(
            f"SELECT {_COLUMNS} FROM retention.subject_request_inbox WHERE request_id = %s FOR UPDATE", (request_id,)
        ).fetchone()
        evidence = conn.execute(
            "SELECT state FROM retention.subject_requests WHERE request_id = %s", (request_id,)
        ).fetchone()
        if existing is None:
            if evidence is not None:
                raise SubjectRequestError(f"request id {request_id!r} is already used; choose a new one")
            conn.execute(
                "INSERT INTO retention.subject_request_inbox (request_id, action, subject_kind, subject_id, email,"
                " received_on, marketing_objection, submitted_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (request_id, action, kind, subject_id, address, received_on, marketing_objection, submitted_by),
            )
            return Received(request_id, action, kind, subject_id, address, received_on, marketing_objection, False)
        known = _received(existing)
        if known.cleared or (evidence is not None and evidence[0] == "done"):
            raise SubjectRequestError(f"request {request_id!r} is finished; a new request needs a new id")
        if (known.action, known.kind, known.subject_id, known.email, known.received_on, known.marketing_objection) != (
            action,
            kind,
            subject_id,
            address,
            received_on,
            marketing_objection,
        ):
            raise SubjectRequestError(
                f"request {request_id!r} was recorded with another action, subject or date; use a new request id"
            )
        return known


def load(conn, request_id: str) -> Received | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM retention.subject_request_inbox WHERE request_id = %s", (request_id,)
    ).fetchone()
    return _received(row) if row else None


CLEAR_SQL = (
    "UPDATE retention.subject_request_inbox SET email = NULL, subject_ref = %s, identifiers_cleared_at = now()"
    " WHERE request_id = %s AND identifiers_cleared_at IS NULL"
)


def clear_identifiers(conn, request_id: str, subject_ref: str) -> None:
    """The request is done: its address is replaced by the evidence's reference (a keyed hash)."""
    conn.execute(CLEAR_SQL, (subject_ref, request_id))


def clear_unfinished(conn, now: dt.datetime) -> int:
    """Addresses of requests recorded more than 3 months ago and never finished: replaced by their
    keyed hash (or dropped when no key is configured). Returns how many."""
    from retention import identifiers

    rows = conn.execute(
        "SELECT request_id, email FROM retention.subject_request_inbox"
        " WHERE identifiers_cleared_at IS NULL AND submitted_at < %s",
        (now - KEEP_UNFINISHED,),
    ).fetchall()
    with_key = identifiers.identifier_key(required=False) is not None
    for request_id, email in rows:
        ref = identifiers.email_ref(email) if email and with_key else None
        conn.execute(CLEAR_SQL, (ref, request_id))
    return len(rows)


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    import psycopg

    parser = argparse.ArgumentParser(description="Record a data-subject request; prints its request id.")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("submit", help="record a request in retention.subject_request_inbox")
    sub.add_argument("--dsn", default=os.environ.get("SOURCE_DSN"), help="libpq URI of the source database")
    sub.add_argument("--request-id", required=True, help="your reference, e.g. DSR-2024-0042")
    sub.add_argument("--action", required=True, choices=ACTIONS)
    who = sub.add_mutually_exclusive_group(required=True)
    who.add_argument("--email", help="the address; '-' reads it from stdin (kept out of shell history)")
    for kind in ID_KINDS:
        who.add_argument(f"--{kind}", type=int, metavar="ID", help=f"a {kind} id")
    sub.add_argument("--received-on", type=dt.date.fromisoformat, help="YYYY-MM-DD (default: today)")
    sub.add_argument("--marketing-objection", action="store_true", help="erasure: also object to marketing")
    sub.add_argument("--submitted-by", default=os.environ.get("USER", "cli"), help="who records it")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or SOURCE_DSN) is required")
    email = sys.stdin.readline().rstrip("\r\n") if args.email == "-" else args.email
    kind, subject_id = next(((k, getattr(args, k)) for k in ID_KINDS if getattr(args, k) is not None), ("email", None))
    try:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            received = submit(
                conn,
                request_id=args.request_id,
                action=args.action,
                kind=kind,
                subject_id=subject_id,
                email=email if kind == "email" else None,
                received_on=args.received_on,
                marketing_objection=args.marketing_objection,
                submitted_by=args.submitted_by,
            )
    except SubjectRequestError as exc:
        sys.exit(f"refused: {exc}")
    print(received.request_id)
    print(
        "trigger its run (preview first) with the request id alone, e.g.:\n"
        "  curl -X POST $AIRFLOW_URL/api/v2/dags/retention_subject_requests/dagRuns"
        ' -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json"'
        f' -d \'{{"logical_date": null, "conf": {{"request_id": "{received.request_id}", "preview": true}}}}\'',
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
