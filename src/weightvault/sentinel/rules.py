"""Declarative detection rules: a documented YAML format, Sigma-compatible where that fits.

A rule file (docs/sentinel.md has the full grammar)::

    watchlists:
      honeypot:                 # values collected from the stream itself
        when: {type: [model.register.intent], details.tags.honeypot: "true"}
        key: resource
    rules:
      - id: honeypot-touch
        title: A honeypot model was touched
        family: honeypot
        severity: critical
        detection:              # Sigma: named selections and a condition over them
          touch:
            type: [policy.decision, key.release.intent, gateway.request]
            resource|watchlist: honeypot
          condition: touch
        correlation:            # optional (Sigma correlations): count over a window per group
          type: event_count     # or value_count (with field), or sequence (first, then, join)
          group_by: [actor]
          timespan: 1h
          gte: 20

A selection maps field paths (``details.device``, ``ctx.new_device``; ``ctx.*`` are the
fields the engine computes from per-entity state) to a value or a list of values (any
matches); modifiers after ``|``: ``contains``, ``startswith``, ``endswith``, ``re``,
``gt``, ``gte``, ``lt``, ``lte``, ``exists``, ``watchlist``. Every field of a selection
must match. A condition combines selection names with ``and``, ``or``, ``not``,
parentheses, ``1 of sel*`` and ``all of sel*``.

Rules are compiled once (:func:`load_rules`); evaluation is a dictionary walk per field
and never executes anything from the file. A rule's alert names only entities of the
events it matched (structured fields), so no text in an event decides what is contained.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from weightvault.errors import RuleError
from weightvault.sentinel.alerts import FAMILIES, SEVERITIES

__all__ = ["CompiledRule", "RuleSet", "Watchlist", "load_rules", "parse_duration"]

_MODIFIERS: Final = frozenset(
    {"equals", "contains", "startswith", "endswith", "re", "gt", "gte", "lt", "lte", "exists", "watchlist"}
)
_DURATION: Final = re.compile(r"^(\d+)\s*(ms|s|m|h|d)$")
_UNITS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_TOKEN: Final = re.compile(r"\s*(\(|\)|1 of [\w*]+|all of [\w*]+|[A-Za-z_][\w]*)")
_MISSING: Final = object()
Predicate = Callable[[Mapping[str, Any], Mapping[str, set[str]]], bool]


def parse_duration(value: object, what: str) -> int:
    """``90s``, ``15m``, ``24h``, ``7d`` (or an integer of seconds) in milliseconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value * 1000
    match = _DURATION.match(str(value).strip())
    if match is None or int(match.group(1)) <= 0:
        raise RuleError(f"{what}: {value!r} is not a duration such as 90s, 15m, 24h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def lookup(ev: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = ev
    for part in path:
        if not isinstance(value, Mapping):
            return _MISSING
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return str(actual).lower() == str(expected).lower()
    return bool(actual == expected)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _field_test(rule: str, key: str, raw: object) -> tuple[tuple[str, ...], Predicate]:
    name, _, modifier = key.partition("|")
    modifier = modifier or "equals"
    if modifier not in _MODIFIERS or not name or any(not p for p in name.split(".")):
        raise RuleError(f"rule {rule}: bad field {key!r} (modifiers: {', '.join(sorted(_MODIFIERS))})")
    path = tuple(name.split("."))
    values: list[Any] = list(raw) if isinstance(raw, list) else [raw]
    if not values or any(isinstance(v, dict | list) for v in values):
        raise RuleError(f"rule {rule}: {key} takes a value or a list of values")

    if len(path) == 1:
        (only,) = path

        def get(ev: Mapping[str, Any]) -> Any:
            return ev.get(only, _MISSING)

    elif len(path) == 2:
        outer, inner = path

        def get(ev: Mapping[str, Any]) -> Any:
            value = ev.get(outer)
            return value.get(inner, _MISSING) if isinstance(value, dict) else _MISSING

    else:

        def get(ev: Mapping[str, Any]) -> Any:
            return lookup(ev, path)

    if modifier == "equals":
        wanted = values
        if all(isinstance(v, str) for v in values):
            # The common case, and the hot one: a set lookup (a bool event field still
            # compares by its text, as in Sigma).
            texts = frozenset(str(v) for v in values)

            def test(ev: Mapping[str, Any], lists: Mapping[str, set[str]]) -> bool:
                actual = get(ev)
                if isinstance(actual, str):
                    return actual in texts
                return isinstance(actual, bool) and str(actual).lower() in texts

        else:

            def test(ev: Mapping[str, Any], lists: Mapping[str, set[str]]) -> bool:
                actual = get(ev)
                return actual is not _MISSING and any(_same(actual, w) for w in wanted)

    elif modifier == "exists":
        flag = _same(values[0], True)

        def test(ev: Mapping[str, Any], lists: Mapping[str, set[str]]) -> bool:
            return (get(ev) is not _MISSING) == flag

    elif modifier == "watchlist":
        names = [str(v) for v in values]

        def test(ev: Mapping[str, Any], lists: Mapping[str, set[str]]) -> bool:
            actual = get(ev)
            if not isinstance(actual, str):
                return False
            for name in names:
                values = lists.get(name)
                if values and actual in values:
                    return True
            return False

    elif modifier in ("gt", "gte", "lt", "lte"):
        bounds = [_number(v) for v in values]
        if any(b is None for b in bounds):
            raise RuleError(f"rule {rule}: {key} compares with numbers")
        bound = float(bounds[0])  # type: ignore[arg-type]
        compare: Callable[[float], bool] = {
            "gt": lambda x: x > bound,
            "gte": lambda x: x >= bound,
            "lt": lambda x: x < bound,
            "lte": lambda x: x <= bound,
        }[modifier]

        def test(ev: Mapping[str, Any], lists: Mapping[str, set[str]]) -> bool:
            actual = _number(get(ev))
            return actual is not None and compare(actual)

    elif modifier == "re":
        try:
            patterns = [re.compile(str(v)) for v in values]
        except re.error as exc:
            raise RuleError(f"rule {rule}: {key}: {exc}") from exc

        def test(ev: Mapping[str, Any], lists: Mapping[str, set[str]]) -> bool:
            actual = get(ev)
            return isinstance(actual, str) and any(p.search(actual[:4096]) for p in patterns)

    else:
        needles = [str(v) for v in values]
        method = {"contains": str.__contains__, "startswith": str.startswith, "endswith": str.endswith}[modifier]

        def test(ev: Mapping[str, Any], lists: Mapping[str, set[str]]) -> bool:
            actual = get(ev)
            return isinstance(actual, str) and any(method(actual, t) for t in needles)

    return path, test


@dataclass(frozen=True, slots=True)
class Selection:
    name: str
    tests: tuple[Predicate, ...]
    types: frozenset[str] | None  # the event types it can match (None: any), for dispatch

    def __call__(self, ev: Mapping[str, Any], lists: Mapping[str, set[str]]) -> bool:
        return all(test(ev, lists) for test in self.tests)


def _selection(rule: str, name: str, raw: object) -> Selection:
    if not isinstance(raw, Mapping) or not raw:
        raise RuleError(f"rule {rule}: selection {name} maps fields to values")
    tests = []
    types: frozenset[str] | None = None
    for key, value in raw.items():
        path, test = _field_test(rule, str(key), value)
        tests.append(test)
        if path == ("type",) and "|" not in str(key):
            named: list[Any] = value if isinstance(value, list) else [value]
            types = frozenset(str(v) for v in named)
    return Selection(name, tuple(tests), types)


class _Condition:
    """A recursive-descent parser for Sigma conditions, producing a predicate and its possible types."""

    def __init__(self, rule: str, text: str, selections: Mapping[str, Selection]) -> None:
        self.rule, self.selections = rule, selections
        self.tokens: list[str] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise RuleError(f"rule {rule}: cannot parse condition at {text[pos:]!r}")
            self.tokens.append(match.group(1))
            pos = match.end()
        self.pos = 0

    def parse(self) -> tuple[Predicate, frozenset[str] | None]:
        result = self._or()
        if self.pos != len(self.tokens):
            raise RuleError(f"rule {self.rule}: unexpected {self.tokens[self.pos]!r} in condition")
        return result

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _or(self) -> tuple[Predicate, frozenset[str] | None]:
        terms = [self._and()]
        while self._peek() == "or":
            self.pos += 1
            terms.append(self._and())
        if len(terms) == 1:
            return terms[0]
        preds = [t[0] for t in terms]
        types = None if any(t[1] is None for t in terms) else frozenset().union(*(t[1] or () for t in terms))
        return (lambda ev, wl: any(p(ev, wl) for p in preds)), types

    def _and(self) -> tuple[Predicate, frozenset[str] | None]:
        terms = [self._not()]
        while self._peek() == "and":
            self.pos += 1
            terms.append(self._not())
        if len(terms) == 1:
            return terms[0]
        preds = [t[0] for t in terms]
        known = [t[1] for t in terms if t[1] is not None]
        types = frozenset.intersection(*known) if known else None
        return (lambda ev, wl: all(p(ev, wl) for p in preds)), types

    def _not(self) -> tuple[Predicate, frozenset[str] | None]:
        if self._peek() == "not":
            self.pos += 1
            inner, _ = self._not()
            return (lambda ev, wl: not inner(ev, wl)), None
        return self._atom()

    def _atom(self) -> tuple[Predicate, frozenset[str] | None]:
        word = self._peek()
        if word is None:
            raise RuleError(f"rule {self.rule}: condition ends early")
        self.pos += 1
        if word == "(":
            inner = self._or()
            if self._peek() != ")":
                raise RuleError(f"rule {self.rule}: missing ) in condition")
            self.pos += 1
            return inner
        if word.startswith(("1 of ", "all of ")):
            quantifier, _, pattern = word.partition(" of ")
            names = [n for n in self.selections if pattern == "them" or fnmatch.fnmatchcase(n, pattern)]
            if not names:
                raise RuleError(f"rule {self.rule}: {pattern} names no selection")
            sels = [self.selections[n] for n in names]
            if quantifier == "1":
                types = (
                    None if any(s.types is None for s in sels) else frozenset().union(*(s.types or () for s in sels))
                )
                return (lambda ev, wl: any(s(ev, wl) for s in sels)), types
            return (lambda ev, wl: all(s(ev, wl) for s in sels)), None
        if word in ("and", "or", "not", ")"):
            raise RuleError(f"rule {self.rule}: unexpected {word!r} in condition")
        selection = self.selections.get(word)
        if selection is None:
            raise RuleError(f"rule {self.rule}: condition names unknown selection {word!r}")
        return selection, selection.types


@dataclass(frozen=True, slots=True)
class Correlation:
    """Sigma-style correlation over the matching events: per group, within a timespan."""

    kind: str  # event_count | value_count | sequence
    group_by: tuple[tuple[str, ...], ...]
    timespan_ms: int
    gte: int
    field: tuple[str, ...] | None = None
    then: Predicate | None = None  # sequence: the second step
    then_types: frozenset[str] | None = None
    join: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # sequence: first's field == then's field


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    title: str
    family: str
    severity: str
    match: Predicate
    types: frozenset[str] | None
    correlation: Correlation | None
    suppress_ms: int
    entity_kinds: frozenset[str]


@dataclass(frozen=True, slots=True)
class Watchlist:
    name: str
    when: Predicate
    types: frozenset[str] | None
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[CompiledRule, ...]
    watchlists: tuple[Watchlist, ...]
    source_digest: str

    def by_type(self) -> tuple[dict[str, list[CompiledRule]], list[CompiledRule]]:
        """Rules indexed by the event types they can match, and the rules that match any type."""
        indexed: dict[str, list[CompiledRule]] = {}
        anytype: list[CompiledRule] = []
        for rule in self.rules:
            types = rule.types
            if rule.correlation is not None and rule.correlation.kind == "sequence":
                types = (
                    None
                    if types is None or rule.correlation.then_types is None
                    else (types | rule.correlation.then_types)
                )
            if types is None:
                anytype.append(rule)
            else:
                for t in types:
                    indexed.setdefault(t, []).append(rule)
        return indexed, anytype


_ENTITY_KINDS: Final = frozenset({"actors", "devices", "keys", "resources"})
_RULE_KEYS: Final = frozenset(
    {"id", "title", "family", "severity", "detection", "correlation", "suppress", "entities", "description", "tags"}
)


def _compile_rule(raw: object, seen: set[str]) -> CompiledRule:
    if not isinstance(raw, Mapping):
        raise RuleError("each rule is a mapping")
    rid = raw.get("id")
    if not isinstance(rid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", rid):
        raise RuleError(f"rule id {rid!r} is not a short lower-case name")
    if rid in seen:
        raise RuleError(f"rule {rid} is defined twice")
    seen.add(rid)
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise RuleError(f"rule {rid}: unknown keys {sorted(unknown)}")
    family = raw.get("family", "anomaly")
    severity = raw.get("severity", "medium")
    if family not in FAMILIES:
        raise RuleError(f"rule {rid}: family is one of {', '.join(FAMILIES)}")
    if severity not in SEVERITIES:
        raise RuleError(f"rule {rid}: severity is one of {', '.join(SEVERITIES)}")
    detection = raw.get("detection")
    if not isinstance(detection, Mapping) or "condition" not in detection:
        raise RuleError(f"rule {rid}: detection has selections and a condition")
    selections = {
        str(name): _selection(rid, str(name), body) for name, body in detection.items() if name != "condition"
    }

    def condition(text: object) -> tuple[Predicate, frozenset[str] | None]:
        if not isinstance(text, str):
            raise RuleError(f"rule {rid}: a condition is a string")
        return _Condition(rid, text, selections).parse()

    match, types = condition(detection["condition"])
    correlation = None
    if "correlation" in raw:
        correlation = _correlation(rid, raw["correlation"], condition)
    kinds = raw.get("entities", sorted(_ENTITY_KINDS))
    if not isinstance(kinds, list) or not set(kinds) <= _ENTITY_KINDS:
        raise RuleError(f"rule {rid}: entities lists some of {sorted(_ENTITY_KINDS)}")
    return CompiledRule(
        id=rid,
        title=str(raw.get("title", rid)),
        family=str(family),
        severity=str(severity),
        match=match,
        types=types,
        correlation=correlation,
        suppress_ms=parse_duration(raw.get("suppress", "6h"), f"rule {rid}: suppress"),
        entity_kinds=frozenset(kinds),
    )


def _path(rid: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, str) or not value or "|" in value:
        raise RuleError(f"rule {rid}: {value!r} is not a field path")
    return tuple(value.split("."))


def _correlation(
    rid: str, raw: object, condition: Callable[[object], tuple[Predicate, frozenset[str] | None]]
) -> Correlation:
    if not isinstance(raw, Mapping):
        raise RuleError(f"rule {rid}: correlation is a mapping")
    kind = raw.get("type")
    if kind not in ("event_count", "value_count", "sequence"):
        raise RuleError(f"rule {rid}: correlation type is event_count, value_count or sequence")
    group = raw.get("group_by", [])
    if not isinstance(group, list):
        raise RuleError(f"rule {rid}: group_by is a list of fields")
    timespan = parse_duration(raw.get("timespan"), f"rule {rid}: timespan")
    gte = raw.get("gte", 1)
    if not isinstance(gte, int) or gte < 1:
        raise RuleError(f"rule {rid}: gte is a positive integer")
    if kind == "sequence":
        then, then_types = condition(raw.get("then"))
        join = raw.get("join")
        if not isinstance(join, Mapping) or set(join) != {"first", "then"}:
            raise RuleError(f"rule {rid}: a sequence joins a field of the first event to one of the then event")
        return Correlation(
            "sequence",
            (),
            timespan,
            1,
            then=then,
            then_types=then_types,
            join=(_path(rid, join["first"]), _path(rid, join["then"])),
        )
    fieldpath = _path(rid, raw.get("field")) if kind == "value_count" else None
    return Correlation(str(kind), tuple(_path(rid, g) for g in group), timespan, gte, field=fieldpath)


def load_rules(text: str, extra: Iterable[str] = ()) -> RuleSet:
    """Compile a rule file (and more files whose rules and watchlists are added).

    Raises:
        RuleError: not YAML, or a rule, selection, condition or correlation that does not parse.
    """
    import hashlib

    rules: list[CompiledRule] = []
    watchlists: list[Watchlist] = []
    seen: set[str] = set()
    digest = hashlib.sha256()
    for source in (text, *extra):
        digest.update(source.encode())
        try:
            doc = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise RuleError(f"rules are not YAML: {exc}") from exc
        except RecursionError as exc:  # YAML nested deeper than the stack
            raise RuleError("rules are nested too deeply") from exc
        except ValueError as exc:  # an integer of more digits than Python converts
            raise RuleError(f"rules do not parse: {exc}") from exc
        if not isinstance(doc, Mapping) or set(doc) - {"rules", "watchlists"}:
            raise RuleError("a rule file has rules and watchlists")
        raw_lists = doc.get("watchlists") or {}
        if not isinstance(raw_lists, Mapping):
            raise RuleError("watchlists maps names to {when, key}")
        for name, body in raw_lists.items():
            if not isinstance(body, Mapping) or set(body) != {"when", "key"}:
                raise RuleError(f"watchlist {name}: has when and key")
            sel = _selection(f"watchlist {name}", str(name), body["when"])
            watchlists.append(Watchlist(str(name), sel, sel.types, _path(str(name), body["key"])))
        raw_rules = doc.get("rules") or []
        if not isinstance(raw_rules, Sequence):
            raise RuleError("rules is a list")
        rules.extend(_compile_rule(r, seen) for r in raw_rules)
    return RuleSet(tuple(rules), tuple(watchlists), "sha256:" + digest.hexdigest())
