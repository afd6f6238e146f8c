"""Strict JSON in and canonical JSON out: the one JSON codec of everything weightvault signs, MACs or parses.

Every parser here treats its input as hostile. JSON is decoded with duplicate
keys, NaN and Infinity rejected, and deep nesting turned into an error rather
than a crash. JSON that we write is RFC 8785 canonical, so the same value always
has the same bytes (and the same MAC, digest or signature).
"""

from __future__ import annotations

import json
from typing import Any, Final, NoReturn

import rfc8785

from weightvault.errors import HeaderError, WeightVaultError

__all__ = ["canonical_json", "parse_json", "parse_json_object"]


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)  # built in C; only a duplicate makes it shorter than its pairs
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise HeaderError(f"duplicate JSON key {key[:64]!r}")
            seen.add(key)
    return out


def _no_constant(name: str) -> NoReturn:
    raise HeaderError(f"JSON constant {name} is not allowed")


def parse_json(
    data: bytes | bytearray | memoryview | str, what: str, error: type[WeightVaultError] = HeaderError
) -> object:
    """Decode untrusted JSON (UTF-8 bytes, or text) strictly.

    Every parser of input from outside the process uses this (ruff's TID251 bans ``json.loads``
    elsewhere): the standard library's raises RecursionError, not ValueError, on deep nesting,
    which escaped the ``except ValueError`` of its callers as a 500 or a traceback.

    Raises:
        HeaderError: (or ``error``, whose message starts with ``what``) on invalid UTF-8,
            invalid JSON, duplicate keys, NaN or Infinity, or nesting deep enough to exhaust
            the stack.
    """
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8", errors="strict")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)  # noqa: TID251 - this is the wrapper
    except HeaderError as exc:
        raise error(f"{what}: {exc}") from exc
    except RecursionError as exc:
        raise error(f"{what}: JSON nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{what}: not valid JSON ({type(exc).__name__})") from exc


def parse_json_object(
    data: bytes | bytearray | memoryview | str, what: str, error: type[WeightVaultError] = HeaderError
) -> dict[str, Any]:
    """:func:`parse_json`, for a document that must be a JSON object.

    Raises:
        HeaderError: (or ``error``) as :func:`parse_json`, or the value is not an object.
    """
    doc = parse_json(data, what, error)
    if not isinstance(doc, dict):
        raise error(f"{what}: not a JSON object")
    return doc


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
