"""Storage of the two-person controls: approval policies, requests and approvals; custody share sets and ceremonies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa

from weightvault.broker.storage import schema as t
from weightvault.broker.storage.base import Repository, insert_rows, to_json
from weightvault.broker.storage.rows import ApprovalRequestRow, ApprovalRow, CeremonyRow, ShareSetRow

__all__ = ["ApprovalRepository", "CustodyRepository"]

# Read by every release (the approval gate), so built once.
_Q_APPROVAL_POLICY: Final = (
    sa.select(t.approval_policies.c.version, t.approval_policies.c.document)
    .order_by(t.approval_policies.c.version.desc())
    .limit(1)
)


class ApprovalRepository(Repository):
    """Approval policies (versioned), requests and the signed approvals of each request."""

    def policy(self) -> tuple[int, dict[str, Any]] | None:
        """The latest approval policy as (version, document)."""
        with self._db.read() as conn:
            row = conn.execute(_Q_APPROVAL_POLICY).first()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def add_policy(self, version: int, document: Mapping[str, Any], digest: str, created_by: str, now: int) -> None:
        row = {
            "version": version,
            "document": to_json(dict(document)),
            "digest": digest,
            "created_by": created_by,
            "created_at": now,
        }
        with self._db.write() as conn:
            insert_rows(conn, t.approval_policies, [row])

    def add_request(self, request_id: str, tenant: str, document: Mapping[str, Any], digest: str, now: int) -> None:
        """Store a pending request; ``document`` is its canonical form, which names its operation."""
        row = {
            "id": request_id,
            "tenant_id": tenant,
            "op": str(document["op"]),
            "document": to_json(dict(document)),
            "digest": digest,
            "status": "pending",
            "created_at": now,
            "updated_at": now,
        }
        with self._db.write() as conn:
            insert_rows(conn, t.approval_requests, [row])

    def request(self, request_id: str) -> ApprovalRequestRow | None:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(t.approval_requests.c.document, t.approval_requests.c.status).where(
                    t.approval_requests.c.id == request_id
                )
            ).first()
        return None if row is None else ApprovalRequestRow(json.loads(row[0]), str(row[1]))

    def requests(self, tenant: str | None, status: str | None) -> list[ApprovalRequestRow]:
        query = sa.select(t.approval_requests.c.document, t.approval_requests.c.status).order_by(
            t.approval_requests.c.created_at
        )
        if tenant is not None:
            query = query.where(t.approval_requests.c.tenant_id == tenant)
        if status is not None:
            query = query.where(t.approval_requests.c.status == status)
        with self._db.read() as conn:
            return [ApprovalRequestRow(json.loads(r[0]), str(r[1])) for r in conn.execute(query)]

    def set_status(self, request_id: str, old: str, new: str, now: int) -> bool:
        """Compare-and-swap the status of a request; exactly one caller can win."""
        with self._db.write() as conn:
            result = conn.execute(
                sa.update(t.approval_requests)
                .where(t.approval_requests.c.id == request_id, t.approval_requests.c.status == old)
                .values(status=new, updated_at=now)
            )
        return result.rowcount == 1

    def approvals(self, request_id: str) -> list[ApprovalRow]:
        """In submission order."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(t.approvals)
                .where(t.approvals.c.request_id == request_id)
                .order_by(t.approvals.c.created_at, t.approvals.c.approver_id)
            ).all()
        return [ApprovalRow(r.approver_id, r.decision, int(r.expires_at), bytes(r.signature)) for r in rows]

    def add_approval(self, request_id: str, approval: ApprovalRow, now: int) -> None:
        row = {
            "request_id": request_id,
            "approver_id": approval.approver,
            "decision": approval.decision,
            "expires_at": approval.expires_at,
            "signature": approval.signature,
            "created_at": now,
        }
        with self._db.write() as conn:
            insert_rows(conn, t.approvals, [row])


class CustodyRepository(Repository):
    """Share sets (pending, active, retired), their sealed deliveries, and ceremonies."""

    def share_set(self, status: str) -> ShareSetRow | None:
        """The newest share set with ``status``."""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(t.custody_sets.c.id, t.custody_sets.c.status, t.custody_sets.c.document)
                .where(t.custody_sets.c.status == status)
                .order_by(t.custody_sets.c.created_at.desc())
                .limit(1)
            ).first()
        return None if row is None else ShareSetRow(row[0], row[1], json.loads(row[2]))

    def share_set_by_id(self, set_id: str) -> ShareSetRow | None:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(t.custody_sets.c.id, t.custody_sets.c.status, t.custody_sets.c.document).where(
                    t.custody_sets.c.id == set_id
                )
            ).first()
        return None if row is None else ShareSetRow(row[0], row[1], json.loads(row[2]))

    def add_share_set(self, row: ShareSetRow, deliveries: Mapping[str, bytes], now: int) -> None:
        with self._db.write() as conn:
            insert_rows(
                conn,
                t.custody_sets,
                [
                    {
                        "id": row.id,
                        "status": row.status,
                        "document": to_json(row.document),
                        "created_at": now,
                        "updated_at": now,
                    }
                ],
            )
            insert_rows(
                conn,
                t.custody_deliveries,
                [{"set_id": row.id, "custodian_id": c, "sealed": s} for c, s in deliveries.items()],
            )

    def retire_pending(self, now: int) -> None:
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.custody_sets)
                .where(t.custody_sets.c.status == "pending")
                .values(status="retired", updated_at=now)
            )

    def promote(self, set_id: str, now: int) -> None:
        """The given set becomes active; the active one retires. One transaction."""
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.custody_sets)
                .where(t.custody_sets.c.status == "active")
                .values(status="retired", updated_at=now)
            )
            conn.execute(
                sa.update(t.custody_sets).where(t.custody_sets.c.id == set_id).values(status="active", updated_at=now)
            )

    def delivery(self, set_id: str, custodian: str) -> bytes | None:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(t.custody_deliveries.c.sealed).where(
                    t.custody_deliveries.c.set_id == set_id, t.custody_deliveries.c.custodian_id == custodian
                )
            ).first()
        return None if row is None else bytes(row[0])

    def add_ceremony(self, ceremony_id: str, kind: str, set_id: str, terms: Mapping[str, Any], now: int) -> None:
        row = {
            "id": ceremony_id,
            "kind": kind,
            "set_id": set_id,
            "terms": to_json(dict(terms)),
            "status": "open",
            "created_at": now,
            "closed_at": None,
        }
        with self._db.write() as conn:
            insert_rows(conn, t.custody_ceremonies, [row])

    def close_ceremony(self, ceremony_id: str, status: str, now: int) -> None:
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.custody_ceremonies)
                .where(t.custody_ceremonies.c.id == ceremony_id)
                .values(status=status, closed_at=now)
            )

    def ceremony(self, ceremony_id: str) -> CeremonyRow | None:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(t.custody_ceremonies.c.terms, t.custody_ceremonies.c.status).where(
                    t.custody_ceremonies.c.id == ceremony_id
                )
            ).first()
        return None if row is None else CeremonyRow(ceremony_id, json.loads(row[0]), str(row[1]))
