"""Reading the header of a plain ``.safetensors`` file that is about to be sealed.

The safetensors layout is ``u64le(n) ‖ JSON header of n bytes ‖ data``. The
header maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}``
and may hold ``"__metadata__"``: a map of strings. The input is treated as
untrusted: sizes are bounded, offsets must tile the data area exactly, and every
dtype must be on the allow-list.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from weightvault.encoding import parse_json
from weightvault.errors import HeaderError, UnsupportedError
from weightvault.format.container import TensorSpec
from weightvault.format.dtypes import dtype_from_name
from weightvault.format.wire import MAX_HEADER_BYTES, MAX_TENSORS

__all__ = ["SafetensorsSource", "SourceTensor", "parse_safetensors_header", "read_safetensors_source"]

_SUB_BYTE = ("F4", "F6_E2M3", "F6_E3M2")


@dataclass(frozen=True, slots=True)
class SourceTensor:
    spec: TensorSpec
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class SafetensorsSource:
    """A parsed safetensors file: its exact header text and tensors in data order."""

    path: Path
    header_text: str
    metadata: dict[str, str]
    tensors: tuple[SourceTensor, ...]
    data_start: int
    data_size: int


def read_safetensors_source(path: Path) -> SafetensorsSource:
    """Parse and validate a safetensors file's header.

    Raises:
        HeaderError: the file is not a well-formed safetensors file.
        UnsupportedError: a dtype is not supported.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise HeaderError(f"{path.name}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise HeaderError(f"{path.name}: safetensors header length {n} is out of range")
        raw = handle.read(n)
    metadata, tensors = parse_safetensors_header(raw, size - 8 - n, path.name)
    return SafetensorsSource(path, raw.decode("utf-8"), metadata, tensors, 8 + n, size - 8 - n)


def parse_safetensors_header(raw: bytes, data_size: int, label: str) -> tuple[dict[str, str], tuple[SourceTensor, ...]]:
    """Validate a safetensors header whose data area has ``data_size`` bytes.

    Returns the metadata and the tensors sorted by data offset; the offsets must
    tile the data area exactly.

    Raises:
        HeaderError: malformed header or offsets.
        UnsupportedError: a dtype is not supported.
    """
    doc = parse_json(raw, f"{label} header")
    if not isinstance(doc, dict):
        raise HeaderError(f"{label}: safetensors header is not an object")
    metadata_raw = doc.pop("__metadata__", {})
    if not isinstance(metadata_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
    ):
        raise HeaderError(f"{label}: __metadata__ must map strings to strings")
    if len(doc) > MAX_TENSORS:
        raise HeaderError(f"{label}: more than {MAX_TENSORS} tensors")
    tensors = []
    for name, info in doc.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise HeaderError(f"{label}: tensor {name[:64]!r} is malformed")
        dtype_name = info["dtype"]
        if dtype_name in _SUB_BYTE:
            raise UnsupportedError(f"{label}: sub-byte dtype {dtype_name} is not supported by format v2")
        dtype = dtype_from_name(dtype_name)
        shape = info["shape"]
        offsets = info["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise HeaderError(f"{label}: tensor {name[:64]!r} has a malformed shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise HeaderError(f"{label}: tensor {name[:64]!r} has malformed data offsets")
        spec = TensorSpec(name, dtype, tuple(shape))
        if spec.nbytes != offsets[1] - offsets[0]:
            raise HeaderError(f"{label}: tensor {name[:64]!r} size does not match its shape and dtype")
        tensors.append(SourceTensor(spec, offsets[0], offsets[1]))
    tensors.sort(key=lambda t: (t.begin, t.end))
    cursor = 0
    for t in tensors:
        if t.begin != cursor:
            raise HeaderError(f"{label}: tensor data overlaps or leaves a hole at byte {cursor}")
        cursor = t.end
    if cursor != data_size:
        raise HeaderError(f"{label}: {data_size - cursor} bytes after the last tensor")
    return dict(metadata_raw), tuple(tensors)
