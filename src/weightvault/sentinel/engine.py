"""The sentinel engine: one pass over events in log order, every detector, alerts, counters, state.

Order of operations for each event (:meth:`Sentinel.feed`):

1. the shape is checked (:func:`~weightvault.sentinel.stream.parse_event`); a bad
   event is counted (``bad_event``) and skipped, an unknown type counted
   (``unknown_type``) and still read by the type-independent detectors;
2. its effective time is ``max(ts, watermark)``: an event older than the watermark by
   more than ``late_ms`` is counted (``late``), and time never runs backwards, so
   windows and baselines stay consistent under clock skew and reordering;
3. its log index is checked against the previous one (integrity);
4. ``ctx`` is computed from per-entity state (:mod:`.context`);
5. watchlists, rules, baselines, extraction tests and the learned model read it;
6. the event is folded into the state.

An alert is decided from the events up to its own ``ts`` and never later ones. Alerts
of one detector about the same entities are suppressed for the rule's ``suppress``
period (counted as ``suppressed``). The state (:meth:`Sentinel.to_state`) is plain
JSON: a restarted sentinel continues where it stopped.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

import yaml

from weightvault.errors import RuleError
from weightvault.sentinel.alerts import MAX_EVIDENCE, SEVERITIES, Alert
from weightvault.sentinel.baselines import BaselineMetric, DailyCusum, HourlyRate, metrics_from
from weightvault.sentinel.context import DAY_MS, HOUR_MS, EntityState
from weightvault.sentinel.extraction import PradaTest, SwarmTest, parse_sketch
from weightvault.sentinel.learned import LearnedConfig, LearnedDetector
from weightvault.sentinel.rules import CompiledRule, RuleSet, load_rules, lookup
from weightvault.sentinel.stream import KNOWN_TYPES, BadEventError, Entities, entities_of, parse_event, parse_line

__all__ = ["STATE_VERSION", "Sentinel", "SentinelConfig", "default_config", "packaged"]

STATE_VERSION: Final = 1
_PLANTED: Final = re.compile(r"(?i)(ignore (all |any )?(previous|prior)|disregard|system prompt|you are now|sentinel)")
_TEXT_LIMIT: Final = 512
_SEEN_LIMIT: Final = 1 << 27  # indexes remembered past the first (16 MiB of bits at most)


@dataclass(frozen=True)
class SentinelConfig:
    """What the engine runs: rules, baselines, CUSUMs, the extraction tests and the learned model."""

    rules: RuleSet
    baselines: tuple[BaselineMetric, ...]
    cusums: tuple[BaselineMetric, ...]
    learned: LearnedConfig | None
    prada: bool = True
    swarm: bool = True
    work_start: int = 7
    work_end: int = 20
    late_ms: int = 300_000
    baseline_suppress_ms: int = 12 * HOUR_MS
    learned_suppress_ms: int = DAY_MS


def packaged(name: str) -> str:
    """A file shipped with the sentinel (``weightvault/sentinel/data``): ``rules.yaml``,
    ``baselines.yaml`` or ``containment.yaml``."""
    return (resources.files("weightvault.sentinel") / "data" / name).read_text()


def default_config(
    rules_text: str | None = None, *, extra_rules: Iterable[str] = (), learned: bool = True
) -> SentinelConfig:
    """The packaged rules and baselines (``weightvault/sentinel/data``), optionally other rules instead."""
    text = rules_text if rules_text is not None else packaged("rules.yaml")
    doc = yaml.safe_load(packaged("baselines.yaml"))
    return config_from(text, doc, extra_rules=extra_rules, learned=learned)


def config_from(
    rules_text: str, doc: Mapping[str, Any], *, extra_rules: Iterable[str] = (), learned: bool = True
) -> SentinelConfig:
    """A configuration from a rule file and a ``baselines.yaml``-shaped mapping.

    Raises:
        RuleError: a rule or a baseline that does not parse.
    """
    try:
        baselines = tuple(metrics_from(doc))
        cusums = tuple(metrics_from({"baselines": doc.get("cusums", [])}))
        raw = doc.get("learned", {})
        learned_config = LearnedConfig(**raw) if learned and raw is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise RuleError(f"baselines: {exc}") from exc
    return SentinelConfig(
        rules=load_rules(rules_text, extra_rules),
        baselines=baselines,
        cusums=cusums,
        learned=learned_config,
        prada=bool(doc.get("prada", True)),
        swarm=bool(doc.get("swarm", True)),
    )


@dataclass
class _Link:
    t: int
    index: int | None
    entities: Entities
    value: Any = None


@dataclass
class Counters:
    events: int = 0
    bad_event: int = 0
    unknown_type: int = 0
    late: int = 0
    clock_jump: int = 0
    index_gap: int = 0
    index_reorder: int = 0
    planted_text: int = 0
    dangling_refs: int = 0
    alerts: int = 0
    suppressed: int = 0
    by_detector: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Sentinel:
    """Feed events in log order (:meth:`feed` or :meth:`feed_line`); collect the alerts they raise."""

    def __init__(self, config: SentinelConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.state = EntityState(work_start=config.work_start, work_end=config.work_end)
        self.watermark = 0
        self.next_index: int | None = None
        self.contiguous = 0
        #: False in the other engines of a partitioned replay: one engine checks every line's index.
        self.check_indexes = True
        self._base: int | None = None
        self._bits = bytearray()
        self.watchlists: dict[str, set[str]] = {w.name: set() for w in config.rules.watchlists}
        self._by_type, self._any_type = config.rules.by_type()
        self._corr: dict[str, dict[str, deque[_Link]]] = {}
        self._firsts: dict[str, dict[str, _Link]] = {}
        self._suppress: dict[str, int] = {}
        self._rates: dict[str, HourlyRate] = {}
        self._cusum: dict[str, DailyCusum] = {}
        self._rate_types: dict[str, list[BaselineMetric]] = {}
        for metric in config.baselines:
            for t in metric.types:
                self._rate_types.setdefault(t, []).append(metric)
        self._cusum_types: dict[str, list[BaselineMetric]] = {}
        for metric in config.cusums:
            for t in metric.types:
                self._cusum_types.setdefault(t, []).append(metric)
        self.learned = LearnedDetector(config.learned) if config.learned is not None else None
        self.prada = PradaTest() if config.prada else None
        self.swarm = SwarmTest() if config.swarm else None
        self._watch_types = {w.name: w for w in config.rules.watchlists}

    # -- input --------------------------------------------------------------------------------------

    def feed_line(self, line: bytes | str) -> list[Alert]:
        """One line of a JSON Lines export; a bad line is counted, never raised."""
        try:
            ev = parse_line(line)
        except BadEventError:
            self.counters.bad_event += 1
            return []
        return self._feed(ev)

    def feed(self, doc: object) -> list[Alert]:
        """One decoded event; a bad one is counted, never raised."""
        try:
            ev = parse_event(doc)
        except BadEventError:
            self.counters.bad_event += 1
            return []
        return self._feed(ev)

    def _seen(self, index: int) -> None:
        """Remember that ``index`` was read: one bit per index, for at most 2**27 indexes past the first."""
        if self._base is None:
            self._base = index
        offset = index - self._base
        if 0 <= offset < _SEEN_LIMIT:
            byte = offset >> 3
            if byte >= len(self._bits):
                self._bits.extend(bytes(byte + 1 - len(self._bits) + 4096))
            self._bits[byte] |= 1 << (offset & 7)

    def _has_seen(self, index: object) -> bool:
        """Whether a ``refs`` target was read (a partial export points outside itself: counted, not fatal)."""
        if not isinstance(index, int) or self._base is None:
            return False
        offset = index - self._base
        if not 0 <= offset < len(self._bits) * 8:
            return False
        return bool(self._bits[offset >> 3] & (1 << (offset & 7)))

    def note_index(self, index: int, ts: int) -> list[Alert]:
        """Check the log index of an event that another engine reads (a partitioned replay)."""
        self.watermark = max(self.watermark, ts)
        return self._check_index(index, {"tenant": "*"}, self.watermark)

    def finish(self) -> list[Alert]:
        """The end of the stream: close the learned model's last windows (decided at the last event's time)."""
        if self.learned is None or self.learned.hour is None:
            return []
        return self._learned_alerts(self.learned.close(self.learned.hour + 1), self.watermark)

    # -- the pass -----------------------------------------------------------------------------------

    def _feed(self, ev: dict[str, Any]) -> list[Alert]:
        c = self.counters
        c.events += 1
        kind = ev["type"]
        if kind not in KNOWN_TYPES:
            c.unknown_type += 1
        ts = ev["ts"]
        if ts < self.watermark - self.config.late_ms:
            c.late += 1
        if self.watermark and ts > self.watermark + 30 * DAY_MS:
            c.clock_jump += 1
        t = ts if ts > self.watermark else self.watermark
        self.watermark = t
        alerts: list[Alert] = []
        index = ev.get("index")
        if index is not None and self.check_indexes:
            if index == self.next_index:  # the common case, inline
                self.next_index = index + 1
                self.contiguous += 1
            else:
                alerts.extend(self._check_index(index, ev, t))
        if (ev.get("reasons") or "prompt_text" in ev["details"]) and _planted(ev):
            c.planted_text += 1
        if index is not None:
            offset = index - self._base if self._base is not None else -1
            bits = self._bits
            if 0 <= offset < len(bits) * 8:  # the common case, inline
                bits[offset >> 3] |= 1 << (offset & 7)
            else:
                self._seen(index)
        refs = ev["refs"]
        if refs:
            for target in refs.values():
                if not self._has_seen(target):
                    c.dangling_refs += 1
        ctx = self.state.context(ev, t)
        ev["ctx"] = ctx
        for watch in self._watch_types.values():
            if (watch.types is None or kind in watch.types) and watch.when(ev, self.watchlists):
                value = lookup(ev, watch.key)
                if isinstance(value, str):
                    self.watchlists[watch.name].add(value)
        rules = self._by_type.get(kind)
        if rules:
            for rule in rules:
                alerts.extend(self._rule(rule, ev, t, index))
        for rule in self._any_type:
            alerts.extend(self._rule(rule, ev, t, index))
        if kind in self._rate_types:
            alerts.extend(self._baseline(ev, t, index))
        if kind in self._cusum_types:
            alerts.extend(self._cusums(ev, t, index))
        if kind == "gateway.request" and (self.prada is not None or self.swarm is not None):
            alerts.extend(self._extraction(ev, t, index))
        if self.learned is not None:
            closed = self.learned.observe(ev, ctx, t, index)
            if closed:
                alerts.extend(self._learned_alerts(closed, t))
        self.state.update(ev, t, ctx)
        return alerts

    def _check_index(self, index: int, ev: Mapping[str, Any], t: int) -> list[Alert]:
        expected = self.next_index
        self.next_index = max(index + 1, expected or 0)
        if expected is None:
            return []
        if index == expected:
            self.contiguous += 1
            return []
        c = self.counters
        # A filtered export skips indexes all the time; a full one never does. Only a stream
        # that has been contiguous for a while makes a gap or a step back evidence of tampering.
        trusted = self.contiguous >= 200
        if index > expected:
            c.index_gap += 1
            what = f"entries {expected}..{index - 1} are missing"
        else:
            c.index_reorder += 1
            what = f"entry {index} arrived after entry {expected - 1}"
        if not trusted:
            self.contiguous = 0
            return []
        self.contiguous = 0
        alert = self._alert(
            "integrity",
            "log-gap",
            "log_tamper",
            "critical",
            1.0,
            Entities("*"),
            (index,),
            t,
            f"the log is not contiguous: {what}",
            suppress_key=f"log-gap|{index}",
            suppress_ms=1,
        )
        return [alert] if alert is not None else []

    # -- detectors ----------------------------------------------------------------------------------

    def _rule(self, rule: CompiledRule, ev: dict[str, Any], t: int, index: int | None) -> list[Alert]:
        corr = rule.correlation
        wl = self.watchlists
        if corr is not None and corr.kind == "sequence":
            assert corr.join is not None
            assert corr.then is not None
            firsts = self._firsts.setdefault(rule.id, {})
            out: list[Alert] = []
            if corr.then(ev, wl):
                key = lookup(ev, corr.join[1])
                first = firsts.get(key) if isinstance(key, str) else None
                if first is not None and t - first.t <= corr.timespan_ms:
                    del firsts[key]
                    ents = _restrict(first.entities.merge(entities_of(ev)), rule.entity_kinds)
                    evidence = tuple(i for i in (first.index, index) if i is not None)
                    alert = self._rule_alert(rule, ents, evidence, t, f"{rule.title} ({key})")
                    if alert is not None:
                        out.append(alert)
            if rule.match(ev, wl):
                key = lookup(ev, corr.join[0])
                if isinstance(key, str):
                    firsts[key] = _Link(t, index, entities_of(ev))
                    if len(firsts) > 10_000:
                        for stale in [k for k, v in firsts.items() if t - v.t > corr.timespan_ms]:
                            del firsts[stale]
            return out
        if not rule.match(ev, wl):
            return []
        ents = entities_of(ev)
        if corr is None:
            alert = self._rule_alert(rule, _restrict(ents, rule.entity_kinds), _one(index), t, rule.title)
            return [alert] if alert is not None else []
        group = "|".join(str(lookup(ev, g)) for g in corr.group_by)
        windows = self._corr.setdefault(rule.id, {})
        window = windows.get(group)
        if window is None:
            window = windows[group] = deque()
        value = lookup(ev, corr.field) if corr.field is not None else None
        window.append(_Link(t, index, ents, value))
        while window and t - window[0].t > corr.timespan_ms:
            window.popleft()
        if len(window) > 4 * max(corr.gte, 64):
            window.popleft()
        count = len(window) if corr.kind == "event_count" else len({repr(link.value) for link in window})
        if count < corr.gte:
            return []
        merged = ents
        for link in window:
            merged = merged.merge(link.entities)
        evidence = tuple(link.index for link in window if link.index is not None)
        window.clear()
        alert = self._rule_alert(
            rule, _restrict(merged, rule.entity_kinds), evidence, t, f"{rule.title}: {count} within the window"
        )
        return [alert] if alert is not None else []

    def _rule_alert(
        self, rule: CompiledRule, ents: Entities, evidence: tuple[int, ...], t: int, summary: str
    ) -> Alert | None:
        # Suppression is per rule and entities: the same principal on another model or device
        # is another alert (an on-call engineer's false alarm must not hide an attack that night).
        key = f"{rule.id}|{ents.tenant}|{','.join(ents.actors)}|{','.join(ents.keys)}"
        if rule.correlation is None or not (ents.actors or ents.keys):
            models = sorted({r.split("@", 1)[0] for r in ents.resources})
            key += "|" + ",".join(list(ents.devices) + models)
        return self._alert(
            "rules", rule.id, rule.family, rule.severity, SEVERITIES[rule.severity], ents, evidence, t, summary,
            suppress_key=key, suppress_ms=rule.suppress_ms,
        )  # fmt: skip

    def _baseline(self, ev: Mapping[str, Any], t: int, index: int | None) -> list[Alert]:
        out: list[Alert] = []
        if "approval" in ev["details"]:
            return out  # an approved operation is expected to be large (a deploy day)
        hour = t // HOUR_MS
        for metric in self._rate_types[ev["type"]]:
            subject = _subject(ev, metric.entity)
            if subject is None:
                continue
            value = _weight(ev, metric.weight)
            slot = f"{metric.name}|{subject}"
            rate = self._rates.get(slot)
            if rate is None:
                rate = self._rates[slot] = HourlyRate(hour)
            crossed = rate.add(hour, value, metric)
            if crossed is None:
                continue
            ents = entities_of(ev)
            score = min(1.0, 0.5 + 0.1 * crossed / max(rate.threshold(metric), 1.0))
            alert = self._alert(
                "baseline", metric.name, metric.family, "high", score, ents, _one(index), t,
                f"{metric.name} of {subject}: {crossed:.0f} this hour, baseline mean {rate.mean:.1f}",
                suppress_key=slot, suppress_ms=self.config.baseline_suppress_ms,
            )  # fmt: skip
            if alert is not None:
                out.append(alert)
        return out

    def _cusums(self, ev: Mapping[str, Any], t: int, index: int | None) -> list[Alert]:
        out = []
        day = t // DAY_MS
        for metric in self._cusum_types[ev["type"]]:
            subject = _subject(ev, metric.entity)
            if subject is None:
                continue
            if metric.weight == "ctx.new_model":
                value = 1.0 if ev["ctx"].get("new_model") else 0.0
            else:
                value = _weight(ev, metric.weight)
            slot = f"{metric.name}|{subject}"
            cusum = self._cusum.get(slot)
            if cusum is None:
                cusum = self._cusum[slot] = DailyCusum(day)
            crossed = cusum.add(day, value)
            if crossed is None:
                continue
            alert = self._alert(
                "baseline", metric.name, metric.family, "medium", min(1.0, crossed / 20), entities_of(ev),
                _one(index), t, f"{metric.name} of {subject}: a sustained rise over days (CUSUM {crossed:.1f})",
                suppress_key=slot, suppress_ms=7 * DAY_MS,
            )  # fmt: skip
            if alert is not None:
                out.append(alert)
        return out

    def _extraction(self, ev: Mapping[str, Any], t: int, index: int | None) -> list[Alert]:
        details = ev["details"]
        key = details.get("key_id")
        sketch = parse_sketch(details.get("prompt_sketch"))
        if not isinstance(key, str) or sketch is None:
            return []
        out = []
        if self.prada is not None:
            w = self.prada.add(key, sketch)
            if w is not None:
                alert = self._alert(
                    "extraction", "prada", "extraction", "high", min(1.0, 1.5 - w), entities_of(ev), _one(index),
                    t, f"queries of key {key} are not distributed like natural ones (Shapiro-Wilk W={w:.3f})",
                    suppress_key=f"prada|{key}", suppress_ms=DAY_MS,
                )  # fmt: skip
                if alert is not None:
                    out.append(alert)
        # Swarms are made of new keys: keys older than a week are not fed (most of the traffic).
        if self.swarm is not None and ev["ctx"].get("key_age_days", 0) < 7:
            members = self.swarm.add(ev["tenant"], key, sketch, t)
            if members is not None:
                ents = Entities(ev["tenant"], (ev["actor"],), (), tuple(sorted(members)), (ev["resource"],))
                alert = self._alert(
                    "extraction", "swarm", "distillation_swarm", "high", min(1.0, 0.5 + 0.05 * len(members)), ents,
                    _one(index), t, f"{len(members)} keys send near-identical prompts",
                    suppress_key=f"swarm|{ev['tenant']}", suppress_ms=6 * HOUR_MS,
                )  # fmt: skip
                if alert is not None:
                    out.append(alert)
        return out

    def _learned_alerts(self, closed: list[Any], t: int) -> list[Alert]:
        out = []
        for w in closed:
            ents = Entities(w.tenant, (w.actor,))
            alert = self._alert(
                "learned", "isolation-forest", w.family, "medium", min(1.0, 0.5 + w.score * 5), ents, w.evidence, t,
                f"hour of {w.actor} unlike its training windows (most unusual: {w.feature})",
                suppress_key=f"learned|{w.actor}", suppress_ms=self.config.learned_suppress_ms,
            )  # fmt: skip
            if alert is not None:
                out.append(alert)
        return out

    def _alert(  # noqa: PLR0917 - every field of an alert, in its order
        self,
        detector: str,
        rule: str,
        family: str,
        severity: str,
        score: float,
        ents: Entities,
        evidence: tuple[int, ...],
        t: int,
        summary: str,
        *,
        suppress_key: str,
        suppress_ms: int,
    ) -> Alert | None:
        until = self._suppress.get(suppress_key)
        if until is not None and t < until:
            self.counters.suppressed += 1
            return None
        self._suppress[suppress_key] = t + suppress_ms
        if len(self._suppress) > 100_000:
            self._suppress = {k: v for k, v in self._suppress.items() if v > t}
        self.counters.alerts += 1
        self.counters.by_detector[detector] = self.counters.by_detector.get(detector, 0) + 1
        return Alert(t, detector, rule, family, severity, score, ents, evidence[-MAX_EVIDENCE:], summary[:300])

    # -- state --------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        def link(x: _Link) -> list[Any]:
            return [x.t, x.index, x.entities.to_json(), x.value]

        return {
            "v": STATE_VERSION,
            "rules_digest": self.config.rules.source_digest,
            "counters": self.counters.to_json(),
            "watermark": self.watermark,
            "next_index": self.next_index,
            "contiguous": self.contiguous,
            "seen": [self._base, base64.b64encode(zlib.compress(bytes(self._bits))).decode()],
            "watchlists": {k: sorted(v) for k, v in self.watchlists.items()},
            "entities": self.state.to_state(),
            "corr": {r: {g: [link(x) for x in w] for g, w in groups.items()} for r, groups in self._corr.items()},
            "firsts": {r: {k: link(v) for k, v in f.items()} for r, f in self._firsts.items()},
            "suppress": self._suppress,
            "rates": {k: v.to_state() for k, v in self._rates.items()},
            "cusum": {k: v.to_state() for k, v in self._cusum.items()},
            "learned": self.learned.to_state() if self.learned is not None else None,
            "prada": self.prada.to_state() if self.prada is not None else None,
            "swarm": self.swarm.to_state() if self.swarm is not None else None,
        }

    def load(self, doc: object) -> None:
        """Continue from a saved state.

        Raises:
            RuleError: the state is of another version or malformed.
        """
        if not isinstance(doc, Mapping) or doc.get("v") != STATE_VERSION:
            raise RuleError("the sentinel state file is of another version")
        try:
            self._load(doc)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RuleError(f"the sentinel state file is malformed ({exc})") from exc

    def _load(self, doc: Mapping[str, Any]) -> None:
        def link(x: list[Any]) -> _Link:
            e = x[2]
            ents = Entities(
                e["tenant"], tuple(e["actors"]), tuple(e["devices"]), tuple(e["keys"]), tuple(e["resources"])
            )
            return _Link(int(x[0]), x[1], ents, x[3])

        counters = dict(doc["counters"])
        self.counters = Counters(**counters)
        self.watermark = int(doc["watermark"])
        self.next_index = doc["next_index"]
        self.contiguous = int(doc["contiguous"])
        base, bits = doc["seen"]
        self._base = None if base is None else int(base)
        inflate = zlib.decompressobj()
        self._bits = bytearray(inflate.decompress(base64.b64decode(bits), _SEEN_LIMIT // 8 + 8192))
        for name, values in doc["watchlists"].items():
            self.watchlists.setdefault(name, set()).update(values)
        self.state.load(doc["entities"])
        self._corr = {r: {g: deque(link(x) for x in w) for g, w in gs.items()} for r, gs in doc["corr"].items()}
        self._firsts = {r: {k: link(v) for k, v in f.items()} for r, f in doc["firsts"].items()}
        self._suppress = {str(k): int(v) for k, v in doc["suppress"].items()}
        self._rates = {k: HourlyRate.from_state(v) for k, v in doc["rates"].items()}
        self._cusum = {k: DailyCusum.from_state(v) for k, v in doc["cusum"].items()}
        if self.learned is not None and doc.get("learned") is not None:
            self.learned.load(doc["learned"])
        if self.prada is not None and doc.get("prada") is not None:
            self.prada.load(doc["prada"])
        if self.swarm is not None and doc.get("swarm") is not None:
            self.swarm.load(doc["swarm"])


def _one(index: int | None) -> tuple[int, ...]:
    return () if index is None else (index,)


def _restrict(ents: Entities, kinds: frozenset[str]) -> Entities:
    return Entities(
        ents.tenant,
        ents.actors if "actors" in kinds else (),
        ents.devices if "devices" in kinds else (),
        ents.keys if "keys" in kinds else (),
        ents.resources if "resources" in kinds else (),
    )


def _subject(ev: Mapping[str, Any], entity: str) -> str | None:
    if entity == "actor":
        return f"{ev['tenant']}/{ev['actor']}"
    if entity == "key":
        key = ev["details"].get("key_id")
        return key if isinstance(key, str) else None
    if entity == "tenant":
        return str(ev["tenant"])
    return None


def _weight(ev: Mapping[str, Any], weight: str | None) -> float:
    if weight is None:
        return 1.0
    value = ev["details"].get(weight)
    return float(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0.0


def _planted(ev: Mapping[str, Any]) -> bool:
    """Free text that reads like instructions, or very long text, in fields detectors never act on."""
    for reason in ev.get("reasons", ()):
        if isinstance(reason, str) and (len(reason) > _TEXT_LIMIT or _PLANTED.search(reason)):
            return True
    text = ev["details"].get("prompt_text")
    return isinstance(text, str) and bool(_PLANTED.search(text[:4096]))
