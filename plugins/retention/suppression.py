"""The marketing suppression list's minimal form: a SHA-256 of the normalised e-mail / phone.

An objection to marketing ("droit d'opposition à la prospection") is kept 3 years
(include/retention_policy.yaml, purpose ``rights_requests``) and must outlive the customer or
prospect it concerns: ``app.marketing_objections`` keeps only these hashes (its links to the
person are cleared when the person is deleted). Before any promotional e-mail or call, the
address is normalised and hashed the same way and looked up in the list.

Pure functions, no I/O: importable anywhere.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_NON_DIGITS = re.compile(r"[^0-9+]")


def normalise_email(email: str) -> str:
    """Trimmed, Unicode NFKC, lower case: ``' Camille.Martin@Example.FR '`` -> ``'camille.martin@example.fr'``."""
    return unicodedata.normalize("NFKC", email).strip().lower()


def normalise_phone(phone: str, default_country_code: str = "33") -> str:
    """E.164: ``'06 12 34 56 78'``, ``'+33 6 12 34 56 78'``, ``'0033612345678'`` -> ``'+33612345678'``."""
    digits = _NON_DIGITS.sub("", phone.strip())
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    elif digits.startswith("0"):
        digits = f"+{default_country_code}" + digits[1:]
    elif not digits.startswith("+"):
        digits = "+" + digits
    if not re.fullmatch(r"\+[0-9]{8,15}", digits):
        raise ValueError("not a phone number")  # never echo the value: it is personal data
    return digits


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
