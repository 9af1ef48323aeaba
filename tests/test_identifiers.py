"""The keyed hashes of identifiers (retention.identifiers): no services needed."""

from __future__ import annotations

import hmac

import pyarrow as pa
import pytest
from retention import identifiers


@pytest.fixture
def key(monkeypatch) -> bytes:
    value = "k" * 40
    monkeypatch.setenv(identifiers.KEY_ENV, value)
    return value.encode()


def test_the_locator_is_hmac_sha256_of_the_normalised_address(key):
    mac = hmac.digest(key, b"email:camille.martin@example.fr", "sha256")
    assert identifiers.email_ref("  Camille.Martin@Example.FR ") == "hmac-sha256:" + mac.hex()
    assert identifiers.email_locator("camille.martin@example.fr") == int.from_bytes(mac[:8], "big", signed=True)
    long_key = "x" * 100  # longer than SHA-256's block: hashed first, as RFC 2104 says
    assert identifiers._Hmac(long_key.encode())("email", "a@b.fr") == hmac.digest(
        long_key.encode(), b"email:a@b.fr", "sha256"
    )


def test_rows_record_the_locators_of_their_emails_and_phones(key):
    rows = pa.table(
        {
            "id": [1, 2, 3, 4],
            "email": ["Camille.Martin@example.fr", "camille.martin@example.fr ", None, "lea@example.fr"],
            "phone": ["06 12 34 56 78", "+33612345678", "not a phone", None],
            "city": ["Paris", "camille.martin@example.fr", "Lyon", "Nice"],  # not an identifier column
        }
    )
    literal = identifiers.locators_literal(rows)
    recorded = {int(v) for v in literal.strip("{}").split(",")}
    phone = int.from_bytes(hmac.digest(key, b"phone:+33612345678", "sha256")[:8], "big", signed=True)
    assert recorded == {
        identifiers.email_locator("camille.martin@example.fr"),
        identifiers.email_locator("lea@example.fr"),
        phone,
    }
    assert identifiers.locators_literal(pa.table({"id": [1], "amount": [3]})) == "{}"


def test_without_a_key_nothing_is_recorded_and_nothing_can_be_looked_up(monkeypatch, caplog):
    monkeypatch.delenv(identifiers.KEY_ENV, raising=False)
    monkeypatch.setattr(identifiers, "_warned", False)
    assert identifiers.locators_literal(pa.table({"id": [1], "email": ["a@b.fr"]})) is None
    assert identifiers.KEY_ENV in caplog.text
    with pytest.raises(identifiers.IdentifierKeyError, match=identifiers.KEY_ENV):
        identifiers.email_locator("a@b.fr")
    monkeypatch.setenv(identifiers.KEY_ENV, "short")
    with pytest.raises(identifiers.IdentifierKeyError, match="32 characters"):
        identifiers.email_ref("a@b.fr")
