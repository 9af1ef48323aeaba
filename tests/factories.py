"""Insert crafted rows with only what a test needs to say (the rest gets dull defaults).

Dates are given as Paris calendar dates (or datetimes) and stored as timestamptz.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")


def paris(day: dt.date | dt.datetime | str | None, hour: int = 12) -> dt.datetime | None:
    """A Paris wall-clock instant: a date means that day at `hour`:00."""
    if day is None:
        return None
    if isinstance(day, str):
        day = dt.date.fromisoformat(day)
    if isinstance(day, dt.datetime):
        return day if day.tzinfo else day.replace(tzinfo=PARIS)
    return dt.datetime.combine(day, dt.time(hour), tzinfo=PARIS)


def midnight(day: dt.date | str) -> dt.datetime:
    """The logical date of the daily run of that Paris day."""
    return paris(day, hour=0)


def _insert(conn, table: str, values: dict) -> int:
    cols = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    return conn.execute(
        f"INSERT INTO app.{table} ({cols}) VALUES ({marks}) RETURNING id", list(values.values())
    ).fetchone()[0]


def customer(conn, *, ended: str | dt.date | None = None, created: str = "2015-01-01", **extra) -> int:
    return _insert(
        conn,
        "customers",
        {
            "first_name": "Camille",
            "last_name": "Martin",
            "email": "camille.martin@example.fr",
            "phone": "+33612345678",
            "created_at": paris(created),
            "last_contact_at": paris(ended or created),
            "relationship_ended_at": paris(ended),
            **extra,
        },
    )


def pet(conn, customer_id: int, **extra) -> int:
    return _insert(conn, "pets", {"customer_id": customer_id, "name": "Filou", "species": "dog", **extra})


def contract(
    conn,
    *,
    customer_id: int | None = None,
    started: str = "2016-01-01",
    ended: str | dt.date | dt.datetime | None = None,
    **extra,
) -> int:
    if customer_id is None:
        customer_id = customer(conn)
    pet_id = pet(conn, customer_id)
    return _insert(
        conn,
        "contracts",
        {
            "customer_id": customer_id,
            "pet_id": pet_id,
            "policy_number": f"POL-{_seq():08d}",
            "formula": "essentielle",
            "monthly_premium": "19.90",
            "status": "ended" if ended else "active",
            "started_at": paris(started),
            "ended_at": paris(ended),
            **extra,
        },
    )


_counter = [0]


def _seq() -> int:
    _counter[0] += 1
    return _counter[0]


def quote(
    conn,
    *,
    issued: str | dt.date | dt.datetime,
    contract_id: int | None = None,
    prospect_id: int | None = None,
    customer_id: int | None = None,
    **extra,
) -> int:
    return _insert(
        conn,
        "quotes",
        {
            "email": "lea.dubois@example.fr",
            "species": "cat",
            "formula": "confort",
            "monthly_premium": "24.50",
            "issued_at": paris(issued),
            "contract_id": contract_id,
            "prospect_id": prospect_id,
            "customer_id": customer_id,
            **extra,
        },
    )


def claim(conn, contract_id: int, *, submitted: str = "2017-01-01", invoice_key: str | None = None, **extra) -> int:
    return _insert(
        conn,
        "claims",
        {
            "contract_id": contract_id,
            "submitted_at": paris(submitted),
            "amount_claimed": "120.00",
            "status": "paid",
            "vet_invoice_key": invoice_key,
            **extra,
        },
    )


def reimbursement(conn, claim_id: int, *, paid: str = "2017-02-01", **extra) -> int:
    return _insert(conn, "reimbursements", {"claim_id": claim_id, "paid_at": paris(paid), "amount": "96.00", **extra})


def payment_method(conn, contract_id: int, **extra) -> int:
    return _insert(
        conn,
        "payment_methods",
        {
            "contract_id": contract_id,
            "kind": "card",
            "processor_customer_ref": "cus_test",
            "processor_method_ref": "pm_test",
            "card_brand": "visa",
            "card_last4": "4242",
            "created_at": paris("2016-01-01"),
            **extra,
        },
    )


def prospect(conn, *, last_contact: str | dt.date | dt.datetime, customer_id: int | None = None, **extra) -> int:
    return _insert(
        conn,
        "prospects",
        {
            "email": "hugo.bernard@example.fr",
            "created_at": paris(last_contact),
            "last_contact_at": paris(last_contact),
            "customer_id": customer_id,
            **extra,
        },
    )


def call_recording(
    conn,
    *,
    reason: str,
    started: str | dt.date | dt.datetime,
    audio_key: str | None = None,
    customer_id: int | None = None,
    **extra,
) -> int:
    return _insert(
        conn,
        "call_recordings",
        {
            "reason": reason,
            "started_at": paris(started),
            "duration_s": 300,
            "audio_key": audio_key,
            "customer_id": customer_id,
            "phone_number": "+33698765432",
            **extra,
        },
    )


def call_analysis(
    conn,
    *,
    created: str | dt.date | dt.datetime,
    recording_id: int | None = None,
    document_key: str | None = None,
    **extra,
) -> int:
    return _insert(
        conn,
        "call_analyses",
        {
            "call_recording_id": recording_id,
            "created_at": paris(created),
            "document_key": document_key,
            **extra,
        },
    )


def aml_record(conn, contract_id: int, *, checked: str = "2016-01-01", document_key: str | None = None, **extra) -> int:
    customer_id = conn.execute("SELECT customer_id FROM app.contracts WHERE id = %s", (contract_id,)).fetchone()[0]
    return _insert(
        conn,
        "aml_records",
        {
            "customer_id": customer_id,
            "contract_id": contract_id,
            "checked_at": paris(checked),
            "risk_level": "low",
            "document_key": document_key,
            **extra,
        },
    )


def fraud_case(conn, *, opened: str = "2018-01-01", closed: str | dt.date | dt.datetime | None = None, **extra) -> int:
    return _insert(
        conn,
        "fraud_cases",
        {
            "status": "closed" if closed else "open",
            "opened_at": paris(opened),
            "closed_at": paris(closed),
            **extra,
        },
    )


def fraud_alert(
    conn,
    contract_id: int,
    *,
    raised: str | dt.date | dt.datetime,
    status: str = "pending",
    qualified: str | dt.date | dt.datetime | None = None,
    case_id: int | None = None,
    **extra,
) -> int:
    return _insert(
        conn,
        "fraud_alerts",
        {
            "contract_id": contract_id,
            "raised_at": paris(raised),
            "rule_code": "R-DUP-INVOICE",
            "status": status,
            "qualified_at": paris(qualified),
            "fraud_case_id": case_id,
            **extra,
        },
    )


def job_application(
    conn, *, last_contact: str | dt.date | dt.datetime, hired: bool = False, cv_key: str | None = None, **extra
) -> int:
    return _insert(
        conn,
        "job_applications",
        {
            "first_name": "Manon",
            "last_name": "Petit",
            "email": "manon.petit@example.fr",
            "position": "Data engineer",
            "applied_at": paris(last_contact),
            "last_contact_at": paris(last_contact),
            "hired": hired,
            "cv_key": cv_key,
            **extra,
        },
    )


@contextlib.contextmanager
def table_renamed(conn, table: str, new_name: str):
    """``app.<table>`` renamed ``new_name`` for the block, as by a migration (committed), then
    renamed back whatever the block did."""
    conn.execute(f"ALTER TABLE app.{table} RENAME TO {new_name}")
    conn.commit()
    try:
        yield
    finally:
        conn.rollback()
        conn.execute(f"ALTER TABLE IF EXISTS app.{new_name} RENAME TO {table}")
        conn.commit()


def legal_hold(conn, table: str, record_id: int, *, released: bool = False, reason: str = "litigation") -> int:
    return conn.execute(
        "INSERT INTO retention.legal_holds (table_name, record_id, reason, placed_at, released_at)"
        " VALUES (%s, %s, %s, now() - interval '1 day', CASE WHEN %s THEN now() END) RETURNING id",
        (table, record_id, reason, released),
    ).fetchone()[0]


def ids(conn, table: str) -> set[int]:
    return {r[0] for r in conn.execute(f"SELECT id FROM app.{table}")}


def put_document(s3, bucket: str, key: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=b"%PDF-1.4 synthetic " + key.encode(), ChecksumAlgorithm="SHA256")
