"""Data-subject requests (issue 10): access / portability and erasure across the live tables, the
files and both archive tiers, for a subject whose archived rows share objects with other people.

The archive is built by the engine itself (aml, contracts, quotes at one logical date), so the
objects, owners and document copies are the real ones."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import urllib.request
import zipfile

import pyarrow.parquet as pq
import pytest
from psycopg.rows import dict_row
from retention.archive import rewrite as object_rewrite
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.rights import erase as rights_erase
from retention.rights import erase_archived
from retention.rights import find as rights_find
from retention.rights.access import json_default
from retention.rights.requests import SubjectRequest, SubjectRequestError
from retention.rights.subject_rights import IncompleteRequestError, SubjectRights
from retention.rights.suppression import is_suppressed

from tests import factories as f
from tests import factories_policy as fp

pytestmark = pytest.mark.integration

EMAIL = "camille.sujet@example.fr"
OTHER_EMAIL = "paul.autre@example.fr"
D = f.midnight("2024-06-01")
RECEIVED = dt.datetime(2024, 6, 3, 10, tzinfo=dt.UTC)


class Crash(BaseException):
    """A crash injected at one step (BaseException: no `except Exception` of the code catches it)."""


def archive(db, s3, storage, policy, dsn, purposes=("aml", "contracts", "quotes")) -> None:
    for purpose in purposes:
        RetentionEngine(policy, purpose, dsn, ArchiveStore(s3, storage), lock_timeout=2).archive_and_delete(
            RunContext(purpose, f"manual__{purpose}", D)
        )


def world(db, s3, storage, policy, dsn) -> dict:
    """The subject (a former customer and, with the same address, a job candidate) and another
    customer whose archived rows share every object with the subject's, plus an anonymous quote."""
    w: dict = {}

    def doc(key: str) -> str:
        f.put_document(s3, storage.documents_bucket, key)
        return key

    c = f.customer(db, ended="2024-03-01", email=EMAIL)
    k1 = f.contract(db, customer_id=c, ended="2024-03-01")
    pet = db.execute("SELECT pet_id FROM app.contracts WHERE id = %s", (k1,)).fetchone()[0]
    cl = f.claim(db, k1, invoice_key=doc("invoices/subject-claim.pdf"))
    w["subject"] = {
        "customers": {c},
        "pets": {pet},
        "contracts": {k1},
        "claims": {cl},
        "reimbursements": {f.reimbursement(db, cl)},
        "aml_records": {f.aml_record(db, k1, document_key=doc("aml/subject-id.pdf"))},
        # converted (probative with the contract), two archived unconverted, one still live
        "quotes": {
            f.quote(db, issued="2016-01-01", contract_id=k1, customer_id=c, email=EMAIL),
            f.quote(db, issued="2023-01-10", customer_id=c, email=EMAIL),
            f.quote(db, issued="2023-01-20", customer_id=c, email=EMAIL),
            f.quote(db, issued="2024-05-01", customer_id=c, email=EMAIL),
        },
        "cookie_consents": {fp.cookie_consent(db, recorded="2024-05-01", customer_id=c)},
        "job_applications": {
            f.job_application(db, last_contact="2024-01-01", email=EMAIL, cv_key=doc("cv/subject.pdf"))
        },
    }
    # a running contract, with a fraud alert; call recordings: to contract (legal obligation), for quality
    k_running = f.contract(db, customer_id=c)
    w["subject"]["contracts"].add(k_running)
    w["subject"]["pets"].add(db.execute("SELECT pet_id FROM app.contracts WHERE id = %s", (k_running,)).fetchone()[0])
    w["subject"]["fraud_alerts"] = {f.fraud_alert(db, k_running, raised="2024-05-01")}
    contracting = f.call_recording(db, reason="contracting", started="2024-05-01", customer_id=c)
    quality = f.call_recording(
        db, reason="quality", started="2024-05-02", customer_id=c, audio_key=doc("audio/subject-quality.wav")
    )
    w["subject"]["call_recordings"] = {contracting, quality}
    w["kept_live"] = {
        "customers": {c},
        "pets": w["subject"]["pets"],
        "contracts": {k_running},
        "fraud_alerts": w["subject"]["fraud_alerts"],
        "call_recordings": {contracting},
    }
    mc = fp.marketing_contact(db, channel="email", last_contact="2024-01-01", customer_id=c, address=EMAIL)
    w["subject"]["marketing_contacts"] = {mc}
    w["subject"]["marketing_messages"] = {fp.marketing_message(db, mc)}

    d = f.customer(db, ended="2024-03-01", email=OTHER_EMAIL, first_name="Paul", last_name="Autre")
    k2 = f.contract(db, customer_id=d, ended="2024-03-01")
    cl2 = f.claim(db, k2, invoice_key=doc("invoices/other-claim.pdf"))
    w["other"] = {
        "customers": {d},
        "contracts": {k2},
        "claims": {cl2},
        "reimbursements": {f.reimbursement(db, cl2)},
        "aml_records": {f.aml_record(db, k2, document_key=doc("aml/other-id.pdf"))},
        "quotes": {
            # the same day as one of the subject's: they share an object (one per end day)
            f.quote(db, issued="2023-01-10", customer_id=d, email=OTHER_EMAIL),
            f.quote(db, issued="2023-01-25"),  # an anonymous visitor's
        },
    }
    archive(db, s3, storage, policy, dsn)
    return w


def a_prospect_who_became_a_customer(db, s3, storage, policy, source_dsn, *, customer_email: str = EMAIL):
    """A prospect's quote archived beside someone else's (its object names the prospect alone
    among its owners); the prospect then became a customer, whose relationship ended in 2021, and
    the prospect record was archived too. Returns (prospect, quote, customer, the quotes object's
    key, its purge date)."""
    p = f.prospect(db, last_contact="2023-01-01", email=EMAIL)
    q = f.quote(db, issued="2023-01-10", prospect_id=p, email=EMAIL)
    f.quote(db, issued="2023-01-10")  # someone else's, same object
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    c = f.customer(db, ended="2021-01-01", email=customer_email)
    db.execute("UPDATE app.prospects SET customer_id = %s WHERE id = %s", (c, p))
    archive(db, s3, storage, policy, source_dsn, purposes=("prospects",))
    assert p not in f.ids(db, "prospects") and q not in f.ids(db, "quotes"), "both archived"
    [(quotes_key, purge_after)] = db.execute(
        "SELECT object_key, purge_after FROM retention.archive_manifest WHERE state = 'committed'"
        " AND table_name = 'quotes'"
    ).fetchall()
    return p, q, c, quotes_key, purge_after


def crash_after_commit(*args, **kwargs):
    raise Crash("after_commit")


def rights(policy, dsn, s3, storage) -> SubjectRights:
    return SubjectRights(policy, dsn, ArchiveStore(s3, storage), lock_timeout=2)


def request(action: str, request_id: str, *, preview: bool = False, **kw) -> SubjectRequest:
    kw.setdefault("kind", "email")
    if kw["kind"] == "email":
        kw.setdefault("email", "  Camille.Sujet@Example.FR ")
    kw.setdefault("run_id", f"manual__{request_id}")
    return SubjectRequest(request_id=request_id, action=action, received_at=RECEIVED, preview=preview, **kw)


def committed_objects(db, s3, storage) -> dict[str, dict]:
    """Every committed object, read back by its version id and checked against the manifest."""
    out = {}
    rows = db.execute(
        "SELECT object_key, version_id, sha256, record_ids, tier, table_name FROM retention.archive_manifest"
        " WHERE state = 'committed' AND bucket = %s",
        (storage.archive_bucket,),
    ).fetchall()
    for key, version, sha, record_ids, tier, table in rows:
        body = s3.get_object(Bucket=storage.archive_bucket, Key=key, VersionId=version)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha, key
        data = pq.read_table(io.BytesIO(body))
        assert data.column("id").to_pylist() == list(record_ids), key
        out[key] = {"tier": tier, "table": table, "rows": {r["id"]: r for r in data.to_pylist()}, "sha256": sha}
    return out


def archive_versions(s3, storage) -> set[tuple[str, str]]:
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=storage.archive_bucket)
    return {(v["Key"], v["VersionId"]) for p in pages for v in p.get("Versions", []) + p.get("DeleteMarkers", [])}


def everything(db, s3, storage) -> tuple:
    tables = [r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'app' ORDER BY 1")]
    rows = {t: db.execute(f"SELECT * FROM app.{t} ORDER BY id").fetchall() for t in tables}
    manifest = db.execute("SELECT * FROM retention.archive_manifest ORDER BY id").fetchall()
    bookkeeping = [
        db.execute(f"SELECT count(*) FROM retention.{t}").fetchone()[0]
        for t in ("object_rewrites", "subject_requests", "document_disposals")
    ]
    docs = {o["Key"] for o in s3.list_objects_v2(Bucket=storage.documents_bucket).get("Contents", [])}
    return rows, manifest, bookkeeping, archive_versions(s3, storage), docs


def rows_by_table(objects: dict, wanted: set[int], table: str, tier: str) -> dict[int, dict]:
    return {
        i: r
        for o in objects.values()
        if o["table"] == table and o["tier"] == tier
        for i, r in o["rows"].items()
        if i in wanted
    }


def test_access_then_preview_then_erasure(db, s3, storage, policy, source_dsn):
    w = world(db, s3, storage, policy, source_dsn)
    sub, other = w["subject"], w["other"]
    svc = rights(policy, source_dsn, s3, storage)
    before_objects = committed_objects(db, s3, storage)

    # ---- access: every row of theirs (SQL and Parquet), nothing of anyone else
    report = svc.handle(request("access", "req-access-1"))
    assert report["respond_by"].startswith("2024-07-03")
    assert EMAIL not in json.dumps(report).lower() and "camille" not in json.dumps(report).lower()
    export = report["export"]
    assert export["key"] == "exports/req-access-1/export.zip" and "X-Amz-Expires=3600" in export["url"]
    head = s3.head_object(Bucket=storage.archive_bucket, Key=export["key"])
    assert head["ServerSideEncryption"] == "AES256"
    body = urllib.request.urlopen(export["url"], timeout=10).read()  # the presigned URL works
    assert hashlib.sha256(body).hexdigest() == export["sha256"]
    zf = zipfile.ZipFile(io.BytesIO(body))
    parts = {n: json.loads(zf.read(n)) for n in zf.namelist() if n.endswith(".json") and n != "index.json"}
    exported = {
        (n.split("/")[0], n.split("/")[1].removesuffix(".json")): {r["id"] for r in rows} for n, rows in parts.items()
    }
    live_expected = {}
    for table, ids in sub.items():
        live = {r[0] for r in db.execute(f"SELECT id FROM app.{table} WHERE id = ANY(%s)", (sorted(ids),))}
        if live:
            live_expected[("live", table)] = live
    archived_expected = {}
    for o in before_objects.values():
        mine = set(o["rows"]) & sub.get(o["table"], set())
        if mine:
            archived_expected.setdefault((o["tier"], o["table"]), set()).update(mine)
    assert exported == live_expected | archived_expected
    assert ("intermediate", "quotes") in exported and ("probative", "claims") in exported
    assert ("live", "job_applications") in exported and ("live", "marketing_messages") in exported
    # value for value: the archived rows as the Parquet objects hold them, the live ones as SQL has them
    as_json = lambda row: json.loads(json.dumps(row, default=json_default))  # noqa: E731
    for (tier, table), ids in archived_expected.items():
        exported_rows = {r["id"]: r for r in parts[f"{tier}/{table}.json"]}
        for i, row in rows_by_table(before_objects, ids, table, tier).items():
            assert as_json(row) == exported_rows[i], (tier, table, i)
    for (_, table), ids in live_expected.items():
        exported_rows = {r["id"]: r for r in parts[f"live/{table}.json"]}
        cur = db.cursor(row_factory=dict_row)
        for row in cur.execute(f"SELECT * FROM app.{table} WHERE id = ANY(%s)", (sorted(ids),)):
            assert as_json(row) == exported_rows[row["id"]], (table, row["id"])
    text = b"".join(zf.read(n) for n in zf.namelist())
    assert OTHER_EMAIL.encode() not in text and b"lea.dubois" not in text
    for table, ids in other.items():
        assert not any(
            i in exported.get((src, table), set()) for src in ("live", "intermediate", "probative") for i in ids
        )
    files = {n for n in zf.namelist() if n.startswith("files/")}
    assert files == {
        "files/cv/subject.pdf",
        "files/invoices/subject-claim.pdf",
        "files/aml/subject-id.pdf",
        "files/audio/subject-quality.wav",
    }
    index = json.loads(zf.read("index.json"))["parts"]
    assert index == report["index"]
    # Every archive object the access read back, in its report and its evidence: key, version, SHA-256.
    manifest = {
        key: (version, sha)
        for key, version, sha in db.execute(
            "SELECT object_key, version_id, sha256 FROM retention.archive_manifest WHERE bucket = %s",
            (storage.archive_bucket,),
        )
    }
    read = {(o["key"], o["version_id"], o["sha256"]) for o in report["objects"]}
    theirs = {(k, *manifest[k]) for k, o in before_objects.items() if set(o["rows"]) & sub.get(o["table"], set())}
    assert theirs and theirs <= read <= {(k, *v) for k, v in manifest.items()}, (theirs, read)
    assert len(read) == len(report["objects"]) and {o["action"] for o in report["objects"]} == {"read"}
    assert {o["key"]: o["subject_rows"] for o in report["objects"] if (o["key"], *manifest[o["key"]]) in theirs} == {
        k: len(set(o["rows"]) & sub[o["table"]]) for k, o in before_objects.items() if (k, *manifest[k]) in theirs
    }
    (access_evidence,) = db.execute(
        "SELECT reports FROM retention.subject_requests WHERE request_id = 'req-access-1'"
    ).fetchone()[0]
    assert access_evidence["objects"] == report["objects"]
    by_path = {(e["path"], e["rule"]): e for e in index}
    assert by_path[("probative/aml_records.json", "aml_records")]["legal_basis"] == "legal_obligation"
    assert by_path[("probative/aml_records.json", "aml_records")]["kept_until"] == "2029-03-01"
    # each archived row's own end (issued + 24 months), never its object's purge date, which the
    # other person's quote of 2023-01-25 sets (issue 18, item 7)
    ends = {(e["path"], e["rule"], e["kept_until"]): e["records"] for e in index}
    assert ends[("intermediate/quotes.json", "unconverted_quotes", "2025-01-10")] == 1
    assert ends[("intermediate/quotes.json", "unconverted_quotes", "2025-01-20")] == 1
    assert not [e for e in index if e["kept_until"] == "2025-01-25"]
    assert by_path[("live/customers.json", "former_customers")]["kept_until"] == "2032-03-01"
    assert {e["source"] for e in index} == {"live", "intermediate", "probative"}

    # ---- preview of the erasure: reports, changes nothing
    state = everything(db, s3, storage)
    preview = svc.handle(request("erasure", "req-erase-1", preview=True, marketing_objection=True))
    assert everything(db, s3, storage) == state
    assert preview["erased"]["live"] == {
        "call_recordings": 1,
        "cookie_consents": 1,
        "job_applications": 1,
        "marketing_contacts": 1,
        "marketing_messages": 1,
        "quotes": 1,
    }
    assert preview["erased"]["intermediate"] == {"quotes": 2}
    assert preview["marketing_objection"] == "would_record"
    # the address matched these live rows (counts only: several people may share an address)
    assert preview["subject"]["matched"] == {"customers": 1, "job_applications": 1, "quotes": 1}
    assert preview["subject"]["matched_archived"] == {"quotes": 3} and preview["identifiers_not_recorded"] == 0

    # ---- erasure
    report = svc.handle(request("erasure", "req-erase-1", marketing_objection=True))
    assert report["erased"]["live"] == preview["erased"]["live"]
    assert report["erased"]["intermediate"] == {"quotes": 2}
    assert report["erased"]["files"] == 2 and report["marketing_objection"] == "recorded"
    audited = db.execute(
        "SELECT table_name, sum(record_count) FROM retention.audit_log WHERE run_id = %s AND action = 'deleted'"
        " GROUP BY 1",
        ("subject_request__req-erase-1",),
    ).fetchall()
    assert dict(audited) == report["erased"]["live"]  # audited like the engine's deletes
    # nothing of theirs remains live but the records kept, each reported with its reason
    remaining = {
        t: {r[0] for r in db.execute(f"SELECT id FROM app.{t} WHERE id = ANY(%s)", (sorted(ids),))}
        for t, ids in sub.items()
    }
    assert {t: ids for t, ids in remaining.items() if ids} == w["kept_live"]
    kept = {(k["source"], k["table"]): k for k in report["kept"]}
    assert {t for s, t in kept if s == "live"} == set(w["kept_live"])
    assert sum(k["records"] for k in report["kept"] if k["source"] == "live") == sum(map(len, w["kept_live"].values()))
    assert kept[("live", "customers")]["reason"] == "probative_archive"
    assert kept[("live", "customers")]["kept_until"] == "2032-03-01"
    assert kept[("live", "contracts")]["reason"] == "running_contract"
    assert kept[("live", "contracts")]["kept_until"] == "while the contract runs, then 5 years"
    assert kept[("live", "fraud_alerts")]["reason"] == "overriding_grounds"
    assert kept[("live", "call_recordings")]["reason"] == "legal_obligation"
    assert kept[("live", "call_recordings")]["kept_until"] == "2026-05-01"
    for table in ("claims", "reimbursements", "contracts", "quotes"):
        assert kept[("probative", table)]["reason"] == "probative_archive"
        assert kept[("probative", table)]["legal_basis"] == "contract"
        assert kept[("probative", table)]["kept_until"] == "2029-03-01"
    assert kept[("probative", "aml_records")]["reason"] == "legal_obligation"
    assert ("intermediate", "quotes") not in kept
    # the files of erased rows are gone; the subject's archived document copies are probative
    docs = {o["Key"] for o in s3.list_objects_v2(Bucket=storage.documents_bucket).get("Contents", [])}
    assert "cv/subject.pdf" not in docs and "audio/subject-quality.wav" not in docs
    # archives: probative objects untouched; the intermediate ones holding the subject's quotes
    # rewritten with the others' rows only (gone, where only the subject's were); the rest untouched
    after_objects = committed_objects(db, s3, storage)
    for key, o in before_objects.items():
        if o["tier"] == "probative" or not set(o["rows"]) & sub["quotes"]:
            assert after_objects[key] == o
    theirs = [k for k, o in before_objects.items() if o["tier"] == "intermediate" and set(o["rows"]) & sub["quotes"]]
    assert len(theirs) == 2 and not [v for v in archive_versions(s3, storage) if v[0] in theirs]
    (old_key,) = [k for k in theirs if set(before_objects[k]["rows"]) & other["quotes"]]  # the shared one
    (new_key,) = [k for k, o in after_objects.items() if o["tier"] == "intermediate" and k not in before_objects]
    assert set(after_objects[new_key]["rows"]) == set(before_objects[old_key]["rows"]) & other["quotes"]
    intermediate_quotes = [o for o in after_objects.values() if (o["tier"], o["table"]) == ("intermediate", "quotes")]
    assert {i for o in intermediate_quotes for i in o["rows"]} == other["quotes"]
    for i in after_objects[new_key]["rows"]:
        assert after_objects[new_key]["rows"][i] == before_objects[old_key]["rows"][i]
    entry = next(o for o in report["objects"] if o["key"] == old_key)
    assert entry["action"] == "rewritten" and entry["new_sha256"] == after_objects[new_key]["sha256"]
    # the new object keeps the old one's owners (a superset: a later hold on the subject keeps it)
    owners = dict(
        db.execute(
            "SELECT state, owner_ids FROM retention.archive_manifest WHERE object_key IN (%s, %s)", (old_key, new_key)
        ).fetchall()
    )
    # (the old one, besides, names the subject's records: the erasure's commit, for a hold placed
    # after a crash past it; retention.rights.erase_archived)

    def not_subjects(o: dict) -> dict:
        return {t: set(v) - sub.get(t, set()) for t, v in o.items() if set(v) - sub.get(t, set())}

    assert not_subjects(owners["committed"]) == not_subjects(owners["rewritten"])
    assert all(set(owners["rewritten"].get(t, [])) >= set(v) for t, v in owners["committed"].items())
    assert set(owners["committed"]["customers"]) >= other["customers"]
    # the other customer's live rows are untouched
    for table in ("customers", "contracts"):
        assert not ({r[0] for r in db.execute(f"SELECT id FROM app.{table}")} & other[table]) or table == "customers"
    assert f.ids(db, "customers") == sub["customers"] | other["customers"]
    # objection recorded (hashes only); evidence without personal data
    assert is_suppressed(db, email=EMAIL)
    state, respond_by, reports = db.execute(
        "SELECT state, respond_by, reports FROM retention.subject_requests WHERE request_id = 'req-erase-1'"
    ).fetchone()
    (evidence,) = reports  # the preview wrote none
    assert evidence["erased"] == report["erased"]
    assert state == "done" and respond_by.date() == dt.date(2024, 7, 2)  # Paris midnight, 3 July
    assert "camille" not in json.dumps(evidence).lower() and "url" not in json.dumps(evidence.get("export", {}))

    # ---- a second erasure has nothing left to do
    again = svc.handle(request("erasure", "req-erase-2"))
    assert again["erased"]["live"] == {} and again["erased"]["intermediate"] == {}


def quotes_world(db, s3, storage, policy, dsn) -> dict:
    """Quotes only: the subject's two archived quotes share one intermediate object with two others
    (issued the same day: an object holds the rows whose archive period ends on one day)."""
    c = f.customer(db, email=EMAIL)
    d = f.customer(db, email=OTHER_EMAIL)
    f.put_document(s3, storage.documents_bucket, "audio/quality.wav")
    w = {
        "customer": c,
        "recording": f.call_recording(
            db, reason="quality", started="2024-05-02", customer_id=c, audio_key="audio/quality.wav"
        ),
        "mine": {f.quote(db, issued="2023-01-10", customer_id=c), f.quote(db, issued="2023-01-10", customer_id=c)},
        "others": {f.quote(db, issued="2023-01-10", customer_id=d), f.quote(db, issued="2023-01-10")},
        "live": f.quote(db, issued="2024-05-01", customer_id=c),
    }
    archive(db, s3, storage, policy, dsn, purposes=("quotes",))
    return w


def assert_nothing_lost(db, s3, storage, w, *, finished: bool) -> None:
    """The others' rows are in exactly one committed object; no orphan version; when finished,
    none of the subject's rows is left in any committed object or stored version."""
    objects = committed_objects(db, s3, storage)
    seen = [i for o in objects.values() for i in o["rows"]]
    assert sorted(i for i in seen if i in w["others"]) == sorted(w["others"]), "lost or duplicated"
    assert len(seen) == len(set(seen)), "a row in two committed objects"
    if finished:
        assert not set(seen) & w["mine"]
        manifest_versions = {
            (k, v)
            for k, v in db.execute(
                "SELECT object_key, version_id FROM retention.archive_manifest WHERE state = 'committed'"
            ).fetchall()
        }
        assert archive_versions(s3, storage) == manifest_versions, "orphan or leftover versions"
        assert (
            db.execute(
                "SELECT count(*) FROM retention.object_rewrites WHERE state IN ('uploading', 'committed')"
            ).fetchone()[0]
            == 0
        )
        assert (
            db.execute("SELECT count(*) FROM retention.archive_manifest WHERE state = 'uploading'").fetchone()[0] == 0
        )


# step -> (object patched: "store", "rewrite" (retention.archive.rewrite) or "erase" (retention.rights.erase,
# where it calls retention.archive.documents), function, "before" or "after" the original runs)
REWRITE_STEPS = {
    "after_live_commit": ("erase", "dispose_documents", "before"),  # live rows deleted, their files not yet
    "after_intent": ("store", "put_verified", "before"),  # intent and 'uploading' row committed, nothing uploaded
    "after_upload": ("store", "put_verified", "after"),  # new object uploaded and read back, not committed
    "after_commit": ("rewrite", "_finish", "before"),  # committed, the old object still stored
    "after_old_deleted": ("store", "delete_all_versions", "after"),  # old versions gone, rewrite not marked done
}


@pytest.mark.parametrize("step", list(REWRITE_STEPS))
def test_crash_at_each_step_of_the_rewrite_then_rerun(step, db, s3, storage, policy, source_dsn, monkeypatch):
    w = quotes_world(db, s3, storage, policy, source_dsn)
    svc = rights(policy, source_dsn, s3, storage)
    where, method, when = REWRITE_STEPS[step]
    target = {"store": svc.store, "rewrite": object_rewrite, "erase": rights_erase}[where]
    original = getattr(target, method)

    def crashing(*args, **kwargs):
        if when == "before":
            raise Crash(step)
        original(*args, **kwargs)
        raise Crash(step)

    req = request("erasure", "req-crash", kind="customer", subject_id=w["customer"])
    with monkeypatch.context() as patched, pytest.raises(Crash):  # the patch ends with the crash
        patched.setattr(target, method, crashing)
        svc.handle(req)
    assert_nothing_lost(db, s3, storage, w, finished=False)
    assert w["live"] not in f.ids(db, "quotes")  # the live erasure committed before the archives
    if step == "after_live_commit":  # between the live rows' commit and their files
        assert w["recording"] not in f.ids(db, "call_recordings")
        assert "Contents" in s3.list_objects_v2(Bucket=storage.documents_bucket), "the file waits for its disposal"
        pending = "SELECT count(*) FROM retention.document_disposals WHERE disposed_at IS NULL"
        assert db.execute(pending).fetchone()[0] == 1

    report = rights(policy, source_dsn, s3, storage).handle(req)  # the re-run finishes
    assert_nothing_lost(db, s3, storage, w, finished=True)
    # Committed before the crash and the old object deleted, or only committed (the re-run deletes
    # the old object, the rows' only copy): the request erased them, and its report says so.
    assert report["erased"]["intermediate"] == {"quotes": 2}
    assert w["recording"] not in f.ids(db, "call_recordings")
    assert "Contents" not in s3.list_objects_v2(Bucket=storage.documents_bucket), "the recording's file is gone"


def test_engine_recovery_after_an_interrupted_rewrite_then_rerun(db, s3, storage, policy, source_dsn, monkeypatch):
    """The quotes run comes first after the crash: its recovery removes the orphan upload of the
    rewrite (an 'uploading' manifest row like its own); the request's re-run then finishes."""
    w = quotes_world(db, s3, storage, policy, source_dsn)
    svc = rights(policy, source_dsn, s3, storage)
    original = svc.store.put_verified

    def crash_after_upload(*args, **kwargs):
        original(*args, **kwargs)
        raise Crash("after_upload")

    req = request("erasure", "req-engine-first", kind="customer", subject_id=w["customer"])
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(svc.store, "put_verified", crash_after_upload)
        svc.handle(req)
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    assert_nothing_lost(db, s3, storage, w, finished=False)
    assert db.execute("SELECT count(*) FROM retention.archive_manifest WHERE state = 'uploading'").fetchone()[0] == 0
    report = rights(policy, source_dsn, s3, storage).handle(req)
    assert report["erased"]["intermediate"] == {"quotes": 2}
    assert_nothing_lost(db, s3, storage, w, finished=True)


def test_hold_on_the_subject_keeps_everything_and_reports_it(db, s3, storage, policy, source_dsn):
    w = quotes_world(db, s3, storage, policy, source_dsn)
    f.legal_hold(db, "customers", w["customer"])
    before = everything(db, s3, storage)
    report = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "req-held", kind="customer", subject_id=w["customer"])
    )
    rows, manifest, _, versions, docs = everything(db, s3, storage)
    assert (rows, manifest, versions, docs) == (before[0], before[1], before[3], before[4])
    kept = {(k["source"], k["table"]): k for k in report["kept"]}
    assert kept[("live", "quotes")]["reason"] == "legal_hold" and kept[("live", "quotes")]["records"] == 1
    assert kept[("live", "call_recordings")]["reason"] == "legal_hold"
    held_archived = [k for k in report["kept"] if (k["source"], k["table"]) == ("intermediate", "quotes")]
    assert {k["reason"] for k in held_archived} == {"legal_hold"}
    assert sum(k["records"] for k in held_archived) == 2
    assert [k["kept_until"] for k in held_archived] == ["2025-01-10"]  # their own end (issued the same day)
    assert report["erased"]["live"] == {} and report["erased"]["intermediate"] == {}
    # a request id names one request: reused for another action or subject, it is refused
    with pytest.raises(SubjectRequestError, match="another action or subject"):
        rights(policy, source_dsn, s3, storage).handle(request("access", "req-held", kind="customer", subject_id=1))


def test_dag_runs_an_access_request_from_params(airflow_db, db, s3, storage, policy, source_dsn):
    """One light dag.test(): a candidate's access request, as triggered from the UI."""
    from tests.dag_runs import task_states, xcoms

    cv = "cv/candidate.pdf"
    f.put_document(s3, storage.documents_bucket, cv)
    candidate = f.job_application(db, last_contact="2024-01-01", cv_key=cv)
    f.job_application(db, last_contact="2024-01-01", email=OTHER_EMAIL)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "dags" / "retention_subject_requests.py"
    spec = importlib.util.spec_from_file_location("dag_subject_requests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    for task in dag.tasks:
        task.retries = 0
    conf = {
        "request_id": "dag-access-1",
        "action": "access",
        "subject_kind": "candidate",
        "subject_id": candidate,
        "received_on": "2024-06-03",
        "preview": False,
    }
    dag_run = dag.test(logical_date=D, run_conf=conf)
    assert set(task_states(dag_run).values()) == {"success"}
    report = xcoms(dag_run)["handle_request"]
    assert report["found"]["live"] == {"job_applications": 1}
    assert report["export"]["key"] == "exports/dag-access-1/export.zip"
    text = json.dumps(report)
    assert not [v for v in ("Manon", "Petit", "example.fr") if v in text], "XCom holds ids, keys, counts only"
    body = s3.get_object(Bucket=storage.archive_bucket, Key=report["export"]["key"])["Body"].read()
    zf = zipfile.ZipFile(io.BytesIO(body))
    assert [r["id"] for r in json.loads(zf.read("live/job_applications.json"))] == [candidate]
    assert "files/cv/candidate.pdf" in zf.namelist()


def test_retention_runs_finish_an_interrupted_rewrite(db, s3, storage, policy, source_dsn, monkeypatch):
    """No new request needed: a rewrite that crashed after its commit is finished by the next
    run of its purpose (the old object, with the subject's rows, would otherwise stay stored),
    and the purge then finds nothing pending."""
    w = quotes_world(db, s3, storage, policy, source_dsn)
    svc = rights(policy, source_dsn, s3, storage)
    req = request("erasure", "req-left", kind="customer", subject_id=w["customer"])
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(object_rewrite, "_finish", lambda *a, **k: (_ for _ in ()).throw(Crash("after_commit")))
        svc.handle(req)
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    assert_nothing_lost(db, s3, storage, w, finished=True)


def claims_intermediate(tmp_path):
    """The policy with claims (which name an invoice file) archived in the intermediate tier: no
    table with files is intermediate in the shipped policy."""
    import yaml
    from retention.policy import load_policy, policy_path

    data = yaml.safe_load(policy_path().read_text(encoding="utf-8"))
    next(r for r in data["purposes"]["contracts"]["rules"] if r["name"] == "claims")["tier"] = "intermediate"
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_policy(tmp_path / "policy.yaml")


def test_engine_recovery_keeps_the_document_copies_an_interrupted_rewrite_shares(
    db, s3, storage, policy, source_dsn, monkeypatch, tmp_path
):
    """The new object of a rewrite names the old object's document copies of the rows it keeps.
    A crash before its commit leaves it 'uploading': the engine's recovery must not delete those
    copies as an orphan's (the old object, still committed, owns them). Claims moved to the
    intermediate tier for the test (no table with files is intermediate in the shipped policy)."""
    variant = claims_intermediate(tmp_path)
    for key in ("invoices/mine.pdf", "invoices/other.pdf"):
        f.put_document(s3, storage.documents_bucket, key)
    c = f.customer(db, ended="2024-03-01")
    f.claim(db, f.contract(db, customer_id=c, ended="2024-03-01"), invoice_key="invoices/mine.pdf")
    d = f.customer(db, ended="2024-03-01")
    f.claim(db, f.contract(db, customer_id=d, ended="2024-03-01"), invoice_key="invoices/other.pdf")
    archive(db, s3, storage, variant, source_dsn, purposes=("contracts",))
    copies = [k for k, _ in archive_versions(s3, storage) if k.endswith(".documents/invoices/other.pdf")]
    assert len(copies) == 1

    svc = rights(variant, source_dsn, s3, storage)
    original = svc.store.put_verified

    def crash_after_upload(*args, **kwargs):
        original(*args, **kwargs)
        raise Crash("after_upload")

    req = request("erasure", "req-copies", kind="customer", subject_id=c)
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(svc.store, "put_verified", crash_after_upload)
        svc.handle(req)
    archive(db, s3, storage, variant, source_dsn, purposes=("contracts",))
    assert copies[0] in {k for k, _ in archive_versions(s3, storage)}, "the other customer's invoice copy is gone"
    report = rights(variant, source_dsn, s3, storage).handle(req)
    assert report["erased"]["intermediate"] == {"claims": 1}
    assert copies[0] in {k for k, _ in archive_versions(s3, storage)}
    assert not [k for k, _ in archive_versions(s3, storage) if k.endswith(".documents/invoices/mine.pdf")]


def test_an_erasure_keeps_the_file_copy_an_old_object_a_hold_keeps_shares_with_the_new_one(
    db, s3, storage, policy, source_dsn, monkeypatch, tmp_path
):
    """Two customers' claims name the same invoice file and share one archive object. The first
    customer's erasure rewrites it; a hold on their claim, committed after the rewrite's commit,
    keeps the old object (their claim's only copy). The new object names the old one's copy of
    the shared file (the other claim keeps it). The other customer's erasure then rewrites the
    new object without their claim: the copy must stay, the held claim's old object names it
    (found by a review: it was deleted as the removed claim's). Once the hold is released, the
    first customer's erasure deletes the old object and the copy with it."""
    from tests.test_exact_day import versions

    variant = claims_intermediate(tmp_path)
    f.put_document(s3, storage.documents_bucket, "invoices/shared.pdf")
    c = f.customer(db, ended="2024-03-01")
    held_claim = f.claim(db, f.contract(db, customer_id=c, ended="2024-03-01"), invoice_key="invoices/shared.pdf")
    d = f.customer(db, ended="2024-03-01")
    f.claim(db, f.contract(db, customer_id=d, ended="2024-03-01"), invoice_key="invoices/shared.pdf")
    archive(db, s3, storage, variant, source_dsn, purposes=("contracts",))
    [copy] = {k for k, _ in archive_versions(s3, storage) if k.endswith(".documents/invoices/shared.pdf")}
    real_finish = object_rewrite._finish

    def hold_then_finish(*args, **kwargs):
        f.legal_hold(db, "claims", held_claim)  # db: another connection, committed at once
        return real_finish(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(object_rewrite, "_finish", hold_then_finish)
        rights(variant, source_dsn, s3, storage).handle(
            request("erasure", "req-shared-c", kind="customer", subject_id=c)
        )
    [old_key] = [
        k for (k,) in db.execute("SELECT object_key FROM retention.archive_manifest WHERE state = 'rewritten'")
    ]
    assert copy.startswith(old_key.removesuffix(".parquet")) and old_key in versions(s3, storage.archive_bucket)

    report = rights(variant, source_dsn, s3, storage).handle(
        request("erasure", "req-shared-d", kind="customer", subject_id=d)
    )
    assert report["erased"]["intermediate"] == {"claims": 1}, report
    assert copy in versions(s3, storage.archive_bucket), (
        "the file copy of a claim under an active legal hold was deleted with another customer's erased claim"
    )

    db.execute("UPDATE retention.legal_holds SET released_at = now()")
    rights(variant, source_dsn, s3, storage).handle(request("erasure", "req-shared-c-2", kind="customer", subject_id=c))
    assert not [k for k in versions(s3, storage.archive_bucket) if k.startswith(old_key.removesuffix(".parquet"))]


def test_rewritten_object_keeps_every_owner_a_later_hold_needs(db, s3, storage, policy, source_dsn):
    """The new object's owners are the old one's, not "minus the subject's": a kept row can
    belong to the subject through a record the request cannot see (here its prospect record,
    gone from the live tables: as if archived before owners were recorded). A hold placed on
    the subject afterwards must still keep that object from the purge."""
    c = f.customer(db)
    p = f.prospect(db, last_contact="2023-01-01", customer_id=c)
    erased = f.quote(db, issued="2023-01-10", customer_id=c)
    theirs = f.quote(db, issued="2023-01-20", prospect_id=p)  # the subject's through p only
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    db.execute("DELETE FROM app.prospects WHERE id = %s", (p,))
    report = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "req-owners", kind="customer", subject_id=c)
    )
    assert report["erased"]["intermediate"] == {"quotes": 1}
    f.legal_hold(db, "customers", c)
    purge = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2).purge_archives(
        RunContext("quotes", "manual__purge", f.midnight("2025-03-01"))
    )
    assert purge["purged_objects"] == 0 and purge["held_objects"] == 1
    rows = [i for o in committed_objects(db, s3, storage).values() for i in o["rows"]]
    assert theirs in rows and erased not in rows


def test_hold_placed_during_the_rewrite_keeps_the_object_whole(db, s3, storage, policy, source_dsn, monkeypatch):
    """Another connection places a hold on another person's quote in the object after the new
    object is uploaded, before the rewrite's commit: the re-check under the hold lock sees it,
    the old object stays whole and committed, and the upload is removed."""
    w = quotes_world(db, s3, storage, policy, source_dsn)
    svc = rights(policy, source_dsn, s3, storage)
    original = svc.store.put_verified

    def upload_then_hold(*args, **kwargs):
        verified = original(*args, **kwargs)
        f.legal_hold(db, "quotes", min(w["others"]))  # db: another connection, committed at once
        return verified

    monkeypatch.setattr(svc.store, "put_verified", upload_then_hold)
    before = committed_objects(db, s3, storage)
    report = svc.handle(request("erasure", "req-race", kind="customer", subject_id=w["customer"]))
    assert committed_objects(db, s3, storage) == before
    (entry,) = [o for o in report["objects"] if o["tier"] == "intermediate"]
    assert entry["action"] == "kept" and entry["held"] is True
    assert report["erased"]["intermediate"] == {}
    assert archive_versions(s3, storage) == {
        tuple(r)
        for r in db.execute("SELECT object_key, version_id FROM retention.archive_manifest WHERE state = 'committed'")
    }, "the new upload is removed"


def test_object_rewritten_by_another_request_meanwhile_fails_then_the_retry_finishes(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """Two erasures sharing an object (run outside the one-at-a-time DAG): the other person's
    request rewrites it between this one's reading and its rewrite. This request must not end
    as a success with the subject's rows in the replacement object: it fails (retried by
    Airflow), and the retry finds them through the owners and finishes."""
    from retention.rights.subject_rights import IncompleteRequestError

    w = quotes_world(db, s3, storage, policy, source_dsn)
    (d,) = db.execute("SELECT id FROM app.customers WHERE email = %s", (OTHER_EMAIL,)).fetchone()
    svc = rights(policy, source_dsn, s3, storage)
    original = erase_archived.lock_purpose

    def other_request_first(ctx, control, purpose):
        monkeypatch.setattr(erase_archived, "lock_purpose", original)
        rights(policy, source_dsn, s3, storage).handle(request("erasure", "req-other", kind="customer", subject_id=d))
        original(ctx, control, purpose)

    monkeypatch.setattr(erase_archived, "lock_purpose", other_request_first)
    req = request("erasure", "req-mine", kind="customer", subject_id=w["customer"])
    with pytest.raises(IncompleteRequestError):
        svc.handle(req)
    assert db.execute("SELECT state FROM retention.subject_requests WHERE request_id = 'req-mine'").fetchone()[0] == (
        "running"
    )
    report = rights(policy, source_dsn, s3, storage).handle(req)
    assert report["erased"]["intermediate"] == {"quotes": 2}
    rows = [i for o in committed_objects(db, s3, storage).values() for i in o["rows"]]
    assert not set(rows) & w["mine"] and len(rows) == 1  # the anonymous quote only


# ---------------------------------------------------------------------- issue 18, items 6 and 7


@pytest.mark.parametrize("request_id", [".", "..", "...", "-", "_", "=._-", "", "a/b", "é", "x" * 101, "ok\n"])
def test_request_ids_that_cannot_name_an_export_are_refused_and_nothing_is_written(request_id, db, s3, storage):
    """ "." and ".." would make the export key exports/../export.zip (a browser normalises the
    presigned URL away from it) and the audit run id subject_request__..: refused with a clear
    message, before anything is read or written (through the inbox too)."""
    from retention.rights import requests as inbox

    before = everything(db, s3, storage)
    with pytest.raises(SubjectRequestError, match="request_id must be"):
        request("access", request_id)
    with pytest.raises(SubjectRequestError, match="request_id must be"):
        inbox.submit(db, request_id=request_id, action="access", kind="customer", subject_id=1, submitted_by="t")
    assert everything(db, s3, storage) == before
    assert db.execute("SELECT count(*) FROM retention.subject_request_inbox").fetchone()[0] == 0


@pytest.mark.parametrize("email", ["camille\x00@example.fr", "camille@exa\x00mple.fr", "a@b\nc.fr", "no-at-sign", "@x"])
def test_an_address_with_a_nul_or_no_address_is_a_subject_request_error(email, db, s3, storage, policy, source_dsn):
    """A NUL reached PostgreSQL as psycopg's raw DataError: refused as the request's own error,
    without repeating the value, nothing written."""
    from retention.rights import requests as inbox

    before = everything(db, s3, storage)
    with pytest.raises(SubjectRequestError) as refused:
        rights(policy, source_dsn, s3, storage).handle(request("erasure", "req-nul", email=email))
    assert email not in str(refused.value) and "\x00" not in str(refused.value)
    with pytest.raises(SubjectRequestError):
        inbox.submit(db, request_id="req-nul", action="access", kind="email", email=email, submitted_by="t")
    assert everything(db, s3, storage) == before
    assert db.execute("SELECT count(*) FROM retention.subject_request_inbox").fetchone()[0] == 0


ALONE = "Sam.Seul@Example.org"


def test_a_person_known_only_by_archived_rows_is_found_by_email(db, s3, storage, policy, source_dsn):
    """A quote by e-mail from someone who is neither a customer nor a prospect, archived in one
    object with other people's quotes: found by the address (the object's keyed hashes), exported,
    erased from the object; the manifest never holds the address in clear."""
    from retention.archive.backfill_owners import backfill_owners

    theirs = {
        f.quote(db, issued="2023-01-10", email="  sam.seul@example.ORG"),
        f.quote(db, issued="2023-01-20", email=ALONE),
    }
    others = {
        f.quote(db, issued="2023-01-12"),
        f.quote(db, issued="2023-01-15", email=OTHER_EMAIL),
        f.quote(db, issued="2023-01-25"),
    }
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    assert not f.ids(db, "quotes"), "all archived: nothing live to start from"
    manifest = db.execute("SELECT to_jsonb(m)::text FROM retention.archive_manifest AS m").fetchall()
    assert manifest and not [m for (m,) in manifest if "seul" in m.lower()], "keyed hashes only, never the address"
    svc = rights(policy, source_dsn, s3, storage)

    access = svc.handle(request("access", "req-alone-access", email=ALONE))
    assert access["found"]["intermediate"] == {"quotes": 2} and access["subject"]["matched_archived"] == {"quotes": 2}
    body = s3.get_object(Bucket=storage.archive_bucket, Key=access["export"]["key"])["Body"].read()
    exported = json.loads(zipfile.ZipFile(io.BytesIO(body)).read("intermediate/quotes.json"))
    assert {r["id"] for r in exported} == theirs

    # an object whose hashes were never recorded is not searched, and the report says so ...
    db.execute("UPDATE retention.archive_manifest SET identifier_hashes = NULL")
    preview = svc.handle(request("erasure", "req-alone-preview", email=ALONE, preview=True))
    assert preview["found"]["intermediate"] == {} and preview["identifiers_not_recorded"] == len(manifest)
    # ... until retention.archive.backfill_owners records them
    import psycopg

    with psycopg.connect(source_dsn) as conn:
        assert backfill_owners(conn, s3, policy) == len(manifest)
    erasure = svc.handle(request("erasure", "req-alone-erase", email=ALONE))
    assert erasure["erased"]["intermediate"] == {"quotes": 2} and erasure["identifiers_not_recorded"] == 0
    rows = [i for o in committed_objects(db, s3, storage).values() for i in o["rows"]]
    assert sorted(rows) == sorted(others)
    # the rewritten object records the identifiers of the rows it keeps, not the erased person's
    again = svc.handle(request("access", "req-alone-again", email=ALONE, preview=True))
    assert again["found"]["intermediate"] == {} and again["subject"]["matched_archived"] == {}
    assert "seul" not in json.dumps([erasure, again]).lower()


def test_a_finished_requests_evidence_never_changes(db, s3, storage, policy, source_dsn):
    """Re-triggering a finished request's id, with another subject or the same one, is refused
    before anything is written: its evidence row stays as it was (state, run id, reports)."""
    w = quotes_world(db, s3, storage, policy, source_dsn)
    svc = rights(policy, source_dsn, s3, storage)
    svc.handle(request("erasure", "req-final", kind="customer", subject_id=w["customer"]))
    evidence = db.execute("SELECT to_jsonb(r) FROM retention.subject_requests AS r").fetchall()
    assert evidence[0][0]["state"] == "done" and evidence[0][0]["run_id"] == "manual__req-final"
    state = everything(db, s3, storage)
    for again in (
        request("erasure", "req-final", kind="customer", subject_id=w["customer"] + 1000, run_id="manual__2"),
        request("erasure", "req-final", run_id="manual__3"),  # by e-mail
        request("access", "req-final", kind="customer", subject_id=w["customer"], run_id="manual__4"),
        request("erasure", "req-final", kind="customer", subject_id=w["customer"], run_id="manual__5"),  # the same
    ):
        with pytest.raises(SubjectRequestError, match="another action or subject|is finished"):
            svc.handle(again)
        assert db.execute("SELECT to_jsonb(r) FROM retention.subject_requests AS r").fetchall() == evidence
        assert everything(db, s3, storage) == state


def test_every_row_found_has_its_purpose_basis_and_own_end(db, s3, storage, policy, source_dsn):
    """A pending identity document (its check not done: its clock has not started) is a
    legal-obligation record of the rights-requests purpose, not 'no rule'; an open information
    request is the information-requests purpose's; kept until their clock starts, in words."""
    c = f.customer(db, email=EMAIL)
    document = fp.identity_document(db, customer_id=c)  # pending
    question = fp.information_request(db, customer_id=c)  # open
    svc = rights(policy, source_dsn, s3, storage)

    access = svc.handle(request("access", "req-pending", kind="customer", subject_id=c, preview=True))
    for entry in access["index"]:
        assert entry["purpose"] and entry["legal_basis"] and entry["kept_until"], entry
    index = {e["table"]: e for e in access["index"]}
    assert index["identity_documents"] | {"records": 1} == {
        "path": "live/identity_documents.json",
        "source": "live",
        "table": "identity_documents",
        "purpose": "rights_requests",
        "rule": "checked_identity_documents",
        "legal_basis": "legal_obligation",
        "kept_until": "until the identity check is done",
        "records": 1,
    }
    assert index["information_requests"]["purpose"] == "information_requests"
    assert index["information_requests"]["kept_until"] == "until the request is handled"

    erasure = svc.handle(request("erasure", "req-pending-erase", kind="customer", subject_id=c))
    kept = {k["table"]: k for k in erasure["kept"]}
    assert kept["identity_documents"]["reason"] == "legal_obligation"
    assert kept["information_requests"]["reason"] != "no_rule" and kept["information_requests"]["legal_basis"]
    assert {document} <= f.ids(db, "identity_documents") and {question} <= f.ids(db, "information_requests")
    assert "no_rule" not in {k["reason"] for k in erasure["kept"]}


def test_kept_until_is_each_archived_rows_own_end_not_its_objects(db, s3, storage, policy, source_dsn):
    """Two contracts ending on different days of one month: the subject's claim, reimbursement
    and contract are kept until their own contract end + 5 years (the clock read through the
    archived parent rows), not until the date of the object they share with the other person's.
    The objects are dated as an earlier release grouped them (per month: the latest row's end)."""
    c = f.customer(db, ended="2024-03-01", email=EMAIL)
    k1 = f.contract(db, customer_id=c, ended="2024-03-01")
    f.reimbursement(db, f.claim(db, k1))
    d = f.customer(db, ended="2024-03-20", email=OTHER_EMAIL)
    k2 = f.contract(db, customer_id=d, ended="2024-03-20")
    f.reimbursement(db, f.claim(db, k2))
    archive(db, s3, storage, policy, source_dsn, purposes=("contracts",))
    db.execute(
        "UPDATE retention.archive_manifest SET purge_after = '2029-03-20 00:00+01', purge_month = '2029-03'"
    )  # as if per month: the other person's end sets the object's date
    report = rights(policy, source_dsn, s3, storage).handle(
        request("access", "req-own-end", kind="customer", subject_id=c, preview=True)
    )
    ends = {(e["path"], e["kept_until"]) for e in report["index"] if e["source"] == "probative"}
    assert ends == {
        ("probative/claims.json", "2029-03-01"),
        ("probative/reimbursements.json", "2029-03-01"),
        ("probative/contracts.json", "2029-03-01"),
    }
    erasure = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "req-own-end-erase", kind="customer", subject_id=c, preview=True)
    )
    assert {k["kept_until"] for k in erasure["kept"] if k["source"] == "probative"} == {"2029-03-01"}


def test_without_the_identifier_key_objects_record_no_hashes_and_a_request_by_email_is_refused(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    monkeypatch.delenv("RETENTION_IDENTIFIER_KEY")
    f.quote(db, issued="2023-01-10", email=ALONE)
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    assert db.execute("SELECT identifier_hashes FROM retention.archive_manifest").fetchall() == [(None,)]
    before = everything(db, s3, storage)
    for preview in (True, False):
        with pytest.raises(SubjectRequestError, match="RETENTION_IDENTIFIER_KEY"):
            rights(policy, source_dsn, s3, storage).handle(
                request("erasure", "req-no-key", email=ALONE, preview=preview)
            )
    assert everything(db, s3, storage) == before


def test_a_hold_placed_after_an_erasure_rewrite_crashed_keeps_the_subjects_only_copy(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """An erasure request rewrites the quotes object without the customer's rows and crashes after
    its commit, the old object (the customer's only archived copy) still stored. Litigation: a hold
    on the customer is placed. The quotes run's recovery deletes the old object anyway."""
    from retention.archive import rewrite as object_rewrite

    from tests.test_exact_day import versions

    w = quotes_world(db, s3, storage, policy, source_dsn)
    svc = rights(policy, source_dsn, s3, storage)
    [old_key] = [
        k for (k,) in db.execute("SELECT object_key FROM retention.archive_manifest WHERE state = 'committed'")
    ]

    req = request("erasure", "req-crash-hold", kind="customer", subject_id=w["customer"])
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(object_rewrite, "_finish", crash_after_commit)
        svc.handle(req)
    assert old_key in versions(s3, storage.archive_bucket)

    f.legal_hold(db, "customers", w["customer"])
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))  # its recovery finishes the rewrite
    assert old_key in versions(s3, storage.archive_bucket), (
        "the held customer's only archived rows were deleted after the hold was placed"
    )


def test_the_recovery_before_the_units_refuses_a_hold_naming_a_table_renamed_since(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """An erasure rewrites the quotes object without the customer's quotes and crashes after its
    commit, the old object still stored. The quotes run is planned and approved; then a hold is
    placed on a candidate and the job_applications table renamed candidates by a migration. Every
    run, purge and erasure refuses an active hold naming no table of the source schema, before
    anything is deleted (check_holds_name_tables: what it meant to keep cannot be told); the run's
    first archive task (prepare_units: recover_before_units) did not check it, and its recovery
    deleted the old object (found by a review of the order of the checks). It now refuses first."""
    from retention.policy import PolicyError

    from tests.test_exact_day import versions

    w = quotes_world(db, s3, storage, policy, source_dsn)
    [old_key] = [
        k for (k,) in db.execute("SELECT object_key FROM retention.archive_manifest WHERE state = 'committed'")
    ]
    req = request("erasure", "req-crash-renamed", kind="customer", subject_id=w["customer"])
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(object_rewrite, "_finish", crash_after_commit)
        rights(policy, source_dsn, s3, storage).handle(req)
    ctx = RunContext("quotes", "manual__units_after_hold", D)
    plan = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2).make_plan(ctx)

    f.legal_hold(db, "job_applications", f.job_application(db, last_contact="2020-01-01"))
    with f.table_renamed(db, "job_applications", "candidates"):
        recovery = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
        with pytest.raises(PolicyError, match=r"active legal holds name job_applications, no table of app"):
            recovery.recover_before_units(ctx, plan)
        assert old_key in versions(s3, storage.archive_bucket), "deleted by a recovery the checks refuse"


@pytest.mark.parametrize(
    "stored", ["camille.sujet@example.fr\t", "\u00a0camille.sujet@example.fr", "Élodie.Sujet@example.fr"]
)
def test_a_live_email_stored_with_other_whitespace_or_case_is_found(stored, db, s3, storage, policy, source_dsn):
    """The request's address and the archived rows' identifiers are normalised in Python (NFKC,
    strip(), lower()); the live rows are matched under the same normalisation (a tab or a
    non-breaking space kept a live row out of a request that found its archived copy: a review)."""
    f.customer(db, email=stored)
    svc = rights(policy, source_dsn, s3, storage)
    asked = " " + stored.strip().upper() + " "
    report = svc.handle(request("access", "rev-email-ws", email=asked, preview=True))
    assert report["subject"]["matched"] == {"customers": 1}, (stored, report["subject"])


def exported_ids(s3, storage, report, path) -> set[int]:
    """The ids of one part (``live/quotes.json``...) of the access export a report names."""
    body = s3.get_object(Bucket=storage.archive_bucket, Key=report["export"]["key"])["Body"].read()
    zf = zipfile.ZipFile(io.BytesIO(body))
    return {r["id"] for r in json.loads(zf.read(path))} if path in zf.namelist() else set()


def exported_quotes(s3, storage, report) -> set[int]:
    """The quotes' ids in an access export, live or archived (intermediate tier)."""
    return exported_ids(s3, storage, report, "live/quotes.json") | exported_ids(
        s3, storage, report, "intermediate/quotes.json"
    )


def test_an_erasure_deletes_the_subjects_access_exports(db, s3, storage, policy, source_dsn):
    """An access, then an erasure of the same person: the zip of the access (every row the erasure
    erases, in clear) stayed in the archive bucket for its 30 days while the erasure said done (a
    review). The erasure deletes it, every version, and counts it."""
    c = f.customer(db, email="camille.sujet@example.fr")
    q = f.quote(db, issued="2024-05-01", customer_id=c, email="camille.sujet@example.fr")
    svc = rights(policy, source_dsn, s3, storage)
    access = svc.handle(request("access", "rev-exp-access", kind="customer", subject_id=c))
    assert exported_ids(s3, storage, access, "live/quotes.json") == {q}
    erasure = svc.handle(request("erasure", "rev-exp-erase", kind="customer", subject_id=c))
    assert erasure["erased"]["live"].get("quotes") == 1 and q not in f.ids(db, "quotes")
    left = s3.list_object_versions(Bucket=storage.archive_bucket, Prefix="exports/rev-exp-access/")
    assert not left.get("Versions"), "the erased person's access export is still in S3"
    assert erasure["erased"]["access_exports"] == 1


def test_an_access_finds_the_archived_quote_of_a_prospect_who_became_a_customer_since(
    db, s3, storage, policy, source_dsn
):
    """A prospect's quote archived while the prospect was not yet a customer; the prospect then
    becomes a customer. An access by the customer's id reaches the prospect (covers:
    prospects.customer_id), and through it the prospect's archived quote, whose object names only
    the prospect as owner (a review: the quote was missed; the manifest is now searched again from
    the rows found)."""
    p = f.prospect(db, last_contact="2024-05-01", email="hugo.sujet@example.fr")
    q = f.quote(db, issued="2023-01-10", prospect_id=p, email="hugo.sujet@example.fr")
    f.quote(db, issued="2023-01-10")  # someone else's, same object
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    assert q not in f.ids(db, "quotes")
    c = f.customer(db, email="hugo.sujet@example.fr")
    db.execute("UPDATE app.prospects SET customer_id = %s WHERE id = %s", (c, p))
    svc = rights(policy, source_dsn, s3, storage)
    report = svc.handle(request("access", "prospect-became-customer", kind="customer", subject_id=c))
    assert report["found"]["live"].get("prospects") == 1
    assert exported_ids(s3, storage, report, "intermediate/quotes.json") == {q}


def test_a_batch_archived_between_the_archive_search_and_the_live_read_is_found(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """A retention run commits a batch (rows deleted, object committed) after the request looked
    in the manifest but before it read the live rows: the rows are found, in the archive (a review:
    they were in neither)."""
    c = f.customer(db, email="camille.sujet@example.fr")
    q = f.quote(db, issued="2023-01-10", customer_id=c, email="camille.sujet@example.fr")
    real_expand = rights_find.expand
    fired = []

    def expand(ctx, conn, roots, objects):
        if not fired:
            fired.append(1)
            archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))  # another run commits now
        return real_expand(ctx, conn, roots, objects)

    monkeypatch.setattr(rights_find, "expand", expand)
    svc = rights(policy, source_dsn, s3, storage)
    report = svc.handle(request("access", "archived-meanwhile", kind="customer", subject_id=c))
    assert fired and q not in f.ids(db, "quotes")
    assert exported_quotes(s3, storage, report) == {q}, report["found"]


def test_a_batch_archived_between_the_search_and_the_export_read_is_found(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The same, the batch committed after the whole search but before the export read the rows:
    the request searches again."""
    from retention.rights import access as rights_access

    c = f.customer(db, email="camille.sujet@example.fr")
    q = f.quote(db, issued="2023-01-10", customer_id=c, email="camille.sujet@example.fr")
    real_gather = rights_access.gather
    fired = []

    def gather(ctx, conn, found, report):
        if not fired:
            fired.append(1)
            archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
        return real_gather(ctx, conn, found, report)

    monkeypatch.setattr("retention.rights.subject_rights.gather", gather)
    report = rights(policy, source_dsn, s3, storage).handle(
        request("access", "archived-before-the-export", kind="customer", subject_id=c)
    )
    assert fired and q not in f.ids(db, "quotes")
    assert exported_quotes(s3, storage, report) == {q}, report["found"]


def test_an_access_whose_rows_keep_leaving_their_tables_stops_after_a_few_searches(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The access searches again while a row it found live is gone by the export's read, a few
    times at most: then it stops, saying so, and writes no export."""
    from retention.rights import subject_rights as requests
    from retention.rights.requests import SubjectRequestError

    c = f.customer(db)
    real_gather, reads = requests.gather, []

    def gather_as_if_the_rows_had_gone(ctx, conn, found, report):
        reads.append(1)
        gathered = real_gather(ctx, conn, found, report)
        for path in [p for p in gathered.parts if p.startswith("live/")]:
            gathered.parts[path] = []
        return gathered

    monkeypatch.setattr(requests, "gather", gather_as_if_the_rows_had_gone)
    with pytest.raises(SubjectRequestError, match="kept leaving their tables"):
        rights(policy, source_dsn, s3, storage).handle(request("access", "moving", kind="customer", subject_id=c))
    assert len(reads) == requests.SEARCHES_FOR_MOVING_ROWS
    assert not s3.list_objects_v2(Bucket=storage.archive_bucket, Prefix="exports/moving/").get("Contents")


@pytest.mark.parametrize(
    ("access_by", "erasure_by"), [("email", "customer"), ("customer", "email"), ("prospect", "customer")]
)
def test_an_erasure_deletes_the_persons_access_exports_whatever_they_were_asked_by(
    db, s3, storage, policy, source_dsn, access_by, erasure_by
):
    """The same person asked for access by one reference and for erasure by another (their
    address then their customer id, or the prospect they were): the export is theirs all the
    same, and goes with the erasure. Someone else's export stays."""
    address = "camille.sujet@example.fr"
    c = f.customer(db, email=address)
    p = f.prospect(db, last_contact="2024-05-01", email=address, customer_id=c)
    other = f.customer(db, email="someone.else@example.fr")
    svc = rights(policy, source_dsn, s3, storage)
    by = {"email": {"email": address}, "customer": {"kind": "customer", "subject_id": c}}
    by["prospect"] = {"kind": "prospect", "subject_id": p}
    svc.handle(request("access", "theirs", **by[access_by]))
    svc.handle(request("access", "someone-else", kind="customer", subject_id=other))
    erasure = svc.handle(request("erasure", "erase-them", **by[erasure_by]))
    assert erasure["erased"]["access_exports"] == 1
    assert not s3.list_object_versions(Bucket=storage.archive_bucket, Prefix="exports/theirs/").get("Versions")
    assert s3.list_object_versions(Bucket=storage.archive_bucket, Prefix="exports/someone-else/").get("Versions")


def test_a_hold_placed_after_the_rewrite_commit_is_reported_kept_not_erased(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """Another connection places a hold on the subject after the rewrite's commit, before the old
    object's versions are deleted: the old object (the only copy of the subject's archived quotes)
    stays stored, as it must. The report and the evidence said those rows were erased (counted
    under erased.intermediate, the object 'rewritten'), and listed nothing kept (a review)."""
    from tests.test_exact_day import versions

    w = quotes_world(db, s3, storage, policy, source_dsn)
    [old_key] = [
        k for (k,) in db.execute("SELECT object_key FROM retention.archive_manifest WHERE state = 'committed'")
    ]
    real_finish = object_rewrite._finish

    def hold_then_finish(*args, **kwargs):
        f.legal_hold(db, "customers", w["customer"])  # db: another connection, committed at once
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(object_rewrite, "_finish", hold_then_finish)
    report = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "req-held-after-commit", kind="customer", subject_id=w["customer"])
    )
    assert old_key in versions(s3, storage.archive_bucket), "the held subject's only archived copy is kept"
    (evidence,) = db.execute(
        "SELECT reports FROM retention.subject_requests WHERE request_id = 'req-held-after-commit'"
    ).fetchone()[0]
    for said in (report, evidence):
        assert said["erased"]["intermediate"] == {}, f"rows still stored reported erased: {said['erased']}"
        held = [k for k in said["kept"] if (k["source"], k["table"]) == ("intermediate", "quotes")]
        assert {k["reason"] for k in held} == {"legal_hold"} and sum(k["records"] for k in held) == 2, said["kept"]


@pytest.mark.parametrize(
    ("stored", "someone_else"),
    [
        # Python's lower() gives a final sigma (ς) at the end of a word, PostgreSQL's gives σ
        ("ΟΔΥΣΣΕΑΣ@example.gr", "ΟΔΥΣΣΕΑσ@example.gr"),
        # Python's lower() of the dotted capital I is i + U+0307, PostgreSQL's a plain i
        ("İlker.Sujet@example.com.tr", "ilker.sujet@example.com.tr"),
    ],
)
def test_a_live_email_is_matched_as_its_archived_copy_is(stored, someone_else, db, s3, storage, policy, source_dsn):
    """The archived rows are matched on the address as retention.identifiers normalises it
    (Python's NFKC, strip(), lower()); the live rows were matched under PostgreSQL's lower(),
    which differs from Python's for some letters: the request by exactly the stored address
    missed the live row while it found the archived copy, and matched instead a live row of
    another address (found by a review)."""
    mine = f.customer(db, email=stored)
    f.quote(db, issued="2023-01-10", email=stored)
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    f.customer(db, email=someone_else)
    from retention.identifiers import normalise_email

    assert normalise_email(stored) != normalise_email(someone_else)
    report = rights(policy, source_dsn, s3, storage).handle(request("access", "rev-email-case", email=stored))
    assert report["subject"]["matched_archived"] == {"quotes": 1}
    assert report["subject"]["matched"] == {"customers": 1}, report["subject"]
    assert exported_ids(s3, storage, report, "live/customers.json") == {mine}


def test_an_erasure_deletes_the_access_export_a_former_customer_asked_for_by_email(db, s3, storage, policy, source_dsn):
    """A former customer whose customer record is archived (probative) asks for access by e-mail,
    then for erasure by their customer id. The export (their archived quote among the rest) is
    theirs: the erasure looked for exports under the addresses of their live records only, and
    left it in the bucket (found by a review)."""
    c = f.customer(db, ended="2021-01-01", email=EMAIL)
    q = f.quote(db, issued="2023-01-10", customer_id=c, email=EMAIL)
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes", "prospects"))
    assert c not in f.ids(db, "customers") and q not in f.ids(db, "quotes"), "both archived"
    svc = rights(policy, source_dsn, s3, storage)
    access = svc.handle(request("access", "rev-former-access", email=EMAIL))
    assert exported_quotes(s3, storage, access) == {q}
    erasure = svc.handle(request("erasure", "rev-former-erase", kind="customer", subject_id=c))
    assert erasure["erased"]["intermediate"] == {"quotes": 1}
    left = s3.list_object_versions(Bucket=storage.archive_bucket, Prefix="exports/rev-former-access/")
    assert not left.get("Versions"), "the erased person's access export is still in S3"
    assert erasure["erased"]["access_exports"] == 1


@pytest.mark.parametrize("placed", ["before the request", "during the rewrite"])
def test_a_hold_on_the_customer_keeps_the_archived_quote_of_the_prospect_they_were(
    placed, db, s3, storage, policy, source_dsn, monkeypatch
):
    """A prospect's quote is archived (its object's owners: the prospect); the prospect then
    becomes a customer, and the prospect record is archived with the former customer's identity.
    A hold is placed on the customer (litigation: all their records). Their erasure found the
    quote through the archived prospect record, but its object's owners name only the prospect,
    which the hold coverage reaches through live rows only: the quote was erased from the
    archive under the customer's hold (found by a review)."""
    from tests.test_exact_day import versions

    p, q, c, quotes_key, purge_after = a_prospect_who_became_a_customer(db, s3, storage, policy, source_dsn)
    svc = rights(policy, source_dsn, s3, storage)
    if placed == "before the request":
        f.legal_hold(db, "customers", c)
    else:  # by another connection once the new object is uploaded, before the rewrite's commit
        original = svc.store.put_verified

        def upload_then_hold(*args, **kwargs):
            verified = original(*args, **kwargs)
            f.legal_hold(db, "customers", c)
            return verified

        monkeypatch.setattr(svc.store, "put_verified", upload_then_hold)

    report = svc.handle(request("erasure", "rev-held-prospect-quote", kind="customer", subject_id=c))
    assert report["found"]["intermediate"] == {"quotes": 1}, "the quote is the customer's"
    assert report["erased"]["intermediate"] == {}, "the held customer's archived quote was erased"
    assert quotes_key in versions(s3, storage.archive_bucket)
    kept = [k for k in report["kept"] if (k["source"], k["table"]) == ("intermediate", "quotes")]
    assert [k["reason"] for k in kept] == ["legal_hold"]


def test_an_access_lists_the_archived_rows_a_hold_kept_after_their_erasure_was_committed(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """An erasure's rewrite commits, then a hold on the customer keeps the old object (the only
    copy of their archived quotes) until the hold is released. The customer then asks for access:
    those quotes are still stored, theirs, and must be in the export; the search read committed
    objects only, and the old one is 'rewritten' (found by a review)."""
    w = quotes_world(db, s3, storage, policy, source_dsn)
    real_finish = object_rewrite._finish

    def hold_then_finish(*args, **kwargs):
        f.legal_hold(db, "customers", w["customer"])
        return real_finish(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(object_rewrite, "_finish", hold_then_finish)
        rights(policy, source_dsn, s3, storage).handle(
            request("erasure", "rev-held-erase", kind="customer", subject_id=w["customer"])
        )
    access = rights(policy, source_dsn, s3, storage).handle(
        request("access", "rev-held-access", kind="customer", subject_id=w["customer"])
    )
    assert exported_quotes(s3, storage, access) == w["mine"], access["found"]
    assert access["found"]["intermediate"] == {"quotes": 2}
    # the hold released, a new erasure deletes that old object and says so
    db.execute("UPDATE retention.legal_holds SET released_at = now()")
    erasure = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-held-erase-again", kind="customer", subject_id=w["customer"])
    )
    assert erasure["erased"]["intermediate"] == {"quotes": 2}
    assert_nothing_lost(db, s3, storage, w, finished=True)


def test_a_row_archived_while_the_erasure_locks_its_rows_is_not_reported_kept_live(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """A retention run commits a batch (the subject's due quote archived, deleted live) after the
    erasure's transaction found the rows but before it locked them: the erasure erases the quote
    from its archive object, and reported it also as kept live, 'no rule of the retention policy
    describes this record: decide by hand', a row that was nowhere live (found by a review)."""
    c = f.customer(db, email=EMAIL)
    q = f.quote(db, issued="2023-01-10", customer_id=c, email=EMAIL)
    f.quote(db, issued="2023-01-10")  # someone else's, same object
    real_expand = rights_erase.expand
    fired = []

    def expand(ctx, conn, roots, objects):
        found = real_expand(ctx, conn, roots, objects)
        if not fired:
            fired.append(1)
            archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))  # another run commits now
        return found

    monkeypatch.setattr(rights_erase, "expand", expand)
    report = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-archived-while-locking", kind="customer", subject_id=c)
    )
    assert fired and q not in f.ids(db, "quotes")
    assert report["erased"]["intermediate"] == {"quotes": 1}
    assert [k for k in report["kept"] if k["source"] == "live" and k["table"] == "quotes"] == [], report["kept"]


def test_a_hold_through_the_prospect_they_were_keeps_the_old_object_after_the_request_too(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The held quote of the prospect the customer was (its object names the prospect only), a
    hold placed on the customer after the erasure's rewrite committed: the request's own check
    (held_through_parents) keeps the old object, the quote's only copy. The rewrite stays
    'committed'; the next request of anyone else (or the quotes run) finishes it through
    recover_rewrites, whose check sees only the object's owners: the held quote was deleted."""
    from tests.test_exact_day import versions

    p, q, c, quotes_key, purge_after = a_prospect_who_became_a_customer(db, s3, storage, policy, source_dsn)
    real_finish = object_rewrite._finish

    def hold_then_finish(*args, **kwargs):
        f.legal_hold(db, "customers", c)  # another connection, after the rewrite's commit
        return real_finish(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(object_rewrite, "_finish", hold_then_finish)
        report = rights(policy, source_dsn, s3, storage).handle(
            request("erasure", "rev-held-after-commit-prospect", kind="customer", subject_id=c)
        )
    assert report["erased"]["intermediate"] == {}, report["erased"]
    assert quotes_key in versions(s3, storage.archive_bucket), "kept by the request itself"

    someone = f.customer(db, email=OTHER_EMAIL)
    rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-someone-else", kind="customer", subject_id=someone)
    )
    assert quotes_key in versions(s3, storage.archive_bucket), (
        "the held customer's only archived quote was deleted by the next request's recovery"
    )


def test_a_rerun_after_a_crash_past_the_commit_keeps_the_old_object_a_hold_through_the_prospect_keeps(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """An erasure of the customer crashes after its rewrite of the quote of the prospect they were
    committed (the old object, the quote's only copy, still stored); a hold is then placed on the
    customer. The re-run finds the old object held (through the prospect) and reports it kept,
    but first finishes the purpose's pending rewrites (recover_rewrites), whose check reads only
    the old object's owners (the prospect): the held quote was deleted (found by a review)."""
    from tests.test_exact_day import versions

    p, q, c, quotes_key, purge_after = a_prospect_who_became_a_customer(db, s3, storage, policy, source_dsn)

    req = request("erasure", "rev-crash-then-hold", kind="customer", subject_id=c)
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(object_rewrite, "_finish", crash_after_commit)
        rights(policy, source_dsn, s3, storage).handle(req)
    f.legal_hold(db, "customers", c)
    report = rights(policy, source_dsn, s3, storage).handle(req)
    assert report["erased"]["intermediate"] == {}, report["erased"]
    assert quotes_key in versions(s3, storage.archive_bucket), "the held customer's only archived quote was deleted"


def test_the_archived_quote_an_erasure_reports_kept_under_the_customers_hold_is_not_purged_meanwhile(
    db, s3, storage, policy, source_dsn
):
    """A hold on the customer; their erasure reports the archived quote of the prospect they were
    kept under that hold (found through the archived prospect record: held_through_parents). The
    quote's object names only the prospect among its owners, and the purge's hold check reads the
    owners alone: the quotes purge on the object's date deleted the quote the evidence says is
    kept under a hold still active (found by a review)."""
    from tests.test_exact_day import versions

    p, q, c, quotes_key, purge_after = a_prospect_who_became_a_customer(db, s3, storage, policy, source_dsn)
    f.legal_hold(db, "customers", c)
    report = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-held-then-purge", kind="customer", subject_id=c)
    )
    kept = [k for k in report["kept"] if (k["source"], k["table"]) == ("intermediate", "quotes")]
    assert [k["reason"] for k in kept] == ["legal_hold"]

    day = (purge_after + dt.timedelta(days=2)).date().isoformat()
    engine = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    engine.purge_archives(RunContext("quotes", "purge-after-erasure", f.midnight(day)))
    assert quotes_key in versions(s3, storage.archive_bucket), "the quote kept under the customer's hold was purged"


def test_an_old_object_the_quotes_run_deleted_meanwhile_is_reported_deleted(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """An erasure's rewrite committed, a hold then kept its old object (the subject's quotes' only
    copy). Once the hold is released the subject asks again: the request finds the old object and
    says it deletes it, but the quotes run finishes that rewrite first (its recovery), after the
    request's search: no rewrite is pending any more, the request never looked at the purpose
    again, and its evidence said 'delete' with nothing erased, of rows that are gone (a review)."""
    w = quotes_world(db, s3, storage, policy, source_dsn)
    real_finish = object_rewrite._finish

    def hold_then_finish(*args, **kwargs):
        f.legal_hold(db, "customers", w["customer"])
        return real_finish(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(object_rewrite, "_finish", hold_then_finish)
        rights(policy, source_dsn, s3, storage).handle(
            request("erasure", "rev-held-first", kind="customer", subject_id=w["customer"])
        )
    db.execute("UPDATE retention.legal_holds SET released_at = now()")
    real_pending = erase_archived._pending_rewrites

    def quotes_run_first(ctx):
        archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))  # its recovery finishes the rewrite
        return real_pending(ctx)

    monkeypatch.setattr(erase_archived, "_pending_rewrites", quotes_run_first)
    report = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-again-after-run", kind="customer", subject_id=w["customer"])
    )
    assert_nothing_lost(db, s3, storage, w, finished=True)
    assert [o["action"] for o in report["objects"] if o.get("table") == "quotes"] == ["deleted"], report["objects"]
    assert report["erased"]["intermediate"] == {"quotes": 2}


def test_a_held_quote_the_purge_rewrote_since_the_search_is_not_left_unnamed_in_the_new_object(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """A hold on the customer keeps the archived quote of the prospect they were (its object names
    the prospect only: held_through_parents). Between the erasure's search and its naming of the
    customer among the object's owners, the quotes purge rewrites the object (written per month)
    without a neighbour's quote past its end: the subject's quote is now in the new object, whose
    owners are the old ones (the prospect only). The erasure named the customer on the old,
    rewritten object and reported the quote kept under the hold, complete: the new object was
    purged on its date, the held quote with it. A request that finds an object changed since its
    search is incomplete (a retry names the owners of the object the rows are in now)."""
    from tests.test_exact_day import archive_monthly, versions

    p = f.prospect(db, last_contact="2023-01-01", email=EMAIL)
    f.quote(db, issued="2023-01-03")  # someone else's, ends first, same monthly object
    q = f.quote(db, issued="2023-01-10", prospect_id=p, email=EMAIL)
    quotes_engine = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    archive_monthly(quotes_engine, monkeypatch, "2024-06-01")
    c = f.customer(db, ended="2021-01-01", email=EMAIL)
    db.execute("UPDATE app.prospects SET customer_id = %s WHERE id = %s", (c, p))
    archive(db, s3, storage, policy, source_dsn, purposes=("prospects",))
    assert p not in f.ids(db, "prospects") and q not in f.ids(db, "quotes"), "both archived"
    f.legal_hold(db, "customers", c)

    real_through = erase_archived.held_through_parents
    fired = []

    def purge_first(*args, **kwargs):
        if not fired:
            fired.append(True)
            result = quotes_engine.purge_archives(RunContext("quotes", "purge-early", f.midnight("2025-01-04")))
            assert result["rewritten_objects"] == 1, result
        return real_through(*args, **kwargs)

    req = request("erasure", "rev-held-rewritten-meanwhile", kind="customer", subject_id=c)
    with monkeypatch.context() as patched:
        patched.setattr(erase_archived, "held_through_parents", purge_first)
        try:
            rights(policy, source_dsn, s3, storage).handle(req)
        except IncompleteRequestError:  # the DAG's retry
            rights(policy, source_dsn, s3, storage).handle(req)
    assert fired

    quotes_engine.purge_archives(RunContext("quotes", "purge-late", f.midnight("2025-01-12")))
    stored = db.execute(
        "SELECT object_key FROM retention.archive_manifest WHERE table_name = 'quotes' AND %s = ANY(record_ids)"
        " AND state = 'committed'",
        (q,),
    ).fetchall()
    assert stored and stored[0][0] in versions(s3, storage.archive_bucket), (
        "the quote kept under the customer's hold was purged"
    )


def test_a_hold_on_the_customer_a_prospect_became_keeps_the_prospects_archived_quote_at_their_request(
    db, s3, storage, policy, source_dsn
):
    """The prospect asks for erasure; they became a customer since, now under a hold, and both
    the prospect record and its quote are archived (the quote's object names the prospect only,
    the prospect's object names the customer). The hold covers the prospect, so the quote: the
    request, which finds no customer of its own, followed the hold down its rows only from a
    held record of the subject's, rewrote the quote out of the archive, and the purge's check
    (the owners alone) would have deleted it on its date."""
    from tests.test_exact_day import versions

    p, q, c, quotes_key, purge_after = a_prospect_who_became_a_customer(
        db, s3, storage, policy, source_dsn, customer_email=OTHER_EMAIL
    )
    f.legal_hold(db, "customers", c)
    report = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-prospect-held-customer", kind="prospect", subject_id=p)
    )
    assert report["erased"]["intermediate"] == {}, report["erased"]
    kept = [k for k in report["kept"] if (k["source"], k["table"]) == ("intermediate", "quotes")]
    assert [k["reason"] for k in kept] == ["legal_hold"]

    day = (purge_after + dt.timedelta(days=2)).date().isoformat()
    engine = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    engine.purge_archives(RunContext("quotes", "purge-after-prospect-erasure", f.midnight(day)))
    assert quotes_key in versions(s3, storage.archive_bucket), "the quote kept under the customer's hold was purged"


def test_a_run_after_a_crash_past_the_commit_keeps_the_old_object_a_hold_through_the_prospect_keeps(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """An erasure of the customer crashes after its rewrite of the quote of the prospect they were
    committed (the old object, the quote's only copy, still stored); a hold is then placed on the
    customer. The quotes run comes before the request's re-run: its recovery finishes the rewrite
    (recover_rewrites), whose check reads only the old object's owners (the prospect), and
    deleted the held quote (found by a review). The rewrite names the subject's records among the
    old object's owners when it commits."""
    from tests.test_exact_day import versions

    p, q, c, quotes_key, purge_after = a_prospect_who_became_a_customer(db, s3, storage, policy, source_dsn)

    req = request("erasure", "rev-crash-then-hold-then-run", kind="customer", subject_id=c)
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(object_rewrite, "_finish", crash_after_commit)
        rights(policy, source_dsn, s3, storage).handle(req)
    f.legal_hold(db, "customers", c)
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))  # its recovery finishes the rewrite
    assert quotes_key in versions(s3, storage.archive_bucket), "the held customer's only archived quote was deleted"
    report = rights(policy, source_dsn, s3, storage).handle(req)
    assert report["erased"]["intermediate"] == {}, report["erased"]


def test_a_run_after_a_prospects_erasure_crashed_past_the_commit_keeps_the_quote_a_hold_on_their_customer_keeps(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The prospect asks for erasure; they became a customer since, and both the prospect record
    and its quote are archived (the quote's object names the prospect only). The erasure crashes
    after its rewrite of the quote committed; a hold is then placed on the customer, which covers
    the prospect, so the quote. The quotes run comes first: its recovery reads only the old
    object's owners (the prospect, named by the erasure: the customer is not the subject's) and
    deleted the held quote's only copy. The rewrite names the records the subject's archived
    rows name above them too."""
    from tests.test_exact_day import versions

    p, q, c, quotes_key, purge_after = a_prospect_who_became_a_customer(
        db, s3, storage, policy, source_dsn, customer_email=OTHER_EMAIL
    )

    req = request("erasure", "rev-prospect-crash-then-hold", kind="prospect", subject_id=p)
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(object_rewrite, "_finish", crash_after_commit)
        rights(policy, source_dsn, s3, storage).handle(req)
    f.legal_hold(db, "customers", c)
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))  # its recovery finishes the rewrite
    assert quotes_key in versions(s3, storage.archive_bucket), "the held customer's archived quote was deleted"


def test_a_held_quote_the_purge_purged_since_the_search_is_not_reported_kept(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """As above, but the purge purged the held quote's object (its owners name the prospect only)
    between the erasure's search and its naming of the customer among the owners: the request is
    incomplete, and its report (the evidence) must not say the quote is kept under the hold, nor
    list the object as kept: it is no longer stored."""
    from tests.test_exact_day import archive_monthly

    p = f.prospect(db, last_contact="2023-01-01", email=EMAIL)
    f.quote(db, issued="2023-01-03")  # someone else's, same monthly object
    q = f.quote(db, issued="2023-01-10", prospect_id=p, email=EMAIL)
    quotes_engine = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    archive_monthly(quotes_engine, monkeypatch, "2024-06-01")
    c = f.customer(db, ended="2021-01-01", email=EMAIL)
    db.execute("UPDATE app.prospects SET customer_id = %s WHERE id = %s", (c, p))
    archive(db, s3, storage, policy, source_dsn, purposes=("prospects",))
    assert p not in f.ids(db, "prospects") and q not in f.ids(db, "quotes"), "both archived"
    f.legal_hold(db, "customers", c)

    real_through = erase_archived.held_through_parents
    fired = []

    def purge_first(*args, **kwargs):
        if not fired:
            fired.append(True)
            result = quotes_engine.purge_archives(RunContext("quotes", "purge-early", f.midnight("2025-01-12")))
            assert result["purged_objects"] == 1, result
        return real_through(*args, **kwargs)

    req = request("erasure", "rev-held-purged-meanwhile", kind="customer", subject_id=c)
    with monkeypatch.context() as patched, pytest.raises(IncompleteRequestError):
        patched.setattr(erase_archived, "held_through_parents", purge_first)
        rights(policy, source_dsn, s3, storage).handle(req)
    assert fired
    [(reports,)] = db.execute(
        "SELECT reports FROM retention.subject_requests WHERE request_id = %s", (req.request_id,)
    ).fetchall()
    report = reports[-1]
    assert report["incomplete"]
    quotes = [o for o in report["objects"] if o.get("table") == "quotes"]
    assert [o["action"] for o in quotes] == ["changed_meanwhile"], quotes
    assert not [k for k in report["kept"] if (k["source"], k["table"]) == ("intermediate", "quotes")], report["kept"]


def test_an_access_to_rows_archived_under_a_rule_renamed_since_answers(
    tmp_path, db, s3, storage, policy, source_dsn, monkeypatch
):
    """Quotes archived under `unconverted_quotes`, a rule renamed since (the purge keeps such
    objects past their date until someone names their rule). An access by the customer looked the
    object's rule up in the policy to tell each row's own end and stopped on it (StopIteration,
    found by a review): the subject got no answer. The rows are listed, kept until their object's
    recorded date, which is all the archive knows of them."""
    from tests.test_exact_day import policy_with_the_quotes_rule_renamed

    w = quotes_world(db, s3, storage, policy, source_dsn)
    edited = policy_with_the_quotes_rule_renamed(tmp_path, monkeypatch, archive="5 years")
    report = rights(edited, source_dsn, s3, storage).handle(
        request("access", "rev-renamed-rule", kind="customer", subject_id=w["customer"])
    )
    assert exported_ids(s3, storage, report, "intermediate/quotes.json") == w["mine"]
    body = s3.get_object(Bucket=storage.archive_bucket, Key=report["export"]["key"])["Body"].read()
    index = json.loads(zipfile.ZipFile(io.BytesIO(body)).read("index.json"))["parts"]
    archived = [e for e in index if e["path"] == "intermediate/quotes.json"]
    assert [(e["rule"], e["kept_until"]) for e in archived] == [("unconverted_quotes", "2025-01-10")], archived


def test_another_persons_rows_in_an_old_object_a_hold_keeps_are_not_reported_erased(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The subject's erasure rewrote the object they share with another customer, then a hold on
    the subject kept the old object (every row it held, the other customer's among them, still
    stored). The other customer then asks for erasure, then for access: their quote's copy in that
    old object stays stored under the hold; it must be reported kept and be in the export, not
    reported erased and left out (found by a review: the old object counted the subject's removed
    rows only)."""
    w = quotes_world(db, s3, storage, policy, source_dsn)
    other = db.execute("SELECT id FROM app.customers WHERE email = %s", (OTHER_EMAIL,)).fetchone()[0]
    real_finish = object_rewrite._finish

    def hold_then_finish(*args, **kwargs):
        f.legal_hold(db, "quotes", min(w["mine"]))  # on one of the subject's quotes (a dispute)
        return real_finish(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(object_rewrite, "_finish", hold_then_finish)
        rights(policy, source_dsn, s3, storage).handle(
            request("erasure", "rev-held-erase-a", kind="customer", subject_id=w["customer"])
        )
    [(old_key, old_rows)] = db.execute(
        "SELECT object_key, record_ids FROM retention.archive_manifest WHERE state = 'rewritten'"
    ).fetchall()
    from tests.test_exact_day import versions

    erasure = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-other-erase", kind="customer", subject_id=other)
    )
    assert old_key in versions(s3, storage.archive_bucket), "the old object a hold keeps is stored"
    kept = [k for k in erasure["kept"] if (k["source"], k["table"]) == ("intermediate", "quotes")]
    assert sum(k["records"] for k in kept) == 1, (
        f"their quote, still stored in {old_key} ({old_rows}), reported {erasure['erased']}, kept {erasure['kept']}"
    )
    access = rights(policy, source_dsn, s3, storage).handle(
        request("access", "rev-other-access", kind="customer", subject_id=other)
    )
    assert access["found"]["intermediate"] == {"quotes": 1}, access["found"]
    assert len(exported_ids(s3, storage, access, "intermediate/quotes.json")) == 1
    # The hold released, their erasure again deletes the old object, their quote's last copy.
    db.execute("UPDATE retention.legal_holds SET released_at = now()")
    again = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-other-erase-again", kind="customer", subject_id=other)
    )
    assert again["erased"]["intermediate"] == {"quotes": 1}, again
    assert old_key not in versions(s3, storage.archive_bucket)


def test_an_erasure_rewriting_an_object_keeps_the_owners_another_request_named_meanwhile(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """Two requests at once on one object: a customer's erasure has read the object holding their
    quote and the quote of a prospect who became another customer since (held, the prospect record
    archived with that customer). Meanwhile the prospect's erasure names that customer among the
    object's owners (the hold keeps their quote through their rows only). The hold is released,
    the first erasure rewrites the object, and the hold is placed again: the new object must name
    that customer too, or the purge deletes the prospect's quote under the hold (found by a
    review: it was given the owners the first request had read, before the naming)."""
    import threading

    from tests.test_exact_day import versions
    from tests.test_safety import InThread

    p = f.prospect(db, last_contact="2023-01-01", email=EMAIL)
    q = f.quote(db, issued="2023-01-10", prospect_id=p, email=EMAIL)
    d = f.customer(db, email="third.person@example.fr")
    f.quote(db, issued="2023-01-10", customer_id=d)  # the other customer's, same object
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    c = f.customer(db, ended="2021-01-01", email=OTHER_EMAIL)
    db.execute("UPDATE app.prospects SET customer_id = %s WHERE id = %s", (c, p))
    archive(db, s3, storage, policy, source_dsn, purposes=("prospects",))
    assert p not in f.ids(db, "prospects") and q not in f.ids(db, "quotes"), "both archived"
    f.legal_hold(db, "customers", c)

    reached, release = threading.Event(), threading.Event()
    real_lock = erase_archived.lock_purpose

    def paused_lock(*args, **kwargs):
        if not reached.is_set():
            reached.set()
            assert release.wait(60)
        return real_lock(*args, **kwargs)

    monkeypatch.setattr(erase_archived, "lock_purpose", paused_lock)
    first = InThread(
        lambda: rights(policy, source_dsn, s3, storage).handle(
            request("erasure", "rev-race-other", kind="customer", subject_id=d)
        )
    )
    assert reached.wait(30), "the customer's erasure read the object"
    report = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "rev-race-prospect", kind="prospect", subject_id=p)
    )
    assert [k["reason"] for k in report["kept"] if k["table"] == "quotes"] == ["legal_hold"]
    db.execute("UPDATE retention.legal_holds SET released_at = now()")
    release.set()
    first.join()
    f.legal_hold(db, "customers", c)  # placed again

    [(key, owners, purge_after)] = db.execute(
        "SELECT object_key, owner_ids, purge_after FROM retention.archive_manifest WHERE state = 'committed'"
        " AND table_name = 'quotes'"
    ).fetchall()
    assert c in owners.get("customers", []), f"the rewritten object's owners {owners} lost the customer named"
    day = (purge_after + dt.timedelta(days=2)).date().isoformat()
    engine = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    engine.purge_archives(RunContext("quotes", "purge-after-race", f.midnight(day)))
    assert key in versions(s3, storage.archive_bucket), "the prospect's quote purged under the customer's hold"


def test_an_erasure_removes_the_subjects_rows_from_an_upload_a_crashed_run_left(
    db, s3, storage, policy, source_dsn, role_dsn, monkeypatch
):
    """A quotes run crashed after uploading a batch holding the subject's quote (its intent left
    'uploading': an orphan, removed by the purpose's next enforced run). The subject's erasure
    then came first: it erased the live quote and reported the request done, while the orphan
    upload, a copy of that quote, stayed in the bucket (until a run of the purpose, maybe never
    if it went back to preview)."""
    c = f.customer(db, email=EMAIL)
    mine = f.quote(db, issued="2023-01-10", customer_id=c)
    engine = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    original = engine.store.put_verified

    def crash_after_upload(*args, **kwargs):
        original(*args, **kwargs)
        raise Crash("after_upload")

    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(engine.store, "put_verified", crash_after_upload)
        engine.archive_and_delete(RunContext("quotes", "manual__quotes", D))
    (orphan,) = db.execute("SELECT object_key FROM retention.archive_manifest WHERE state = 'uploading'").fetchone()
    assert s3.list_object_versions(Bucket=storage.archive_bucket, Prefix=orphan).get("Versions")
    # As the subject requests run: their own role.
    report = rights(policy, role_dsn("retention_rights"), s3, storage).handle(
        request("erasure", "req-orphan", kind="customer", subject_id=c)
    )
    assert mine not in f.ids(db, "quotes")
    stored = [
        (v["Key"], v["VersionId"])
        for v in s3.list_object_versions(Bucket=storage.archive_bucket).get("Versions", [])
        if v["Key"].endswith(".parquet")
    ]
    copies = [
        key
        for key, version in stored
        if mine
        in pq.read_table(
            io.BytesIO(s3.get_object(Bucket=storage.archive_bucket, Key=key, VersionId=version)["Body"].read())
        )
        .column("id")
        .to_pylist()
    ]
    assert copies == [] or report.get("incomplete"), "the request says done, a copy of the erased quote is stored"
    assert db.execute("SELECT state FROM retention.archive_manifest WHERE object_key = %s", (orphan,)).fetchone() == (
        "abandoned",
    )
    assert report["erased"]["orphan_uploads"] == 1


CASCADING_KEY = (
    "ALTER TABLE app.marketing_messages DROP CONSTRAINT IF EXISTS marketing_messages_marketing_contact_id_fkey,"
    " ADD CONSTRAINT marketing_messages_marketing_contact_id_fkey FOREIGN KEY (marketing_contact_id)"
    " REFERENCES app.marketing_contacts (id){}"
)


@pytest.mark.parametrize("when", ["before the request", "while it decides"])
def test_an_erasure_keeps_a_parent_a_held_row_references_through_a_cascading_key(
    when, db, s3, storage, policy, source_dsn, monkeypatch
):
    """A DBA makes the key from the marketing messages to their contact ON DELETE CASCADE (before
    the request, or while the erasure decides: its row locks do not stop the DDL); one of the
    person's messages is under a legal hold. The erasure kept the held message and deleted its
    contact (erasable): the cascade took the held message along, unaudited (found by a review: a
    kept row was only seen when its key refused the parent's delete). The contact is kept,
    referenced by a kept row, as the engine's row path keeps a parent a child references."""
    import psycopg

    c = f.customer(db, email=EMAIL)
    contact = fp.marketing_contact(db, channel="email", last_contact="2024-01-01", customer_id=c, address=EMAIL)
    held = fp.marketing_message(db, contact)
    f.legal_hold(db, "marketing_messages", held)
    if when == "before the request":
        db.execute(CASCADING_KEY.format(" ON DELETE CASCADE"))
    else:
        db.execute("ALTER TABLE app.marketing_messages DROP CONSTRAINT marketing_messages_marketing_contact_id_fkey")
        decide = rights_erase.classify_live

        def decide_then_migrate(ctx, conn, live):
            decisions = decide(ctx, conn, live)
            with psycopg.connect(source_dsn, autocommit=True) as dba:
                dba.execute("SET lock_timeout = '5s'")
                dba.execute(
                    "ALTER TABLE app.marketing_messages ADD CONSTRAINT marketing_messages_marketing_contact_id_fkey"
                    " FOREIGN KEY (marketing_contact_id) REFERENCES app.marketing_contacts (id) ON DELETE CASCADE"
                )
            return decisions

        monkeypatch.setattr(rights_erase, "classify_live", decide_then_migrate)
    try:
        report = rights(policy, source_dsn, s3, storage).handle(
            request("erasure", "req-cascade", kind="customer", subject_id=c)
        )
        assert f.ids(db, "marketing_messages") == {held}, "the held message went with its contact"
        assert f.ids(db, "marketing_contacts") == {contact}
        kept = {(k["source"], k["table"]): k["reason"] for k in report["kept"]}
        assert kept[("live", "marketing_messages")] == "legal_hold"
        assert kept[("live", "marketing_contacts")] == "referenced_by_kept_row"
        assert "marketing_contacts" not in report["erased"]["live"]
    finally:
        db.execute(CASCADING_KEY.format(""))


def test_an_erasure_retriggered_after_its_files_were_busy_reports_what_its_first_run_erased(
    db, s3, storage, policy, source_dsn
):
    """An erasure's live rows are committed, then the disposal of their files finds the tables
    naming files written by an application transaction still open (DisposalBusyError: 'trigger
    again'). The re-triggered request finds nothing live any more: its report, the request's only
    evidence (the first run wrote none), said nothing was erased and no file (found by a review)."""
    import psycopg
    from retention.archive.documents import DisposalBusyError

    cv = "cv/subject-candidate.pdf"
    f.put_document(s3, storage.documents_bucket, cv)
    cand = f.job_application(db, last_contact="2020-01-01", cv_key=cv)
    db.commit()
    svc = rights(policy, source_dsn, s3, storage)
    req = request("erasure", "req-busy-files", kind="candidate", subject_id=cand)
    with psycopg.connect(source_dsn) as app:
        f.job_application(app, last_contact="2024-12-20")  # not committed: the transaction stays open
        with pytest.raises(DisposalBusyError, match="trigger again"):
            svc.handle(req)
        app.rollback()
    assert cand not in f.ids(db, "job_applications")
    assert s3.head_object(Bucket=storage.documents_bucket, Key=cv), "still pending"
    report = svc.handle(req)
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=storage.documents_bucket, Key=cv)
    assert report["erased"]["live"] == {"job_applications": 1}
    assert report["erased"]["files"] == 1
    (evidence,) = db.execute(
        "SELECT reports FROM retention.subject_requests WHERE request_id = 'req-busy-files'"
    ).fetchone()
    assert [r["erased"]["live"] for r in evidence] == [{"job_applications": 1}]


def test_an_erasure_does_not_count_erased_a_file_another_row_still_names(db, s3, storage, policy, source_dsn):
    """The subject's application names a file another person's live application names too: the
    file stays (kept_shared), and the report counted it among the files erased as well."""
    cv = "cv/shared.pdf"
    f.put_document(s3, storage.documents_bucket, cv)
    cand = f.job_application(db, last_contact="2020-01-01", cv_key=cv)
    f.job_application(db, last_contact="2024-12-20", cv_key=cv)
    db.commit()
    report = rights(policy, source_dsn, s3, storage).handle(
        request("erasure", "req-shared-file", kind="candidate", subject_id=cand)
    )
    assert s3.head_object(Bucket=storage.documents_bucket, Key=cv), "the other row's file stays"
    assert report["erased"]["live"] == {"job_applications": 1}
    assert report["erased"]["files_kept_shared"] == 1
    assert report["erased"]["files"] == 0


def test_an_erasures_preview_counts_the_files_the_erasure_deletes_and_keeps(db, s3, storage, policy, source_dsn):
    """The preview reported 0 files erased and 0 kept whatever the rows erased named, while the
    erasure itself deleted one file and kept another (named by another person's row)."""
    own, shared = "cv/own.pdf", "cv/shared-with-other.pdf"
    for key in (own, shared):
        f.put_document(s3, storage.documents_bucket, key)
    cand = f.job_application(db, last_contact="2020-01-01", cv_key=own, email=EMAIL)
    f.job_application(db, last_contact="2020-02-01", cv_key=shared, email=EMAIL)
    f.job_application(db, last_contact="2024-12-20", cv_key=shared)  # someone else's, kept
    db.commit()
    svc = rights(policy, source_dsn, s3, storage)
    preview = svc.handle(request("erasure", "req-preview-files", preview=True))
    report = svc.handle(request("erasure", "req-preview-files"))
    assert cand not in f.ids(db, "job_applications")
    assert (report["erased"]["files"], report["erased"]["files_kept_shared"]) == (1, 1)
    assert (preview["erased"]["files"], preview["erased"]["files_kept_shared"]) == (1, 1)


def test_an_access_finds_a_row_a_batch_archives_between_the_last_manifest_search_and_the_live_read(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """The search reads the manifest, then the live rows, and stops when a search finds nothing
    new. A quotes batch committed between the last search's manifest read and its live read
    (the quote gone from its table, its object not seen) left the quote in neither: not found,
    not exported, and no row 'gone' for the export's read to search again."""
    c = f.customer(db, ended="2024-03-01", email=EMAIL)
    q = f.quote(db, issued="2023-01-10", customer_id=c, email=EMAIL)
    db.commit()
    calls = []
    candidates = rights_find._candidate_objects

    def batch_committed_after_the_second_search(*args, **kwargs):
        result = candidates(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
            assert q not in f.ids(db, "quotes"), "archived"
        return result

    monkeypatch.setattr(rights_find, "_candidate_objects", batch_committed_after_the_second_search)
    report = rights(policy, source_dsn, s3, storage).handle(
        request("access", "req-moving-quote", kind="customer", subject_id=c)
    )
    assert len(calls) >= 2
    assert sum(tier.get("quotes", 0) for tier in report["found"].values()) == 1
    assert [e for e in report["index"] if e["path"].endswith("/quotes.json")]


def test_an_erasure_retriggered_after_a_crash_among_the_exports_counts_every_export_it_deleted(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """An erasure deletes the person's two access exports, then crashes before the second is
    recorded deleted. Re-triggered, it finishes, and its report, the request's only one,
    counted the second export alone: the first, deleted by the same request, was lost."""
    from retention.rights import exports

    c = f.customer(db, ended="2021-01-01", email=EMAIL)
    f.quote(db, issued="2023-01-10", customer_id=c, email=EMAIL)
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes", "prospects"))
    svc = rights(policy, source_dsn, s3, storage)
    svc.handle(request("access", "rev-crash-access-1", email=EMAIL))
    svc.handle(request("access", "rev-crash-access-2", kind="customer", subject_id=c))
    recorded = exports._record_deleted
    calls = []

    def crash_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Crash("between the second export's deletion and its record")
        return recorded(*args, **kwargs)

    monkeypatch.setattr(exports, "_record_deleted", crash_at_the_second)
    req = request("erasure", "rev-crash-erase", kind="customer", subject_id=c)
    with pytest.raises(Crash):
        svc.handle(req)
    monkeypatch.setattr(exports, "_record_deleted", recorded)
    erasure = svc.handle(req)
    assert not s3.list_object_versions(Bucket=storage.archive_bucket, Prefix="exports/").get("Versions")
    assert erasure["erased"]["access_exports"] == 2


def test_an_erasure_retriggered_after_a_crash_reports_the_orphan_upload_its_first_run_removed(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """An erasure removes the upload a crashed quotes run left holding the subject's quote, then
    crashes before its report. Re-triggered, it finds no orphan left, and its report, the
    request's only one, said none was removed (no erased.orphan_uploads)."""
    c = f.customer(db, email=EMAIL)
    f.quote(db, issued="2023-01-10", customer_id=c)
    engine = RetentionEngine(policy, "quotes", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    original = engine.store.put_verified

    def crash_after_upload(*args, **kwargs):
        original(*args, **kwargs)
        raise Crash("after_upload")

    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(engine.store, "put_verified", crash_after_upload)
        engine.archive_and_delete(RunContext("quotes", "manual__quotes", D))
    svc = rights(policy, source_dsn, s3, storage)
    req = request("erasure", "req-orphan-crash", kind="customer", subject_id=c)

    def crash(*args, **kwargs):
        raise Crash("before the report")

    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(rights_erase.exports, "delete_subject_exports", crash)
        svc.handle(req)
    assert db.execute("SELECT state FROM retention.archive_manifest WHERE state = 'uploading'").fetchone() is None
    report = svc.handle(req)
    assert report["erased"].get("orphan_uploads") == 1


def test_an_erasure_retriggered_after_a_crash_reports_the_archived_rows_its_first_run_erased(
    db, s3, storage, policy, source_dsn, monkeypatch
):
    """An erasure rewrites the archive object holding the person's quote without it, then
    crashes before its report. Re-triggered, it finds the quote nowhere, and its report, the
    request's only one, said no archived row was erased."""
    c = f.customer(db, ended="2021-01-01", email=EMAIL)
    q = f.quote(db, issued="2023-01-10", customer_id=c, email=EMAIL)
    f.quote(db, issued="2023-01-10")  # someone else's, same object
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes", "prospects"))
    assert q not in f.ids(db, "quotes")
    svc = rights(policy, source_dsn, s3, storage)
    req = request("erasure", "req-archived-crash", kind="customer", subject_id=c)

    def crash(*args, **kwargs):
        raise Crash("before the report")

    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(rights_erase.exports, "delete_subject_exports", crash)
        svc.handle(req)
    report = svc.handle(req)
    assert report["erased"]["intermediate"] == {"quotes": 1}
