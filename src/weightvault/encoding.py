"""Strict JSON in and canonical JSON out: the one JSON codec of everything weightvault signs, MACs or parses.

Every parser here treats its input as hostile. JSON is decoded with duplicate
keys, NaN and Infinity rejected, and deep nesting turned into an error rather
than a crash. JSON that we write is RFC 8785 canonical, so the same value always
has the same bytes (and the same MAC, digest or signature).
"""

from __future__ import annotations

import json
from typing import Final, NoReturn

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


#: RFC 8785 numbers are IEEE doubles: integers beyond this are not exactly representable.
_MAX_SAFE_INTEGER: Final = 2**53 - 1


def _plain(value: object, depth: int = 0) -> bool:
    """Whether ``value`` is in the domain where the standard library's JSON is RFC 8785.

    That is: strings, booleans, null, integers within ±(2^53 - 1), lists and tuples
    of those, and dicts whose keys are ASCII strings. For ASCII keys, sorting by code
    point (``sort_keys``) is sorting by UTF-16 code unit (RFC 8785 section 3.2.3);
    ``json`` writes such integers, and escapes strings, exactly as section 3.2.2
    prescribes (the short escapes, ``\\u00xx`` in lower case for the other control
    characters, every other character as itself). Floats, big integers, non-ASCII keys
    and every other type go to the reference implementation.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER  # type: ignore[operator]
    if depth > 64:
        return False
    if kind is list or kind is tuple:
        return all(_plain(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    if kind is dict:
        return all(type(k) is str and k.isascii() and _plain(v, depth + 1) for k, v in value.items())  # type: ignore[attr-defined]
    return False


def canonical_json(value: object) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON.

    The standard library's C encoder writes the common case (see :func:`_plain`);
    ``rfc8785`` writes everything else and raises its errors. Both give the same
    bytes wherever both apply (tests/unit/test_encoding.py checks it property-wise).
    """
    if _plain(value):
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: the reference implementation raises its own error
    return rfc8785.dumps(value)  # type: ignore[arg-type]
