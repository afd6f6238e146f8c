"""Per-entity baselines: EWMA of hourly counts with a z-score test, and a daily CUSUM for slow drips.

:class:`HourlyRate` keeps, per (entity, metric), the count of the current hour and an
exponentially weighted mean and variance of past hourly counts (idle hours count as
zero). The current hour raises once when its count exceeds ``max(floor, mean + z·sd,
ratio·mean)`` after ``min_hours`` of history, so a new entity is never compared with a
baseline it does not have.

:class:`DailyCusum` keeps daily totals and a one-sided CUSUM of their standardised
excess over the entity's own daily EWMA: a shift that each day stays under every
per-hour threshold still accumulates (ATT&CK T1030, "data transfer size limits").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["BaselineMetric", "DailyCusum", "HourlyRate"]


@dataclass(frozen=True, slots=True)
class BaselineMetric:
    """A configured baseline: which events feed it, per which entity, and its thresholds."""

    name: str
    family: str
    types: frozenset[str]
    entity: str  # actor | key | tenant
    weight: str | None = None  # a details field to sum (tokens_out), else count events
    floor: float = 10.0
    z: float = 6.0
    ratio: float = 5.0
    min_hours: int = 72
    alpha: float = 1 / 168  # about a week of hours


class HourlyRate:
    __slots__ = ("alerted", "count", "hour", "hours", "mean", "var")

    def __init__(self, hour: int) -> None:
        self.hour = hour
        self.count = 0.0
        self.mean = 0.0
        self.var = 0.0
        self.hours = 0
        self.alerted = False

    def _push(self, value: float, alpha: float) -> None:
        diff = value - self.mean
        incr = alpha * diff
        self.mean += incr
        self.var = (1 - alpha) * (self.var + diff * incr)
        self.hours += 1

    def add(self, hour: int, value: float, metric: BaselineMetric) -> float | None:
        """Add ``value`` at ``hour``; returns the hour's count when it just crossed the threshold."""
        if hour > self.hour:
            self._push(self.count, metric.alpha)
            idle = min(hour - self.hour - 1, 24 * 28)
            if idle:
                # Closed form for ``idle`` zero hours: the mean decays geometrically; the
                # variance is approximated by pushing at most a day of zeros explicitly.
                for _ in range(min(idle, 24)):
                    self._push(0.0, metric.alpha)
                if idle > 24:
                    decay = (1 - metric.alpha) ** (idle - 24)
                    self.mean *= decay
                    self.hours += idle - 24
            self.hour, self.count, self.alerted = hour, 0.0, False
        self.count += value
        if self.alerted or self.hours < metric.min_hours:
            return None
        threshold = max(metric.floor, self.mean + metric.z * math.sqrt(max(self.var, 0.0)), metric.ratio * self.mean)
        if self.count > threshold:
            self.alerted = True
            return self.count
        return None

    def threshold(self, metric: BaselineMetric) -> float:
        return max(metric.floor, self.mean + metric.z * math.sqrt(max(self.var, 0.0)), metric.ratio * self.mean)

    def to_state(self) -> list[Any]:
        return [self.hour, self.count, self.mean, self.var, self.hours, self.alerted]

    @classmethod
    def from_state(cls, doc: list[Any]) -> HourlyRate:
        rate = cls(int(doc[0]))
        rate.count, rate.mean, rate.var = float(doc[1]), float(doc[2]), float(doc[3])
        rate.hours, rate.alerted = int(doc[4]), bool(doc[5])
        return rate


class DailyCusum:
    """One-sided CUSUM over daily totals against the entity's own EWMA of past days."""

    __slots__ = ("day", "days", "mean", "s", "today", "var")
    ALPHA: Final = 0.1
    K: Final = 0.5  # slack, in standard deviations
    H: Final = 6.0  # decision threshold
    MIN_DAYS: Final = 7

    def __init__(self, day: int) -> None:
        self.day = day
        self.today = 0.0
        self.mean = 0.0
        self.var = 0.0
        self.days = 0
        self.s = 0.0

    def add(self, day: int, value: float) -> float | None:
        """Add ``value`` on ``day``; returns the CUSUM statistic when a closed day pushed it over ``H``."""
        crossed = None
        while day > self.day:
            x = self.today
            if self.days >= self.MIN_DAYS:
                sd = max(math.sqrt(max(self.var, 0.0)), 0.25 * self.mean, 1.0)
                self.s = max(0.0, self.s + (x - self.mean) / sd - self.K)
                if self.s > self.H:
                    crossed = self.s
                    self.s = 0.0
            # The baseline learns only from days that did not look like a drip.
            if self.s == 0.0 or self.days < self.MIN_DAYS:
                diff = x - self.mean
                alpha = max(self.ALPHA, 1.0 / (self.days + 1))
                self.mean += alpha * diff
                self.var = (1 - alpha) * (self.var + alpha * diff * diff)
            self.days += 1
            self.day += 1
            self.today = 0.0
            if day - self.day > 60:  # a long silence: restart the count of days from here
                self.day = day
        self.today += value
        return crossed

    def to_state(self) -> list[float]:
        return [self.day, self.today, self.mean, self.var, self.days, self.s]

    @classmethod
    def from_state(cls, doc: list[Any]) -> DailyCusum:
        c = cls(int(doc[0]))
        c.today, c.mean, c.var = float(doc[1]), float(doc[2]), float(doc[3])
        c.days, c.s = int(doc[4]), float(doc[5])
        return c


def metrics_from(doc: Mapping[str, Any]) -> list[BaselineMetric]:
    """Baseline metrics from the configuration's ``baselines`` list (docs/sentinel.md)."""
    out = []
    for raw in doc.get("baselines", []):
        out.append(
            BaselineMetric(
                name=str(raw["name"]),
                family=str(raw.get("family", "anomaly")),
                types=frozenset(raw["types"]),
                entity=str(raw.get("entity", "actor")),
                weight=raw.get("weight"),
                floor=float(raw.get("floor", 10.0)),
                z=float(raw.get("z", 6.0)),
                ratio=float(raw.get("ratio", 5.0)),
                min_hours=int(raw.get("min_hours", 72)),
            )
        )
    return out
