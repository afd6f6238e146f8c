"""Web console sign-ins: one row per open session, keyed by the SHA-256 of the cookie's secret.

The secret itself is never stored, so a copy of the database opens no session. Signing
out deletes the row: a cookie replayed afterwards names no session.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from weightvault.broker.storage import schema as t
from weightvault.broker.storage.base import Repository, insert_rows

__all__ = ["ConsoleSessionRepository", "ConsoleSessionRow"]


@dataclass(frozen=True, slots=True)
class ConsoleSessionRow:
    id_hash: bytes
    principal_id: str
    token_hash: bytes
    created_at: int
    expires_at: int


class ConsoleSessionRepository(Repository):
    def add(self, row: ConsoleSessionRow, *, now: int) -> None:
        """Store a session; expired ones are swept in the same transaction."""
        with self._db.write() as conn:
            conn.execute(sa.delete(t.console_sessions).where(t.console_sessions.c.expires_at <= now))
            insert_rows(
                conn,
                t.console_sessions,
                [
                    {
                        "id_hash": row.id_hash,
                        "principal_id": row.principal_id,
                        "token_hash": row.token_hash,
                        "created_at": row.created_at,
                        "expires_at": row.expires_at,
                    }
                ],
            )

    def get(self, id_hash: bytes) -> ConsoleSessionRow | None:
        with self._db.read() as conn:
            r = conn.execute(sa.select(t.console_sessions).where(t.console_sessions.c.id_hash == id_hash)).first()
        if r is None:
            return None
        return ConsoleSessionRow(bytes(r.id_hash), r.principal_id, bytes(r.token_hash), r.created_at, r.expires_at)

    def delete(self, id_hash: bytes) -> bool:
        with self._db.write() as conn:
            result = conn.execute(sa.delete(t.console_sessions).where(t.console_sessions.c.id_hash == id_hash))
        return bool(result.rowcount)
