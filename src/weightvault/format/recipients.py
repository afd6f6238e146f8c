"""Recipient stanzas: the ways the file key FK is wrapped, and the region that holds them.

The recipients region is ``u32le(n) ‖ JSON ‖ MAC ‖ zero fill`` where JSON is
the canonical (RFC 8785) list of stanza objects of ``n`` bytes and MAC is
``HMAC-SHA256(K_rmac, stanza context ‖ u32le(n) ‖ JSON)`` with K_rmac derived
from the header secret. Each stanza is an object with a ``type`` and
type-specific string or integer fields. The region is *not* covered by the
header MAC, so adding, removing or rotating a recipient (which needs the file
key) rewrites only this region. Every stanza also authenticates itself: its wrap
binds the 80-byte stanza context (magic, version, suite, flags, file id and key
commitment), so a stanza cannot be moved to another file, and whatever key a
stanza yields is checked against the key commitment before the region MAC or
anything else is checked with it.

Two small interfaces form the seam for new key sources (the key broker adds one):

* :class:`Recipient` wraps FK into a :class:`Stanza` at seal or rewrap time;
* :class:`Identity` tries to unwrap a stanza at open time.

Built-in types: ``kek`` (a local 32-byte key-encryption key), ``hpke-x25519`` and
``hpke-mlkem768-x25519`` (RFC 9180 to a public key), and ``scrypt`` (a
passphrase, for development).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from weightvault.crypto.kdf import scrypt
from weightvault.crypto.keywrap import (
    WRAP_SALT_BYTES,
    HPKEKem,
    InvalidTag,
    hpke_open,
    hpke_public_key,
    hpke_seal,
    unwrap_with_secret,
    wrap_with_secret,
)
from weightvault.crypto.mac import InvalidSignature, hmac_sha256, verify_hmac_sha256
from weightvault.crypto.secret import SecretBytes, random_bytes
from weightvault.encoding import canonical_json, parse_json
from weightvault.errors import HeaderAuthError, HeaderError
from weightvault.format.keys import FILE_KEY_BYTES, FileKey
from weightvault.format.wire import MAX_STANZAS

__all__ = [
    "KEK",
    "HPKEIdentity",
    "HPKERecipient",
    "Identity",
    "Passphrase",
    "Recipient",
    "RecipientsRegion",
    "Stanza",
    "b64decode",
    "b64encode",
    "decode_recipients_region",
    "encode_recipients_region",
    "region_bytes_needed",
]

_LEN: Final = struct.Struct("<I")
MAC_BYTES: Final = 32
_KID_BYTES: Final = 8
_INFO_KEK: Final = b"weightvault/v1 kek-wrap"
_INFO_SCRYPT: Final = b"weightvault/v1 scrypt-wrap"
_INFO_HPKE: Final = b"weightvault/v1 hpke-wrap\x00"
_MAX_FIELD_CHARS: Final = 16384
DEFAULT_SCRYPT_LOG_N: Final = 17


def b64encode(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: object, what: str) -> bytes:
    """Strict, canonical base64; raises HeaderError otherwise."""
    if not isinstance(text, str):
        raise HeaderError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise HeaderError(f"{what} is not valid base64") from exc
    if b64encode(raw) != text:
        raise HeaderError(f"{what} is not canonical base64")
    return raw


@dataclass(frozen=True, slots=True)
class Stanza:
    """One wrapped copy of the file key (or a pointer to a service that releases it)."""

    type: str
    fields: Mapping[str, str | int]

    def __post_init__(self) -> None:
        if not self.type or "type" in self.fields:
            raise ValueError("a stanza needs a type, and 'type' is not a field name")

    @property
    def kid(self) -> str | None:
        """The key id, when the stanza type has one."""
        kid = self.fields.get("kid")
        return kid if isinstance(kid, str) else None

    def to_json(self) -> dict[str, str | int]:
        return {"type": self.type, **self.fields}

    def describe(self) -> str:
        """A one-line summary for people, without any wrapped material."""
        kid = self.kid
        return f"{self.type}" + (f" kid={kid}" if kid else "")


@runtime_checkable
class Recipient(Protocol):
    """Something the file key can be wrapped to."""

    def wrap(self, file_key: FileKey, context: bytes) -> Stanza:
        """Wrap ``file_key`` into a stanza bound to the 80-byte stanza ``context``."""
        ...


@runtime_checkable
class Identity(Protocol):
    """Something that may open a stanza."""

    def unwrap(self, stanza: Stanza, context: bytes) -> FileKey | None:
        """Return the file key if this identity opens ``stanza``, else ``None``.

        ``None`` covers both "not addressed to me" and "addressed to me but does
        not open": the caller reports one opaque error when no identity succeeds.
        """
        ...


@dataclass(frozen=True, slots=True)
class RecipientsRegion:
    """A parsed recipients region: its stanzas and the MAC that must be checked with K_rmac."""

    stanzas: tuple[Stanza, ...]
    authenticated: bytes
    mac: bytes = field(repr=False)

    def verify(self, mac_key: bytes, preamble: bytes) -> None:
        """Check the region MAC over ``preamble`` (all 128 bytes) and the stanzas.

        Raises:
            HeaderAuthError: the region, or the preamble that positions everything
                after it, was modified by someone without the file key.
        """
        try:
            verify_hmac_sha256(mac_key, [preamble, self.authenticated], self.mac)
        except InvalidSignature as exc:
            raise HeaderAuthError("recipients region failed authentication") from exc


def encode_recipients_region(stanzas: Sequence[Stanza], capacity: int, mac_key: bytes, preamble: bytes) -> bytes:
    """Serialise and authenticate stanzas into a region of exactly ``capacity`` bytes.

    ``preamble`` is the file's whole 128-byte preamble, whose ``recipients_len``
    must already be ``capacity``: the MAC binds it, which fixes where the header starts.

    Raises:
        ValueError: the stanzas do not fit.
    """
    body = canonical_json([s.to_json() for s in stanzas])
    authenticated = _LEN.pack(len(body)) + body
    if len(authenticated) + MAC_BYTES > capacity:
        raise ValueError("stanzas do not fit in the recipients region")
    mac = hmac_sha256(mac_key, [preamble, authenticated])
    return authenticated + mac + bytes(capacity - len(authenticated) - MAC_BYTES)


def region_bytes_needed(stanzas: Sequence[Stanza]) -> int:
    """Minimum region size for ``stanzas``."""
    return _LEN.size + len(canonical_json([s.to_json() for s in stanzas])) + MAC_BYTES


def decode_recipients_region(region: bytes | bytearray | memoryview) -> RecipientsRegion:
    """Parse a recipients region strictly; the caller checks its MAC once it has a key.

    Raises:
        HeaderError: bad length, non-zero fill, malformed JSON or stanza.
    """
    if len(region) < _LEN.size + MAC_BYTES:
        raise HeaderError("recipients region too short")
    (n,) = _LEN.unpack(bytes(region[: _LEN.size]))
    if n > len(region) - _LEN.size - MAC_BYTES:
        raise HeaderError("recipients length exceeds its region")
    end = _LEN.size + n
    body = bytes(region[_LEN.size : end])
    mac = bytes(region[end : end + MAC_BYTES])
    if any(region[end + MAC_BYTES :]):
        raise HeaderError("recipients region fill is not zero")
    doc = parse_json(body, "recipients")
    if not isinstance(doc, list) or len(doc) > MAX_STANZAS:
        raise HeaderError(f"recipients must be a list of at most {MAX_STANZAS} stanzas")
    stanzas = []
    for raw in doc:
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or not raw["type"]:
            raise HeaderError("each stanza must be an object with a 'type'")
        fields: dict[str, str | int] = {}
        for key, value in raw.items():
            if key == "type":
                continue
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise HeaderError("stanza fields must be strings or integers")
            if isinstance(value, str) and len(value) > _MAX_FIELD_CHARS:
                raise HeaderError("stanza field too long")
            fields[key] = value
        stanzas.append(Stanza(raw["type"], fields))
    return RecipientsRegion(tuple(stanzas), bytes(region[:end]), mac)


def _kid(label: bytes, material: bytes) -> str:
    return hashlib.sha256(label + material).digest()[:_KID_BYTES].hex()


def _file_key(raw: bytes) -> FileKey | None:
    if len(raw) != FILE_KEY_BYTES or raw == bytes(FILE_KEY_BYTES):
        return None
    return FileKey(raw)


class KEK:
    """A local 32-byte key-encryption key: both a recipient and an identity.

    Stanza: ``{"type": "kek", "kid", "salt", "wrapped"}``; ``wrapped`` is
    AES-256-GCM under HKDF(KEK, salt, "weightvault/v1 kek-wrap") with the stanza
    context as associated data.
    """

    TYPE: Final = "kek"

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a KEK is 32 bytes")
        self._key = SecretBytes(key)
        self.kid = _kid(b"weightvault/v1 kek-id", key)

    @classmethod
    def generate(cls) -> KEK:
        return cls(random_bytes(32))

    def reveal(self) -> bytes:
        return self._key.reveal()

    def __repr__(self) -> str:
        return f"KEK(kid={self.kid}, <redacted>)"

    def wrap(self, file_key: FileKey, context: bytes) -> Stanza:
        return self._wrap_from_parts(file_key, context, random_bytes(WRAP_SALT_BYTES))

    def _wrap_from_parts(self, file_key: FileKey, context: bytes, salt: bytes) -> Stanza:
        """Wrap with a given salt: for known-answer vectors only; :meth:`wrap` draws a fresh one."""
        wrapped = wrap_with_secret(self._key.reveal(), salt, _INFO_KEK, file_key.reveal(), context)
        return Stanza(self.TYPE, {"kid": self.kid, "salt": b64encode(salt), "wrapped": b64encode(wrapped)})

    def unwrap(self, stanza: Stanza, context: bytes) -> FileKey | None:
        if stanza.type != self.TYPE or stanza.kid != self.kid:
            return None
        salt = b64decode(stanza.fields.get("salt"), "kek salt")
        wrapped = b64decode(stanza.fields.get("wrapped"), "kek wrapped key")
        if len(salt) != WRAP_SALT_BYTES:
            return None
        try:
            return _file_key(unwrap_with_secret(self._key.reveal(), salt, _INFO_KEK, wrapped, context))
        except InvalidTag:
            return None


def _hpke_type(kem: HPKEKem) -> str:
    return f"hpke-{kem.value}"


class HPKERecipient:
    """An HPKE public key (X25519, or the ML-KEM-768 + X25519 hybrid).

    Stanza: ``{"type": "hpke-<kem>", "kid", "enc"}`` where ``enc`` is the HPKE
    single-shot output (encapsulated key ‖ ciphertext ‖ tag) with info
    ``"weightvault/v1 hpke-wrap\\0" ‖ stanza context``.
    """

    def __init__(self, kem: HPKEKem, public: bytes) -> None:
        if len(public) != kem.public_key_bytes:
            raise ValueError(f"a {kem.value} public key is {kem.public_key_bytes} bytes")
        self.kem = kem
        self.public = bytes(public)
        self.kid = _kid(b"weightvault/v1 hpke-id", public)

    def __repr__(self) -> str:
        return f"HPKERecipient({self.kem.value}, kid={self.kid})"

    def wrap(self, file_key: FileKey, context: bytes) -> Stanza:
        enc = hpke_seal(self.kem, self.public, file_key.reveal(), _INFO_HPKE + context)
        return Stanza(_hpke_type(self.kem), {"kid": self.kid, "enc": b64encode(enc)})


class HPKEIdentity:
    """The private half of an :class:`HPKERecipient`."""

    def __init__(self, kem: HPKEKem, private: bytes) -> None:
        self.kem = kem
        self._private = SecretBytes(private)
        self.recipient = HPKERecipient(kem, hpke_public_key(kem, private))

    @classmethod
    def generate(cls, kem: HPKEKem) -> HPKEIdentity:
        from weightvault.crypto.keywrap import hpke_generate

        private, _ = hpke_generate(kem)
        return cls(kem, private)

    @property
    def kid(self) -> str:
        return self.recipient.kid

    def reveal(self) -> bytes:
        return self._private.reveal()

    def __repr__(self) -> str:
        return f"HPKEIdentity({self.kem.value}, kid={self.kid}, <redacted>)"

    def unwrap(self, stanza: Stanza, context: bytes) -> FileKey | None:
        if stanza.type != _hpke_type(self.kem) or stanza.kid != self.kid:
            return None
        enc = b64decode(stanza.fields.get("enc"), "hpke enc")
        try:
            return _file_key(hpke_open(self.kem, self._private.reveal(), enc, _INFO_HPKE + context))
        except InvalidTag:
            return None


class Passphrase:
    """A passphrase (scrypt), for development: both a recipient and an identity.

    Stanza: ``{"type": "scrypt", "salt", "log_n", "r", "p", "wrapped"}``. The
    scrypt output is the secret of the same derived-key wrap as :class:`KEK`.
    Readers refuse work factors above 2**20 so a hostile file cannot demand
    gigabytes of memory.
    """

    TYPE: Final = "scrypt"

    def __init__(self, passphrase: str | bytes, log_n: int = DEFAULT_SCRYPT_LOG_N) -> None:
        raw = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
        if not raw:
            raise ValueError("empty passphrase")
        self._passphrase = SecretBytes(raw)
        self.log_n = log_n

    def __repr__(self) -> str:
        return "Passphrase(<redacted>)"

    def wrap(self, file_key: FileKey, context: bytes) -> Stanza:
        salt = random_bytes(WRAP_SALT_BYTES)
        secret = scrypt(self._passphrase.reveal(), salt, log_n=self.log_n, r=8, p=1)
        wrapped = wrap_with_secret(secret, salt, _INFO_SCRYPT, file_key.reveal(), context)
        return Stanza(
            self.TYPE,
            {"salt": b64encode(salt), "log_n": self.log_n, "r": 8, "p": 1, "wrapped": b64encode(wrapped)},
        )

    def unwrap(self, stanza: Stanza, context: bytes) -> FileKey | None:
        if stanza.type != self.TYPE:
            return None
        salt = b64decode(stanza.fields.get("salt"), "scrypt salt")
        wrapped = b64decode(stanza.fields.get("wrapped"), "scrypt wrapped key")
        log_n, r, p = (stanza.fields.get(k) for k in ("log_n", "r", "p"))
        if not (isinstance(log_n, int) and isinstance(r, int) and isinstance(p, int)) or len(salt) != WRAP_SALT_BYTES:
            raise HeaderError("malformed scrypt stanza")
        try:
            secret = scrypt(self._passphrase.reveal(), salt, log_n=log_n, r=r, p=p)
        except ValueError as exc:
            raise HeaderError("scrypt stanza parameters out of range") from exc
        try:
            return _file_key(unwrap_with_secret(secret, salt, _INFO_SCRYPT, wrapped, context))
        except InvalidTag:
            return None
