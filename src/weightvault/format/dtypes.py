"""The dtype allow-list: safetensors dtype names and their sizes in bytes.

Only byte-sized element types are accepted. Sub-byte safetensors types (F4,
F6_*) are refused with :class:`~weightvault.errors.UnsupportedError` until a
layout for them is specified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from weightvault.errors import UnsupportedError

__all__ = ["DTYPES", "DType", "dtype_from_name"]


@dataclass(frozen=True, slots=True)
class DType:
    """One element type: its safetensors name and size in bytes."""

    name: str
    itemsize: int


DTYPES: Final[dict[str, DType]] = {
    d.name: d
    for d in (
        DType("BOOL", 1),
        DType("U8", 1),
        DType("I8", 1),
        DType("F8_E4M3", 1),
        DType("F8_E4M3FNUZ", 1),
        DType("F8_E5M2", 1),
        DType("F8_E5M2FNUZ", 1),
        DType("F8_E8M0", 1),
        DType("U16", 2),
        DType("I16", 2),
        DType("F16", 2),
        DType("BF16", 2),
        DType("U32", 4),
        DType("I32", 4),
        DType("F32", 4),
        DType("U64", 8),
        DType("I64", 8),
        DType("F64", 8),
        DType("C64", 8),
    )
}


def dtype_from_name(name: object) -> DType:
    """Look up a dtype by its safetensors name; raises UnsupportedError for unknown names."""
    if not isinstance(name, str) or name not in DTYPES:
        shown = name[:32] if isinstance(name, str) else type(name).__name__
        raise UnsupportedError(f"unsupported dtype {shown!r}")
    return DTYPES[name]
