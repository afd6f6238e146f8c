"""canonical_json is RFC 8785 byte for byte: its fast path agrees with the reference implementation."""

from __future__ import annotations

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.encoding import canonical_json

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
