"""Keys of the people in custody and approvals: custodians and approvers.

A person key holds an Ed25519 signing key (ceremony submissions, approvals) and an
HPKE ML-KEM-768 + X25519 key (custodians receive their shares encrypted to it; the
hybrid KEM keeps long-lived shares safe from harvest-now-decrypt-later). Its
public half is what the broker and the approval policy register.

Key file documents (JSON)::

    {"kind": "weightvault.person-key", "version": 1, "id", "signing": b64, "hpke": b64}
    {"kind": "weightvault.person-key", "version": 1, "id", "protected": {
        "kdf": "scrypt", "salt": b64, "log_n", "r", "p", "ciphertext": b64}}
    {"kind": "weightvault.person-public-key", "version": 1, "id", "signing": b64, "hpke": b64}

A passphrase-protected key encrypts the canonical JSON of the unprotected
document with AES-256-GCM under scrypt(passphrase, 32-byte random salt); the key
is used once (a fresh salt per write), so the nonce is fixed, and the associated
data binds the kind and the id so that a protected blob cannot be relabelled.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from weightvault.crypto.aead import AEADSuite, open_single_use, seal_single_use
from weightvault.crypto.kdf import scrypt
from weightvault.crypto.keywrap import HPKEKem, InvalidTag, hpke_generate, hpke_open, hpke_public_key, hpke_seal
from weightvault.crypto.secret import SecretBytes, random_bytes
from weightvault.crypto.signing import Ed25519Signer, verify_ed25519
from weightvault.encoding import canonical_json, parse_json
from weightvault.errors import ConfigError, WeightVaultError

__all__ = ["KEM", "PersonKey", "PersonPublic", "check_person_id"]

KEM: Final = HPKEKem.MLKEM768_X25519
KIND: Final = "weightvault.person-key"
PUBLIC_KIND: Final = "weightvault.person-public-key"
_LOG_N: Final = 17
_ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.@")


def check_person_id(value: object) -> str:
    """Person ids are 1-64 characters of a-z, 0-9, '-', '_', '.', '@'."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not set(value) <= _ID_CHARS:
        raise ConfigError("person ids are 1-64 characters of a-z, 0-9, '-', '_', '.', '@'")
    return value


def _b64(value: object, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{what} is not base64") from exc
    if length is not None and len(raw) != length:
        raise ConfigError(f"{what} must be {length} bytes")
    return raw


def _enc(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class PersonPublic:
    """The public identity of a custodian or approver."""

    id: str
    signing: bytes
    hpke: bytes

    def verify(self, signature: bytes, message: bytes) -> bool:
        return verify_ed25519(self.signing, signature, message)

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        return hpke_seal(KEM, self.hpke, plaintext, info)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": PUBLIC_KIND,
            "version": 1,
            "id": self.id,
            "signing": _enc(self.signing),
            "hpke": _enc(self.hpke),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PersonPublic:
        """Parse a public key document (``kind`` optional, so policies can embed the fields).

        Raises:
            ConfigError: a malformed document.
        """
        if doc.get("kind", PUBLIC_KIND) != PUBLIC_KIND:
            raise ConfigError("not a weightvault person public key")
        signing = _b64(doc.get("signing"), "signing key", 32)
        hpke = _b64(doc.get("hpke"), "hpke key", KEM.public_key_bytes)
        return cls(check_person_id(doc.get("id")), signing, hpke)


class PersonKey:
    """A person's private keys. Its ``repr`` never shows them."""

    __slots__ = ("_hpke", "id", "public", "signer")

    def __init__(self, person_id: str, signing_seed: bytes, hpke_private: bytes) -> None:
        self.id = check_person_id(person_id)
        self.signer = Ed25519Signer(signing_seed)
        self._hpke = SecretBytes(hpke_private)
        self.public = PersonPublic(self.id, self.signer.public, hpke_public_key(KEM, hpke_private))

    @classmethod
    def generate(cls, person_id: str) -> PersonKey:
        private, _ = hpke_generate(KEM)
        return cls(person_id, Ed25519Signer.generate().reveal_seed(), private)

    def sign(self, message: bytes) -> bytes:
        return self.signer.sign(message)

    def open(self, sealed: bytes, info: bytes) -> bytes:
        """Decrypt something sealed to this person; raises InvalidTag when it is not for them."""
        return hpke_open(KEM, self._hpke.reveal(), sealed, info)

    def __repr__(self) -> str:
        return f"PersonKey({self.id}, <redacted>)"

    def to_bytes(self, passphrase: str | None = None) -> bytes:
        """The key file content; with a passphrase, the secret part is encrypted (scrypt + AES-256-GCM)."""
        plain = {
            "kind": KIND,
            "version": 1,
            "id": self.id,
            "signing": _enc(self.signer.reveal_seed()),
            "hpke": _enc(self._hpke.reveal()),
        }
        if passphrase is None:
            return canonical_json(plain) + b"\n"
        salt = random_bytes(32)
        key = scrypt(passphrase.encode(), salt, log_n=_LOG_N, r=8, p=1)
        ciphertext = seal_single_use(AEADSuite.AES_256_GCM, key, canonical_json(plain), _protect_aad(self.id))
        doc = {
            "kind": KIND,
            "version": 1,
            "id": self.id,
            "protected": {
                "kdf": "scrypt",
                "salt": _enc(salt),
                "log_n": _LOG_N,
                "r": 8,
                "p": 1,
                "ciphertext": _enc(ciphertext),
            },
        }
        return canonical_json(doc) + b"\n"

    @staticmethod
    def is_protected(data: bytes) -> bool:
        try:
            doc = parse_json(data.strip(), "person key")
        except WeightVaultError:  # parse errors surface in from_bytes
            return False
        return isinstance(doc, dict) and "protected" in doc

    @classmethod
    def from_bytes(cls, data: bytes, passphrase: str | None = None) -> PersonKey:
        """Parse a key file.

        Raises:
            ConfigError: malformed, of another kind, or a wrong or missing passphrase.
        """
        try:
            doc = parse_json(data.strip(), "person key")
        except WeightVaultError as exc:
            raise ConfigError(f"person key is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("version") != 1:
            raise ConfigError("not a weightvault person key (version 1)")
        person_id = check_person_id(doc.get("id"))
        protected = doc.get("protected")
        if protected is not None:
            if passphrase is None:
                raise ConfigError(f"the key of {person_id} is passphrase-protected: a passphrase is needed")
            if not isinstance(protected, dict) or protected.get("kdf") != "scrypt":
                raise ConfigError("unknown key protection")
            try:
                key = scrypt(
                    passphrase.encode(),
                    _b64(protected.get("salt"), "salt", 32),
                    log_n=int(protected.get("log_n", 0)),
                    r=int(protected.get("r", 0)),
                    p=int(protected.get("p", 0)),
                )
            except (TypeError, ValueError) as exc:
                raise ConfigError("key protection parameters out of range") from exc
            try:
                inner = open_single_use(
                    AEADSuite.AES_256_GCM, key, _b64(protected.get("ciphertext"), "ciphertext"), _protect_aad(person_id)
                )
            except InvalidTag as exc:
                raise ConfigError(f"wrong passphrase for the key of {person_id}") from exc
            return cls.from_bytes(inner)
        return cls(
            person_id,
            _b64(doc.get("signing"), "signing key", 32),
            _b64(doc.get("hpke"), "hpke key", KEM.private_key_bytes),
        )


def _protect_aad(person_id: str) -> bytes:
    return canonical_json({"kind": KIND, "id": person_id})
