"""The marketing suppression list's minimal form: a SHA-256 of the normalised e-mail / phone.

An objection to marketing ("droit d'opposition à la prospection") is kept 3 years
(include/retention_policy.yaml, purpose ``rights_requests``) and must outlive the customer or
prospect it concerns: ``app.marketing_objections`` keeps only these hashes (its links to the
person are cleared when the person is deleted). Before any promotional e-mail or call, the
address is normalised and hashed the same way and looked up in the list.

Pure functions but ``is_suppressed`` (one query): importable anywhere. The normalisation is
``retention.identifiers``'s, shared with the keyed hashes of archived identifiers.
"""

from __future__ import annotations

import hashlib

from retention.identifiers import normalise_email, normalise_phone


def email_hash(email: str) -> str:
    return hashlib.sha256(normalise_email(email).encode()).hexdigest()


def phone_hash(phone: str) -> str:
    return hashlib.sha256(normalise_phone(phone).encode()).hexdigest()


SUPPRESSED_SQL = """
SELECT EXISTS (
    SELECT 1 FROM app.marketing_objections
    WHERE (%(email_sha256)s::text IS NOT NULL AND email_sha256 = %(email_sha256)s AND channel IN ('email', 'all'))
       OR (%(phone_sha256)s::text IS NOT NULL AND phone_sha256 = %(phone_sha256)s AND channel IN ('phone', 'all'))
)
"""


def is_suppressed(conn, *, email: str | None = None, phone: str | None = None) -> bool:
    """True when an objection on the list forbids contacting this e-mail (or phone) for marketing."""
    params = {
        "email_sha256": email_hash(email) if email else None,
        "phone_sha256": phone_hash(phone) if phone else None,
    }
    return bool(conn.execute(SUPPRESSED_SQL, params).fetchone()[0])
