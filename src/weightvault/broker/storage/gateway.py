"""The serving gateway's state in the broker's database: API keys, output budgets, and the event outbox.

The gateway (:mod:`weightvault.gateway`) runs beside the broker on the same database.
Its budgets must survive restarts and hold across concurrent connections, so their
state lives here, not in the gateway's memory. The gateway cannot append to the audit
log itself (the broker is its only sequencer), so it writes its events into
``event_outbox`` in the same transaction as the budget charge they describe; the
broker drains the outbox into the log (:meth:`OutboxRepository.pending` and
:meth:`~OutboxRepository.delete`). A charge and its event are thus recorded together
or not at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from weightvault.broker.storage import schema as t
from weightvault.broker.storage.base import Repository

__all__ = ["BucketRow", "GatewayKeyRow", "GatewayRepository", "OutboxRepository", "OutboxRow"]

_bp = sa.bindparam
_Q_KEY: Final = sa.select(t.gateway_keys).where(t.gateway_keys.c.id == _bp("id"))
T = TypeVar("T")
_Q_NOW_MS: Final = sa.text("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
_U_BUCKET: Final = (
    sa.update(t.budget_buckets)
    .where(t.budget_buckets.c.id == _bp("b_id"))
    .values(spent=_bp("spent"), updated_ms=_bp("updated_ms"), alerted=_bp("alerted"))
)


@dataclass(frozen=True, slots=True)
class GatewayKeyRow:
    id: str
    tenant: str
    principal: str
    token_hash: bytes
    models: tuple[str, ...]
    created_at: int
    revoked_at: int | None


@dataclass(frozen=True, slots=True)
class BucketRow:
    id: str
    spent: float
    updated_ms: int
    alerted: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    source: str
    event: str


def _key_row(r: sa.Row[tuple[object, ...]]) -> GatewayKeyRow:
    m = r._mapping
    return GatewayKeyRow(
        id=m["id"],
        tenant=m["tenant_id"],
        principal=m["principal_id"],
        token_hash=bytes(m["token_hash"]),
        models=tuple(json.loads(m["models"])),
        created_at=int(m["created_at"]),
        revoked_at=m["revoked_at"],
    )


class GatewayRepository(Repository):
    """API keys and budget buckets. Every write can carry outbox events in its transaction."""

    def create_key(self, row: GatewayKeyRow, events: Sequence[tuple[str, str]], now: int) -> None:
        """Store a new key and its creation event together (ConflictError if the id exists)."""
        with self._db.write() as conn:
            conn.execute(
                sa.insert(t.gateway_keys).values(
                    id=row.id,
                    tenant_id=row.tenant,
                    principal_id=row.principal,
                    token_hash=row.token_hash,
                    models=json.dumps(list(row.models)),
                    created_at=row.created_at,
                    revoked_at=None,
                )
            )
            _add_events(conn, events, now)

    def key(self, key_id: str) -> GatewayKeyRow | None:
        """A key by id, revoked or not (the gateway checks; every request reads it afresh)."""
        with self._db.read() as conn:
            r = conn.execute(_Q_KEY, {"id": key_id}).first()
        return _key_row(r) if r is not None else None

    def keys(self, tenant: str | None = None) -> list[GatewayKeyRow]:
        q = sa.select(t.gateway_keys).order_by(t.gateway_keys.c.created_at, t.gateway_keys.c.id)
        if tenant is not None:
            q = q.where(t.gateway_keys.c.tenant_id == tenant)
        with self._db.read() as conn:
            return [_key_row(r) for r in conn.execute(q)]

    def revoke_key(self, key_id: str, events: Sequence[tuple[str, str]], now: int) -> bool:
        """Revoke a key (its next request fails); False if it does not exist or was revoked already."""
        with self._db.write() as conn:
            done = conn.execute(
                sa.update(t.gateway_keys)
                .where(t.gateway_keys.c.id == key_id, t.gateway_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
            if done:
                _add_events(conn, events, now)
        return bool(done)

    def buckets(self, ids: Sequence[str]) -> dict[str, BucketRow]:
        """The stored state of these buckets (absent ones have never been charged)."""
        if not ids:
            return {}
        with self._db.read() as conn:
            rows = conn.execute(sa.select(t.budget_buckets).where(t.budget_buckets.c.id.in_(list(ids))))
            return {r.id: BucketRow(r.id, float(r.spent), int(r.updated_ms), int(r.alerted)) for r in rows}

    def reserve(
        self, ids: Sequence[str], decide: Callable[[int, dict[str, BucketRow]], tuple[T, Sequence[BucketRow]]]
    ) -> T:
        """Change buckets shared by several gateways in one transaction: lock the rows of ``ids``
        (created empty when absent), and store the rows ``decide`` returns given the database's
        clock (in ms) and their states; returns ``decide``'s first value.

        PostgreSQL locks the rows (``FOR UPDATE``) in id order, so two gateways reserving from
        overlapping buckets wait for each other and never deadlock; the clock is the
        database's, one for every gateway. Not fsynced, like :meth:`save`.
        """
        wanted = sorted(set(ids))
        with self._db.write(durable=False) as conn:
            empty = [{"id": i, "spent": 0.0, "updated_ms": 0, "alerted": 0} for i in wanted]
            if conn.dialect.name == "postgresql":
                conn.execute(pg_insert(t.budget_buckets).on_conflict_do_nothing(), empty)
                now_ms = int(conn.execute(_Q_NOW_MS).scalar_one())
            else:  # SQLite: the write transaction excludes every other writer already
                conn.execute(sqlite_insert(t.budget_buckets).on_conflict_do_nothing(), empty)
                now_ms = int(time.time() * 1000)
            rows = conn.execute(
                sa.select(t.budget_buckets)
                .where(t.budget_buckets.c.id.in_(wanted))
                .order_by(t.budget_buckets.c.id)
                .with_for_update()
            )
            states = {r.id: BucketRow(r.id, float(r.spent), int(r.updated_ms), int(r.alerted)) for r in rows}
            result, changed = decide(now_ms, states)
            if changed:
                conn.execute(_U_BUCKET, [_bucket_params(b) for b in changed])
        return result

    def save(self, buckets: Sequence[BucketRow], events: Sequence[tuple[str, str]], now: int) -> None:
        """Store bucket states and the events that describe them in one transaction.

        Not fsynced (``durable=False``): it survives a crash of the gateway, and a power
        failure can only lose the last moments of charges together with their events.
        """
        rows = [_bucket_params(b) for b in buckets]
        with self._db.write(durable=False) as conn:
            if rows:
                # Three statements whatever the number of buckets: which exist, then one batch each.
                present = {
                    r[0]
                    for r in conn.execute(
                        sa.select(t.budget_buckets.c.id).where(t.budget_buckets.c.id.in_([r["b_id"] for r in rows]))
                    )
                }
                old = [r for r in rows if r["b_id"] in present]
                new = [{**r, "id": r["b_id"]} for r in rows if r["b_id"] not in present]
                if old:
                    conn.execute(_U_BUCKET, old)
                if new:
                    conn.execute(
                        sa.insert(t.budget_buckets), [{k: v for k, v in r.items() if k != "b_id"} for r in new]
                    )
            _add_events(conn, events, now)


class OutboxRepository(Repository):
    """Events that other processes on this database hand to the broker's audit log."""

    def add(self, events: Sequence[tuple[str, str]], now: int) -> None:
        with self._db.write() as conn:
            _add_events(conn, events, now)

    def pending(self, limit: int = 500) -> list[OutboxRow]:
        q = sa.select(t.event_outbox).order_by(t.event_outbox.c.id).limit(limit)
        with self._db.read() as conn:
            return [OutboxRow(int(r.id), r.source, r.event) for r in conn.execute(q)]

    def waiting(self, source: str, event: str) -> bool:
        """Whether this exact event of ``source`` is still waiting to be appended."""
        q = sa.select(t.event_outbox.c.id).where(t.event_outbox.c.source == source, t.event_outbox.c.event == event)
        with self._db.read() as conn:
            return conn.execute(q.limit(1)).first() is not None

    def delete(self, ids: Sequence[int]) -> None:
        if ids:
            with self._db.write() as conn:
                conn.execute(sa.delete(t.event_outbox).where(t.event_outbox.c.id.in_(list(ids))))


def _bucket_params(b: BucketRow) -> dict[str, object]:
    return {"b_id": b.id, "spent": b.spent, "updated_ms": b.updated_ms, "alerted": b.alerted}


def _add_events(conn: sa.Connection, events: Sequence[tuple[str, str]], now: int) -> None:
    if events:
        conn.execute(
            sa.insert(t.event_outbox),
            [{"source": source, "event": event, "created_at": now} for source, event in events],
        )
