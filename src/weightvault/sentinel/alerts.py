"""Alerts: what a detector raises, in the interchange format of docs/sentinel.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from weightvault.sentinel.stream import Entities

__all__ = ["FAMILIES", "SEVERITIES", "Alert"]

#: The attack families of the scenario set (controls.md §5), and the family of an alert
#: whose detector cannot tell (``anomaly``).
FAMILIES: Final = (
    "stolen_token",
    "bulk_release",
    "after_hours",
    "leaver",
    "slow_drip",
    "approval_collusion",
    "privilege_escalation",
    "distillation_swarm",
    "extraction",
    "honeypot",
    "log_tamper",
    "anomaly",
)
#: Severity names and the score each stands for when a detector has no score of its own.
SEVERITIES: Final = {"low": 0.3, "medium": 0.5, "high": 0.8, "critical": 1.0}
MAX_EVIDENCE: Final = 64


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert. ``evidence`` holds the log indexes of the events it was decided from (at most 64,
    the most recent); ``ts`` is the time of the last of them: nothing after it was read."""

    ts: int
    detector: str
    rule: str
    family: str
    severity: str
    score: float
    entities: Entities
    evidence: tuple[int, ...]
    summary: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "detector": self.detector,
            "rule": self.rule,
            "family": self.family,
            "severity": self.severity,
            "score": round(self.score, 4),
            **self.entities.to_json(),
            "evidence": list(self.evidence),
            "summary": self.summary,
            **({"extra": self.extra} if self.extra else {}),
        }
