"""The purposes added for the rest of the policy's schedule (issue 9) through the engine,
against real PostgreSQL and S3: exactly the due rows go, the archive holds exactly them, files
follow their rows, a second run is a no-op; and how the new tables meet the older purposes
(a marketing objection outlives its person, a marketing record makes its customer wait)."""

from __future__ import annotations

import pytest
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.rights.suppression import email_hash, is_suppressed, normalise_email, normalise_phone, phone_hash

from tests import factories as f
from tests import factories_policy as fp


@pytest.mark.integration
def test_an_objection_outlives_the_former_customer_it_concerns(db, s3, storage, policy, source_dsn):
    """The prospects purpose deletes a former customer 3 years after the relationship; their
    objection to marketing (received later) stays on the suppression list, unlinked."""
    customer = f.customer(db, ended="2023-05-31", email="Camille.Martin@Example.fr")
    objection = fp.marketing_objection(
        db, received="2025-01-10", customer_id=customer, email=" camille.martin@example.FR"
    )
    consent = fp.cookie_consent(db, recorded="2026-05-01", customer_id=customer)
    engine = RetentionEngine(policy, "prospects", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    engine.archive_and_delete(RunContext("prospects", "run", f.midnight("2026-06-01")))

    assert customer not in f.ids(db, "customers")
    row = db.execute(
        "SELECT customer_id, email_sha256 FROM app.marketing_objections WHERE id = %s", (objection,)
    ).fetchone()
    assert row == (None, email_hash("camille.martin@example.fr"))
    assert is_suppressed(db, email="CAMILLE.MARTIN@example.fr ")
    assert not is_suppressed(db, email="someone.else@example.fr")
    assert consent in f.ids(db, "cookie_consents")  # the consent proof outlives the account too


@pytest.mark.integration
def test_a_former_customer_waits_for_their_marketing_record(db, s3, storage, policy, source_dsn):
    """A foreign key to customers makes the customer wait while the child's own period runs."""
    customer = f.customer(db, ended="2023-05-31")
    contact = fp.marketing_contact(db, channel="phone", last_contact="2024-01-10", customer_id=customer)
    engine = RetentionEngine(policy, "prospects", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    outcomes = {o.rule: o for o in engine.archive_and_delete(RunContext("prospects", "run", f.midnight("2026-06-01")))}
    assert outcomes["former_customers"].waiting == {"marketing_contacts": 1}
    assert customer in f.ids(db, "customers") and contact in f.ids(db, "marketing_contacts")


@pytest.mark.integration
def test_a_hold_on_a_customer_covers_their_rows_in_every_new_table(db, policy, source_dsn):
    from retention.policy.coverage import covered_records_sql

    customer = f.customer(db)
    f.legal_hold(db, "customers", customer)
    rows = {
        "vet_consultations": fp.vet_consultation(db, customer),
        "chat_messages": fp.chat_message(db, customer),
        "marketing_contacts": (
            contact := fp.marketing_contact(db, channel="email", last_contact="2020-01-01", customer_id=customer)
        ),
        "marketing_messages": fp.marketing_message(db, contact),
        "information_requests": fp.information_request(db, customer_id=customer),
        "identity_documents": fp.identity_document(db, customer_id=customer),
        "marketing_objections": fp.marketing_objection(db, received="2024-01-01", customer_id=customer),
        "cookie_consents": fp.cookie_consent(db, recorded="2026-01-01", customer_id=customer),
    }
    covered = set(db.execute(covered_records_sql(policy)).fetchall())
    assert {(t, i) for t, i in rows.items()} <= covered


def test_suppression_hashes_normalise_first():
    assert normalise_email("  Camille.MARTIN@Example.FR ") == "camille.martin@example.fr"
    for phone in ("06 12 34 56 78", "+33 6 12 34 56 78", "0033612345678", "+33612345678"):
        assert normalise_phone(phone) == "+33612345678"
    assert phone_hash("06.12.34.56.78") == phone_hash("+33612345678")
    assert len(email_hash("a@b.fr")) == 64
    with pytest.raises(ValueError):
        normalise_phone("12")
