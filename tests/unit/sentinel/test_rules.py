"""The rule format: compilation errors, Sigma conditions, modifiers, correlations, watchlists."""

from __future__ import annotations

from typing import Any

import pytest

from weightvault.errors import RuleError
from weightvault.sentinel.engine import Sentinel, config_from, default_config
from weightvault.sentinel.rules import load_rules, parse_duration

HOUR = 3_600_000


def _engine(rules: str) -> Sentinel:
    return Sentinel(config_from(rules, {"prada": False, "swarm": False}, learned=False))


def _ev(i: int, type_: str, actor: str = "wl-1", ts: int | None = None, **kw: Any) -> dict[str, Any]:
    return {"index": i, "v": 1, "ts": ts if ts is not None else 10 * HOUR + i * 1000, "type": type_,
            "tenant": "acme", "actor": actor, "resource": kw.pop("resource", ""), **kw}  # fmt: skip


def test_the_packaged_rules_compile() -> None:
    config = default_config()
    ids = {r.id for r in config.rules.rules}
    assert {"honeypot-touch", "new-device-for-principal", "bulk-release", "escalation-then-key-access"} <= ids
    assert [w.name for w in config.rules.watchlists] == ["honeypot", "decoy", "canary"]


@pytest.mark.parametrize(
    "text",
    [
        "rules: [{id: a, detection: {s: {type|nope: x}, condition: s}}]",
        "rules: [{id: a, detection: {s: {type: x}, condition: t}}]",
        "rules: [{id: a, detection: {s: {type: x}, condition: s and}}]",
        "rules: [{id: a, detection: {s: {type: x}, condition: (s}}]",
        "rules: [{id: a, family: made-up, detection: {s: {type: x}, condition: s}}]",
        "rules: [{id: a, severity: dire, detection: {s: {type: x}, condition: s}}]",
        "rules: [{id: a, detection: {s: {type: x}, condition: s}, correlation: {type: event_count, timespan: 1y}}]",
        "rules: [{id: a, detection: {s: {ts|gte: many}, condition: s}}]",
        "rules: [{id: a, detection: {s: {x|re: '('}, condition: s}}]",
        "rules: [{id: A!, detection: {s: {type: x}, condition: s}}]",
        "rules: [{id: a, detection: {s: {type: x}, condition: s}}, {id: a, detection: {s: {type: x}, condition: s}}]",
        "rules: [{id: a, extra: 1, detection: {s: {type: x}, condition: s}}]",
        "rules: {not: a list}",
        "[unbalanced",
        "something: else",
    ],
)
def test_bad_rule_files_are_refused_with_a_rule_error(text: str) -> None:
    with pytest.raises(RuleError):
        load_rules(text)


def test_durations() -> None:
    assert parse_duration("90s", "x") == 90_000
    assert parse_duration("2h", "x") == 7_200_000
    assert parse_duration(5, "x") == 5_000
    with pytest.raises(RuleError):
        parse_duration("0s", "x")


def test_conditions_and_modifiers() -> None:
    engine = _engine(
        """
rules:
  - id: r
    severity: low
    suppress: 1s
    detection:
      sel_a: {type: key.release.intent, resource|startswith: acme/models/}
      sel_b: {details.bytes|gte: 100}
      quiet: {details.note|contains: test}
      pattern: {actor|re: '^wl-[0-9]+$'}
      flag: {details.flag: true}
      present: {details.device|exists: true}
      condition: (1 of sel_* and not quiet) and pattern and (flag or present)
"""
    )
    m = "acme/models/m@1"
    assert not engine.feed(_ev(0, "key.release.intent", resource=m, details={}))
    assert engine.feed(_ev(1, "key.release.intent", resource=m, details={"flag": True}))
    assert engine.feed(_ev(2, "key.release.intent", resource=m, details={"device": "d"}))
    assert not engine.feed(_ev(3, "key.release.intent", resource=m, details={"device": "d", "note": "a test"}))
    assert not engine.feed(_ev(4, "key.release.intent", actor="human", resource=m, details={"device": "d"}))
    # sel_b matches any type with a large enough number: bools and strings are not numbers
    assert engine.feed(_ev(5, "object.read", details={"bytes": 100, "flag": "true"}))
    assert not engine.feed(_ev(6, "object.read", details={"bytes": True, "flag": True}))


def test_value_count_sequence_and_watchlist() -> None:
    engine = _engine(
        """
watchlists:
  decoys:
    when: {type: model.register.intent, details.tags.honeypot: "true"}
    key: ctx.model
rules:
  - id: many-models
    detection: {rel: {type: key.release.intent}, condition: rel}
    correlation: {type: value_count, field: resource, group_by: [actor], timespan: 1h, gte: 3}
  - id: grant-then-read
    detection:
      grant: {type: principal.change.done, ctx.role: tenant-admin}
      read: {type: key.release.intent}
      condition: grant
    correlation: {type: sequence, then: read, join: {first: ctx.subject, then: actor}, timespan: 1h}
  - id: decoy
    detection: {touch: {type: key.release.intent, ctx.model|watchlist: decoys}, condition: touch}
"""
    )
    fired = []
    for i, res in enumerate(["acme/models/a@1", "acme/models/a@2", "acme/models/b@1", "acme/models/a@1"]):
        fired += [a.rule for a in engine.feed(_ev(i, "key.release.intent", resource=res))]
    assert fired == ["many-models"]  # three distinct values, once
    engine.feed(
        _ev(10, "principal.change.done", actor="op", resource="principal:eve", details={"role": "tenant-admin"})
    )
    alerts = engine.feed(_ev(11, "key.release.intent", actor="eve", resource="acme/models/z@1"))
    assert [a.rule for a in alerts] == ["grant-then-read"]
    assert alerts[0].evidence == (10, 11)
    assert "eve" in alerts[0].entities.actors
    # a grant more than an hour before does not count
    engine.feed(_ev(20, "principal.change.done", actor="op", resource="principal:mallory",
                    details={"role": "tenant-admin"}))  # fmt: skip
    assert not engine.feed(_ev(21, "key.release.intent", actor="mallory", ts=20 * HOUR, resource="acme/models/y@1"))
    engine.feed(_ev(30, "model.register.intent", actor="pub", ts=21 * HOUR, resource="acme/models/trap@1",
                    details={"tags": {"honeypot": "true"}}))  # fmt: skip
    assert [
        a.rule for a in engine.feed(_ev(31, "key.release.intent", ts=21 * HOUR, resource="acme/models/trap@7"))
    ] == ["decoy"]
