"""Person key files: round trips, passphrase protection, and refusal of tampered files."""

from __future__ import annotations

import json

import pytest

from weightvault.crypto.keywrap import InvalidTag
from weightvault.custody.person import PersonKey, PersonPublic
from weightvault.errors import ConfigError


def test_round_trip_plain_and_protected() -> None:
    key = PersonKey.generate("alice")
    again = PersonKey.from_bytes(key.to_bytes())
    assert key.public == again.public
    protected = key.to_bytes("correct horse")
    assert b"signing" not in protected.replace(b'"kind"', b"")  # secret fields are inside the ciphertext
    assert PersonKey.is_protected(protected)
    assert key.public == PersonKey.from_bytes(protected, "correct horse").public
    with pytest.raises(ConfigError, match="wrong passphrase"):
        PersonKey.from_bytes(protected, "wrong")
    with pytest.raises(ConfigError, match="passphrase is needed"):
        PersonKey.from_bytes(protected)


def test_a_protected_key_cannot_be_relabelled() -> None:
    doc = json.loads(PersonKey.generate("alice").to_bytes("pw"))
    doc["id"] = "mallory"
    with pytest.raises(ConfigError, match="wrong passphrase"):
        PersonKey.from_bytes(json.dumps(doc).encode(), "pw")


def test_public_keys_and_repr() -> None:
    key = PersonKey.generate("bob")
    assert "redacted" in repr(key)
    assert key.public == PersonPublic.from_json(key.public.to_json())
    sealed = key.public.seal(b"share", b"info")
    assert b"share" == key.open(sealed, b"info")
    with pytest.raises(InvalidTag):
        key.open(sealed, b"other info")
    assert key.public.verify(key.sign(b"m"), b"m")
    assert not key.public.verify(key.sign(b"m"), b"n")


@pytest.mark.parametrize(
    "doc",
    [
        {"kind": "weightvault.person-key", "version": 2, "id": "a"},
        {"kind": "weightvault.kek", "version": 1, "id": "a"},
        {"kind": "weightvault.person-key", "version": 1, "id": "A B"},
        {"kind": "weightvault.person-key", "version": 1, "id": "a", "signing": "AA==", "hpke": "AA=="},
    ],
)
def test_malformed_key_files(doc: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PersonKey.from_bytes(json.dumps(doc).encode())
    with pytest.raises(ConfigError):
        PersonKey.from_bytes(b"not json")
