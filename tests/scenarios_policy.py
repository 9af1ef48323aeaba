"""Crafted scenarios for the purposes added for the rest of the policy's schedule (issue 9):
rows just before, on and after each boundary, NULL clocks (not transmitted, open, pending),
legal holds through the customer or prospect, files in the documents bucket.

Same shape as tests/scenarios.py, so the engine and dag.test() assertions apply unchanged.
"""

from __future__ import annotations

from tests import factories as f
from tests import factories_policy as fp
from tests.scenarios import Scenario, _doc


def subscriber_services(conn, s3, storage) -> Scenario:
    s = Scenario("subscriber_services", f.midnight("2026-06-01"))
    customer = f.customer(conn)
    pet = f.pet(conn, customer)
    day_before = fp.chat_message(conn, customer, transmitted=f.paris("2026-05-31", 18))
    on_the_dot = fp.chat_message(conn, customer, transmitted=f.midnight("2026-06-01"))
    # Transmitted in 2019: its 5 years of archive are over too, deleted without being archived.
    too_old = fp.chat_message(conn, customer, transmitted="2019-01-01")
    s.delete("chat_messages", day_before, on_the_dot, too_old)
    s.archived["chat_messages"] = {day_before, on_the_dot}
    s.keep("chat_messages", fp.chat_message(conn, customer, transmitted=f.paris("2026-06-01", 10)))  # after D
    s.keep("chat_messages", fp.chat_message(conn, customer, sent_at=f.paris("2015-03-01")))  # never transmitted
    transmitted = fp.vet_consultation(conn, customer, pet_id=pet, transmitted="2026-05-31")
    s.delete("vet_consultations", transmitted)
    s.keep("vet_consultations", fp.vet_consultation(conn, customer, pet_id=pet))  # not transmitted yet
    s.keep("vet_consultations", fp.vet_consultation(conn, customer, transmitted="2026-06-02"))
    # A customer under legal hold: their messages and consultations stay, whatever their age.
    held_customer = f.customer(conn)
    f.legal_hold(conn, "customers", held_customer)
    s.keep("chat_messages", fp.chat_message(conn, held_customer, transmitted="2025-01-01"))
    s.keep("vet_consultations", fp.vet_consultation(conn, held_customer, transmitted="2025-01-01"))
    s.keep("customers", customer, held_customer)  # customers belong to the prospects purpose
    s.keep("pets", pet)
    s.held = {"chat_messages": 1, "vet_consultations": 1}
    return s


def marketing(conn, s3, storage) -> Scenario:
    s = Scenario("marketing", f.midnight("2026-06-01"))
    customer = f.customer(conn)
    prospect = f.prospect(conn, last_contact="2025-01-01")
    # E-mail, 3 years from the last contact: 2023-06-01 is on the boundary.
    exact = fp.marketing_contact(conn, channel="email", last_contact="2023-06-01", customer_id=customer)
    s.delete("marketing_messages", fp.marketing_message(conn, exact), fp.marketing_message(conn, exact))
    before = fp.marketing_contact(conn, channel="email", last_contact="2023-05-31", customer_id=customer)
    s.delete("marketing_contacts", exact, before)
    after = fp.marketing_contact(conn, channel="email", last_contact="2023-06-02", customer_id=customer)
    s.keep("marketing_messages", fp.marketing_message(conn, after, sent="2023-06-02"))
    s.keep("marketing_contacts", after)
    # Phone, per channel: the same person's e-mail record does not decide for the phone one.
    phone = fp.marketing_contact(conn, channel="phone", last_contact="2023-06-01", prospect_id=prospect)
    s.delete("marketing_messages", fp.marketing_message(conn, phone, outcome="no_answer"))
    s.delete("marketing_contacts", phone)
    s.keep(
        "marketing_contacts",
        fp.marketing_contact(conn, channel="phone", last_contact="2023-06-02", customer_id=customer),
    )
    # A prospect under legal hold: their phone record and its history stay.
    held_prospect = f.prospect(conn, last_contact="2020-01-01")
    f.legal_hold(conn, "prospects", held_prospect)
    held = fp.marketing_contact(conn, channel="phone", last_contact="2020-01-01", prospect_id=held_prospect)
    s.keep("marketing_messages", fp.marketing_message(conn, held))
    s.keep("marketing_contacts", held)
    s.keep("customers", customer)
    s.keep("prospects", prospect, held_prospect)
    s.held = {"phone_history": 1, "phone_contacts": 1}
    return s


def information_requests(conn, s3, storage) -> Scenario:
    s = Scenario("information_requests", f.midnight("2026-06-01"))
    customer = f.customer(conn)
    prospect = f.prospect(conn, last_contact="2026-05-01")
    s.delete(
        "information_requests",
        fp.information_request(conn, handled=f.paris("2026-05-31", 16), customer_id=customer, channel="chat"),
        fp.information_request(conn, handled=f.midnight("2026-06-01"), prospect_id=prospect),  # handled at D
        fp.information_request(conn, handled="2026-05-20"),  # a visitor, neither customer nor prospect
    )
    s.keep("information_requests", fp.information_request(conn, handled=f.paris("2026-06-01", 10)))  # after D
    s.keep("information_requests", fp.information_request(conn, customer_id=customer))  # open since 2020
    held_customer = f.customer(conn)
    f.legal_hold(conn, "customers", held_customer)
    s.keep("information_requests", fp.information_request(conn, handled="2025-01-01", customer_id=held_customer))
    s.keep("customers", customer, held_customer)
    s.keep("prospects", prospect)
    s.held = {"handled_requests": 1}
    return s


def rights_requests(conn, s3, storage) -> Scenario:
    s = Scenario("rights_requests", f.midnight("2026-06-01"))
    customer = f.customer(conn)
    verified_file = _doc(s3, storage, "identity/verified.pdf")
    s.delete(
        "identity_documents",
        fp.identity_document(conn, checked="2026-05-31", customer_id=customer, document_key=verified_file),
        fp.identity_document(conn, checked=f.midnight("2026-06-01"), status="rejected"),  # verification done at D
    )
    s.deleted_files.add(verified_file)
    kept_file = _doc(s3, storage, "identity/checked-later.pdf")
    s.keep("identity_documents", fp.identity_document(conn, checked=f.paris("2026-06-01", 10), document_key=kept_file))
    pending_file = _doc(s3, storage, "identity/pending.pdf")
    s.keep("identity_documents", fp.identity_document(conn, customer_id=customer, document_key=pending_file))
    s.kept_files |= {kept_file, pending_file}
    held_customer = f.customer(conn)
    f.legal_hold(conn, "customers", held_customer)
    s.keep("identity_documents", fp.identity_document(conn, checked="2025-01-01", customer_id=held_customer))
    # Objections to marketing, 3 years: 2023-06-01 is on the boundary.
    s.delete(
        "marketing_objections",
        fp.marketing_objection(conn, received="2023-06-01"),
        fp.marketing_objection(conn, received="2023-05-31", email=None, phone="06 12 34 56 78", channel="phone"),
    )
    s.keep("marketing_objections", fp.marketing_objection(conn, received="2023-06-02"))
    s.keep("marketing_objections", fp.marketing_objection(conn, received="2024-01-01", customer_id=customer))
    s.keep("customers", customer, held_customer)
    s.held = {"checked_identity_documents": 1}
    return s


def cookie_consents(conn, s3, storage) -> Scenario:
    s = Scenario("cookie_consents", f.midnight("2026-06-01"))
    customer = f.customer(conn)
    s.delete(
        "cookie_consents",
        fp.cookie_consent(conn, recorded="2025-12-01"),  # 6 months: on the boundary
        fp.cookie_consent(conn, recorded="2025-11-30"),
        fp.cookie_consent(conn, recorded="2025-06-01", customer_id=customer, choice="accepted_all", analytics=True),
    )
    s.keep("cookie_consents", fp.cookie_consent(conn, recorded="2025-12-02"))
    held_customer = f.customer(conn)
    f.legal_hold(conn, "customers", held_customer)
    s.keep("cookie_consents", fp.cookie_consent(conn, recorded="2025-01-01", customer_id=held_customer))
    s.keep("customers", customer, held_customer)
    s.held = {"cookie_choices": 1}
    return s


BUILDERS = {
    b.__name__: b for b in (subscriber_services, marketing, information_requests, rights_requests, cookie_consents)
}
