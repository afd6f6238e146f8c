"""Strict JSON in and canonical JSON out: the one JSON codec of everything weightvault signs, MACs or parses.

Every parser here treats its input as hostile. JSON is decoded with duplicate
keys, NaN and Infinity rejected, and deep nesting turned into an error rather
than a crash. JSON that we write is RFC 8785 canonical, so the same value always
has the same bytes (and the same MAC, digest or signature).
"""

from __future__ import annotations

import json
from typing import NoReturn

import rfc8785

from weightvault.errors import FormatError, HeaderError

__all__ = ["canonical_json", "parse_json"]


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
