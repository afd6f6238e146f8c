"""The header: a JSON tensor table, public or sealed.

Canonical form (RFC 8785) of the JSON object::

    {
      "crit": [],                          critical extensions; v1 knows none, so it must be empty
      "kind": "safetensors" | "blob",
      "metadata": {str: str},              safetensors "__metadata__"
      "safetensors_header": str,           kind "safetensors" only: the source file's exact header text
      "tensors": [
        {"name": str, "dtype": str, "shape": [int, ...],
         "offset": int, "nbytes": int, "key_commitment": hex}
      ]
    }

Unknown top-level fields are ignored unless ``crit`` names them; ``crit`` naming
anything is rejected. Tensor entries must have exactly the fields above.
Offsets are relative to the data area and fully determined by the sizes: tensor
0 at 0, each next tensor at the first 4 KiB boundary after the previous one ends.

Invariant: a :class:`HeaderTable` only exists when every entry is valid and the
layout is canonical.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from weightvault.encoding import canonical_json, parse_json
from weightvault.errors import HeaderError, UnsupportedError
from weightvault.format.dtypes import DType, dtype_from_name
from weightvault.format.wire import (
    MAX_JSON_INT,
    MAX_RANK,
    MAX_TENSORS,
    align_up,
)

__all__ = ["KNOWN_CRITICAL", "HeaderKind", "HeaderTable", "TensorEntry"]

#: Critical extensions this release implements (none in v2).
KNOWN_CRITICAL: Final[frozenset[str]] = frozenset()
_ENTRY_FIELDS: Final = frozenset({"name", "dtype", "shape", "offset", "nbytes", "key_commitment"})
_COMMITMENT_HEX: Final = 64
_MAX_NAME_BYTES: Final = 4096


class HeaderKind(enum.Enum):
    """What the sealed file reproduces when unsealed."""

    SAFETENSORS = "safetensors"
    BLOB = "blob"


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of the table: where its ciphertext lies and what it decrypts to."""

    index: int
    name: str
    dtype: DType
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    key_commitment: bytes = field(repr=False)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "dtype": self.dtype.name,
            "shape": list(self.shape),
            "offset": self.offset,
            "nbytes": self.nbytes,
            "key_commitment": self.key_commitment.hex(),
        }


def canonical_offsets(sizes: Sequence[int]) -> tuple[list[int], int]:
    """Offsets of tensors with ``sizes`` in the data area, and the data area's length."""
    offsets: list[int] = []
    end = 0
    for size in sizes:
        start = align_up(end)
        offsets.append(start)
        end = start + size
    return offsets, end


@dataclass(frozen=True, slots=True)
class HeaderTable:
    """The validated header."""

    kind: HeaderKind
    tensors: tuple[TensorEntry, ...]
    metadata: Mapping[str, str]
    safetensors_header: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is HeaderKind.SAFETENSORS) != (self.safetensors_header is not None):
            raise HeaderError("safetensors_header must be present exactly for kind 'safetensors'")
        if self.kind is HeaderKind.BLOB and (
            len(self.tensors) != 1 or self.tensors[0].dtype.name != "U8" or len(self.tensors[0].shape) != 1
        ):
            raise HeaderError("a blob holds exactly one U8 vector")
        if len(self.tensors) > MAX_TENSORS:
            raise HeaderError(f"more than {MAX_TENSORS} tensors")
        names = set()
        offsets, _ = canonical_offsets([t.nbytes for t in self.tensors])
        for position, (entry, offset) in enumerate(zip(self.tensors, offsets, strict=True)):
            if entry.index != position:
                raise HeaderError("tensor indices must follow table order")
            if entry.name in names:
                raise HeaderError(f"duplicate tensor name {entry.name[:64]!r}")
            names.add(entry.name)
            if entry.offset != offset:
                raise HeaderError(f"tensor {entry.name[:64]!r}: offset {entry.offset} is not canonical ({offset})")

    @property
    def data_len(self) -> int:
        """Length of the data area."""
        return canonical_offsets([t.nbytes for t in self.tensors])[1]

    def by_name(self) -> dict[str, TensorEntry]:
        return {t.name: t for t in self.tensors}

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "crit": [],
            "kind": self.kind.value,
            "metadata": dict(self.metadata),
            "tensors": [t.to_json() for t in self.tensors],
        }
        if self.safetensors_header is not None:
            out["safetensors_header"] = self.safetensors_header
        return out

    def to_bytes(self) -> bytes:
        """RFC 8785 canonical JSON."""
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> HeaderTable:
        """Parse and validate header JSON.

        Raises:
            HeaderError: malformed JSON or an invalid entry.
            UnsupportedError: an unknown critical extension, kind or dtype.
        """
        doc = parse_json(data, "header")
        if not isinstance(doc, dict):
            raise HeaderError("header is not a JSON object")
        crit = doc.get("crit")
        if not isinstance(crit, list) or not all(isinstance(c, str) for c in crit):
            raise HeaderError("header 'crit' must be a list of strings")
        unknown = [c for c in crit if c not in KNOWN_CRITICAL]
        if unknown:
            raise UnsupportedError(f"unknown critical header field {unknown[0][:64]!r}")
        kind_value = doc.get("kind")
        try:
            kind = HeaderKind(kind_value)
        except ValueError as exc:
            raise UnsupportedError(f"unknown header kind {str(kind_value)[:32]!r}") from exc
        metadata = doc.get("metadata")
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise HeaderError("header 'metadata' must map strings to strings")
        source = doc.get("safetensors_header")
        if source is not None and not isinstance(source, str):
            raise HeaderError("header 'safetensors_header' must be a string")
        raw_tensors = doc.get("tensors")
        if not isinstance(raw_tensors, list):
            raise HeaderError("header 'tensors' must be a list")
        if len(raw_tensors) > MAX_TENSORS:
            raise HeaderError(f"more than {MAX_TENSORS} tensors")
        tensors = tuple(_parse_entry(i, raw) for i, raw in enumerate(raw_tensors))
        return cls(kind=kind, tensors=tensors, metadata=metadata, safetensors_header=source)


def _int(value: object, what: str, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_JSON_INT:
        raise HeaderError(f"tensor {name[:64]!r}: {what} must be an integer in 0..2**53-1")
    return value


def _parse_entry(index: int, raw: object) -> TensorEntry:
    if not isinstance(raw, dict):
        raise HeaderError(f"tensor entry #{index} is not an object")
    if set(raw) != _ENTRY_FIELDS:
        raise HeaderError(f"tensor entry #{index} must have exactly the fields {sorted(_ENTRY_FIELDS)}")
    name = raw["name"]
    if not isinstance(name, str) or not name or len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        raise HeaderError(f"tensor entry #{index}: name must be a non-empty string of at most 4096 bytes")
    dtype = dtype_from_name(raw["dtype"])
    shape_raw = raw["shape"]
    if not isinstance(shape_raw, list) or len(shape_raw) > MAX_RANK:
        raise HeaderError(f"tensor {name[:64]!r}: shape must be a list of at most {MAX_RANK} dimensions")
    shape = tuple(_int(d, "each dimension", name) for d in shape_raw)
    offset = _int(raw["offset"], "offset", name)
    nbytes = _int(raw["nbytes"], "nbytes", name)
    expected = _nbytes(shape, dtype)
    if expected != nbytes:
        raise HeaderError(f"tensor {name[:64]!r}: nbytes {nbytes} does not match shape and dtype")
    commitment = raw["key_commitment"]
    if not isinstance(commitment, str) or len(commitment) != _COMMITMENT_HEX:
        raise HeaderError(f"tensor {name[:64]!r}: key_commitment must be 64 hex digits")
    try:
        commitment_bytes = bytes.fromhex(commitment)
    except ValueError as exc:
        raise HeaderError(f"tensor {name[:64]!r}: key_commitment must be 64 hex digits") from exc
    if commitment != commitment_bytes.hex():
        raise HeaderError(f"tensor {name[:64]!r}: key_commitment must be lower-case hex")
    return TensorEntry(index, name, dtype, shape, offset, nbytes, commitment_bytes)


def _nbytes(shape: Sequence[int], dtype: DType) -> int:
    """Element count times item size, refusing anything beyond 2**53 at every step."""
    n = dtype.itemsize
    for d in shape:
        n *= d
        if n > MAX_JSON_INT:
            raise HeaderError("tensor size overflows 2**53")
    return n


def nbytes_of(shape: Sequence[int], dtype: DType) -> int:
    """Public form of the overflow-checked size computation."""
    return _nbytes(shape, dtype)
