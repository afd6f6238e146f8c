"""The database connection: one engine, one writer at a time, versioned migrations.

Two engines are supported: SQLite (the embedded default, ``sqlite:///PATH``) and
PostgreSQL through psycopg 3 (``postgresql://`` or ``postgresql+psycopg://``; the
``postgresql`` extra installs the driver). Any other URL is a ConfigError.

Every repository of this package runs its statements through :class:`Database`:
``write()`` opens a transaction that commits when the block ends (and serialises
this process's writers, which SQLite needs and PostgreSQL tolerates), ``read()`` a
connection for queries. Integrity errors become :class:`~weightvault.errors.ConflictError`,
so a duplicate insert that loses a race reads like any other "it exists"; a database
that cannot be reached or written (down, disk full, read-only, failing over) becomes
:class:`~weightvault.errors.StorageUnavailableError`, the retryable 503, and the
transaction rolls back whole, so nothing that depended on it happens.

Durability. A write is durable when ``write()`` returns (SQLite: WAL with
``synchronous=FULL``, one fsync per commit), unless the repository asks for
``write(durable=False)``. Such a commit is atomic, isolated and ordered like any
other but skips the fsync (SQLite: ``synchronous=NORMAL`` for that transaction;
PostgreSQL: ``SET LOCAL synchronous_commit = off``, which also skips waiting for a
synchronous standby): a power failure may
undo it, never half of it. And because the log is sequential, the next durable
commit makes every earlier one durable too. Repositories use it only where losing
the write fails closed (a challenge or token that vanishes is refused) or where a
later durable commit always precedes anything that depends on it (docs/protocol.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from weightvault.broker.storage.schema import MIGRATIONS, schema_migrations
from weightvault.errors import ConfigError, ConflictError, InvalidRequestError, StorageUnavailableError

__all__ = ["Database", "engine_url", "libpq_conninfo"]

#: Connections a PostgreSQL engine keeps open, and how many more it may open under load.
#: The broker's request threads share them; a request waits for a free one.
_PG_POOL_SIZE: Final = 8
_PG_MAX_OVERFLOW: Final = 24
#: Seconds to wait for a PostgreSQL server to accept a connection before the request fails
#: (503): during a failover the next request finds the new primary.
_PG_CONNECT_TIMEOUT_S: Final = 5


def engine_url(url: str) -> sa.URL:
    """The SQLAlchemy URL of a configured database URL, with PostgreSQL bound to psycopg 3.

    Raises:
        ConfigError: the URL does not parse, or names an engine or driver other than
            SQLite (pysqlite) and PostgreSQL (psycopg).
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError("the storage URL does not parse (sqlite:///PATH or postgresql://...)") from exc
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite" and driver in ("pysqlite", "sqlite"):
        return parsed
    if backend == "postgresql" and driver in ("psycopg", "psycopg2", "postgresql"):
        # Plain postgresql:// means psycopg2 to SQLAlchemy; weightvault supports psycopg 3 only.
        if driver == "psycopg2":
            raise ConfigError("PostgreSQL storage uses psycopg 3: write postgresql+psycopg:// or postgresql://")
        return parsed.set(drivername="postgresql+psycopg")
    raise ConfigError(f"unsupported storage engine {parsed.drivername!r}: use sqlite:/// or postgresql://")


def libpq_conninfo(url: str) -> str:
    """The libpq connection string of a configured PostgreSQL URL, as SQLAlchemy's psycopg dialect
    reads it (several ``host=HOST:PORT`` parameters become libpq's ``host=H1,H2 port=P1,P2``), for
    components that connect with psycopg directly (the audit log's storage).

    Raises:
        ConfigError: not a PostgreSQL URL weightvault opens.
    """
    parsed = engine_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError("a PostgreSQL URL is needed here (postgresql://...)")
    try:
        from psycopg.conninfo import make_conninfo
    except ImportError as exc:
        raise ConfigError("PostgreSQL needs psycopg: pip install 'weightvault[postgresql]'") from exc

    dialect = sa.create_engine(parsed).dialect
    _, options = dialect.create_connect_args(parsed)
    return make_conninfo(**{k: v for k, v in options.items() if k != "context"})


def _enable_sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


_Q_READ_ONLY: Final = sa.text("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'")
#: The advisory lock that serialises migrations across replicas ("wv-migr" in ASCII).
_MIGRATION_LOCK: Final = 0x77762D6D69677200


@contextmanager
def _unavailable_as_error() -> Iterator[None]:
    """The database's own failures as weightvault errors; a constraint violation passes through.

    OperationalError is the driver saying the server is unreachable, shutting down, out of
    disk, read-only (a standby, or SQLite's ``readonly database``) or locked too long: all
    retryable. DataError is a value the schema cannot hold (too long for its column),
    which a request caused.
    """
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InternalError) as exc:
        raise StorageUnavailableError(f"the broker's database is unavailable: {_reason(exc)}") from exc
    except sa.exc.DataError as exc:
        raise InvalidRequestError("a value is too large or malformed for storage") from exc


def _reason(exc: sa.exc.DBAPIError) -> str:
    """A short, secret-free cause: the driver's error class, and SQLSTATE where it has one."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)
    return type(orig).__name__ + (f" (SQLSTATE {state})" if state else "")


class Database:
    """An SQLAlchemy engine with a write lock; SQLite by default, or PostgreSQL."""

    def __init__(self, url: str) -> None:
        parsed = engine_url(url)
        self.backend: Final = parsed.get_backend_name()
        if self.backend == "postgresql":
            try:
                import psycopg  # noqa: F401  (the driver SQLAlchemy loads by name)
            except ImportError as exc:
                raise ConfigError("PostgreSQL storage needs psycopg: pip install 'weightvault[postgresql]'") from exc
            self.engine: Engine = sa.create_engine(
                parsed,
                pool_size=_PG_POOL_SIZE,
                max_overflow=_PG_MAX_OVERFLOW,
                # No ping before each use (it doubled the round trips of a release): a connection
                # the server closed (a restart, a failover) fails the one request that draws it,
                # with a retryable 503, and SQLAlchemy then discards the whole pool.
                pool_pre_ping=False,
                connect_args={"connect_timeout": _PG_CONNECT_TIMEOUT_S, "application_name": "weightvault-broker"},
            )
        else:
            self.engine = sa.create_engine(parsed)
            sa.event.listen(self.engine, "connect", _enable_sqlite_pragmas)
        self._write_lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """Whether other broker processes (replicas) may use this database too: PostgreSQL."""
        return self.backend == "postgresql"

    def migrate(self, now: int) -> int:
        """Apply pending migrations; returns the schema version.

        Raises:
            ConfigError: the database is at a version this release does not know.
        """
        with _unavailable_as_error():
            with self.engine.begin() as conn:
                if self.backend == "postgresql":
                    # Replicas starting together migrate one at a time: the lock is held to
                    # the end of this transaction, and the next one finds the work done.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
                schema_migrations.create(conn, checkfirst=True)
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
                if self.backend != "postgresql":
                    conn.execute(sa.select(sa.literal(1))).scalar_one()
                    return None
                # A standby (or a primary switched to read-only) answers queries but refuses
                # every write: a broker on it cannot serve, so it is not ready.
                if conn.execute(_Q_READ_ONLY).scalar_one():
                    return "database is read-only (a standby, or default_transaction_read_only is on)"
        except sa.exc.SQLAlchemyError as exc:
            return f"database unavailable: {type(exc).__name__}"
        return None

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """One transaction; a unique-key violation inside it is a ConflictError.

        ``durable=False``: the commit skips its fsync (see the module docstring).
        """
        try:
            with _unavailable_as_error(), self._write_lock, self.engine.connect() as conn:
                if self.backend == "postgresql":
                    with conn.begin():
                        if not durable:
                            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                        yield conn
                    return
                relaxed = not durable
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
        """A connection for queries. On PostgreSQL each statement runs in autocommit: under READ
        COMMITTED a transaction would give each statement its own snapshot anyway, and BEGIN and
        ROLLBACK would cost two more round trips per read."""
        with _unavailable_as_error(), self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT") if self.backend == "postgresql" else conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A connection whose queries all see one commit point (for a consistent export).

        PostgreSQL: a REPEATABLE READ, READ ONLY transaction. SQLite: an explicit BEGIN on the
        WAL database (pysqlite sends none before a SELECT, so each query would see its own state).
        """
        with _unavailable_as_error(), self.engine.connect() as conn:
            if self.backend == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
                with conn.begin() as transaction:
                    yield conn
                    transaction.rollback()
                return
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("BEGIN")
            try:
                yield conn
            finally:
                raw.execute("ROLLBACK")

    def claim(self, name: str) -> Callable[[], None]:
        """Hold the claim ``name`` on this database until the returned function is called or the
        process ends; a second claimant, in any process, is refused (ConflictError).

        For components that must run once per database (the gateway, whose budget ledger is in
        its memory). PostgreSQL: a session advisory lock on a connection kept for it, which the
        server drops when the process dies. SQLite: an ``flock`` on ``<database>.<name>.lock``,
        which the kernel drops likewise.
        """
        if self.backend == "postgresql":
            key = int.from_bytes(hashlib.sha256(b"weightvault claim " + name.encode()).digest()[:8], "big", signed=True)
            with _unavailable_as_error():
                conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                conn.detach()  # its own session: closing it must end the session (and the lock), not pool it
                try:
                    got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one()
                except BaseException:
                    conn.close()
                    raise
            if not got:
                conn.close()
                raise ConflictError(f"another process holds the {name} claim on this database")
            return conn.close  # closing the session releases the lock
        database = self.engine.url.database
        if not database:
            raise ConfigError("an in-memory SQLite database cannot be claimed")
        fd = os.open(f"{database}.{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConflictError(f"another process holds the {name} claim on this database") from None
        return lambda: os.close(fd)

    def close(self) -> None:
        self.engine.dispose()
