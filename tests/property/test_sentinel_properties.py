"""Property tests: the sentinel's input never crashes it, whatever the line."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.sentinel.engine import Sentinel, default_config
from weightvault.sentinel.stream import BadEventError, parse_line

ENGINE = Sentinel(default_config(learned=False))

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_event = st.fixed_dictionaries(
    {
        "ts": st.integers(min_value=-5, max_value=2**45),
        "type": st.sampled_from(["key.release.intent", "gateway.request", "x.y", "auth.fail"]) | st.text(max_size=5),
        "tenant": st.text(max_size=5),
        "actor": st.text(max_size=5),
    },
    optional={
        "index": st.integers(min_value=-2, max_value=10**6),
        "resource": st.text(max_size=30) | st.integers(),
        "details": _json,
        "refs": _json,
        "hmac": _json,
        "reasons": _json,
        "decision": _json,
    },
)


@settings(max_examples=400, deadline=None)
@given(line=st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()) | _event.map(json.dumps))
def test_any_line_is_an_event_or_counted(line: bytes | str) -> None:
    before = ENGINE.counters.events + ENGINE.counters.bad_event
    ENGINE.feed_line(line)  # never raises
    assert ENGINE.counters.events + ENGINE.counters.bad_event == before + 1


@settings(max_examples=200, deadline=None)
@given(doc=_event)
def test_parse_accepts_only_the_documented_shape(doc: dict[str, object]) -> None:
    try:
        ev = parse_line(json.dumps(doc))
    except BadEventError:
        return
    assert isinstance(ev["ts"], int)
    assert ev["ts"] >= 0
    assert all(isinstance(ev[k], str) for k in ("type", "tenant", "actor", "resource"))
    assert all(isinstance(ev[k], dict) for k in ("details", "refs", "hmac"))
