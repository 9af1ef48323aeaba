"""Keyed hashes of a person's identifiers (e-mail, phone), so that archived rows can be found by
them without the identifiers being stored anywhere but in the rows themselves.

Each archive object records, in ``retention.archive_manifest.identifier_hashes`` (GIN index), a
locator per distinct normalised e-mail and phone of its rows: the first 8 bytes of
HMAC-SHA256(key, "email:<address>") as a bigint. A request by e-mail computes the same locator
and reads only the objects that record it, then matches the rows on the address itself (a
locator shared by chance only costs one more object read). Without the key, a locator cannot be
tested against a list of addresses, unlike a plain SHA-256 of an e-mail.

The key is the environment variable ``RETENTION_IDENTIFIER_KEY`` (32 characters or more) of the
processes that archive or answer requests (the Airflow workers, ``retention.archive.backfill_owners``).
It must never change: locators recorded with another key are not found (keep it with the
database credentials, in the secrets store). Without it, objects are archived with no locators
(NULL: not recorded, like ``owner_ids``), a warning is logged, and a request by e-mail is refused.

No I/O; pyarrow is imported only by ``locators_literal`` (the engine's path).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import struct
import unicodedata

from retention.id_sets import id_array

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


log = logging.getLogger(__name__)

KEY_ENV = "RETENTION_IDENTIFIER_KEY"
MIN_KEY_LENGTH = 32
# The columns whose values identify a person, by kind (the names used by the operational schema).
EMAIL_COLUMNS = frozenset({"email"})
PHONE_COLUMNS = frozenset({"phone", "phone_number"})

_FIRST_8_BYTES = struct.Struct(">q")  # a locator: the MAC's first 8 bytes as a signed bigint
_warned = False


class IdentifierKeyError(RuntimeError):
    """No usable key: identifiers cannot be hashed (the message names the variable, never a value)."""


def identifier_key(required: bool = True) -> bytes | None:
    """The key from ``RETENTION_IDENTIFIER_KEY``; None when unset and not ``required``."""
    value = os.environ.get(KEY_ENV, "")
    if not value:
        if required:
            raise IdentifierKeyError(f"{KEY_ENV} is not set: identifiers cannot be hashed (docs/subject-requests.md)")
        return None
    if len(value) < MIN_KEY_LENGTH:
        raise IdentifierKeyError(f"{KEY_ENV} must be {MIN_KEY_LENGTH} characters or more")
    return value.encode()


class _Hmac:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer states computed once: 2.5 times
    faster than ``hmac.digest`` per value, which counts for an object of 100,000 addresses."""

    def __init__(self, key: bytes):
        padded = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def __call__(self, kind: str, normalised: str) -> bytes:
        inner = self._inner.copy()
        inner.update(f"{kind}:{normalised}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _mac(key: bytes, kind: str, normalised: str) -> bytes:
    return hmac.digest(key, f"{kind}:{normalised}".encode(), "sha256")


def _locator(mac: bytes) -> int:
    return _FIRST_8_BYTES.unpack_from(mac)[0]


def email_locator(email: str) -> int:
    """The locator an object records for a row holding this address (any case or spacing)."""
    return _locator(_mac(identifier_key(), "email", normalise_email(email)))


def email_ref(email: str) -> str:
    """What the evidence keeps of a request's address: its full keyed hash."""
    return "hmac-sha256:" + _mac(identifier_key(), "email", normalise_email(email)).hex()


def locators_literal(rows) -> str | None:
    """The manifest's ``identifier_hashes`` for an Arrow table of archived rows, as one
    ``bigint[]`` literal (retention.id_sets): the distinct locators of the e-mails and
    phones in its identifier columns; ``{}`` when it has none; None (not recorded) when no key
    is configured."""
    key = identifier_key(required=False)
    if key is None:
        global _warned
        if not _warned:
            log.warning(
                "%s is not set: archive objects record no identifier hashes (docs/subject-requests.md)", KEY_ENV
            )
            _warned = True
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    mac = _Hmac(key)
    locators: set[int] = set()
    for name in rows.column_names:
        kind = "email" if name in EMAIL_COLUMNS else "phone" if name in PHONE_COLUMNS else None
        column = rows.column(name)
        if kind is None or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        for value in pc.unique(column.drop_null()).to_pylist():
            if kind == "email":
                normalised = normalise_email(value)
            else:
                try:
                    normalised = normalise_phone(value)
                except ValueError:  # not a phone number: nothing to find it by
                    continue
            if normalised:
                locators.add(_locator(mac(kind, normalised)))
    return id_array(locators)  # unsorted: an index key set, no order to keep (0.05 s per 100,000)
