"""The manifest of a sealed model directory (``weightvault-model.json``).

A Hugging Face model directory is sealed under one file key FK: each weight
file becomes its own sealed file (own file id), other files are carried either
in the clear or sealed as blobs, and the manifest lists them all::

    {"format": "weightvault.model/v1",
     "files": [
       {"path": "config.json", "role": "public", "size": int, "sha256": hex},
       {"path": "model.safetensors.wvlt", "role": "sealed", "kind": "safetensors"|"blob",
        "source": "model.safetensors", "file_id": hex, "header_mac": hex}
     ],
     "mac": hex}

``mac`` is HMAC-SHA256 under K_manifest over the RFC 8785 form of the object
without ``mac``. It binds the set of files (no shard can be swapped for one from
another seal, removed or added), the content of every public file (a tampered
``config.json`` is detected), and each sealed file's identity and header MAC.
The header MAC rather than a whole-file hash is bound so that rewrapping, which
rewrites only recipients regions, leaves the manifest valid.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from weightvault.crypto.mac import InvalidSignature, hmac_sha256, verify_hmac_sha256
from weightvault.encoding import canonical_json, parse_json
from weightvault.errors import ManifestError
from weightvault.format.header import HeaderKind

__all__ = ["MANIFEST_FORMAT", "MANIFEST_NAME", "FileRole", "ManifestEntry", "ModelManifest", "check_relative_path"]

MANIFEST_NAME: Final = "weightvault-model.json"
MANIFEST_FORMAT: Final = "weightvault.model/v1"
_MAX_MANIFEST_BYTES: Final = 16 << 20
_MAX_FILES: Final = 100_000
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


def check_relative_path(path: str) -> str:
    """Accept only a normalised relative POSIX path inside the model directory.

    Raises:
        ManifestError: absolute paths, ``..`` or ``.`` segments, empty segments,
            backslashes or control characters.
    """
    if (
        not path
        or len(path) > 4096
        or path.startswith("/")
        or "\\" in path
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
        or any(seg in ("", ".", "..") for seg in path.split("/"))
    ):
        raise ManifestError(f"unsafe path in model manifest: {path[:80]!r}")
    return path


class FileRole(enum.Enum):
    PUBLIC = "public"
    SEALED = "sealed"


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One file of a sealed model directory."""

    path: str
    role: FileRole
    size: int | None = None
    sha256: str | None = None
    kind: HeaderKind | None = None
    source: str | None = None
    file_id: str | None = None
    header_mac: str | None = None

    def __post_init__(self) -> None:
        check_relative_path(self.path)
        if self.role is FileRole.PUBLIC:
            if self.size is None or self.sha256 is None or not _HEX64.fullmatch(self.sha256):
                raise ManifestError(f"{self.path}: a public file needs size and sha256")
        else:
            if self.kind is None or self.source is None:
                raise ManifestError(f"{self.path}: a sealed file needs kind and source")
            check_relative_path(self.source)
            for value in (self.file_id, self.header_mac):
                if value is None or not _HEX64.fullmatch(value):
                    raise ManifestError(f"{self.path}: a sealed file needs file_id and header_mac")

    @property
    def logical_path(self) -> str:
        """The path the file has in the plain model directory."""
        return self.source if self.source is not None else self.path

    def to_json(self) -> dict[str, object]:
        if self.role is FileRole.PUBLIC:
            return {"path": self.path, "role": self.role.value, "size": self.size, "sha256": self.sha256}
        assert self.kind is not None
        return {
            "path": self.path,
            "role": self.role.value,
            "kind": self.kind.value,
            "source": self.source,
            "file_id": self.file_id,
            "header_mac": self.header_mac,
        }


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """A validated manifest. Authentication is a separate step: :meth:`verify`."""

    files: tuple[ManifestEntry, ...]
    mac: bytes

    def body(self) -> bytes:
        """The canonical bytes the MAC covers."""
        return canonical_json({"format": MANIFEST_FORMAT, "files": [f.to_json() for f in self.files]})

    @classmethod
    def create(cls, files: Sequence[ManifestEntry], mac_key: bytes) -> ModelManifest:
        unsigned = cls(tuple(files), b"")
        unsigned._check_unique()
        return cls(unsigned.files, hmac_sha256(mac_key, [unsigned.body()]))

    def verify(self, mac_key: bytes) -> None:
        """Check the MAC in constant time.

        Raises:
            ManifestError: the manifest was modified or belongs to another key.
        """
        try:
            verify_hmac_sha256(mac_key, [self.body()], self.mac)
        except InvalidSignature as exc:
            raise ManifestError("model manifest failed authentication") from exc

    def _check_unique(self) -> None:
        paths = [f.path for f in self.files]
        logical = [f.logical_path for f in self.files]
        if len(set(paths)) != len(paths) or len(set(logical)) != len(logical):
            raise ManifestError("model manifest lists a path twice")

    def to_bytes(self) -> bytes:
        doc = {"format": MANIFEST_FORMAT, "files": [f.to_json() for f in self.files], "mac": self.mac.hex()}
        return canonical_json(doc) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelManifest:
        """Parse a manifest strictly (unauthenticated until :meth:`verify`).

        Raises:
            ManifestError: malformed manifest.
        """
        if len(data) > _MAX_MANIFEST_BYTES:
            raise ManifestError("model manifest is too large")
        doc = parse_json(data, "model manifest", ManifestError)
        if not isinstance(doc, dict) or set(doc) != {"format", "files", "mac"}:
            raise ManifestError("model manifest must have exactly format, files and mac")
        if doc["format"] != MANIFEST_FORMAT:
            raise ManifestError(f"unsupported model manifest format {str(doc['format'])[:40]!r}")
        raw_files = doc["files"]
        mac = doc["mac"]
        if not isinstance(raw_files, list) or len(raw_files) > _MAX_FILES:
            raise ManifestError("model manifest 'files' must be a list")
        if not isinstance(mac, str) or not _HEX64.fullmatch(mac):
            raise ManifestError("model manifest 'mac' must be 64 hex digits")
        files = tuple(_parse_entry(raw) for raw in raw_files)
        manifest = cls(files, bytes.fromhex(mac))
        manifest._check_unique()
        return manifest

    def sealed(self) -> list[ManifestEntry]:
        return [f for f in self.files if f.role is FileRole.SEALED]


def _parse_entry(raw: object) -> ManifestEntry:
    if not isinstance(raw, dict):
        raise ManifestError("model manifest entry is not an object")
    role = raw.get("role")
    if role == FileRole.PUBLIC.value:
        expected = {"path", "role", "size", "sha256"}
    elif role == FileRole.SEALED.value:
        expected = {"path", "role", "kind", "source", "file_id", "header_mac"}
    else:
        raise ManifestError("model manifest entry has an unknown role")
    if set(raw) != expected:
        raise ManifestError(f"model manifest entry must have exactly {sorted(expected)}")
    path = raw["path"]
    if not isinstance(path, str):
        raise ManifestError("model manifest path must be a string")
    if role == FileRole.PUBLIC.value:
        size, sha = raw["size"], raw["sha256"]
        if type(size) is not int or size < 0 or not isinstance(sha, str):
            raise ManifestError(f"{path[:80]}: malformed public entry")
        return ManifestEntry(path, FileRole.PUBLIC, size=size, sha256=sha)
    kind, source, file_id, header_mac = raw["kind"], raw["source"], raw["file_id"], raw["header_mac"]
    if not all(isinstance(v, str) for v in (kind, source, file_id, header_mac)):
        raise ManifestError(f"{path[:80]}: malformed sealed entry")
    try:
        header_kind = HeaderKind(kind)
    except ValueError as exc:
        raise ManifestError(f"{path[:80]}: unknown kind") from exc
    return ManifestEntry(
        path, FileRole.SEALED, kind=header_kind, source=str(source), file_id=str(file_id), header_mac=str(header_mac)
    )
