"""Output budgets: leaky buckets per credential, principal, tenant and model, in tokens and bytes.

Pure: no I/O and no clock of its own. The gateway keeps one :class:`Ledger` per process,
loads bucket states from the broker's database before it first charges them, and
persists them after every request (:mod:`weightvault.gateway.state`).

A bucket has a capacity (``limit``) and a period: what was spent drains at
``limit / period`` per second, so at most ``limit`` can go out in any window of that
length, and a credential that stops spending regains its whole budget after one period
(RAND SL3's 400 KB/h and 1 GB/month per credential are two such buckets).

Invariant: a charge is all or nothing across every bucket it names. ``Ledger.charge``
either adds the amount to all of them, or refuses and changes none; so concurrent
requests of one credential, which share the buckets, can never together exceed any of
them. Alerts are raised once per crossing of 50, 80 and 100 percent.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from weightvault.errors import ConfigError

__all__ = [
    "ALERT_THRESHOLDS",
    "DEFAULT_BUDGETS",
    "Alert",
    "BucketState",
    "Budget",
    "Ledger",
    "Scope",
    "Unit",
    "parse_budget",
]

ALERT_THRESHOLDS: Final = (50, 80, 100)
WINDOWS: Final = {"hour": 3600, "day": 86400, "month": 30 * 86400, "year": 365 * 86400}


class Scope(enum.Enum):
    KEY = "key"
    PRINCIPAL = "principal"
    TENANT = "tenant"
    MODEL = "model"  # every credential together, per model (RAND: below 1% of the model a year)


class Unit(enum.Enum):
    BYTES = "bytes"
    TOKENS = "tokens"


@dataclass(frozen=True, slots=True)
class Budget:
    """One limit: at most ``limit`` units per ``window`` for each subject of ``scope``."""

    scope: Scope
    window: str
    unit: Unit
    limit: int

    @property
    def period_s(self) -> int:
        return WINDOWS[self.window]

    def bucket_id(self, subject: str) -> str:
        return f"{self.scope.value}:{subject}:{self.window}:{self.unit.value}"


#: RAND SL3's output limits per credential, applied to keys, principals and tenants alike.
DEFAULT_BUDGETS: Final = tuple(
    Budget(scope, window, Unit.BYTES, limit)
    for scope in (Scope.KEY, Scope.PRINCIPAL, Scope.TENANT)
    for window, limit in (("hour", 400_000), ("month", 1_000_000_000))
)
#: The aggregate limit per model: this fraction of its weights' size per year.
DEFAULT_MODEL_FRACTION: Final = 0.01

_SPEC: Final = re.compile(r"(key|principal|tenant|model)\.(hour|day|month|year)\.(bytes|tokens)=(\d+)")


def parse_budget(text: str) -> Budget:
    """``scope.window.unit=limit``, e.g. ``key.hour.bytes=400000`` (a limit of 0 blocks everything).

    Raises:
        ConfigError: anything else.
    """
    m = _SPEC.fullmatch(text.strip())
    if m is None:
        raise ConfigError(
            f"budget {text!r}: expected SCOPE.WINDOW.UNIT=LIMIT with SCOPE in key, principal, tenant, model; "
            "WINDOW in hour, day, month, year; UNIT in bytes, tokens"
        )
    return Budget(Scope(m[1]), m[2], Unit(m[3]), int(m[4]))


@dataclass(slots=True)
class BucketState:
    """What a bucket has spent, as of ``updated_ms``; ``alerted`` is the highest threshold raised."""

    spent: float = 0.0
    updated_ms: int = 0
    alerted: int = 0


@dataclass(frozen=True, slots=True)
class Alert:
    bucket: str
    budget: Budget
    subject: str
    threshold: int
    spent: int


@dataclass(slots=True)
class _Bucket:
    budget: Budget
    subject: str
    state: BucketState

    def drained(self, now_ms: int) -> float:
        elapsed = max(0, now_ms - self.state.updated_ms) / 1000.0
        return max(0.0, self.state.spent - elapsed * self.budget.limit / self.budget.period_s)


@dataclass
class Ledger:
    """Every bucket this process has charged, with the charge and alert rules."""

    buckets: dict[str, _Bucket] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)

    def missing(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if i not in self.buckets]

    def load(self, budgets: Mapping[str, tuple[Budget, str]], states: Mapping[str, BucketState]) -> None:
        """Adopt stored states for buckets not yet held (a bucket never charged starts empty)."""
        for bucket_id, (budget, subject) in budgets.items():
            if bucket_id not in self.buckets:
                self.buckets[bucket_id] = _Bucket(budget, subject, states.get(bucket_id, BucketState()))

    def exhausted(self, ids: Sequence[str], now_ms: int) -> str | None:
        """The first bucket with nothing left, if any (a request is refused before it starts)."""
        for i in ids:
            b = self.buckets[i]
            if b.drained(now_ms) >= b.budget.limit:
                return i
        return None

    def charge(self, ids: Sequence[str], amounts: Mapping[Unit, int], now_ms: int) -> tuple[str | None, list[Alert]]:
        """Charge ``amounts`` to every bucket of ``ids`` whose unit is charged, or to none.

        Returns the bucket that refused (None when charged) and the alerts raised.
        """
        touched = [(i, self.buckets[i]) for i in ids if amounts.get(self.buckets[i].budget.unit, 0) > 0]
        for i, b in touched:
            if b.drained(now_ms) + amounts[b.budget.unit] > b.budget.limit:
                return i, self._alert([(i, b)], now_ms, blocked=True)
        for i, b in touched:
            b.state.spent = b.drained(now_ms) + amounts[b.budget.unit]
            b.state.updated_ms = now_ms
            self.dirty.add(i)
        return None, self._alert(touched, now_ms, blocked=False)

    def refuse(self, bucket_id: str, now_ms: int) -> list[Alert]:
        """A request refused because ``bucket_id`` is spent: its 100% alert, once."""
        return self._alert([(bucket_id, self.buckets[bucket_id])], now_ms, blocked=True)

    def _alert(self, touched: Sequence[tuple[str, _Bucket]], now_ms: int, *, blocked: bool) -> list[Alert]:
        alerts = []
        for i, b in touched:
            spent = b.drained(now_ms)
            percent = 100 if blocked else (100 * spent / b.budget.limit if b.budget.limit else 100)
            if not blocked and percent < ALERT_THRESHOLDS[0] and b.state.alerted:
                b.state.alerted = 0  # drained below the first threshold: the next crossing alerts again
                self.dirty.add(i)
            # A refusal raises the 100% alert alone: the request may be refused while little is spent.
            for threshold in (100,) if blocked else ALERT_THRESHOLDS:
                if b.state.alerted < threshold <= percent:
                    b.state.alerted = threshold
                    self.dirty.add(i)
                    alerts.append(Alert(i, b.budget, b.subject, threshold, int(spent)))
        return alerts

    def remaining(self, bucket_id: str, now_ms: int) -> int:
        b = self.buckets[bucket_id]
        return max(0, int(b.budget.limit - b.drained(now_ms)))

    def take_dirty(self) -> dict[str, BucketState]:
        """Snapshots of the buckets changed since the last call (for the writer to persist)."""
        out = {}
        for i in self.dirty:
            s = self.buckets[i].state
            out[i] = BucketState(s.spent, s.updated_ms, s.alerted)
        self.dirty.clear()
        return out
