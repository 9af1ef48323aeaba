"""Data-subject requests: access / portability (Art. 15, 20) and erasure (Art. 17), across the
live database and both archive tiers.

Finding everything of a subject uses the one definition of "what belongs to whom" that legal
holds use (the policy's ``legal_holds.covers``): from the subject's own row (a customer, a
prospect, a job application, or every row whose ``email`` column matches an address), down
through every covered table, in the live tables and in the archive. Archive objects are found
through the manifest's ``owner_ids`` (GIN index): every object holding a row that belongs to
the subject records the subject among its owners (retention.policy.coverage.owners_of_rows), so only
those objects are read; their rows are then filtered the same way as the live ones. By e-mail,
the archived rows holding the address are found too, through the keyed hashes each object
records of its rows' e-mails (``identifier_hashes``, retention.identifiers), so that someone
known only by archived rows is found.

Every record found is reported with its purpose, legal basis and its own end date (its clock
under its rule, the policy's words while the clock has not started), never the date of the
archive object it shares with other people's rows.

What may be erased is decided per record from the policy, and when in doubt the record stays
and is reported (the project's first promise: never delete a record that must be kept):

- kept: a record under a legal hold; a record whose legal basis (its rule's, else its
  purpose's) is a legal obligation (Art. 17(3)(b)); a purpose the policy marks
  ``on_erasure_request: keep`` (overriding grounds: fraud prevention); a record still needed
  for a running contract (its clock not started); a
  record whose rule keeps a probative archive (Art. 17(3)(e): archived on schedule and kept
  there until its purge date); a payment reference (erased at the processor by its purpose's
  run); an object under Object Lock; a live row no rule of the policy describes; a row a kept
  row references;
- erased: the rest. Live rows are deleted (children first) with their files, in one
  transaction holding the legal-hold table in SHARE mode like the engine's batches; each
  intermediate-tier object holding the subject's rows is rewritten without them by a
  write-ahead protocol (``retention.object_rewrites``, see ``_rewrite``) under the purpose's
  advisory lock, so that a crash at any step loses nothing and a re-run finishes.

An access request writes one zip (``index.json``, ``<source>/<table>.json``, ``files/...``) under
``exports/<request id>/`` of the archive bucket with SSE, verified by read-back; the report gives
a presigned URL with a short expiry and the index, never the data. Reports, logs and the
evidence row (``retention.subject_requests``) hold ids, keys, counts and checksums only; the
e-mail of a request by address is stored as its keyed hash. The evidence of a finished request
is final: a run under its id is refused before anything is written. The request itself comes
from the inbox (retention.subject_requests), where the address waits only while it is needed.

Preview (the default of the DAG) finds and decides everything and changes nothing: no row,
object, export or evidence row is written.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from decimal import Decimal

import psycopg
import pyarrow as pa
from psycopg.rows import dict_row

from retention import identifiers
from retention.archive import rewrite as object_rewrite
from retention.archive.engine import RetentionEngine
from retention.archive.locks import BATCH_LOCK_TIMEOUT, LOCK_HOLDS, acquire_purpose_lock, release_purpose_lock
from retention.archive.store import ArchiveStorageError, ArchiveStore, safe_key_part
from retention.policy import Policy, Rule, rule_filter
from retention.policy.coverage import ancestors_first, covered_records_sql, object_covered, parents_of
from retention.policy.periods import Period, due_date
from retention.rights import exports, suppression
from retention.rights import requests as inbox
from retention.rights.requests import SubjectRequestError, check_request_id, check_subject

log = logging.getLogger(__name__)

# The subject's own table for a request by id; "email" resolves to every row whose `email`
# column holds the address, in every table that has one, live or archived.
SUBJECT_TABLES = {"customer": "customers", "prospect": "prospects", "candidate": "job_applications"}
EXPORT_PREFIX = "exports"
# The export link is a bearer credential to the subject's data: short-lived; a new one is
# `aws s3 presign` on the key of the report.
EXPORT_URL_SECONDS = 3600
RESPONSE_PERIOD = Period(months=1)  # Art. 12(3): one month from receipt
PURPOSE_LOCK_TIMEOUT = 60.0

# Why a record is kept, in the report (most binding first: a record kept for several reasons
# is reported under the first).
KEPT_BECAUSE = {
    "legal_hold": "under a legal hold (Art. 17(3)(e), legal claims)",
    "legal_obligation": "kept for a legal obligation (Art. 17(3)(b))",
    "overriding_grounds": "overriding legitimate grounds declared in the policy (Art. 17(1)(c), 21(1))",
    "payment_processor": "payment reference: erased at the processor first, by its purpose's run",
    "running_contract": "needed for a running contract (its retention clock has not started)",
    "probative_archive": "kept as evidence for legal claims in the probative archive (Art. 17(3)(e))",
    "object_lock": "archive object under Object Lock until its purge date",
    "owners_not_recorded": "archived before owners were recorded: run retention.archive.backfill_owners, then the request again",
    "referenced_by_kept_row": "a record that is kept references it",
    "clock_not_started": "its retention period has not started (no rule selects it yet): decide by hand",
    "no_rule": "no rule of the retention policy describes this record: decide by hand",
}
# "Kept until" of a record whose clock has not started, in the policy's words for that clock
# (the README's "live in DB" column), then its rule's whole period.
CLOCK_NOT_STARTED = {
    "contracts.ended_at": "while the contract runs",
    "customers.relationship_ended_at": "while the customer relationship lasts",
    "fraud_cases.closed_at": "while the fraud case is open",
    "fraud_alerts.qualified_at": "until the alert is qualified",
    "chat_messages.transmitted_at": "until transmitted to the partner vets",
    "vet_consultations.transmitted_at": "until transmitted to the partner vets",
    "information_requests.handled_at": "until the request is handled",
    "identity_documents.checked_at": "until the identity check is done",
}


class IncompleteRequestError(RuntimeError):
    """An archive object changed between the request's reading and its rewrite (another
    request rewrote it, or a purge): a retry reads it again and finishes."""


@dataclass(frozen=True)
class SubjectRequest:
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


@dataclass
class ArchivedObject:
    """A committed archive object holding at least one row of the subject, read back."""

    manifest_id: int
    purpose: str
    rule: str
    table: str
    tier: str
    key: str
    version_id: str | None
    sha256: str
    purge_after: dt.datetime
    document_keys: list[str]
    document_version_ids: list[str | None]
    owner_ids: dict | None  # None: archived before owners were recorded
    held: bool
    rows: pa.Table
    subject_ids: list[int] = field(default_factory=list)
    until: dict[int, str] = field(default_factory=dict)  # the subject's rows' own end dates (_row_ends)


@dataclass
class Found:
    """Everything of one subject: ids per table (live or archived), the live ones, the objects."""

    ids: dict[str, set[int]]
    live: dict[str, set[int]]
    objects: list[ArchivedObject]
    owners_not_recorded: int = 0
    matched: dict[str, int] = field(default_factory=dict)  # the subject's own rows (by e-mail: each match)
    matched_archived: dict[str, int] = field(default_factory=dict)  # the same in the archive (by e-mail)
    identifiers_not_recorded: int = 0  # by e-mail: committed objects without identifier hashes


@dataclass(frozen=True)
class Decision:
    erase: bool
    reason: str  # 'erasable' or a key of KEPT_BECAUSE
    purpose: str | None = None
    rule: str | None = None
    until: str | None = None  # the record's own end: an ISO date, or the policy's words while its clock is NULL


class SubjectRights:
    """Finds, exports and erases one subject's data (one request at a time per call)."""

    def __init__(self, policy: Policy, dsn: str, store: ArchiveStore, lock_timeout: float = PURPOSE_LOCK_TIMEOUT):
        self.policy = policy
        self.dsn = dsn
        self.store = store
        self.schema = policy.source_schema
        self.tz = policy.tz
        self.lock_timeout = lock_timeout
        self._parents = parents_of(policy)
        self._read: dict[tuple[str, str | None, str], pa.Table] = {}  # objects read back, for one request

    def _connect(self, autocommit: bool = True) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, autocommit=autocommit, application_name="retention:subject_request")
        conn.execute("SET TIME ZONE 'UTC'")
        if not autocommit:
            conn.commit()
        return conn

    # ------------------------------------------------------------------ entry point

    def handle(self, req: SubjectRequest) -> dict:
        """Run the request; returns its report (ids, keys, counts, checksums: no personal data)."""
        report = self._new_report(req)
        self._read.clear()
        with self._connect() as conn:
            if not req.preview:
                self._record_start(conn, req, report)
            found = self.find(conn, req)
            self._report_found(report, found)
            if req.kind == "email":
                # An address resolves to every row holding it, which may be several people (a
                # shared household address): the counts per table, so that the preview shows
                # how many records the address matched before an erasure acts on all of them.
                report["subject"]["matched"] = found.matched
                report["subject"]["matched_archived"] = found.matched_archived
                report["identifiers_not_recorded"] = found.identifiers_not_recorded
            if req.action == "access":
                self._access(conn, req, found, report)
            else:
                self._erase(conn, req, found, report)
            self._report_objects_read(report, found)
            if not req.preview:
                self._record_end(conn, req, report)
        if report.get("incomplete"):
            # Not a success: the subject's rows may now be in the object that replaced the one
            # read (its owners include the subject, so a retry finds and rewrites it).
            raise IncompleteRequestError(
                f"request {req.request_id!r}: an archive object changed while it was being rewritten; "
                "what was erased stays erased, retry the request to finish"
            )
        log.info(
            "subject request %s (%s, %s): found %s live, %s archived rows; preview=%s",
            req.request_id,
            req.action,
            req.kind,
            sum(report["found"]["live"].values()),
            sum(sum(t.values()) for tier, t in report["found"].items() if tier != "live"),
            req.preview,
        )
        return report

    def _new_report(self, req: SubjectRequest) -> dict:
        received = req.received_at.astimezone(dt.UTC)
        respond_by = due_date(received, RESPONSE_PERIOD, self.tz)
        return {
            "request_id": req.request_id,
            "action": req.action,
            "subject": {"kind": req.kind, "ref": req.subject_ref},
            "received_at": received.isoformat(),
            "respond_by": respond_by.isoformat(),
            "preview": req.preview,
            "found": {"live": {}, "intermediate": {}, "probative": {}},
            "files": {},
            "objects": [],
            "kept": [],
            "owners_not_recorded": 0,
        }

    # ------------------------------------------------------------------ find

    def resolve(self, conn, req: SubjectRequest) -> dict[str, set[int]]:
        """The subject's own rows: the id given, or every row whose `email` matches."""
        if req.kind != "email":
            return {SUBJECT_TABLES[req.kind]: {req.subject_id}}
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = %s AND column_name = 'email'"
                " ORDER BY table_name",
                (self.schema,),
            )
        ]
        address = suppression.normalise_email(req.email)
        roots: dict[str, set[int]] = {}
        for table in tables:
            ids = {
                r[0]
                for r in conn.execute(
                    f'SELECT id FROM "{self.schema}"."{table}" WHERE lower(btrim(email)) = %s', (address,)
                )
            }
            if ids:
                roots[table] = ids
        return roots

    def find(self, conn, req: SubjectRequest, seed: dict[str, set[int]] | None = None) -> Found:
        """Every row of the subject, live and archived. ``seed``: ids already known to be the
        subject's (found before live rows were erased), so that archived children stay found."""
        roots = self.resolve(conn, req)
        matched = {t: len(v) for t, v in sorted(roots.items())}
        archived, not_recorded = self._archived_by_address(conn, req) if req.kind == "email" else ({}, 0)
        for table, ids in [*archived.items(), *(seed or {}).items()]:
            roots.setdefault(table, set()).update(ids)
        objects, unknown = self._candidate_objects(conn, roots)
        found = self._expand(conn, roots, objects)
        found.owners_not_recorded = unknown
        found.matched = matched
        found.matched_archived = {t: len(v) for t, v in sorted(archived.items())}
        found.identifiers_not_recorded = not_recorded
        return found

    def _archived_by_address(self, conn, req: SubjectRequest) -> tuple[dict[str, set[int]], int]:
        """The archived rows whose e-mail is the address: the committed objects recording its
        keyed hash (GIN index on identifier_hashes) are read back and their rows matched on the
        address itself. Also: how many committed objects record no hashes (archived before, or
        without the key: `retention.archive.backfill_owners` fills them in)."""
        try:
            locator = identifiers.email_locator(req.email)
        except identifiers.IdentifierKeyError as exc:
            raise SubjectRequestError(f"a request by e-mail cannot search the archive: {exc}") from exc
        address = suppression.normalise_email(req.email)
        rows: dict[str, set[int]] = {}
        for table, key, version, sha in conn.execute(
            "SELECT table_name, object_key, version_id, sha256 FROM retention.archive_manifest"
            " WHERE state = 'committed' AND bucket = %s AND identifier_hashes @> ARRAY[%s]::bigint[] ORDER BY id",
            (self.store.archive_bucket, locator),
        ).fetchall():
            data = self._read_object(key, version, sha)
            for column in identifiers.EMAIL_COLUMNS & set(data.column_names):
                for i, value in zip(data.column("id").to_pylist(), data.column(column).to_pylist(), strict=True):
                    if value is not None and suppression.normalise_email(value) == address:
                        rows.setdefault(table, set()).add(i)
        not_recorded = conn.execute(
            "SELECT count(*) FROM retention.archive_manifest WHERE state = 'committed' AND identifier_hashes IS NULL"
            " AND bucket = %s",
            (self.store.archive_bucket,),
        ).fetchone()[0]
        return rows, not_recorded

    def _tables(self, roots: dict[str, set[int]]) -> list[str]:
        covered = set(self._parents) | {p for edges in self._parents.values() for p, _ in edges}
        return ancestors_first(self.policy, sorted(covered | set(roots)))

    def _expand(self, conn, roots: dict[str, set[int]], objects: list[ArchivedObject]) -> Found:
        """Down the coverage graph, parents first: a row is the subject's when it is one of the
        roots or its parent column names a row of the subject (live or archived)."""
        ids: dict[str, set[int]] = {}
        live: dict[str, set[int]] = {}
        for table in self._tables(roots):
            own = set(roots.get(table, ()))
            links = [(col, ids[parent]) for parent, col in self._parents.get(table, []) if ids.get(parent)]
            conds, params = [], []
            if own:
                conds.append("id = ANY(%s::bigint[])")
                params.append(sorted(own))
            for col, parent_ids in links:
                conds.append(f'"{col}" = ANY(%s::bigint[])')
                params.append(sorted(parent_ids))
            mine: set[int] = set()
            if conds:
                rows = conn.execute(f'SELECT id FROM "{self.schema}"."{table}" WHERE {" OR ".join(conds)}', params)
                live[table] = {r[0] for r in rows}
                mine |= live[table]
            for obj in objects:
                if obj.table != table:
                    continue
                columns = obj.rows.column_names
                row_ids = obj.rows.column("id").to_pylist()
                hit = [i in own for i in row_ids]
                for col, parent_ids in links:
                    if col in columns:
                        hit = [
                            h or (v in parent_ids) for h, v in zip(hit, obj.rows.column(col).to_pylist(), strict=True)
                        ]
                obj.subject_ids = [i for i, h in zip(row_ids, hit, strict=True) if h]
                mine |= set(obj.subject_ids)
            if mine:
                ids[table] = mine
        live = {t: v for t, v in live.items() if v}
        return Found(ids=ids, live=live, objects=[o for o in objects if o.subject_ids])

    def _candidate_objects(self, conn, roots: dict[str, set[int]]) -> tuple[list[ArchivedObject], int]:
        """The committed objects whose recorded owners include a root (GIN index on owner_ids),
        or that hold a root row itself (the owners exclude an object's own table), read back
        and checked against the manifest's SHA-256. Also: how many objects have no owners
        recorded (archived before owners were; `retention.archive.backfill_owners` fills them in)."""
        conds, params = [], []
        for table, ids in sorted(roots.items()):
            for i in sorted(ids):
                conds.append("m.owner_ids @> %s::jsonb")
                params.append(json.dumps({table: [i]}))
            # The root's own table (owners exclude it): no index on record_ids, a scan of the
            # manifest, which has one row per object (thousands), not per record.
            conds.append("(m.table_name = %s AND m.record_ids && %s::bigint[])")
            params += [table, sorted(ids)]
        unknown = conn.execute(
            "SELECT count(*) FROM retention.archive_manifest WHERE state = 'committed' AND owner_ids IS NULL"
            " AND bucket = %s",
            (self.store.archive_bucket,),
        ).fetchone()[0]
        if not conds:
            return [], unknown
        rows = conn.execute(
            f"WITH covered AS ({covered_records_sql(self.policy)})"
            " SELECT m.id, m.purpose, m.rule, m.table_name, m.tier, m.object_key, m.version_id, m.sha256,"
            f" m.purge_after, m.document_keys, m.document_version_ids, m.owner_ids, {object_covered('m')}"
            " FROM retention.archive_manifest AS m WHERE m.state = 'committed' AND m.bucket = %s"
            f" AND ({' OR '.join(conds)}) ORDER BY m.id",
            [self.store.archive_bucket, *params],
        ).fetchall()
        objects = []
        for mid, purpose, rule, table, tier, key, version, sha, purge_after, docs, doc_versions, owners, held in rows:
            objects.append(
                ArchivedObject(
                    mid,
                    purpose,
                    rule,
                    table,
                    tier,
                    key,
                    version,
                    sha,
                    purge_after,
                    list(docs or []),
                    list(doc_versions or [None] * len(docs or [])),
                    owners,
                    held,
                    self._read_object(key, version, sha),
                )
            )
        return objects, unknown

    def _read_object(self, key: str, version: str | None, sha256: str) -> pa.Table:
        """An object's rows, read back once per request (checked against the manifest's SHA-256)."""
        if (key, version, sha256) not in self._read:
            self._read[(key, version, sha256)] = object_rewrite.read_object(self.store, key, version, sha256)
        return self._read[(key, version, sha256)]

    def _report_objects_read(self, report: dict, found: Found) -> None:
        """Every archive object the request read back (``self._read``: the subject's, the other
        candidates, those read for a parent's clock) in ``report["objects"]``: key, version id,
        SHA-256; an object the erasure already lists gains its version id."""
        listed = {(e["key"], e["sha256"]): e for e in report["objects"]}
        mine = {(o.key, o.version_id, o.sha256): o for o in found.objects}
        for key, version, sha in self._read:
            entry = listed.get((key, sha))
            if entry is not None:
                entry.setdefault("version_id", version)
                continue
            obj = mine.get((key, version, sha))
            entry = {"key": key, "version_id": version, "sha256": sha, "action": "read"}
            if obj is not None:
                entry |= {"tier": obj.tier, "table": obj.table, "subject_rows": len(obj.subject_ids)}
            report["objects"].append(entry)

    def _report_found(self, report: dict, found: Found) -> None:
        report["found"]["live"] = {t: len(v) for t, v in sorted(found.live.items())}
        by_tier: dict[str, Counter] = defaultdict(Counter)
        for obj in found.objects:
            by_tier[obj.tier][obj.table] += len(obj.subject_ids)
        for tier, counts in by_tier.items():
            report["found"][tier] = dict(sorted(counts.items()))
        report["owners_not_recorded"] = found.owners_not_recorded

    # ------------------------------------------------------------------ decide

    def basis(self, purpose_name: str, rule_name: str | None) -> str:
        """The rule's legal basis where the policy gives one, else its purpose's."""
        purpose = self.policy.purpose(purpose_name)
        rule = next((r for r in purpose.rules if r.name == rule_name), None)
        return (rule.legal_basis if rule else None) or purpose.legal_basis

    def _rules_of(self, table: str) -> list[tuple[str, Rule]]:
        # The rules written in the policy decide; those generated from `dependents` only schedule
        # a child with its parent.
        return [
            (name, rule) for name, p in self.policy.purposes.items() for rule in p.schedule_rules if rule.table == table
        ]

    def _decide(self, purpose_name: str, rule: Rule, clock: dt.datetime | None, held: bool) -> Decision:
        """One record under one rule: erase, or keep and why (see the module's docstring)."""
        purpose = self.policy.purpose(purpose_name)
        basis = set(self.basis(purpose_name, rule.name).split("_and_"))
        until = self._end(rule, clock)
        if held:
            reason = "legal_hold"
        elif "legal_obligation" in basis:
            reason = "legal_obligation"
        elif purpose.on_erasure_request == "keep":
            reason = "overriding_grounds"
        elif rule.erase_at_processor:
            reason = "payment_processor"
        elif clock is None and "contract" in basis:
            reason = "running_contract"
        elif rule.tier == "probative":
            reason = "probative_archive"
        else:
            return Decision(True, "erasable", purpose_name, rule.name, until)
        return Decision(False, reason, purpose_name, rule.name, until)

    def classify_live(self, conn, live: dict[str, set[int]]) -> dict[tuple[str, int], Decision]:
        """Per live row: the rules whose filter matches it (its clock ignored) decide; the most
        binding reason to keep wins; a row no rule matches is kept."""
        covered = set()
        if live:
            covered = {
                (t, i)
                for t, i in conn.execute(
                    f"WITH covered AS ({covered_records_sql(self.policy)})"
                    " SELECT table_name, record_id FROM covered WHERE table_name = ANY(%s)",
                    (sorted(live),),
                )
            }
        decisions: dict[tuple[str, int], list[Decision]] = defaultdict(list)
        for table, ids in live.items():
            for purpose_name, rule in self._rules_of(table):
                filt = rule_filter(self.policy, purpose_name, rule)
                query = (
                    f'SELECT "{table}".id, {rule.clock} FROM "{self.schema}"."{table}" AS "{table}" {filt.joins}'
                    f' WHERE "{table}".id = ANY(%s::bigint[])' + (f" AND ({filt.where})" if filt.where else "")
                )
                for rid, clock in conn.execute(query, (sorted(ids),)):
                    decisions[(table, rid)].append(self._decide(purpose_name, rule, clock, (table, rid) in covered))
            # A row no rule selects yet because its clock has not started under a rule of its
            # table (an identity document not checked yet, an information request still open):
            # that rule's purpose and basis, kept until the clock starts. Never erased on this
            # ground alone: no rule selects it.
            unmatched = sorted(i for i in ids if (table, i) not in decisions)
            for purpose_name, rule in self._rules_of(table) if unmatched else ():
                filt = rule_filter(self.policy, purpose_name, rule)
                query = (
                    f'SELECT "{table}".id FROM "{self.schema}"."{table}" AS "{table}" {filt.joins}'
                    f' WHERE "{table}".id = ANY(%s::bigint[]) AND {rule.clock} IS NULL'
                )
                for (rid,) in conn.execute(query, (unmatched,)):
                    d = self._decide(purpose_name, rule, None, (table, rid) in covered)
                    decisions[(table, rid)].append(
                        replace(d, erase=False, reason="clock_not_started") if d.erase else d
                    )
        out = {}
        for table, ids in live.items():
            for rid in ids:
                out[(table, rid)] = _strongest(decisions.get((table, rid)), held=(table, rid) in covered)
        return out

    def classify_object(self, obj: ArchivedObject) -> Decision:
        """An archived record: probative and restricted objects stay until their purge date, as
        do held and locked ones; intermediate ones are rewritten without the subject's rows.
        No "until": each row has its own (``obj.until``)."""
        until = None
        basis = set(self.basis(obj.purpose, obj.rule).split("_and_"))
        locked = self.store.storage.tiers[obj.tier].object_lock if obj.tier in self.store.storage.tiers else True
        if obj.held:
            reason = "legal_hold"
        elif obj.owner_ids is None:
            reason = "owners_not_recorded"
        elif "legal_obligation" in basis:
            reason = "legal_obligation"
        elif self.policy.purpose(obj.purpose).on_erasure_request == "keep":
            reason = "overriding_grounds"
        elif obj.tier != "intermediate":
            reason = "probative_archive"
        elif locked:
            reason = "object_lock"
        else:
            return Decision(True, "erasable", obj.purpose, obj.rule, until)
        return Decision(False, reason, obj.purpose, obj.rule, until)

    def _end(self, rule: Rule, clock: dt.datetime | None) -> str:
        """A record's own end date under its rule (the schedule's calendar arithmetic), or while
        its clock has not started the policy's words for it, e.g. "while the contract runs, then
        5 years"."""
        if clock is not None:
            return due_date(clock, rule.gone_after, self.tz).date().isoformat()
        words = CLOCK_NOT_STARTED.get(rule.clock, f"until {rule.clock} is set")
        return words if rule.gone_after == Period() else f"{words}, then {rule.gone_after}"

    def _row_ends(self, conn, obj: ArchivedObject, objects: list[ArchivedObject]) -> dict[int, str]:
        """The own end date of each of the subject's rows in an archived object, from the row's
        clock under the object's rule (not the object's purge date, which a later row of
        another person may set). A clock in a parent table (a claim's contract end) is read
        through the parent link: from the rows found, the live table, or the parent's archive."""
        if obj.until:
            return obj.until
        rule = next(r for r in self.policy.purpose(obj.purpose).rules if r.name == obj.rule)
        clock_table, clock_column = rule.clock.split(".")
        path = _path_up(self._parents, obj.table, clock_table)
        at = {i: i for i in obj.subject_ids}  # subject row -> the id reached in `table`
        table = obj.table
        for parent, column in path or ():
            values = self._column_values(conn, table, column, set(at.values()) - {None}, objects)
            at = {i: values.get(j) for i, j in at.items()}
            table = parent
        clocks = (
            self._column_values(conn, table, clock_column, set(at.values()) - {None}, objects)
            if path is not None
            else {}
        )
        purge_day = obj.purge_after.astimezone(self.tz).date().isoformat()
        for i in obj.subject_ids:
            clock = clocks.get(at[i])
            # An archived row's clock has started (it was due); one that cannot be read back (a
            # parent gone everywhere) falls back to the object's purge date, when its copy goes.
            obj.until[i] = self._end(rule, clock) if clock is not None else purge_day
        return obj.until

    def _column_values(self, conn, table: str, column: str, ids: set[int], objects: list[ArchivedObject]) -> dict:
        """``{id: value of column}`` for rows of ``table``, wherever they are: in the objects read
        for the request, in the live table, or in the other committed objects of the table."""
        values: dict = {}
        for obj in objects:
            if obj.table == table and column in obj.rows.column_names and ids - values.keys():
                for i, v in zip(obj.rows.column("id").to_pylist(), obj.rows.column(column).to_pylist(), strict=True):
                    if i in ids:
                        values[i] = v
        missing = sorted(ids - values.keys())
        if missing:
            values.update(
                conn.execute(
                    f'SELECT id, "{column}" FROM "{self.schema}"."{table}" WHERE id = ANY(%s::bigint[])', (missing,)
                ).fetchall()
            )
        missing = sorted(ids - values.keys())
        if missing:
            for key, version, sha in conn.execute(
                "SELECT object_key, version_id, sha256 FROM retention.archive_manifest WHERE state = 'committed'"
                " AND bucket = %s AND table_name = %s AND record_ids && %s::bigint[] ORDER BY id",
                (self.store.archive_bucket, table, missing),
            ).fetchall():
                rows = self._read_object(key, version, sha)
                if column in rows.column_names:
                    for i, v in zip(rows.column("id").to_pylist(), rows.column(column).to_pylist(), strict=True):
                        if i in ids:
                            values.setdefault(i, v)
        return values

    def _kept_entry(self, source: str, table: str, d: Decision) -> dict:
        basis = self.basis(d.purpose, d.rule) if d.purpose else None
        return {
            "source": source,
            "table": table,
            "purpose": d.purpose,
            "rule": d.rule,
            "reason": d.reason,
            "why": KEPT_BECAUSE[d.reason],
            "legal_basis": basis,
            "kept_until": d.until,
        }

    def _add_kept(self, report: dict, source: str, table: str, d: Decision, n: int = 1) -> None:
        """Counted per table, reason and own end date (records ending on other days: other entries)."""
        entry = self._kept_entry(source, table, d)
        for kept in report["kept"]:
            if {k: v for k, v in kept.items() if k != "records"} == entry:
                kept["records"] += n
                return
        report["kept"].append(entry | {"records": n})

    def _add_kept_archived(self, report: dict, obj: ArchivedObject, d: Decision) -> None:
        for until, n in sorted(Counter(obj.until[i] for i in obj.subject_ids).items()):
            self._add_kept(report, obj.tier, obj.table, replace(d, until=until), n)

    # ------------------------------------------------------------------ access / portability

    def _access(self, conn, req: SubjectRequest, found: Found, report: dict) -> None:
        """Index (source, purpose, legal basis, kept until) always; the export unless preview."""
        live_decisions = self.classify_live(conn, found.live)
        parts: dict[str, list[dict]] = defaultdict(list)  # path -> rows
        index: dict[tuple, dict] = {}
        files: list[tuple[str, str, str]] = []  # (bucket, key, name in the export)

        def add_index(path: str, source: str, table: str, purpose: str | None, rule: str | None, until: str | None):
            key = (path, purpose, rule, until)  # one entry per own end date
            entry = index.setdefault(
                key,
                {
                    "path": path,
                    "source": source,
                    "table": table,
                    "purpose": purpose,
                    "rule": rule,
                    "legal_basis": self.basis(purpose, rule) if purpose else None,
                    "kept_until": until,
                    "records": 0,
                },
            )
            entry["records"] += 1

        for table, ids in sorted(found.live.items()):
            path = f"live/{table}.json"
            rows = conn.cursor(row_factory=dict_row).execute(
                f'SELECT * FROM "{self.schema}"."{table}" WHERE id = ANY(%s::bigint[]) ORDER BY id', (sorted(ids),)
            )
            for row in rows:
                d = live_decisions[(table, row["id"])]
                parts[path].append(row)
                add_index(path, "live", table, d.purpose, d.rule, d.until)
                files += [
                    (self.store.documents_bucket, v, f"files/{v}") for k, v in row.items() if k.endswith("_key") and v
                ]
        for obj in found.objects:
            path = f"{obj.tier}/{obj.table}.json"
            d = self.classify_object(obj)
            ends = self._row_ends(conn, obj, found.objects)
            wanted = set(obj.subject_ids)
            mask = pa.array([i in wanted for i in obj.rows.column("id").to_pylist()])
            for row in obj.rows.filter(mask).to_pylist():
                parts[path].append(row)
                add_index(path, obj.tier, obj.table, d.purpose, d.rule, ends[row["id"]])
                for k, v in row.items():
                    if k.endswith("_key") and v:
                        copy = _archive_copy_of(obj.document_keys, v)
                        if copy:
                            files.append((self.store.archive_bucket, copy, f"files/{v}"))
        report["index"] = sorted(
            index.values(), key=lambda e: (e["path"], e["purpose"] or "", e["rule"] or "", e["kept_until"] or "")
        )
        report["files"] = {"found": len({name for _, _, name in files})}
        if req.preview:
            return
        report["export"] = self._write_export(req, parts, files, report["index"])
        exports.record_produced(conn, self.policy, req.request_id, report["export"])  # deleted kept_for later

    def _write_export(self, req: SubjectRequest, parts: dict, files: list, index: list) -> dict:
        """One zip under exports/<request>/, SSE, checksummed and read back; a presigned URL."""
        sink = io.BytesIO()
        names = set()
        missing = 0
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("index.json", json.dumps({"request_id": req.request_id, "parts": index}, indent=2))
            names.add("index.json")
            for path, rows in sorted(parts.items()):
                zf.writestr(path, json.dumps(rows, default=_json_default, ensure_ascii=False, indent=1))
                names.add(path)
            for bucket, key, name in files:
                if name in names:
                    continue
                try:
                    body = self.store.client.get_object(Bucket=bucket, Key=key)["Body"].read()
                except Exception as exc:  # botocore raises several unrelated classes
                    if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                        missing += 1  # a row names a file that is not stored: counted, the rest exported
                        continue
                    raise ArchiveStorageError(f"a file of the subject could not be read: {type(exc).__name__}") from exc
                zf.writestr(name, body)
                names.add(name)
        key = f"{EXPORT_PREFIX}/{req.request_id}/export.zip"
        verified = self.store.put_verified(
            key, sink.getvalue(), "STANDARD", len(names), lambda data: len(zipfile.ZipFile(io.BytesIO(data)).namelist())
        )
        params = {"Bucket": self.store.archive_bucket, "Key": key}
        if verified.version_id:
            params["VersionId"] = verified.version_id
        url = self.store.client.generate_presigned_url("get_object", Params=params, ExpiresIn=EXPORT_URL_SECONDS)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=EXPORT_URL_SECONDS)
        return {
            "bucket": self.store.archive_bucket,
            "key": key,
            "version_id": verified.version_id,
            "sha256": verified.sha256_hex,
            "bytes": verified.size,
            "entries": len(names),
            "files_missing": missing,
            "url": url,
            "url_expires_at": expires.isoformat(timespec="seconds"),
        }

    # ------------------------------------------------------------------ erasure

    def _erase(self, conn, req: SubjectRequest, found: Found, report: dict) -> None:
        report["erased"] = {"live": {}, "intermediate": {}, "files": 0, "files_kept_shared": 0}
        report["marketing_objection"] = "not_requested"
        if req.preview:
            decisions = self.classify_live(conn, found.live)
            for (table, _), d in sorted(decisions.items()):
                if d.erase:
                    report["erased"]["live"][table] = report["erased"]["live"].get(table, 0) + 1
                else:
                    self._add_kept(report, "live", table, d)
            if req.marketing_objection:
                report["marketing_objection"] = "would_record"
            self._erase_archives(conn, req, found, report, preview=True)
            return
        purposes = self._erase_live(req, report)
        # With the files a crashed run of this request left queued (a purpose in preview mode
        # runs no engine recovery that would finish them).
        purposes |= {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT purpose FROM retention.document_disposals WHERE run_id = %s AND disposed_at IS NULL",
                (req.audit_run_id,),
            )
        }
        for purpose in sorted(purposes):  # the files of deleted rows, unless a kept row names them
            engine = RetentionEngine(self.policy, purpose, self.dsn, self.store)
            with engine._connect() as control:
                report["erased"]["files_kept_shared"] += engine._dispose_documents(control)
        # Searched again after the live rows went: an object the engine committed meanwhile is seen.
        fresh = self.find(conn, req, seed=found.ids)
        self._erase_archives(conn, req, fresh, report, preview=False)

    def _erase_live(self, req: SubjectRequest, report: dict) -> set[str]:
        """In one transaction under the hold lock: decide again, delete the erasable rows
        children first (a row a kept row references stays), queue their files, record the
        objection. Returns the purposes whose files were queued."""
        purposes: set[str] = set()
        with self._connect(autocommit=False) as conn, conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'")
            conn.execute(LOCK_HOLDS)  # a hold placed from now on waits for the commit
            found = self._expand(conn, self.resolve(conn, req), [])
            # Their rows locked, parents first, before deciding: a clock or a link the decision
            # reads (a quote converted, a contract set back to running) cannot change under it.
            # The parents a rule joins are in practice the subject's rows too (their contract,
            # their marketing contact); fraud cases are not, and fraud is kept whole.
            for table in self._tables(found.live):
                if found.live.get(table):
                    conn.execute(
                        f'SELECT id FROM "{self.schema}"."{table}" WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE',
                        (sorted(found.live[table]),),
                    )
            decisions = self.classify_live(conn, found.live)
            erased: Counter = Counter()
            audited: dict[tuple[str, str, str], list[int]] = defaultdict(list)
            disposals = []
            for table in reversed(self._tables(found.live)):
                ids = sorted(i for (t, i), d in decisions.items() if t == table and d.erase)
                if not ids:
                    continue
                key_cols = [c for c in self._columns(conn, table) if c.endswith("_key")]
                for rid in ids:
                    d = decisions[(table, rid)]
                    try:
                        with conn.transaction():  # a savepoint: a referenced row stays
                            row = conn.execute(
                                f'DELETE FROM "{self.schema}"."{table}" WHERE id = %s RETURNING '
                                + (", ".join(f'"{c}"' for c in key_cols) or "NULL"),
                                (rid,),
                            ).fetchone()
                    except psycopg.errors.ForeignKeyViolation:
                        decisions[(table, rid)] = Decision(False, "referenced_by_kept_row", d.purpose, d.rule, d.until)
                        continue
                    if row is None:
                        continue
                    erased[table] += 1
                    audited[(d.purpose, d.rule, table)].append(rid)
                    purposes.add(d.purpose)
                    disposals += [(d.purpose, table, rid, k) for k in (row if key_cols else ()) if k]
            for (table, _), d in sorted(decisions.items()):
                if not d.erase:
                    self._add_kept(report, "live", table, d)
            # Audited like the engine's deletes, in the same transaction: the after-gates of a
            # retention run going on meanwhile count these rows as deleted by another run.
            conn.cursor().executemany(
                "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action,"
                " record_count, record_ids) VALUES (%s, now(), %s, %s, %s, 'deleted', %s, %s::bigint[])",
                [(req.audit_run_id, p, r, t, len(ids), sorted(ids)) for (p, r, t), ids in sorted(audited.items())],
            )
            if disposals:
                conn.cursor().executemany(
                    "INSERT INTO retention.document_disposals (run_id, purpose, table_name, record_id, bucket,"
                    " source_key) VALUES (%s, %s, %s, %s, %s, %s)",
                    [(req.audit_run_id, p, t, i, self.store.documents_bucket, k) for p, t, i, k in disposals],
                )
            if req.marketing_objection:
                report["marketing_objection"] = self._record_objection(conn, req, found)
        report["erased"]["live"] = dict(sorted(erased.items()))
        report["erased"]["files"] = len(disposals)
        return purposes

    def _columns(self, conn, table: str) -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                " ORDER BY ordinal_position",
                (self.schema, table),
            )
        ]

    def _record_objection(self, conn, req: SubjectRequest, found: Found) -> str:
        """The suppression entry (hashes only, channel 'all'), once per address."""
        people = []
        for table, column in (("customers", "customer_id"), ("prospects", "prospect_id")):
            for rid in sorted(found.live.get(table, ())):
                email, phone = conn.execute(
                    f'SELECT email, phone FROM "{self.schema}"."{table}" WHERE id = %s', (rid,)
                ).fetchone()
                people.append((column, rid, email, phone))
        if not people and req.email:
            people.append((None, None, req.email, None))
        recorded = 0
        for column, rid, email, phone in people:
            email_sha = suppression.email_hash(email) if email else None
            try:
                phone_sha = suppression.phone_hash(phone) if phone else None
            except ValueError:
                phone_sha = None
            if not (email_sha or phone_sha):
                continue
            exists = conn.execute(
                "SELECT 1 FROM app.marketing_objections WHERE channel = 'all' AND email_sha256 IS NOT DISTINCT FROM %s"
                " AND phone_sha256 IS NOT DISTINCT FROM %s",
                (email_sha, phone_sha),
            ).fetchone()
            if exists:
                continue
            conn.execute(
                "INSERT INTO app.marketing_objections (customer_id, prospect_id, channel, email_sha256, phone_sha256,"
                " source, received_at) VALUES (%s, %s, 'all', %s, %s, 'rights_request', %s)",
                (
                    rid if column == "customer_id" else None,
                    rid if column == "prospect_id" else None,
                    email_sha,
                    phone_sha,
                    req.received_at,
                ),
            )
            recorded += 1
        return "recorded" if recorded else ("already_on_list" if people else "no_address")

    # ------------------------------------------------------------------ archive rewrite

    def _erase_archives(self, conn, req: SubjectRequest, found: Found, report: dict, preview: bool) -> None:
        by_purpose: dict[str, list[ArchivedObject]] = defaultdict(list)
        for obj in found.objects:
            d = self.classify_object(obj)
            self._row_ends(conn, obj, found.objects)
            entry = {
                "key": obj.key,
                "tier": obj.tier,
                "table": obj.table,
                "sha256": obj.sha256,
                "subject_rows": len(obj.subject_ids),
                "other_rows": obj.rows.num_rows - len(obj.subject_ids),
            }
            if d.erase:
                entry["action"] = "would_rewrite" if preview else "rewrite"
                by_purpose[obj.purpose].append(obj)
                if preview:
                    counts = report["erased"]["intermediate"]
                    counts[obj.table] = counts.get(obj.table, 0) + len(obj.subject_ids)
            else:
                entry["action"] = "kept"
                self._add_kept_archived(report, obj, d)
            report["objects"].append(entry)
        if preview:
            return
        # Rewrites a crashed request left are finished first, even when no object is to be
        # rewritten now (after a crash past the commit, the subject is no longer found in any).
        pending = self._pending_rewrites()
        for purpose in sorted(pending | set(by_purpose)):
            objects = by_purpose.get(purpose, [])
            with self._connect(autocommit=False) as control, self._connect() as intents:
                self._lock_purpose(control, purpose)
                try:
                    self.recover_rewrites(control, purpose)
                    for obj in objects:
                        result = self._rewrite(control, intents, req, obj, found.ids)
                        entry = next(e for e in report["objects"] if e["key"] == obj.key)
                        entry.update(result)
                        if result["action"] == "rewritten":
                            counts = report["erased"]["intermediate"]
                            counts[obj.table] = counts.get(obj.table, 0) + result["removed_rows"]
                        elif result.get("held"):  # a hold placed meanwhile: kept whole
                            obj.held = True
                            self._add_kept_archived(report, obj, self.classify_object(obj))
                        else:  # purged or rewritten since it was read: a re-run decides afresh
                            report["incomplete"] = True
                finally:
                    control.rollback()
                    release_purpose_lock(control, purpose)

    def _pending_rewrites(self) -> set[str]:
        with self._connect() as conn:
            return object_rewrite.pending_rewrite_purposes(self.store, conn)

    def _lock_purpose(self, conn, purpose: str) -> None:
        """The purpose's advisory lock (the engine's): no archive run, orphan clean-up or purge of
        the purpose runs while its objects are rewritten."""
        acquire_purpose_lock(
            conn,
            purpose,
            self.lock_timeout,
            on_timeout=f"a run of purpose {purpose!r} holds its lock (waited {self.lock_timeout:.0f}s); its archive "
            "objects were not rewritten yet: retry the request (live rows already erased stay erased)",
        )

    def _rewrite(self, control, intents, req: SubjectRequest, obj: ArchivedObject, ids: dict[str, set[int]]) -> dict:
        """Rewrite one intermediate object without the subject's rows: the write-ahead protocol of
        retention.archive.rewrite, whose recovery the purpose's next run, purge or request runs."""
        result = object_rewrite.rewrite_without(
            self.policy,
            self.store,
            control,
            intents,
            obj,
            ids.get(obj.table, set()),
            origin=req.request_id,
            new_key=f"{obj.key.removesuffix('.parquet')}.erasure-{req.request_id}.parquet",
            run_id=req.audit_run_id,
        )
        result.pop("removed_ids", None)  # the report holds counts
        return result

    def recover_rewrites(self, control, purpose: str) -> dict[str, int]:
        return object_rewrite.recover_rewrites(self.store, control, purpose)

    # ------------------------------------------------------------------ evidence

    def _record_start(self, conn, req: SubjectRequest, report: dict) -> None:
        """The evidence row of a new request, or the run id of a request resumed. Compared before
        anything is written, in one transaction: a request refused (another action or subject
        under its id, or a finished one) changes nothing, and a finished request's evidence is
        final."""
        with conn.transaction():
            conn.execute(
                "INSERT INTO retention.subject_requests (request_id, action, subject_kind, subject_ref, received_at,"
                " respond_by, state, run_id) VALUES (%s, %s, %s, %s, %s, %s, 'running', %s)"
                " ON CONFLICT (request_id) DO NOTHING",
                (
                    req.request_id,
                    req.action,
                    req.kind,
                    req.subject_ref,
                    report["received_at"],
                    report["respond_by"],
                    req.run_id,
                ),
            )
            action, kind, ref, state, run_id = conn.execute(
                "SELECT action, subject_kind, subject_ref, state, run_id FROM retention.subject_requests"
                " WHERE request_id = %s FOR UPDATE",
                (req.request_id,),
            ).fetchone()
            if (action, kind) != (req.action, req.kind) or ref not in req.subject_refs:
                raise SubjectRequestError(
                    f"request {req.request_id!r} was recorded for another action or subject; use a new request id"
                )
            if state == "done":
                raise SubjectRequestError(
                    f"request {req.request_id!r} is finished (its evidence is final); a new request needs a new id"
                )
            if run_id != req.run_id:
                conn.execute(
                    "UPDATE retention.subject_requests SET run_id = %s WHERE request_id = %s",
                    (req.run_id, req.request_id),
                )

    def _record_end(self, conn, req: SubjectRequest, report: dict) -> None:
        """The run's report added to the evidence; once done, the request's address (if it came
        through the inbox) is replaced by its keyed hash, in the same transaction."""
        evidence = {k: v for k, v in report.items() if k != "export"}
        if "export" in report:  # the link is a credential: the evidence keeps where, not how
            evidence["export"] = {k: v for k, v in report["export"].items() if k != "url"}
        incomplete = bool(report.get("incomplete"))
        with conn.transaction():
            conn.execute(
                "UPDATE retention.subject_requests SET reports = reports || jsonb_build_array(%s::jsonb),"
                " state = CASE WHEN %s THEN 'running' ELSE 'done' END,"
                " finished_at = CASE WHEN %s THEN NULL ELSE now() END WHERE request_id = %s",
                (json.dumps(evidence), incomplete, incomplete, req.request_id),
            )
            if not incomplete:
                inbox.clear_identifiers(conn, req.request_id, req.subject_ref)


# ---------------------------------------------------------------------- helpers

_PRIORITY = list(KEPT_BECAUSE)


def _strongest(decisions: list[Decision] | None, held: bool) -> Decision:
    if not decisions:
        return Decision(False, "legal_hold" if held else "no_rule")
    kept = [d for d in decisions if not d.erase]
    if kept:
        return min(kept, key=lambda d: _PRIORITY.index(d.reason))
    return decisions[0]


def _path_up(parents: dict[str, list[tuple[str, str]]], table: str, target: str) -> list[tuple[str, str]] | None:
    """The links from ``table`` up to ``target`` through the coverage graph (shortest first):
    ``[(parent table, the child's column naming it), ...]``; None when there is none."""
    frontier = [(table, [])]
    seen = {table}
    while frontier:
        current, path = frontier.pop(0)
        if current == target:
            return path
        for parent, column in parents.get(current, []):
            if parent not in seen:
                seen.add(parent)
                frontier.append((parent, [*path, (parent, column)]))
    return None


def _archive_copy_of(document_keys: list[str], source_key: str) -> str | None:
    return next((k for k in document_keys if object_rewrite.source_of(k) == source_key), None)


def _json_default(value):
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot export a {type(value).__name__}")
