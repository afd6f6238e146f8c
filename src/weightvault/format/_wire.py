"""Byte-level helpers shared by the format codec: limits, integers and strict JSON.

Every parser here treats its input as hostile. JSON is decoded with duplicate
keys, NaN and Infinity rejected, and deep nesting turned into a
:class:`~weightvault.errors.HeaderError` rather than a crash. JSON that we write
is RFC 8785 canonical, so the same value always has the same bytes.
"""

from __future__ import annotations

import json
from typing import Final, NoReturn

import rfc8785

from weightvault.errors import FormatError, HeaderError

__all__ = [
    "ALIGNMENT",
    "MAX_HEADER_BYTES",
    "MAX_JSON_INT",
    "MAX_RANK",
    "MAX_RECIPIENTS_BYTES",
    "MAX_STANZAS",
    "MAX_TENSORS",
    "align_up",
    "canonical_json",
    "parse_json",
    "require",
]

#: Data-area alignment: every tensor starts on a 4 KiB boundary (O_DIRECT, GDS, mmap).
ALIGNMENT: Final = 4096
#: Header cap, as in safetensors.
MAX_HEADER_BYTES: Final = 100_000_000
MAX_TENSORS: Final = 1_000_000
MAX_RANK: Final = 32
#: The recipients region holds a handful of small stanzas; 1 MiB bounds a hostile file.
MAX_RECIPIENTS_BYTES: Final = 1 << 20
MAX_STANZAS: Final = 64
#: Integers stay exactly representable as IEEE doubles, as RFC 8785 requires.
MAX_JSON_INT: Final = (1 << 53) - 1


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    """Round ``n`` up to a multiple of ``alignment`` (a power of two)."""
    return (n + alignment - 1) & ~(alignment - 1)


def require(condition: bool, message: str, error: type[Exception] = HeaderError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds."""
    if not condition:
        raise error(message)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise HeaderError(f"duplicate JSON key {key[:64]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> NoReturn:
    raise HeaderError(f"JSON constant {name} is not allowed")


def parse_json(data: bytes | bytearray | memoryview, what: str, error: type[FormatError] = HeaderError) -> object:
    """Decode untrusted UTF-8 JSON strictly.

    Raises:
        HeaderError: (or ``error``) on invalid UTF-8, invalid JSON, duplicate
            keys, NaN or Infinity, or nesting deep enough to exhaust the stack.
    """
    make = error
    try:
        text = bytes(data).decode("utf-8", errors="strict")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except HeaderError as exc:
        raise make(f"{what}: {exc}") from exc
    except RecursionError as exc:
        raise make(f"{what}: JSON nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise make(f"{what}: not valid JSON ({type(exc).__name__})") from exc


def canonical_json(value: object) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON."""
    return rfc8785.dumps(value)  # type: ignore[arg-type]
