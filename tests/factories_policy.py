"""Crafted rows of the tables added for the rest of the policy's schedule (issue 9): services
after subscription, marketing, information requests, rights requests, cookie consent."""

from __future__ import annotations

import datetime as dt

from retention.rights.suppression import email_hash, phone_hash

from tests.factories import _insert, _seq, paris

When = str | dt.date | dt.datetime | None


def vet_consultation(conn, customer_id: int, *, transmitted: When = None, pet_id: int | None = None, **extra) -> int:
    return _insert(
        conn,
        "vet_consultations",
        {
            "customer_id": customer_id,
            "pet_id": pet_id,
            "service": "tele_advice",
            "channel": "video",
            "requested_at": paris("2020-01-01"),
            "video_link": "https://visio.example.fr/room/test",
            "vet_name": "Dr Vétérinaire",
            "reason": "vomissements",
            "transmitted_at": paris(transmitted),
            **extra,
        },
    )


def chat_message(conn, customer_id: int, *, transmitted: When = None, **extra) -> int:
    return _insert(
        conn,
        "chat_messages",
        {
            "customer_id": customer_id,
            "conversation_ref": f"conv_{_seq()}",
            "sender": "customer",
            "sent_at": paris("2020-01-01"),
            "body": "Bonjour, mon chien tousse depuis hier.",
            "transmitted_at": paris(transmitted),
            **extra,
        },
    )


def marketing_contact(
    conn,
    *,
    channel: str,
    last_contact: When,
    customer_id: int | None = None,
    prospect_id: int | None = None,
    **extra,
) -> int:
    return _insert(
        conn,
        "marketing_contacts",
        {
            "customer_id": customer_id,
            "prospect_id": prospect_id,
            "channel": channel,
            "address": "camille.martin@example.fr" if channel == "email" else "+33612345678",
            "created_at": paris("2015-01-01"),
            "last_contact_at": paris(last_contact),
            **extra,
        },
    )


def marketing_message(conn, contact_id: int, *, sent: When = "2020-01-01", **extra) -> int:
    return _insert(
        conn,
        "marketing_messages",
        {
            "marketing_contact_id": contact_id,
            "campaign": "printemps-chats",
            "sent_at": paris(sent),
            "outcome": "sent",
            **extra,
        },
    )


def information_request(
    conn,
    *,
    handled: When = None,
    customer_id: int | None = None,
    prospect_id: int | None = None,
    **extra,
) -> int:
    return _insert(
        conn,
        "information_requests",
        {
            "customer_id": customer_id,
            "prospect_id": prospect_id,
            "channel": "contact_form",
            "email": "hugo.bernard@example.fr",
            "subject": "Franchise",
            "message": "Quelle est la franchise de la formule confort ?",
            "received_at": paris("2020-01-01"),
            "status": "handled" if handled else "open",
            "handled_at": paris(handled),
            **extra,
        },
    )


def identity_document(
    conn,
    *,
    checked: When = None,
    status: str | None = None,
    customer_id: int | None = None,
    prospect_id: int | None = None,
    document_key: str | None = None,
    **extra,
) -> int:
    return _insert(
        conn,
        "identity_documents",
        {
            "customer_id": customer_id,
            "prospect_id": prospect_id,
            "right_exercised": "access",
            "document_type": "id_card",
            "received_at": paris("2020-01-01"),
            "status": status or ("verified" if checked else "pending"),
            "checked_at": paris(checked),
            "document_key": document_key,
            **extra,
        },
    )


def marketing_objection(
    conn,
    *,
    received: When,
    email: str | None = "camille.martin@example.fr",
    phone: str | None = None,
    customer_id: int | None = None,
    prospect_id: int | None = None,
    channel: str = "all",
    **extra,
) -> int:
    return _insert(
        conn,
        "marketing_objections",
        {
            "customer_id": customer_id,
            "prospect_id": prospect_id,
            "channel": channel,
            "email_sha256": email_hash(email) if email else None,
            "phone_sha256": phone_hash(phone) if phone else None,
            "source": "rights_request",
            "received_at": paris(received),
            **extra,
        },
    )


def cookie_consent(conn, *, recorded: When, customer_id: int | None = None, **extra) -> int:
    return _insert(
        conn,
        "cookie_consents",
        {
            "visitor_id": f"visitor-{_seq()}",
            "customer_id": customer_id,
            "choice": "refused_all",
            "analytics": False,
            "advertising": False,
            "social_networks": False,
            "personalisation": False,
            "recorded_at": paris(recorded),
            **extra,
        },
    )
