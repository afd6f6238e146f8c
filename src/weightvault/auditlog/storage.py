"""SQLite storage of the audit log: entries, tree nodes and the head, plus a separate watermark.

The **log database** holds entries (with tenant and time columns for queries),
every perfect-subtree hash, the history of signed checkpoints, and the **head**:
the size and root of the committed tree and a monotonically increasing
**fencing token**. A writer takes the log by incrementing the fence, and every
batch is one transaction that first advances the head with
``UPDATE ... WHERE fence = ? AND size = ? AND root = ?`` and then inserts its
rows. A writer that lost the fence therefore writes nothing at all: its
transaction rolls back, so it can neither fork the log nor leave rows behind.

The **watermark database**, a separate file, remembers the largest (size, root)
ever committed. A log database that was truncated, had rows deleted, or was
restored from an older backup no longer reaches the watermark, so the log
refuses to open. Restoring both files together is caught outside this machine
by witnesses and clients, which remember larger checkpoints.

Both databases run in WAL mode with ``synchronous=FULL``: a commit of the log
returns only after the data is on stable storage. The watermark's commits may skip
their fsync (:meth:`Watermark.advance`), because a watermark that lags only weakens
the rollback check for the last moments before a power failure, and never makes it
refuse a good log.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from weightvault.auditlog.merkle import EMPTY_ROOT, CompactRange
from weightvault.errors import AuditLogError

__all__ = ["Head", "LogStorage", "LogStore", "StoredEntry", "Watermark", "copy_log"]

SCHEMA_VERSION: Final = 1

SQLITE_LOG_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    ts INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    type TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_tenant_ts ON entries (tenant, ts);
-- A tenant's newest entries first (the console's pages), without sorting the tenant's whole history.
CREATE INDEX IF NOT EXISTS entries_tenant_idx ON entries (tenant, idx);
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    fence INTEGER NOT NULL,
    checkpoint TEXT NOT NULL
);
"""

_WATERMARK_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS watermark (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    origin TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL
);
"""


def _blob(value: object) -> bytes:
    """Stored bytes; a row edited into another SQL type is returned as bytes so checks can fail on it."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise AuditLogError(f"stored value has SQL type {type(value).__name__}, expected a blob")


#: How long a statement waits for another process's lock before it fails. The writer
#: fails closed after this, so it is short: an audit log that cannot commit must make
#: the broker refuse quickly (503), not hang its clients.
DEFAULT_BUSY_TIMEOUT_S: Final = 5.0


def _connect(path: Path, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@dataclass(frozen=True, slots=True)
class StoredEntry:
    index: int
    data: bytes
    ts: int
    tenant: str
    type: str
    #: The hand-off id of an event another replica queued (PostgreSQL storage only).
    handoff: int | None = None


@dataclass(frozen=True, slots=True)
class Head:
    size: int
    root: bytes
    fence: int
    checkpoint: str


class LogStore(Protocol):
    """What the log needs from its storage: :class:`LogStorage` (SQLite, one broker) or
    :class:`~weightvault.auditlog.pgstorage.PostgresLogStorage` (PostgreSQL, replicas)."""

    def size(self) -> int: ...
    def count(self) -> int: ...
    def node(self, level: int, index: int) -> bytes: ...
    def nodes(self, level: int, start: int, stop: int) -> list[bytes]: ...
    def compact_range(self, size: int) -> CompactRange: ...
    def head(self) -> Head | None: ...
    def initialise_head(self, checkpoint: str) -> Head: ...
    def take_fence(self, expected: int) -> int: ...
    def append_batch(
        self,
        entries: Sequence[StoredEntry],
        nodes: Sequence[tuple[int, int, bytes]],
        *,
        fence: int,
        old: tuple[int, bytes],
        new: tuple[int, bytes],
        checkpoint: str,
        published: bool = False,
    ) -> None: ...
    def store_published(self, size: int, note: str) -> None: ...
    def published_checkpoint(self) -> str | None: ...
    def checkpoint(self, size: int) -> str | None: ...
    def entry(self, index: int) -> StoredEntry: ...
    def entries(
        self,
        start: int = 0,
        stop: int | None = None,
        *,
        tenant: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[StoredEntry]: ...
    def recent(
        self, stop: int, *, tenant: str | None = None, type_prefix: str | None = None, limit: int = 100
    ) -> list[StoredEntry]: ...
    def close(self) -> None: ...


class Watermark:
    """The largest committed (size, root), in its own database file. It only moves forward."""

    def __init__(self, path: Path, origin: str) -> None:
        self.path = Path(path)
        self.origin = origin
        self._conn = _connect(self.path)
        self._conn.executescript(_WATERMARK_SCHEMA)
        row = self._conn.execute("SELECT origin FROM watermark WHERE id = 1").fetchone()
        if row is not None and row[0] != origin:
            raise AuditLogError(f"watermark belongs to origin {row[0]!r}")

    def read(self) -> tuple[int, bytes] | None:
        row = self._conn.execute("SELECT size, root FROM watermark WHERE id = 1").fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def advance(self, size: int, root: bytes, *, durable: bool = True) -> None:
        """Record (size, root) if it is larger than the stored watermark.

        ``durable=False`` skips the fsync: the commit is atomic and ordered, and a
        power failure can only take the watermark back to an earlier committed
        (size, root), which the log still extends. The writer calls it after the
        log's own durable commit, so the watermark is never ahead of the log.
        """
        if not durable:
            self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self._conn.execute(
                "INSERT INTO watermark (id, origin, size, root) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET size = excluded.size, root = excluded.root WHERE excluded.size > size",
                (self.origin, size, root),
            )
        finally:
            if not durable:
                self._conn.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        self._conn.close()


def read_origin(path: Path) -> str:
    """The origin recorded in a log database, opened read-only (nothing is created or changed).

    Raises:
        AuditLogError: no such file, or not a log database.
    """
    # A URI is the only way to ask SQLite for read-only mode; quoting keeps '?', '#' and '%'
    # in the file name from being read as URI syntax (which once opened a stray file).
    uri = "file:" + urllib.parse.quote(str(Path(path).resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            row = conn.execute("SELECT v FROM meta WHERE k = 'origin'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise AuditLogError(f"{path}: not an audit log database ({exc})") from exc
    if row is None:
        raise AuditLogError(f"{path}: not an audit log database")
    return str(row[0])


def copy_log(src: Path, dst: Path) -> str:
    """Copy a log database consistently while its writer may be running (SQLite's online backup,
    which copies one commit point); returns its origin. ``dst`` must not exist.

    Raises:
        AuditLogError: ``src`` is not a log database.
    """
    origin = read_origin(src)
    uri = "file:" + urllib.parse.quote(str(Path(src).resolve())) + "?mode=ro"
    source = sqlite3.connect(uri, uri=True)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return origin


class LogStorage:
    """Entries, perfect-subtree hashes and checkpoints of one log."""

    def __init__(self, path: Path, origin: str) -> None:
        self.path = Path(path)
        self._conn = _connect(self.path)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._conn.executescript(SQLITE_LOG_SCHEMA)
        with self._lock:
            row = self._conn.execute("SELECT v FROM meta WHERE k = 'origin'").fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO meta (k, v) VALUES ('origin', ?), ('schema', ?)", (origin, SCHEMA_VERSION)
                )
            elif row[0] != origin:
                raise AuditLogError(f"log database belongs to origin {row[0]!r}, not {origin!r}")

    def _read(self) -> sqlite3.Connection:
        """A connection of this thread for reads; WAL lets readers run beside the writer."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def size(self) -> int:
        row = self._read().execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()
        return int(row[0])

    def node(self, level: int, index: int) -> bytes:
        row = self._read().execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
        if row is None:
            raise AuditLogError(f"tree node ({level}, {index}) is missing from storage")
        return _blob(row[0])

    def nodes(self, level: int, start: int, stop: int) -> list[bytes]:
        """Hashes of perfect nodes [start, stop) at ``level``, in order."""
        rows = (
            self._read()
            .execute(
                "SELECT idx, hash FROM nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (level, start, stop),
            )
            .fetchall()
        )
        if len(rows) != stop - start:
            raise AuditLogError(f"tree nodes at level {level} are missing from storage")
        return [_blob(r[1]) for r in rows]

    def compact_range(self, size: int) -> CompactRange:
        return CompactRange.from_source(self, size)

    def head(self) -> Head | None:
        row = self._conn.execute("SELECT size, root, fence, checkpoint FROM head WHERE id = 1").fetchone()
        return None if row is None else Head(row[0], bytes(row[1]), row[2], row[3])

    def initialise_head(self, checkpoint: str) -> Head:
        """Create the head of an empty log; refuses if the log already has entries."""
        with self._lock:
            if self.count() or self.head() is not None:
                raise AuditLogError("the log database has entries or a head already")
            self._conn.execute(
                "INSERT INTO head (id, size, root, fence, checkpoint) VALUES (1, 0, ?, 0, ?)", (EMPTY_ROOT, checkpoint)
            )
            self._conn.execute("INSERT OR REPLACE INTO checkpoints (size, note) VALUES (0, ?)", (checkpoint,))
        head = self.head()
        assert head is not None
        return head

    def take_fence(self, expected: int) -> int:
        """Become the writer: increment the fence if it still equals ``expected``.

        Raises:
            AuditLogError: another writer took the log in between.
        """
        with self._lock:
            cur = self._conn.execute("UPDATE head SET fence = fence + 1 WHERE id = 1 AND fence = ?", (expected,))
        if cur.rowcount != 1:
            raise AuditLogError("another writer holds the audit log (fencing token changed)")
        return expected + 1

    def count(self) -> int:
        return int(self._read().execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def append_batch(
        self,
        entries: Sequence[StoredEntry],
        nodes: Sequence[tuple[int, int, bytes]],
        *,
        fence: int,
        old: tuple[int, bytes],
        new: tuple[int, bytes],
        checkpoint: str,
        published: bool = False,
    ) -> None:
        """Advance the head by compare-and-swap and persist the batch, in one durable transaction.

        ``published``: the checkpoint needs no cosignatures (a log without witnesses)
        and is recorded as the newest published one in the same transaction.

        Raises:
            AuditLogError: the fence or head changed (this writer must stop); nothing is written.
        """
        if any(e.handoff is not None for e in entries):
            raise AuditLogError("a log on SQLite has no replicas to hand events off")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.execute(
                    "UPDATE head SET size = ?, root = ?, checkpoint = ? "
                    "WHERE id = 1 AND fence = ? AND size = ? AND root = ?",
                    (new[0], new[1], checkpoint, fence, old[0], old[1]),
                )
                if cur.rowcount != 1:
                    raise AuditLogError("audit log head changed under this writer (fenced out or forked)")
                self._conn.executemany(
                    "INSERT INTO entries (idx, data, ts, tenant, type) VALUES (?, ?, ?, ?, ?)",
                    [(e.index, e.data, e.ts, e.tenant, e.type) for e in entries],
                )
                self._conn.executemany("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
                self._conn.execute(
                    "INSERT OR REPLACE INTO checkpoints (size, note) VALUES (?, ?)", (new[0], checkpoint)
                )
                if published:
                    self._mark_published(new[0])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def store_published(self, size: int, note: str) -> None:
        """Store the published form of the checkpoint at ``size`` (with its cosignatures).

        The newest published size is remembered, so that readers of this database
        (``audit serve``, ``audit export``) hand out the witnessed checkpoint.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT OR REPLACE INTO checkpoints (size, note) VALUES (?, ?)", (size, note))
                self._mark_published(size)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _mark_published(self, size: int) -> None:
        """Inside a transaction: ``size`` is the newest published checkpoint (it never moves back)."""
        self._conn.execute(
            "INSERT INTO meta (k, v) VALUES ('published', ?) ON CONFLICT (k) DO UPDATE "
            "SET v = excluded.v WHERE CAST(meta.v AS INTEGER) < CAST(excluded.v AS INTEGER)",
            (str(size),),
        )

    def published_checkpoint(self) -> str | None:
        """The newest checkpoint that was published (met the witness policy), or None."""
        row = (
            self._read()
            .execute(
                "SELECT c.note FROM meta m JOIN checkpoints c ON c.size = CAST(m.v AS INTEGER) WHERE m.k = 'published'"
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def checkpoint(self, size: int) -> str | None:
        row = self._read().execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return None if row is None else str(row[0])

    def entry(self, index: int) -> StoredEntry:
        row = self._read().execute("SELECT idx, data, ts, tenant, type FROM entries WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise AuditLogError(f"no entry {index}")
        return StoredEntry(row[0], _blob(row[1]), row[2], row[3], row[4])

    def entries(
        self,
        start: int = 0,
        stop: int | None = None,
        *,
        tenant: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[StoredEntry]:
        clauses = ["idx >= ?"]
        args: list[object] = [start]
        if stop is not None:
            clauses.append("idx < ?")
            args.append(stop)
        if tenant is not None:
            clauses.append("tenant = ?")
            args.append(tenant)
        if since_ms is not None:
            clauses.append("ts >= ?")
            args.append(since_ms)
        if until_ms is not None:
            clauses.append("ts < ?")
            args.append(until_ms)
        sql = f"SELECT idx, data, ts, tenant, type FROM entries WHERE {' AND '.join(clauses)} ORDER BY idx"  # noqa: S608 - fixed clauses, bound values
        for row in self._read().execute(sql, args):
            yield StoredEntry(row[0], _blob(row[1]), row[2], row[3], row[4])

    def recent(
        self, stop: int, *, tenant: str | None = None, type_prefix: str | None = None, limit: int = 100
    ) -> list[StoredEntry]:
        """At most ``limit`` entries below index ``stop``, newest first, of ``tenant`` and of types
        starting with ``type_prefix`` when given (a page of the console's lists)."""
        clauses = ["idx < ?"]
        args: list[object] = [stop]
        if tenant is not None:
            clauses.append("tenant = ?")
            args.append(tenant)
        if type_prefix:
            clauses.append("substr(type, 1, ?) = ?")
            args += [len(type_prefix), type_prefix]
        sql = f"SELECT idx, data, ts, tenant, type FROM entries WHERE {' AND '.join(clauses)} ORDER BY idx DESC LIMIT ?"  # noqa: S608 - fixed clauses, bound values
        rows = self._read().execute(sql, [*args, limit]).fetchall()
        return [StoredEntry(r[0], _blob(r[1]), r[2], r[3], r[4]) for r in rows]

    def close(self) -> None:
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._conn.close()
