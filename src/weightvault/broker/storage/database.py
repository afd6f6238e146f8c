"""The database connection: one engine, one writer at a time, versioned migrations.

Every repository of this package runs its statements through :class:`Database`:
``write()`` opens a transaction that commits when the block ends (and serialises
writers, which SQLite needs and other engines tolerate), ``read()`` a connection
for queries. Integrity errors become :class:`~weightvault.errors.ConflictError`, so
a duplicate insert that loses a race reads like any other "it exists".

Durability. A write is durable when ``write()`` returns (SQLite: WAL with
``synchronous=FULL``, one fsync per commit), unless the repository asks for
``write(durable=False)``. Such a commit is atomic, isolated and ordered like any
other but skips the fsync (SQLite: ``synchronous=NORMAL`` for that transaction;
PostgreSQL would use ``SET LOCAL synchronous_commit = off``): a power failure may
undo it, never half of it. And because the log is sequential, the next durable
commit makes every earlier one durable too. Repositories use it only where losing
the write fails closed (a challenge or token that vanishes is refused) or where a
later durable commit always precedes anything that depends on it (docs/protocol.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from weightvault.broker.storage.schema import MIGRATIONS, schema_migrations
from weightvault.errors import ConfigError, ConflictError

__all__ = ["Database"]


def _enable_sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Database:
    """An SQLAlchemy engine with a write lock; SQLite by default."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _enable_sqlite_pragmas)
        self._write_lock = threading.Lock()

    def migrate(self, now: int) -> int:
        """Apply pending migrations; returns the schema version.

        Raises:
            ConfigError: the database is at a version this release does not know.
        """
        schema_migrations.create(self.engine, checkfirst=True)
        with self.engine.begin() as conn:
            done = {r[0] for r in conn.execute(sa.select(schema_migrations.c.version))}
            for version, tables in MIGRATIONS:
                if version in done:
                    continue
                for table in tables:
                    table.create(conn, checkfirst=True)
                conn.execute(sa.insert(schema_migrations).values(version=version, applied_at=now))
        latest = max(v for v, _ in MIGRATIONS)
        with self.engine.connect() as conn:
            current = conn.execute(sa.select(sa.func.max(schema_migrations.c.version))).scalar_one()
        if current != latest:
            raise ConfigError(f"database schema is at version {current}, this release needs {latest}")
        return int(current)

    def ping(self) -> str | None:
        """None if the database answers a query, else why not (for readiness checks)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(sa.literal(1))).scalar_one()
        except sa.exc.SQLAlchemyError as exc:
            return f"database unavailable: {type(exc).__name__}"
        return None

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """One transaction; a unique-key violation inside it is a ConflictError.

        ``durable=False``: the commit skips its fsync (see the module docstring).
        """
        try:
            with self._write_lock, self.engine.connect() as conn:
                relaxed = not durable and self.engine.dialect.name == "sqlite"
                if relaxed:
                    # On the driver's connection, outside any transaction: SQLAlchemy would
                    # begin one for a statement of its own, and the pragma applies per commit.
                    conn.connection.driver_connection.execute("PRAGMA synchronous=NORMAL")  # type: ignore[union-attr]
                try:
                    with conn.begin():
                        yield conn
                finally:
                    if relaxed:
                        conn.connection.driver_connection.execute("PRAGMA synchronous=FULL")  # type: ignore[union-attr]
        except sa.exc.IntegrityError as exc:
            raise ConflictError("it exists already") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()
