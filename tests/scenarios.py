"""One crafted scenario per purpose: rows just before, on and after each boundary, NULL clocks,
converted quotes, hired candidates, legal holds, open fraud cases, files in the documents bucket.

Each builder returns what a run at `logical_date` must delete and must keep, so the same
scenario serves the engine tests and the dag.test() tests.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from tests import factories as f


@dataclass
class Scenario:
    purpose: str
    logical_date: dt.datetime
    deleted: dict[str, set[int]] = field(default_factory=dict)  # table -> ids the run must delete
    kept: dict[str, set[int]] = field(default_factory=dict)  # table -> ids that must remain
    # table -> ids the archive must hold, where a table has both archived and unarchived rules
    archived: dict[str, set[int]] = field(default_factory=dict)
    archived_files: set[str] = field(default_factory=set)  # documents copied into the archive
    deleted_files: set[str] = field(default_factory=set)  # documents gone from the documents bucket
    kept_files: set[str] = field(default_factory=set)
    waiting: dict[str, int] = field(default_factory=dict)  # rule -> rows reported as waiting
    held: dict[str, int] = field(default_factory=dict)  # rule -> rows reported as held

    def delete(self, table: str, *ids: int) -> None:
        self.deleted.setdefault(table, set()).update(ids)

    def keep(self, table: str, *ids: int) -> None:
        self.kept.setdefault(table, set()).update(ids)


def _doc(s3, storage, key: str) -> str:
    f.put_document(s3, storage.documents_bucket, key)
    return key


def quotes(conn, s3, storage) -> Scenario:
    s = Scenario("quotes", f.midnight("2025-02-28"))
    feb29 = f.quote(conn, issued="2024-02-29")  # + 12 months = 2025-02-28: on the boundary
    day_before = f.quote(conn, issued="2024-02-27")  # due the day before
    s.delete("quotes", feb29, day_before)
    s.keep("quotes", f.quote(conn, issued="2024-03-01"))  # due the day after
    s.keep("quotes", f.quote(conn, issued="2020-01-01", contract_id=f.contract(conn)))  # converted
    held = f.quote(conn, issued="2020-01-01")
    f.legal_hold(conn, "quotes", held)
    s.keep("quotes", held)
    released = f.quote(conn, issued="2020-01-01")
    f.legal_hold(conn, "quotes", released, released=True)
    s.delete("quotes", released)
    prospect = f.prospect(conn, last_contact="2024-01-10")
    of_prospect = f.quote(conn, issued="2023-06-01", prospect_id=prospect)
    s.delete("quotes", of_prospect)
    # The 2020 quote is past its 12 months of archive too: deleted without being archived.
    s.archived["quotes"] = {feb29, day_before, of_prospect}
    s.held = {"unconverted_quotes": 1}
    return s


def contracts(conn, s3, storage) -> Scenario:
    s = Scenario("contracts", f.midnight("2026-01-15"))
    # Ended the day before: the whole contract file goes to the probative archive.
    c1 = f.contract(conn, ended=f.paris("2026-01-14", 18))
    invoice = _doc(s3, storage, "invoices/c1-claim.pdf")
    cl1 = f.claim(conn, c1, invoice_key=invoice)
    s.delete("claims", cl1)
    s.delete("reimbursements", f.reimbursement(conn, cl1))
    s.delete("payment_methods", f.payment_method(conn, c1))
    s.delete("quotes", f.quote(conn, issued="2015-12-01", contract_id=c1))
    s.delete("contracts", c1)
    s.archived_files.add(invoice)
    s.deleted_files.add(invoice)
    # Ended exactly at the logical date: clock + 0 <= D, due.
    c2 = f.contract(conn, ended=f.midnight("2026-01-15"))
    s.delete("contracts", c2)
    # Ended after the logical date, and a running contract: kept with their children.
    c3 = f.contract(conn, ended=f.paris("2026-01-15", 9))
    s.keep("contracts", c3)
    s.keep("claims", f.claim(conn, c3))
    c4 = f.contract(conn)
    s.keep("contracts", c4)
    s.keep("payment_methods", f.payment_method(conn, c4))
    # Ended long ago but its AML record is kept by the AML purpose: the contract waits.
    c5 = f.contract(conn, ended="2025-06-01")
    s.delete("claims", f.claim(conn, c5))
    s.keep("aml_records", f.aml_record(conn, c5))
    s.keep("contracts", c5)
    s.waiting["ended_contracts"] = 1
    # Under a legal hold: the contract and everything under it stays.
    c6 = f.contract(conn, ended="2025-03-01")
    f.legal_hold(conn, "contracts", c6)
    held_invoice = _doc(s3, storage, "invoices/c6-claim.pdf")
    s.keep("contracts", c6)
    s.keep("claims", f.claim(conn, c6, invoice_key=held_invoice))
    s.keep("payment_methods", f.payment_method(conn, c6))
    s.kept_files.add(held_invoice)
    s.held = {"claims": 1, "payment_references": 1, "ended_contracts": 1}
    return s


def prospects(conn, s3, storage) -> Scenario:
    s = Scenario("prospects", f.midnight("2026-06-01"))
    s.delete("prospects", f.prospect(conn, last_contact="2023-06-01"))  # 3 years: on the boundary
    s.delete("prospects", f.prospect(conn, last_contact="2023-05-31"))
    s.keep("prospects", f.prospect(conn, last_contact="2023-06-02"))
    waiting = f.prospect(conn, last_contact="2021-01-01")
    s.keep("quotes", f.quote(conn, issued="2026-01-10", prospect_id=waiting))  # its quote is still kept
    s.keep("prospects", waiting)
    held = f.prospect(conn, last_contact="2020-01-01")
    f.legal_hold(conn, "prospects", held)
    s.keep("prospects", held)
    # A former customer whose relationship ended 3 years ago: identity, prospect record, pets.
    c1 = f.customer(conn, ended="2023-05-31")
    s.delete("prospects", f.prospect(conn, last_contact="2015-01-01", customer_id=c1))
    s.delete("pets", f.pet(conn, c1))
    s.delete("customers", c1)
    # Ended one day too late, a running customer, and a former customer with a held contract.
    s.keep("customers", f.customer(conn, ended="2023-06-02"))
    s.keep("customers", f.customer(conn))
    c4 = f.customer(conn, ended="2022-01-01")
    held_contract = f.contract(conn, customer_id=c4, ended="2021-12-31")
    f.legal_hold(conn, "contracts", held_contract)
    s.keep("customers", c4)
    s.keep("contracts", held_contract)
    s.waiting = {"prospects": 1, "former_customer_pets": 1, "former_customers": 1}
    s.held = {"prospects": 1}
    return s


def call_recordings(conn, s3, storage) -> Scenario:
    s = Scenario("call_recordings", f.midnight("2026-06-01"))
    audio = _doc(s3, storage, "calls/contracting-due.mp3")
    s.delete("call_recordings", f.call_recording(conn, reason="contracting", started="2024-06-01", audio_key=audio))
    s.deleted_files.add(audio)
    kept_contracting = f.call_recording(conn, reason="contracting", started="2024-06-02")
    s.keep("call_recordings", kept_contracting)
    quality_audio = _doc(s3, storage, "calls/quality-due.mp3")
    quality = f.call_recording(conn, reason="quality", started="2025-12-01", audio_key=quality_audio)
    s.delete("call_recordings", quality)
    s.deleted_files.add(quality_audio)
    s.delete("call_recordings", f.call_recording(conn, reason="claims", started="2025-11-30"))
    kept_audio = _doc(s3, storage, "calls/quality-kept.mp3")
    s.keep("call_recordings", f.call_recording(conn, reason="quality", started="2025-12-02", audio_key=kept_audio))
    s.kept_files.add(kept_audio)
    held = f.call_recording(conn, reason="claims", started="2024-01-01")
    f.legal_hold(conn, "call_recordings", held)
    s.keep("call_recordings", held)
    analysis_doc = _doc(s3, storage, "call-analyses/due.pdf")
    s.delete(
        "call_analyses",
        f.call_analysis(conn, created="2025-06-01", recording_id=kept_contracting, document_key=analysis_doc),
    )
    s.deleted_files.add(analysis_doc)
    # Its quality recording is due (6 months) but the analysis has a year: it outlives it.
    s.keep("call_analyses", f.call_analysis(conn, created="2025-12-01", recording_id=quality))
    s.held = {"quality_and_claims_recordings": 1}
    return s


def aml(conn, s3, storage) -> Scenario:
    s = Scenario("aml", f.midnight("2026-01-15"))
    ended = f.contract(conn, ended="2026-01-14")
    doc = _doc(s3, storage, "aml/due.pdf")
    s.delete("aml_records", f.aml_record(conn, ended, document_key=doc))
    s.archived_files.add(doc)
    s.deleted_files.add(doc)
    s.keep("aml_records", f.aml_record(conn, f.contract(conn)))  # running contract
    s.keep("aml_records", f.aml_record(conn, f.contract(conn, ended="2026-01-16")))  # ends later
    held = f.aml_record(conn, f.contract(conn, ended="2025-01-01"))
    f.legal_hold(conn, "aml_records", held)
    s.keep("aml_records", held)
    s.keep("contracts", ended)  # contracts belong to the contracts purpose
    s.held = {"aml_records": 1}
    return s


def fraud(conn, s3, storage) -> Scenario:
    s = Scenario("fraud", f.midnight("2026-06-01"))
    contract = f.contract(conn)
    s.delete("fraud_alerts", f.fraud_alert(conn, contract, raised="2025-12-01"))  # pending, 6 months
    s.keep("fraud_alerts", f.fraud_alert(conn, contract, raised="2025-12-02"))
    s.delete(
        "fraud_alerts",
        f.fraud_alert(conn, contract, raised="2026-05-01", status="not_relevant", qualified=f.paris("2026-05-31", 16)),
    )
    s.delete(
        "fraud_alerts",
        f.fraud_alert(conn, contract, raised="2026-05-01", status="not_relevant", qualified=f.midnight("2026-06-01")),
    )
    s.keep(
        "fraud_alerts",
        f.fraud_alert(conn, contract, raised="2026-05-01", status="not_relevant", qualified=f.paris("2026-06-01", 10)),
    )  # after the logical date
    closed = f.fraud_case(conn, closed="2026-05-20")
    relevant = f.fraud_alert(
        conn, contract, raised="2025-01-01", status="relevant", qualified="2025-02-01", case_id=closed
    )
    s.delete("fraud_alerts", relevant)
    s.archived["fraud_alerts"] = {relevant}  # pending and not-relevant alerts are not archived
    s.delete("fraud_cases", closed)
    open_case = f.fraud_case(conn)
    s.keep(
        "fraud_alerts",
        f.fraud_alert(
            conn, contract, raised="2024-01-01", status="relevant", qualified="2024-02-01", case_id=open_case
        ),
    )
    s.keep("fraud_cases", open_case)
    held = f.fraud_alert(conn, contract, raised="2024-01-01")
    f.legal_hold(conn, "fraud_alerts", held)
    s.keep("fraud_alerts", held)
    s.keep("contracts", contract)
    s.held = {"unqualified_alerts": 1}
    return s


def job_applications(conn, s3, storage) -> Scenario:
    s = Scenario("job_applications", f.midnight("2026-06-01"))
    cv = _doc(s3, storage, "cvs/due.pdf")
    s.delete("job_applications", f.job_application(conn, last_contact="2024-06-01", cv_key=cv))
    s.deleted_files.add(cv)
    s.delete("job_applications", f.job_application(conn, last_contact="2024-05-31"))
    kept_cv = _doc(s3, storage, "cvs/kept.pdf")
    s.keep("job_applications", f.job_application(conn, last_contact="2024-06-02", cv_key=kept_cv))
    s.kept_files.add(kept_cv)
    s.keep("job_applications", f.job_application(conn, last_contact="2015-01-01", hired=True))
    held = f.job_application(conn, last_contact="2020-01-01")
    f.legal_hold(conn, "job_applications", held)
    s.keep("job_applications", held)
    s.held = {"candidates_not_recruited": 1}
    return s


BUILDERS = {b.__name__: b for b in (quotes, contracts, prospects, call_recordings, aml, fraud, job_applications)}
