"""Containment holds: reversible stops on a principal, a gateway key, a device or a model.

A hold is active while ``lifted_at`` is NULL. At most one active hold exists per
(kind, target) in practice: :meth:`HoldRepository.add` refuses a second one in the same
transaction that checks. Lifting is a compare-and-swap on ``lifted_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from weightvault.broker.storage import schema as t
from weightvault.broker.storage.base import Repository

__all__ = ["HoldRepository", "HoldRow"]

_h = t.containment_holds
_Q_ACTIVE: Final = (
    sa.select(_h.c.id)
    .where(_h.c.kind == sa.bindparam("kind"), _h.c.target == sa.bindparam("target"), _h.c.lifted_at.is_(None))
    .limit(1)
)

_Q_HELD_KINDS: Final = sa.select(_h.c.kind).where(
    sa.tuple_(_h.c.kind, _h.c.target).in_(sa.bindparam("pairs", expanding=True)), _h.c.lifted_at.is_(None)
)


@dataclass(frozen=True, slots=True)
class HoldRow:
    id: str
    kind: str
    target: str
    tenant: str
    alert_index: int | None
    rule: str
    created_by: str
    created_at: int
    lifted_at: int | None = None
    lifted_by: str | None = None


def _row(r: sa.Row[tuple[object, ...]]) -> HoldRow:
    m = r._mapping
    return HoldRow(
        id=m["id"],
        kind=m["kind"],
        target=m["target"],
        tenant=m["tenant_id"],
        alert_index=m["alert_index"],
        rule=m["rule"],
        created_by=m["created_by"],
        created_at=int(m["created_at"]),
        lifted_at=m["lifted_at"],
        lifted_by=m["lifted_by"],
    )


class HoldRepository(Repository):
    def active(self, kind: str, target: str) -> str | None:
        """The id of the active hold on (kind, target), if any: read on every authentication and release."""
        with self._db.read() as conn:
            found = conn.execute(_Q_ACTIVE, {"kind": kind, "target": target}).scalar()
        return None if found is None else str(found)

    def held_kinds(self, targets: Sequence[tuple[str, str]]) -> frozenset[str]:
        """The kinds among ``targets`` (kind, target) that an active hold covers, in one query: what a
        gateway request (its key and principal) and a release (its device and model) read."""
        if not targets:
            return frozenset()
        with self._db.read() as conn:
            return frozenset(str(r[0]) for r in conn.execute(_Q_HELD_KINDS, {"pairs": list(targets)}))

    def add(self, row: HoldRow) -> str:
        """Store a hold, or return the id of the active hold that already covers its target."""
        with self._db.write() as conn:
            existing = conn.execute(_Q_ACTIVE, {"kind": row.kind, "target": row.target}).scalar()
            if existing is not None:
                return str(existing)
            conn.execute(
                sa.insert(_h).values(
                    id=row.id,
                    kind=row.kind,
                    target=row.target,
                    tenant_id=row.tenant,
                    alert_index=row.alert_index,
                    rule=row.rule,
                    created_by=row.created_by,
                    created_at=row.created_at,
                )
            )
        return row.id

    def get(self, hold_id: str) -> HoldRow | None:
        with self._db.read() as conn:
            r = conn.execute(sa.select(_h).where(_h.c.id == hold_id)).first()
        return None if r is None else _row(r)

    def lift(self, hold_id: str, by: str, now: int) -> bool:
        """Lift an active hold; False if it does not exist or was lifted already."""
        with self._db.write() as conn:
            done = conn.execute(
                sa.update(_h).where(_h.c.id == hold_id, _h.c.lifted_at.is_(None)).values(lifted_at=now, lifted_by=by)
            ).rowcount
        return bool(done)

    def list(self, tenant: str | None, *, active_only: bool) -> list[HoldRow]:
        q = sa.select(_h).order_by(_h.c.created_at, _h.c.id)
        if tenant is not None:
            q = q.where(_h.c.tenant_id == tenant)
        if active_only:
            q = q.where(_h.c.lifted_at.is_(None))
        with self._db.read() as conn:
            return [_row(r) for r in conn.execute(q)]

    def created_since(self, actor: str, since: int) -> int:
        """How many holds ``actor`` placed since ``since`` (the broker's rate limit on containment)."""
        with self._db.read() as conn:
            count = conn.execute(
                sa.select(sa.func.count()).where(_h.c.created_by == actor, _h.c.created_at >= since)
            ).scalar_one()
        return int(count)
