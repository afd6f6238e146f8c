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

Several gateways over one database (PostgreSQL) share the buckets through
*reservations* (:class:`SharedLedger`): the stored bucket is the authority and counts
what every gateway has reserved; a gateway sends only out of its own reservation, and
reserves more (at least :data:`RESERVE_FRACTION` of the limit, at most what is left) in
one locked transaction when it runs short. Every unit sent was reserved first, so N
gateways together stay within each limit, up to what a reservation leaks while it is
held (:data:`ALLOWANCE_TTL_MS`, then the rest is dropped): ``limit * TTL / period``, under
0.2 % of an hourly bucket. Reserved and unsent units count as spent until they drain,
which errs on the side of the budget.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from weightvault.errors import ConfigError

__all__ = [
    "ALERT_THRESHOLDS",
    "ALLOWANCE_TTL_MS",
    "DEFAULT_BUDGETS",
    "RESERVE_FRACTION",
    "Alert",
    "BucketState",
    "Budget",
    "Ledger",
    "Reservation",
    "Scope",
    "SharedLedger",
    "Unit",
    "parse_budget",
    "reserve",
]

ALERT_THRESHOLDS: Final = (50, 80, 100)
#: A reservation takes at least this fraction of its bucket's limit (fewer database round trips).
RESERVE_FRACTION: Final = 0.01
#: A gateway sends out of a reservation for this long at most; what is left is then dropped.
ALLOWANCE_TTL_MS: Final = 5_000
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
        return self.charge_each({i: amounts.get(self.buckets[i].budget.unit, 0) for i in ids}, now_ms)

    def charge_each(self, amounts: Mapping[str, float], now_ms: int) -> tuple[str | None, list[Alert]]:
        """Charge each bucket its own amount (buckets with none are not touched), all or none."""
        touched = [(i, self.buckets[i], a) for i, a in amounts.items() if a > 0]
        for i, b, a in touched:
            if b.drained(now_ms) + a > b.budget.limit:
                return i, self._alert([(i, b)], now_ms, blocked=True)
        for i, b, a in touched:
            b.state.spent = b.drained(now_ms) + a
            b.state.updated_ms = now_ms
            self.dirty.add(i)
        return None, self._alert([(i, b) for i, b, _ in touched], now_ms, blocked=False)

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


# -- several gateways: reservations from the shared buckets -------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one reservation transaction decided: units granted per bucket (none when refused),
    the bucket that refused, the alerts raised, and every bucket's level as now stored."""

    granted: Mapping[str, float]
    refused: str | None
    alerts: Sequence[Alert]
    levels: Mapping[str, BucketState]


def reserve(
    buckets: Mapping[str, tuple[Budget, str, BucketState]], shortfalls: Mapping[str, float], now_ms: int
) -> tuple[Reservation, dict[str, BucketState]]:
    """Decide a reservation over the locked, stored states of ``buckets`` (pure; the caller holds
    the rows' locks and stores the states returned).

    Each bucket of ``shortfalls`` must grant at least its shortfall, or nothing is granted
    anywhere (all or nothing, as a charge) and the refusing bucket's 100% alert is raised
    once. Otherwise each grants its shortfall topped up to :data:`RESERVE_FRACTION` of its
    limit, capped by what is left, and its alerts are raised as for a charge.
    """
    ledger = Ledger()
    ledger.load(
        {i: (budget, subject) for i, (budget, subject, _) in buckets.items()},
        {i: BucketState(st.spent, st.updated_ms, st.alerted) for i, (_, _, st) in buckets.items()},
    )
    grants: dict[str, float] = {}
    for i, short in shortfalls.items():
        b = ledger.buckets[i]
        left = b.budget.limit - b.drained(now_ms)
        grants[i] = short if short > left else min(left, max(short, b.budget.limit * RESERVE_FRACTION))
    refused, alerts = ledger.charge_each(grants, now_ms)
    levels = {i: b.state for i, b in ledger.buckets.items()}
    changed = {i: ledger.buckets[i].state for i in ledger.take_dirty()}
    return Reservation({} if refused else grants, refused, alerts, levels), changed


@dataclass(slots=True)
class _Allowance:
    units: float = 0.0
    expires_ms: int = 0


class SharedLedger:
    """One gateway's side of budgets shared with other gateways: it sends only what it reserved.

    ``reserve_in_store(shortfalls)`` runs :func:`reserve` in one database transaction over
    the buckets named (locking their rows) and returns its :class:`Reservation`. The
    methods match :class:`Ledger`'s, so the gateway uses either. Not thread-safe: the
    gateway calls it from its event loop only.
    """

    def __init__(self, reserve_in_store: Callable[[Mapping[str, float]], Reservation]) -> None:
        self._reserve = reserve_in_store
        self.buckets: dict[str, _Bucket] = {}
        self._allowances: dict[str, _Allowance] = {}

    def missing(self, ids: Iterable[str]) -> list[str]:
        return list(ids)  # the stored levels are read afresh for every request

    def load(self, budgets: Mapping[str, tuple[Budget, str]], states: Mapping[str, BucketState]) -> None:
        """Refresh the levels last stored (what other gateways reserved shows here)."""
        for bucket_id, (budget, subject) in budgets.items():
            self.buckets[bucket_id] = _Bucket(budget, subject, states.get(bucket_id, BucketState()))

    def _available(self, bucket_id: str, now_ms: int) -> float:
        allowance = self._allowances.get(bucket_id)
        if allowance is None or now_ms >= allowance.expires_ms:
            return 0.0
        return allowance.units

    def exhausted(self, ids: Sequence[str], now_ms: int) -> str | None:
        for i in ids:
            b = self.buckets[i]
            if self._available(i, now_ms) <= 0 and b.drained(now_ms) >= b.budget.limit:
                return i
        return None

    def charge(self, ids: Sequence[str], amounts: Mapping[Unit, int], now_ms: int) -> tuple[str | None, list[Alert]]:
        wanted = {i: float(amounts.get(self.buckets[i].budget.unit, 0)) for i in ids}
        wanted = {i: a for i, a in wanted.items() if a > 0}
        short = {i: a - self._available(i, now_ms) for i, a in wanted.items() if self._available(i, now_ms) < a}
        alerts: Sequence[Alert] = ()
        if short:
            done = self._reserve(short)
            for i, state in done.levels.items():
                if i in self.buckets:
                    self.buckets[i].state = state
            if done.refused is not None:
                return done.refused, list(done.alerts)
            for i, units in done.granted.items():
                self._allowances[i] = _Allowance(self._available(i, now_ms) + units, now_ms + ALLOWANCE_TTL_MS)
            alerts = done.alerts
        for i, a in wanted.items():
            self._allowances[i].units -= a
        return None, list(alerts)

    def refuse(self, bucket_id: str, now_ms: int) -> list[Alert]:
        """A request refused because ``bucket_id`` is spent: its 100% alert, once across gateways."""
        return list(self._reserve({bucket_id: self.buckets[bucket_id].budget.limit + 1.0}).alerts)

    def remaining(self, bucket_id: str, now_ms: int) -> int:
        b = self.buckets[bucket_id]
        return max(0, int(self._available(bucket_id, now_ms) + b.budget.limit - b.drained(now_ms)))

    def take_dirty(self) -> dict[str, BucketState]:
        return {}  # every reservation is stored when it is made
