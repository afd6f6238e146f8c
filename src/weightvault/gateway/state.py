"""The gateway's durable state: API keys, the budget ledger and its writer, and the events it hands to the log.

Keys and budget buckets live in the broker's database (:mod:`weightvault.broker.storage.gateway`).
Every request reads its key afresh (a revoked key fails at its next request). Budget
buckets are read once per process and then held in a :class:`~.budgets.Ledger`, which
is the single authority for this gateway's charges; each request's charges, alerts and
its ``gateway.request`` event are persisted together by one background writer, in one
transaction, moments after the request ends (and at shutdown).

On SQLite, one gateway process per database: two would each hold their own copy of the
buckets. On PostgreSQL any number of gateways share them through reservations
(:class:`~.budgets.SharedLedger`): the stored buckets are the authority, each gateway
sends only what it reserved from them, and reserves more in one locked transaction when
it runs short. Either way the database keeps the state across restarts, so a restarted
gateway continues from what was spent.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from weightvault.auditlog.events import AuditEvent
from weightvault.broker.storage import BrokerStore, BucketRow, GatewayKeyRow
from weightvault.crypto.secret import random_bytes
from weightvault.errors import AuthenticationError, ContainedError, InvalidRequestError, NotFoundError
from weightvault.gateway.budgets import (
    Alert,
    BucketState,
    Budget,
    Ledger,
    Reservation,
    Scope,
    SharedLedger,
    reserve,
)

__all__ = ["TOKEN_PREFIX", "GatewayState", "KeyAdmin"]

TOKEN_PREFIX: Final = "wvk_"  # noqa: S105 - the prefix of API keys, not a secret
_TOKEN_RE: Final = re.compile(r"wvk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_SOURCE: Final = "gateway"
_RESOURCE_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}/models/[A-Za-z0-9._-]{1,128}@[A-Za-z0-9._-]{1,64}")


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _encoded(event: AuditEvent) -> tuple[str, str]:
    return _SOURCE, event.encode().decode()


class KeyAdmin:
    """Create, list and revoke API keys (``weightvault gateway key ...``); each change is audited."""

    def __init__(self, store: BrokerStore, clock: Callable[[], float] = time.time) -> None:
        self.store, self.clock = store, clock

    def create(self, actor: str, tenant: str, principal: str, models: Sequence[str] = ()) -> tuple[str, GatewayKeyRow]:
        """A new key for ``principal`` of ``tenant``, limited to ``models`` (none: every model of the tenant).

        Returns the token (shown once; only its hash is stored) and the key.

        Raises:
            NotFoundError: no such tenant, or the principal is not an enabled workload of it.
            InvalidRequestError: a model of another tenant, or a malformed name.
        """
        if not self.store.tenants.exists(tenant):
            raise NotFoundError(f"no tenant {tenant!r}")
        row = self.store.principals.by_id(principal)
        if row is None or row.tenant_id != tenant or row.disabled or row.role != "workload":
            raise NotFoundError(f"{principal!r} is not an enabled workload principal of {tenant!r}")
        for model in models:
            if not _RESOURCE_RE.fullmatch(model) or not model.startswith(tenant + "/"):
                raise InvalidRequestError(f"{model!r} is not a model of tenant {tenant!r} (TENANT/models/NAME@VERSION)")
        now = int(self.clock())
        key_id = random_bytes(8).hex()
        secret = random_bytes(32)
        import base64

        secret_text = base64.urlsafe_b64encode(secret).decode().rstrip("=")
        token = f"{TOKEN_PREFIX}{key_id}_{secret_text}"
        key = GatewayKeyRow(key_id, tenant, principal, _hash(secret_text), tuple(sorted(set(models))), now, None)
        event = AuditEvent(
            "gateway.key.create",
            tenant,
            actor,
            resource=f"gateway-key:{key_id}",
            details={"key_id": key_id, "principal": principal, "models": list(key.models)},
        )
        self.store.gateway.create_key(key, [_encoded(event)], now)
        return token, key

    def revoke(self, actor: str, key_id: str) -> GatewayKeyRow:
        """Revoke a key; its next request fails.

        Raises:
            NotFoundError: no such key, or it was revoked already.
        """
        row = self.store.gateway.key(key_id)
        if row is None:
            raise NotFoundError(f"no gateway key {key_id!r}")
        event = AuditEvent(
            "gateway.key.revoke",
            row.tenant,
            actor,
            resource=f"gateway-key:{key_id}",
            details={"key_id": key_id, "principal": row.principal},
        )
        if not self.store.gateway.revoke_key(key_id, [_encoded(event)], int(self.clock())):
            raise NotFoundError(f"gateway key {key_id!r} is revoked already")
        return row

    def list(self, tenant: str | None = None) -> list[GatewayKeyRow]:
        return self.store.gateway.keys(tenant)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated request's key."""

    key_id: str
    tenant: str
    principal: str
    models: tuple[str, ...]

    @classmethod
    def of(cls, row: GatewayKeyRow) -> Caller:
        return cls(row.id, row.tenant, row.principal, row.models)

    def may_use(self, model: str) -> bool:
        """Models of the key's own tenant only, and of its list when it has one."""
        return model.startswith(self.tenant + "/") and (not self.models or model in self.models)


class GatewayState:
    """Keys, ledger and writer of one gateway process."""

    def __init__(
        self,
        store: BrokerStore,
        budgets: Sequence[Budget],
        model_budgets: Mapping[str, Sequence[Budget]],
        clock: Callable[[], float] = time.time,
        *,
        shared: bool | None = None,
    ) -> None:
        """``shared``: budgets shared with other gateways through reservations (default: when the
        database may be shared, i.e. PostgreSQL); else this process's ledger is the authority."""
        self.store, self.clock = store, clock
        self.budgets = tuple(b for b in budgets if b.scope is not Scope.MODEL)
        self.model_budgets = model_budgets
        self.shared = store.db.shared if shared is None else shared
        self.ledger: Ledger | SharedLedger = SharedLedger(self._reserve) if self.shared else Ledger()
        self._queue: queue.Queue[tuple[dict[str, BucketState], list[tuple[str, str]]] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="gateway-writer", daemon=True)
        self._writer.start()
        self.write_failures = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def authenticate(self, bearer: str | None) -> Caller:
        """The key of ``Authorization: Bearer wvk_...``; read from the database on every request.

        Raises:
            AuthenticationError: no token, a malformed one, an unknown or revoked key, a wrong secret.
            ContainedError: the key, or its principal, is held by containment.
        """
        m = _TOKEN_RE.fullmatch(bearer or "")
        row = self.store.gateway.key(m[1]) if m else None
        expected = row.token_hash if row is not None else bytes(32)
        ok = hmac.compare_digest(expected, _hash(m[2] if m else ""))
        if row is None or not ok or row.revoked_at is not None:
            error = AuthenticationError("invalid or revoked API key")
            if row is not None:
                error.caller = Caller.of(row)  # type: ignore[attr-defined]
            raise error
        # A containment hold suspends the key (and a held principal all of its keys) at once.
        if self.store.holds.held_kinds([("gateway_key", row.id), ("principal", row.principal)]):
            held = ContainedError("this API key is suspended by containment")
            held.caller = Caller.of(row)  # type: ignore[attr-defined]
            raise held
        return Caller.of(row)

    def buckets_for(self, caller: Caller, model: str) -> list[str]:
        """The ids of every bucket a request of ``caller`` for ``model`` charges; loads unseen ones."""
        wanted: dict[str, tuple[Budget, str]] = {}
        subjects = {Scope.KEY: caller.key_id, Scope.PRINCIPAL: caller.principal, Scope.TENANT: caller.tenant}
        for b in self.budgets:
            wanted[b.bucket_id(subjects[b.scope])] = (b, subjects[b.scope])
        for b in self.model_budgets.get(model, ()):
            wanted[b.bucket_id(model)] = (b, model)
        missing = self.ledger.missing(wanted)
        if missing:
            stored = self.store.gateway.buckets(missing)
            self.ledger.load(
                {i: wanted[i] for i in missing},
                {i: BucketState(r.spent, r.updated_ms, r.alerted) for i, r in stored.items()},
            )
        return list(wanted)

    def _reserve(self, shortfalls: Mapping[str, float]) -> Reservation:
        """One reservation transaction over the shared buckets (see :func:`~.budgets.reserve`)."""
        known = self.ledger.buckets

        def decide(now_ms: int, rows: dict[str, BucketRow]) -> tuple[Reservation, list[BucketRow]]:
            buckets = {
                i: (known[i].budget, known[i].subject, BucketState(rows[i].spent, rows[i].updated_ms, rows[i].alerted))
                for i in shortfalls
            }
            reservation, changed = reserve(buckets, shortfalls, now_ms)
            return reservation, [BucketRow(i, st.spent, st.updated_ms, st.alerted) for i, st in changed.items()]

        return self.store.gateway.reserve(list(shortfalls), decide)

    def alert_events(self, caller: Caller, model: str, alerts: Sequence[Alert]) -> list[AuditEvent]:
        return [
            AuditEvent(
                "gateway.budget.alert",
                caller.tenant,
                caller.principal,
                resource=model,
                decision="deny" if a.threshold >= 100 else None,
                details={
                    "key_id": caller.key_id,
                    "scope": a.budget.scope.value,
                    "subject": a.subject,
                    "window": a.budget.window,
                    "unit": a.budget.unit.value,
                    "threshold_percent": a.threshold,
                    "spent": a.spent,
                    "limit": a.budget.limit,
                },
            )
            for a in alerts
        ]

    def record(self, events: Sequence[AuditEvent]) -> None:
        """Queue the ledger's changes and ``events`` for one transaction (never blocks the caller)."""
        self._queue.put((self.ledger.take_dirty(), [_encoded(e) for e in events]))

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(b is None for b in batch)
            snapshots: dict[str, BucketState] = {}
            events: list[tuple[str, str]] = []
            for b in batch:
                if b is not None:
                    snapshots.update(b[0])
                    events.extend(b[1])
            if snapshots or events:
                rows = [BucketRow(i, s.spent, s.updated_ms, s.alerted) for i, s in snapshots.items()]
                for attempt in range(5):
                    try:
                        self.store.gateway.save(rows, events, int(self.clock()))
                        break
                    except Exception:
                        time.sleep(0.05 * (attempt + 1))
                else:
                    self.write_failures += 1
            for _ in batch:
                self._queue.task_done()
            if stop:
                return

    def flush(self) -> None:
        """Wait until everything recorded so far is in the database."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=30)
