"""What every repository shares: its database, and how rows go in.

Every method of a repository is one transaction (``Database.write`` or ``read``) and
speaks in rows (:mod:`.rows`), never in SQL types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from weightvault.broker.storage.database import Database

__all__ = ["Repository", "insert_rows", "to_json"]


def to_json(value: object) -> str:
    """A JSON column's text (sorted keys, so equal documents store equal text)."""
    return json.dumps(value, sort_keys=True)


def insert_rows(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(sa.insert(table), [dict(r) for r in rows])


class Repository:
    def __init__(self, db: Database) -> None:
        self._db = db
