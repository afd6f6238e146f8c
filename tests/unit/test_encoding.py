"""canonical_json is RFC 8785 byte for byte (its fast path agrees with the reference implementation);
parse_json refuses hostile JSON with the caller's error."""

from __future__ import annotations

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.encoding import canonical_json, parse_json, parse_json_object
from weightvault.errors import ConfigError, ReportError

# Keys and strings reach far outside ASCII on purpose: astral characters sort differently
# by code point and by UTF-16 code unit, and control characters have their own escapes.
_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
_keys = st.one_of(st.text(max_size=6), _text, st.sampled_from(["a", "b", "\ue000", "\U0001f600", "é", "A", "_"]))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.sampled_from([2**53 - 1, -(2**53) + 1, 0, -1]),
    _text,
    st.sampled_from(['\x00\x1f\x7f\u2028\u2029"\\/', "\b\f\n\r\t", "\U0001f600\ue000"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=24,
)


@settings(max_examples=400)
@given(_values)
def test_canonical_json_is_rfc8785(value: object) -> None:
    assert rfc8785.dumps(value) == canonical_json(value)  # type: ignore[arg-type]


def test_values_outside_the_fast_path_are_still_canonical() -> None:
    """Floats, unsafe integers, astral keys and tuples go to the reference (and its errors)."""
    for value in ({"x": 1.5, "y": [1e21, -0.0]}, {"\U0001f600": 1, "\ue000": 2}, (1, "a")):
        assert rfc8785.dumps(value) == canonical_json(value)  # type: ignore[arg-type]
    for bad in ({"n": 2**53}, {"s": "\ud800"}, {1: "int key"}):
        try:
            rfc8785.dumps(bad)  # type: ignore[arg-type]
        except Exception as expected:  # whatever the reference raises, we raise too
            try:
                canonical_json(bad)
            except type(expected):
                continue
            raise AssertionError(f"{bad!r} was accepted") from None
        raise AssertionError(f"the reference accepted {bad!r}")


_HOSTILE = [
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "nested too deeply"),
    (b'{"resource": "a", "resource": "b"}', "duplicate JSON key"),
    (b'{"x": NaN}', "constant NaN"),
    (b'{"x": -Infinity}', "constant -Infinity"),
    (b"\xff{}", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"", "not valid JSON"),
]


@pytest.mark.parametrize(("data", "reason"), _HOSTILE)
def test_hostile_json_is_a_clear_error_of_the_callers_kind(data: bytes | str, reason: str) -> None:
    """Deep nesting is an error, not a RecursionError (which escaped every ``except ValueError``);
    duplicate keys (read differently by different parsers) and NaN are refused."""
    with pytest.raises(ReportError, match=rf"^the thing: .*{reason}"):
        parse_json(data, "the thing", ReportError)


def test_a_document_must_be_an_object_where_one_is_expected() -> None:
    assert {"a": [1]} == parse_json_object('{"a": [1]}', "doc")
    for other in (b"[1]", b'"s"', b"1", b"null"):
        with pytest.raises(ConfigError, match=r"^doc: not a JSON object$"):
            parse_json_object(other, "doc", ConfigError)


@settings(max_examples=200)
@given(_values)
def test_parse_json_reads_back_what_canonical_json_writes(value: object) -> None:
    assert _normalised(value) == parse_json(canonical_json(value), "value")


def _normalised(value: object) -> object:
    """Tuples read back as lists; a dict's later duplicate (canonical JSON has none) cannot occur."""
    if isinstance(value, list | tuple):
        return [_normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    return value
