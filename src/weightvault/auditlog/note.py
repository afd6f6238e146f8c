"""C2SP signed notes: parsing, signing, verifying, and verifier keys (vkeys).

A signed note is UTF-8 text ending in a newline, a blank line, then signature
lines ``— <key name> base64(key id ‖ signature)``. Parsing is strict: valid UTF-8,
no control characters other than newline, an em dash (U+2014) and one space
starting every signature line, canonical base64, key names without spaces or
``+``, and at most :data:`MAX_SIGNATURES` signatures.

Two signature types are implemented: Ed25519 (type 0x01, over the note text) for
logs, and timestamped Ed25519 cosignatures (type 0x04, c2sp.org/tlog-cosignature)
for witnesses. Verifiers ignore signatures from unknown keys (name and id must both
match) and reject the note if a known key's signature fails to verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from weightvault.crypto.signing import Ed25519Signer, verify_ed25519
from weightvault.errors import CheckpointError

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "TYPE_COSIGNATURE",
    "TYPE_ED25519",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "format_signature_line",
    "key_id",
    "parse_note",
    "signed_by",
]

EM_DASH: Final = "\u2014"
TYPE_ED25519: Final = 0x01
TYPE_COSIGNATURE: Final = 0x04
MAX_SIGNATURES: Final = 16
MAX_NOTE_BYTES: Final = 64 << 10
_COSIG_HEADER: Final = b"cosignature/v1\ntime %d\n"


def key_id(name: str, sig_type: int, public: bytes) -> int:
    """SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4] as a big-endian uint32."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public).digest()
    return int.from_bytes(digest[:4], "big")


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name) or any(ord(c) < 0x20 for c in name):
        raise CheckpointError("key names must be non-empty with no spaces, '+' or control characters")


def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise CheckpointError(f"{what}: invalid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise CheckpointError(f"{what}: non-canonical base64")
    return raw


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        return format_signature_line(self.name, self.key_id, self.signature)


def format_signature_line(name: str, kid: int, signature: bytes) -> str:
    return f"{EM_DASH} {name} {base64.b64encode(struct.pack('>I', kid) + signature).decode()}\n"


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed (not yet verified) signed note."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def to_text(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def with_signatures(self, extra: Sequence[NoteSignature]) -> Note:
        """A copy with ``extra`` signatures appended (duplicates by name and key id dropped)."""
        seen = {(s.name, s.key_id) for s in self.signatures}
        added = [s for s in extra if (s.name, s.key_id) not in seen]
        return Note(self.text, self.signatures + tuple(added))


def parse_note(data: bytes | str) -> Note:
    """Parse a signed note strictly.

    Raises:
        CheckpointError: any deviation from the signed-note format.
    """
    if isinstance(data, bytes):
        if len(data) > MAX_NOTE_BYTES:
            raise CheckpointError("note is too large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError("note is not valid UTF-8") from exc
    else:
        text = data
        if len(text.encode()) > MAX_NOTE_BYTES:
            raise CheckpointError("note is too large")
    if any(ord(c) < 0x20 and c != "\n" for c in text) or "\x7f" in text:
        raise CheckpointError("note contains control characters")
    if not text.endswith("\n"):
        raise CheckpointError("note does not end with a newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise CheckpointError("note has no blank line before its signatures")
    body = text[: split + 1]
    sig_lines = text[split + 2 :].splitlines()
    if not sig_lines:
        raise CheckpointError("note has no signatures")
    if len(sig_lines) > MAX_SIGNATURES:
        raise CheckpointError(f"note has more than {MAX_SIGNATURES} signatures")
    signatures = []
    for line in sig_lines:
        if not line.startswith(EM_DASH + " "):
            raise CheckpointError("signature line does not start with an em dash and a space")
        parts = line[2:].split(" ")
        if len(parts) != 2:
            raise CheckpointError("signature line must be '— <name> <signature>'")
        name, sig64 = parts
        _check_name(name)
        raw = _b64(sig64, "signature")
        if len(raw) < 5:
            raise CheckpointError("signature is too short")
        signatures.append(NoteSignature(name, struct.unpack(">I", raw[:4])[0], raw[4:]))
    return Note(body, tuple(signatures))


class NoteVerifier:
    """A trusted key: verifies Ed25519 note signatures (0x01) or timestamped cosignatures (0x04)."""

    def __init__(self, name: str, public: bytes, sig_type: int = TYPE_ED25519) -> None:
        _check_name(name)
        if sig_type not in (TYPE_ED25519, TYPE_COSIGNATURE) or len(public) != 32:
            raise ValueError("only Ed25519 keys (types 0x01 and 0x04) are supported")
        self.name = name
        self.public = bytes(public)
        self.sig_type = sig_type
        self.key_id = key_id(name, sig_type, public)

    def vkey(self) -> str:
        """``<name>+<hex key id>+<base64(type ‖ public key)>``."""
        blob = base64.b64encode(bytes([self.sig_type]) + self.public).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse a vkey; raises CheckpointError when malformed or when its key id does not match."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or len(parts[1]) != 8:
            raise CheckpointError("a vkey is <name>+<8 hex digits>+<base64 key>")
        name, kid_hex, blob64 = parts
        blob = _b64(blob64, "vkey")
        if len(blob) != 33:
            raise CheckpointError("vkey is not an Ed25519 key")
        try:
            verifier = cls(name, blob[1:], blob[0])
        except ValueError as exc:
            raise CheckpointError(f"vkey: {exc}") from exc
        if f"{verifier.key_id:08x}" != kid_hex.lower():
            raise CheckpointError("vkey key id does not match its key")
        return verifier

    def matches(self, sig: NoteSignature) -> bool:
        return sig.name == self.name and sig.key_id == self.key_id

    def verify(self, text: str, sig: NoteSignature) -> int | None:
        """Verify one matching signature; returns the cosignature timestamp (or None for 0x01).

        Raises:
            CheckpointError: the signature does not verify.
        """
        message = text.encode()
        if self.sig_type == TYPE_COSIGNATURE:
            if len(sig.signature) != 72:
                raise CheckpointError(f"cosignature by {self.name} has the wrong length")
            (timestamp,) = struct.unpack(">Q", sig.signature[:8])
            if timestamp >= 1 << 63:
                raise CheckpointError("cosignature timestamp out of range")
            if not verify_ed25519(self.public, sig.signature[8:], _COSIG_HEADER % timestamp + message):
                raise CheckpointError(f"cosignature by {self.name} does not verify")
            return int(timestamp)
        if len(sig.signature) != 64 or not verify_ed25519(self.public, sig.signature, message):
            raise CheckpointError(f"signature by {self.name} does not verify")
        return None


def signed_by(note: Note, keys: Sequence[NoteVerifier]) -> bool:
    """Whether ``note`` carries a verifying signature by one of ``keys``, and no failing one: a
    signature that claims a trusted key (its name and key id) but does not verify makes it False."""
    ok = False
    for sig in note.signatures:
        for key in keys:
            if key.matches(sig):
                try:
                    key.verify(note.text, sig)
                except CheckpointError:
                    return False
                ok = True
    return ok


class NoteSigner:
    """A private key that signs notes (type 0x01) or cosigns checkpoints (type 0x04)."""

    def __init__(self, name: str, signer: Ed25519Signer, sig_type: int = TYPE_ED25519) -> None:
        self.verifier = NoteVerifier(name, signer.public, sig_type)
        self._signer = signer

    @property
    def name(self) -> str:
        return self.verifier.name

    def sign(self, text: str, timestamp: int | None = None) -> NoteSignature:
        """Sign a note text (which must end in a newline); cosigners pass the timestamp."""
        if not text.endswith("\n"):
            raise ValueError("note text must end with a newline")
        message = text.encode()
        if self.verifier.sig_type == TYPE_COSIGNATURE:
            if timestamp is None or not 0 <= timestamp < 1 << 63:
                raise ValueError("a cosignature needs a timestamp")
            sig = struct.pack(">Q", timestamp) + self._signer.sign(_COSIG_HEADER % timestamp + message)
        else:
            sig = self._signer.sign(message)
        return NoteSignature(self.name, self.verifier.key_id, sig)

    def skey(self) -> str:
        """``PRIVATE+KEY+<name>+<hex key id>+<base64(type ‖ seed)>`` (handle as a secret)."""
        blob = base64.b64encode(bytes([self.verifier.sig_type]) + self._signer.reveal_seed()).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id:08x}+{blob}"

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise CheckpointError("not a signer key (PRIVATE+KEY+name+id+key)")
        blob = _b64(parts[4], "signer key")
        if len(blob) != 33:
            raise CheckpointError("signer key is not an Ed25519 key")
        signer = cls(parts[2], Ed25519Signer(blob[1:]), blob[0])
        if f"{signer.verifier.key_id:08x}" != parts[3]:
            raise CheckpointError("signer key id does not match its key")
        return signer

    def __repr__(self) -> str:
        return f"NoteSigner({self.verifier.vkey()})"
