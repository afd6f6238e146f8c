"""Key files on disk: key-encryption keys, HPKE key pairs and raw file keys.

Each key file is a small JSON document with a ``kind`` and a version, so a file
can never be mistaken for another kind of key::

    {"kind": "weightvault.kek", "version": 1, "kid": hex, "key": base64}
    {"kind": "weightvault.hpke-private-key", "version": 1, "kem": "x25519"|"mlkem768-x25519", "kid": hex, "key": base64}
    {"kind": "weightvault.hpke-public-key", "version": 1, "kem": ..., "kid": hex, "key": base64}
    {"kind": "weightvault.file-key", "version": 1, "key": base64}

Secret key files are written atomically with mode 0600; reading one that other
users can read is refused, as ssh does for private keys.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final, TypeAlias

from weightvault.crypto.keywrap import HPKEKem
from weightvault.encoding import canonical_json, parse_json
from weightvault.errors import ConfigError, HeaderError
from weightvault.files import atomic_file, read_private_file
from weightvault.format.keys import FileKey
from weightvault.format.recipients import KEK, HPKEIdentity, HPKERecipient, b64decode, b64encode

__all__ = ["KeyFileContent", "read_key_file", "read_secret_file", "write_key_file", "write_secret_file"]

KeyFileContent: TypeAlias = KEK | HPKEIdentity | HPKERecipient | FileKey
_VERSION: Final = 1
_MAX_KEY_FILE_BYTES: Final = 64 << 10


def _document(key: KeyFileContent) -> tuple[dict[str, object], bool]:
    if isinstance(key, KEK):
        return {"kind": "weightvault.kek", "version": _VERSION, "kid": key.kid, "key": b64encode(key.reveal())}, True
    if isinstance(key, HPKEIdentity):
        doc: dict[str, object] = {
            "kind": "weightvault.hpke-private-key",
            "version": _VERSION,
            "kem": key.kem.value,
            "kid": key.kid,
            "key": b64encode(key.reveal()),
        }
        return doc, True
    if isinstance(key, HPKERecipient):
        doc = {
            "kind": "weightvault.hpke-public-key",
            "version": _VERSION,
            "kem": key.kem.value,
            "kid": key.kid,
            "key": b64encode(key.public),
        }
        return doc, False
    return {"kind": "weightvault.file-key", "version": _VERSION, "key": b64encode(key.reveal())}, True


def write_key_file(path: Path, key: KeyFileContent, *, overwrite: bool = False) -> None:
    """Write ``key`` atomically; secret keys get mode 0600.

    Raises:
        ConfigError: ``path`` exists and ``overwrite`` is false.
    """
    doc, secret = _document(key)
    with atomic_file(Path(path), overwrite=overwrite, mode=0o600 if secret else 0o644) as out:
        out.write(canonical_json(doc) + b"\n")


def read_key_file(path: Path) -> KeyFileContent:
    """Read a key file.

    Raises:
        ConfigError: unreadable, malformed, of an unknown kind, or a secret key
            readable by other users.
    """
    path = Path(path)
    try:
        info = path.stat()
        if info.st_size > _MAX_KEY_FILE_BYTES:
            raise ConfigError(f"{path}: not a weightvault key file (too large)")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc.strerror})") from exc
    try:
        doc = parse_json(data, str(path))
    except HeaderError as exc:
        raise ConfigError(f"{path}: not a weightvault key file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("version") != _VERSION or not isinstance(doc.get("kind"), str):
        raise ConfigError(f"{path}: not a weightvault key file")
    kind = doc["kind"]
    try:
        raw = b64decode(doc.get("key"), "key")
        if kind == "weightvault.hpke-public-key":
            return HPKERecipient(HPKEKem(doc.get("kem")), raw)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and os.name == "posix":
            raise ConfigError(f"{path}: secret key file is accessible by other users (chmod 600 it)")
        if kind == "weightvault.kek":
            return KEK(raw)
        if kind == "weightvault.hpke-private-key":
            return HPKEIdentity(HPKEKem(doc.get("kem")), raw)
        if kind == "weightvault.file-key":
            return FileKey(raw)
    except (HeaderError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed {kind} ({exc})") from exc
    raise ConfigError(f"{path}: unknown key kind {kind[:40]!r}")


def write_secret_file(path: Path, kind: str, raw: bytes, *, overwrite: bool = False) -> None:
    """Write a raw secret (root key, signing seed, hash key) as ``{"kind", "version", "key"}``, mode 0600."""
    doc = {"kind": kind, "version": _VERSION, "key": b64encode(raw)}
    with atomic_file(Path(path), overwrite=overwrite, mode=0o600) as out:
        out.write(canonical_json(doc) + b"\n")


def read_secret_file(path: Path, kind: str) -> bytes:
    """Read a secret written by :func:`write_secret_file`; refuses other kinds and loose permissions.

    Raises:
        ConfigError: unreadable, of another kind, malformed, or readable by other users.
    """
    path = Path(path)
    data = read_private_file(path)
    try:
        doc = parse_json(data, str(path))
        if not isinstance(doc, dict) or doc.get("kind") != kind or doc.get("version") != _VERSION:
            raise ConfigError(f"{path}: not a {kind} file")
        return b64decode(doc.get("key"), "key")
    except HeaderError as exc:
        raise ConfigError(f"{path}: malformed key file ({exc})") from exc
