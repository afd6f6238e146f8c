"""A consistent logical copy of the broker database, and its restoration into an empty one.

:func:`export_database` reads every table of the schema in one snapshot (PostgreSQL:
a REPEATABLE READ, READ ONLY transaction; SQLite: one read transaction on the WAL
database, which sees a single commit point throughout) and returns a JSON-ready
document: rows as column → value, bytes as ``{"b64": ...}``. It is engine-neutral,
so a backup of SQLite restores into PostgreSQL and back.

:func:`restore_database` writes such a document into a database that holds no rows,
in one transaction: either everything is restored or nothing is. Rows of a table or
column this release does not know are refused (a backup of a newer release).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa

from weightvault.broker.storage.database import Database
from weightvault.broker.storage.schema import MIGRATIONS, metadata, schema_migrations
from weightvault.errors import BackupError, ConflictError

__all__ = ["FORMAT", "export_database", "restore_database"]

FORMAT: Final = "weightvault.broker-db/1"
_LATEST: Final = max(v for v, _ in MIGRATIONS)


def _tables() -> list[sa.Table]:
    return [t for t in metadata.sorted_tables if t is not schema_migrations]


def _encode(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode()}
    return value


def export_database(db: Database) -> dict[str, Any]:
    """Every row of every table, read in one snapshot; raises StorageUnavailableError on an outage."""
    tables: dict[str, list[dict[str, object]]] = {}
    with db.snapshot() as conn:
        for table in _tables():
            order = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execute(sa.select(table).order_by(*order)).mappings()
            tables[table.name] = [{k: _encode(v) for k, v in row.items()} for row in rows]
    return {"format": FORMAT, "schema_version": _LATEST, "tables": tables}


def _decode(table: sa.Table, row: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in row.items():
        if name not in table.columns:
            raise BackupError(f"the backup has a column {table.name}.{name} this release does not know")
        out[name] = value
        if isinstance(table.columns[name].type, sa.LargeBinary) and value is not None:
            if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
                raise BackupError(f"{table.name}.{name}: bytes expected")
            try:
                out[name] = base64.b64decode(value["b64"], validate=True)
            except binascii.Error as exc:
                raise BackupError(f"{table.name}.{name}: bytes expected") from exc
    return out


def restore_database(db: Database, doc: Mapping[str, Any], now: int) -> dict[str, int]:
    """Migrate ``db``, then insert the document's rows in one transaction; returns rows per table.

    Raises:
        BackupError: not a database export of a release this one can restore.
        ConflictError: the database already holds rows (restore into a new one).
    """
    if doc.get("format") != FORMAT or not isinstance(doc.get("tables"), dict):
        raise BackupError("not a broker database export")
    version = doc.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= _LATEST:
        raise BackupError(f"the backup's schema version {version!r} is newer than this release's ({_LATEST})")
    known = {t.name: t for t in _tables()}
    unknown = sorted(set(doc["tables"]) - set(known))
    if unknown:
        raise BackupError(f"the backup has tables this release does not know: {', '.join(unknown)}")
    db.migrate(now)
    counts: dict[str, int] = {}
    with db.write() as conn:
        for table in known.values():
            if conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one():
                raise ConflictError(f"the database is not empty ({table.name} has rows): restore into a new one")
        for name, table in known.items():
            rows = doc["tables"].get(name, [])
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise BackupError(f"{name}: a list of rows expected")
            if rows:
                conn.execute(sa.insert(table), [_decode(table, r) for r in rows])
            counts[name] = len(rows)
        if db.backend == "postgresql":
            # Rows came with their ids: move each serial's sequence past them.
            for table in known.values():
                column = table.autoincrement_column
                if column is not None:
                    after = conn.execute(sa.select(sa.func.coalesce(sa.func.max(column), 0) + 1)).scalar_one()
                    conn.execute(
                        sa.text("SELECT setval(pg_get_serial_sequence(:t, :c), :v, false)"),
                        {"t": table.name, "c": column.name, "v": after},
                    )
    return counts
