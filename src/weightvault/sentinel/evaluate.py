"""Scoring alerts against labelled incidents, as docs/sentinel.md defines it.

* An alert **matches** an incident when ``start_ms <= alert.ts <= end_ms + grace_ms`` and
  they share an entity: an actor, device, key or resource named by both, or the tenant
  when one of them names nothing narrower (a tenant-wide incident or alert). The tenant
  ``*`` matches every tenant (log tampering concerns the whole log).
* An incident is **detected** when at least one alert matches it; its **time to detect**
  is the first matching alert's ``ts`` minus ``start_ms``.
* A **false alert** matches no incident. A **benign entity-day** is an (entity, UTC day)
  pair with at least one event of that entity on that day outside the windows of the
  incidents that name the entity. Entities are those of
  :func:`~weightvault.sentinel.stream.entities_of`.
* Metrics, overall and per family: incident recall, false alerts per 1,000 benign
  entity-days, alert precision (matching alerts over all alerts), time to detect p50 and
  p90. False alerts are attributed to the family the alert suspected.

Malformed label or alert lines are counted and skipped, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from weightvault.sentinel.context import DAY_MS
from weightvault.sentinel.stream import BadEventError, entities_of, parse_line

__all__ = ["GRACE_MS", "Incident", "Report", "evaluate", "parse_alerts", "parse_labels"]

GRACE_MS: Final = 3_600_000
_MALFORMED: Final = object()
_KINDS: Final = ("actors", "devices", "keys", "resources")


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    family: str
    start_ms: int
    end_ms: int
    tenant: str
    entities: frozenset[tuple[str, str]]


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _entity_set(doc: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    return frozenset((kind, v) for kind in _KINDS for v in _strings(doc.get(kind)))


def _json_lines(lines: Iterable[str]) -> Iterator[object]:
    """The JSON value of each non-blank line, or :data:`_MALFORMED` for a line that is not JSON."""
    for line in lines:
        if not line.strip():
            continue
        try:
            yield json.loads(line)  # noqa: TID251 - the hot path: json's speed, and its failures caught
        except (ValueError, RecursionError):
            yield _MALFORMED


def parse_labels(lines: Iterable[str]) -> tuple[list[Incident], int]:
    """Incidents from label lines, and the number of malformed lines skipped."""
    out, bad = [], 0
    for doc in _json_lines(lines):
        if not isinstance(doc, dict):
            bad += 1
            continue
        try:
            incident = Incident(
                str(doc["incident"]),
                str(doc["family"]),
                int(doc["start_ms"]),
                int(doc["end_ms"]),
                str(doc.get("tenant", "*")),
                _entity_set(doc),
            )
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        out.append(incident)
    return out, bad


def parse_alerts(lines: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """Alerts (``ts``, ``family``, entities) from alert lines, and the number of malformed lines skipped."""
    out, bad = [], 0
    for doc in _json_lines(lines):
        if not isinstance(doc, dict) or not isinstance(doc.get("ts"), int):
            bad += 1
            continue
        out.append(doc)
    return out, bad


def _matches(alert: Mapping[str, Any], alert_entities: frozenset[tuple[str, str]], inc: Incident, grace: int) -> bool:
    ts = alert["ts"]
    if not inc.start_ms <= ts <= inc.end_ms + grace:
        return False
    tenant = str(alert.get("tenant", "*"))
    same_tenant = "*" in (tenant, inc.tenant) or tenant == inc.tenant
    if not same_tenant:
        return False
    if alert_entities & inc.entities:
        return True
    return not alert_entities or not inc.entities


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class FamilyScore:
    incidents: int = 0
    detected: int = 0
    false_alerts: int = 0
    ttd_ms: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "incidents": self.incidents,
            "detected": self.detected,
            "recall": round(self.detected / self.incidents, 4) if self.incidents else None,
            "false_alerts": self.false_alerts,
            "ttd_p50_s": _seconds(_quantile(self.ttd_ms, 0.5)),
            "ttd_p90_s": _seconds(_quantile(self.ttd_ms, 0.9)),
        }


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 1)


@dataclass
class Report:
    incidents: int
    detected: int
    alerts: int
    matching_alerts: int
    false_alerts: int
    benign_entity_days: int
    families: dict[str, FamilyScore]
    missed: list[str]
    bad_lines: dict[str, int]
    ttd_ms: list[int]

    def to_json(self) -> dict[str, Any]:
        per_k = 1000 * self.false_alerts / self.benign_entity_days if self.benign_entity_days else None
        return {
            "incidents": self.incidents,
            "detected": self.detected,
            "recall": round(self.detected / self.incidents, 4) if self.incidents else None,
            "alerts": self.alerts,
            "precision": round(self.matching_alerts / self.alerts, 4) if self.alerts else None,
            "false_alerts": self.false_alerts,
            "benign_entity_days": self.benign_entity_days,
            "false_alerts_per_1000_entity_days": round(per_k, 2) if per_k is not None else None,
            "ttd_p50_s": _seconds(_quantile(self.ttd_ms, 0.5)),
            "ttd_p90_s": _seconds(_quantile(self.ttd_ms, 0.9)),
            "families": {k: v.to_json() for k, v in sorted(self.families.items())},
            "missed": self.missed,
            "bad_lines": self.bad_lines,
        }


def benign_entity_days(event_lines: Iterable[str], incidents: Sequence[Incident]) -> tuple[int, int]:
    """The number of benign entity-days of an event file, and its malformed lines."""
    windows: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for inc in incidents:
        for entity in inc.entities:
            windows.setdefault(entity, []).append((inc.start_ms, inc.end_ms))
    days: set[tuple[str, str, int]] = set()
    bad = 0
    for line in event_lines:
        if not line.strip():
            continue
        try:
            ev = parse_line(line)
        except BadEventError:
            bad += 1
            continue
        ts = ev["ts"]
        ents = entities_of(ev)
        for kind in _KINDS:
            for value in getattr(ents, kind):
                spans = windows.get((kind, value))
                if spans and any(a <= ts <= b for a, b in spans):
                    continue
                days.add((kind, value, ts // DAY_MS))
    return len(days), bad


def evaluate(
    alerts: Sequence[Mapping[str, Any]],
    incidents: Sequence[Incident],
    entity_days: int,
    *,
    grace_ms: int = GRACE_MS,
    bad_lines: Mapping[str, int] | None = None,
) -> Report:
    """Score alerts against incidents (see the module docstring for every definition)."""
    families: dict[str, FamilyScore] = {}
    for inc in incidents:
        families.setdefault(inc.family, FamilyScore()).incidents += 1
    first: dict[str, int] = {}
    matching = 0
    false = 0
    for alert in alerts:
        ents = _entity_set(alert)
        hit = False
        for inc in incidents:
            if _matches(alert, ents, inc, grace_ms):
                hit = True
                ts = int(alert["ts"])
                if inc.id not in first or ts < first[inc.id]:
                    first[inc.id] = ts
        if hit:
            matching += 1
        else:
            false += 1
            family = str(alert.get("family", "anomaly"))
            families.setdefault(family, FamilyScore()).false_alerts += 1
    ttd: list[int] = []
    missed = []
    for inc in incidents:
        if inc.id in first:
            delay = max(0, first[inc.id] - inc.start_ms)
            families[inc.family].detected += 1
            families[inc.family].ttd_ms.append(delay)
            ttd.append(delay)
        else:
            missed.append(f"{inc.id} ({inc.family})")
    return Report(
        incidents=len(incidents),
        detected=len(first),
        alerts=len(alerts),
        matching_alerts=matching,
        false_alerts=false,
        benign_entity_days=entity_days,
        families=families,
        missed=missed,
        bad_lines=dict(bad_lines or {}),
        ttd_ms=ttd,
    )
