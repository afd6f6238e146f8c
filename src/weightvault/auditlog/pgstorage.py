"""PostgreSQL storage of the audit log, shared by broker replicas: the same tables as the
SQLite storage, plus the sequencer's lease and the durable hand-off queue.

The log's rules are the SQLite storage's (:mod:`weightvault.auditlog.storage`): every
batch is one transaction that first advances the head by compare-and-swap on
``(fence, size, root)`` and then inserts its rows, so a writer that lost the fence
writes nothing. Two things are added for replicas:

* **The lease.** ``audit_head`` also holds ``holder`` and ``lease_until``, measured
  by the database's clock (one clock for every replica, so no skew between
  machines matters). A replica becomes the sequencer with one statement that
  increments the fence *only if the lease has expired* (:meth:`PostgresLogStorage.acquire`),
  and keeps it by renewing under its fence (:meth:`~PostgresLogStorage.renew`). The lease
  decides only who *should* write; the fence decides who *can*: a sequencer
  paused past its lease that wakes up fails its next compare-and-swap.
* **The hand-off queue.** A replica that is not the sequencer inserts each event,
  encoded, into ``audit_handoff`` and commits (durable, synchronously replicated
  like any commit), then waits for the entry that names its hand-off id. The
  sequencer appends hand-off rows like its own events and deletes them *in the
  same transaction* that inserts their entries: an event is either waiting in
  the queue or in the log, never lost and never appended twice, whoever dies when.

Notifications (``LISTEN``/``NOTIFY``, delivered at commit) wake the sequencer when a
row is handed off and the waiting replica when a batch commits; both also poll, so
a notification lost in a reconnect delays an event, never loses it.

Connections: one for the writer (serialised by a lock), one per reading thread
(autocommit: every statement sees the latest commit), and one per listener.
Connection failures are :class:`~weightvault.errors.AuditUnavailableError`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from weightvault.auditlog.merkle import EMPTY_ROOT, CompactRange
from weightvault.auditlog.storage import SCHEMA_VERSION, SQLITE_LOG_SCHEMA, Head, StoredEntry
from weightvault.errors import AuditLogError, AuditUnavailableError, ConfigError

__all__ = ["COMMIT_CHANNEL", "HANDOFF_CHANNEL", "HandoffRow", "Lease", "PostgresLogStorage", "libpq_url"]

#: NOTIFY channels: a row was handed off (wakes the sequencer); a batch committed (wakes waiters).
HANDOFF_CHANNEL: Final = "wv_audit_handoff"
COMMIT_CHANNEL: Final = "wv_audit_commit"
#: Serialises schema creation across replicas starting together ("wv-audit" in ASCII).
_SCHEMA_LOCK: Final = 0x77762D6175646974
_CONNECT_TIMEOUT_S: Final = 5

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_entries (
    idx BIGINT PRIMARY KEY,
    data BYTEA NOT NULL,
    ts BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    handoff BIGINT UNIQUE
);
CREATE INDEX IF NOT EXISTS audit_entries_tenant_ts ON audit_entries (tenant, ts);
CREATE INDEX IF NOT EXISTS audit_entries_tenant_idx ON audit_entries (tenant, idx);
CREATE TABLE IF NOT EXISTS audit_nodes (
    level INTEGER NOT NULL,
    idx BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (size BIGINT PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL,
    root BYTEA NOT NULL,
    fence BIGINT NOT NULL,
    checkpoint TEXT NOT NULL,
    holder TEXT NOT NULL DEFAULT '',
    lease_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
CREATE TABLE IF NOT EXISTS audit_handoff (
    id BIGSERIAL PRIMARY KEY,
    replica TEXT NOT NULL,
    data BYTEA NOT NULL,
    mac BYTEA,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""

_ACQUIRE: Final = """
WITH old AS (SELECT holder, fence FROM audit_head WHERE id = 1 FOR UPDATE)
UPDATE audit_head h
   SET fence = h.fence + 1, holder = %(me)s, lease_until = now() + make_interval(secs => %(ttl)s)
  FROM old
 WHERE h.id = 1 AND h.lease_until < now()
RETURNING h.size, h.root, h.fence, h.checkpoint, old.holder
"""


def libpq_url(url: str) -> str:
    """The libpq form of a plain PostgreSQL URL (``postgresql+psycopg://`` → ``postgresql://``).
    The broker passes a libpq connection string instead (``broker.storage.database.libpq_conninfo``
    also converts SQLAlchemy's multi-host form); one that is not a URL is returned as it is.

    Raises:
        ConfigError: a URL of another scheme.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url  # a libpq key=value connection string
    if scheme not in ("postgresql", "postgresql+psycopg", "postgres"):
        raise ConfigError("the audit log's database must be a postgresql:// URL")
    return "postgresql://" + rest


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease just acquired: the head as it was taken over, and who held it before."""

    head: Head
    previous_holder: str


@dataclass(frozen=True, slots=True)
class HandoffRow:
    id: int
    replica: str
    data: bytes
    #: The replica's tag over (origin, replica, id, data); see ``replica.handoff_tag``.
    mac: bytes | None
    #: The log holds an entry of this id already: the row was inserted again (a replay).
    appended: bool


def _unavailable(exc: Exception) -> AuditUnavailableError:
    state = getattr(exc, "sqlstate", None)
    return AuditUnavailableError(
        f"the audit log's database is unavailable: {type(exc).__name__}" + (f" (SQLSTATE {state})" if state else "")
    )


class PostgresLogStorage:
    """Entries, perfect-subtree hashes, checkpoints, the lease and the hand-off queue of one log."""

    def __init__(self, url: str, origin: str | None = None) -> None:
        """Open the log in the database at ``url`` (a URL or libpq connection string).

        With ``origin`` the tables are created if they are missing and must belong to it; without,
        nothing is created and the log must exist (readers: ``weightvault audit --db``).
        """
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(
                "an audit log on PostgreSQL needs psycopg: pip install 'weightvault[postgresql]'"
            ) from exc
        self._psycopg = psycopg
        self.url = libpq_url(url)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[Any] = []
        self._closed = False
        self._conn: Any = self._connect()
        try:
            self.origin = self._create(origin) if origin is not None else self._existing()
        except BaseException:
            self._conn.close()
            raise

    def _existing(self) -> str:
        with self._writing() as cur:
            cur.execute("SELECT to_regclass('audit_meta') IS NOT NULL")
            present = cur.fetchone()
            if not present or not present[0]:
                raise AuditLogError("this database holds no audit log")
            cur.execute("SELECT v FROM audit_meta WHERE k = 'origin'")
            row = cur.fetchone()
        if row is None:
            raise AuditLogError("this database holds no audit log")
        return str(row[0])

    def _create(self, origin: str) -> str:
        with self._writing() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute(_SCHEMA)
            cur.execute("SELECT v FROM audit_meta WHERE k = 'origin'")
            row = cur.fetchone()
            if row is None:
                cur.execute(
                    "INSERT INTO audit_meta (k, v) VALUES ('origin', %s), ('schema', %s)",
                    (origin, str(SCHEMA_VERSION)),
                )
            elif row[0] != origin:
                raise AuditLogError(f"the log in this database belongs to origin {row[0]!r}, not {origin!r}")
        return origin

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> Any:
        """An autocommit connection: writes group their statements in ``transaction()`` blocks."""
        try:
            return self._psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=_CONNECT_TIMEOUT_S,
                application_name="weightvault-audit",
            )
        except self._psycopg.Error as exc:
            raise _unavailable(exc) from exc

    def listener(self, *channels: str) -> Any:
        """A new autocommit connection that LISTENs on ``channels`` (the caller closes it)."""
        conn = self._connect()
        try:
            for channel in channels:
                conn.execute(f"LISTEN {channel}")
        except self._psycopg.Error as exc:
            conn.close()
            raise _unavailable(exc) from exc
        return conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Any]:
        """One transaction on the writer connection; reconnects once the connection is broken."""
        with self._lock:
            if self._closed:
                raise AuditLogError("the audit log storage is closed")
            if self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            try:
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
            except (self._psycopg.OperationalError, self._psycopg.InternalError) as exc:
                raise _unavailable(exc) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        if self._closed:  # a reader used after close must not open a connection nobody closes
            raise AuditLogError("the audit log storage is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()
            with self._lock:
                # close() may have run while this connected: a connection it did not see would stay
                # open in this thread's local storage until the thread ends, and then leak.
                closed: bool = self._closed  # read again, under the lock
                if closed:
                    conn.close()
                    raise AuditLogError("the audit log storage is closed")
                self._readers.append(conn)
            self._local.conn = conn
        try:
            with conn.cursor() as cur:
                yield cur
        except (self._psycopg.OperationalError, self._psycopg.InternalError) as exc:
            raise _unavailable(exc) from exc

    def _one(self, sql: str, args: Sequence[object] = ()) -> tuple[Any, ...] | None:
        with self._reading() as cur:
            cur.execute(sql, args)
            row: tuple[Any, ...] | None = cur.fetchone()
            return row

    # -- the tree (the same interface as LogStorage) -----------------------------------

    def size(self) -> int:
        row = self._one("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_entries")
        assert row is not None
        return int(row[0])

    def count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM audit_entries")
        assert row is not None
        return int(row[0])

    def node(self, level: int, index: int) -> bytes:
        row = self._one("SELECT hash FROM audit_nodes WHERE level = %s AND idx = %s", (level, index))
        if row is None:
            raise AuditLogError(f"tree node ({level}, {index}) is missing from storage")
        return bytes(row[0])

    def nodes(self, level: int, start: int, stop: int) -> list[bytes]:
        with self._reading() as cur:
            cur.execute(
                "SELECT hash FROM audit_nodes WHERE level = %s AND idx >= %s AND idx < %s ORDER BY idx",
                (level, start, stop),
            )
            rows = cur.fetchall()
        if len(rows) != stop - start:
            raise AuditLogError(f"tree nodes at level {level} are missing from storage")
        return [bytes(r[0]) for r in rows]

    def compact_range(self, size: int) -> CompactRange:
        return CompactRange.from_source(self, size)

    def head(self) -> Head | None:
        row = self._one("SELECT size, root, fence, checkpoint FROM audit_head WHERE id = 1")
        return None if row is None else Head(int(row[0]), bytes(row[1]), int(row[2]), str(row[3]))

    def initialise_head(self, checkpoint: str) -> Head:
        """Create the head of an empty log (no-op if another replica created it first)."""
        with self._writing() as cur:
            cur.execute("LOCK TABLE audit_head IN EXCLUSIVE MODE")
            cur.execute("SELECT 1 FROM audit_head WHERE id = 1")
            if cur.fetchone() is None:
                cur.execute("SELECT 1 FROM audit_entries LIMIT 1")
                if cur.fetchone() is not None:
                    raise AuditLogError("the log database has entries but no head")
                cur.execute(
                    "INSERT INTO audit_head (id, size, root, fence, checkpoint) VALUES (1, 0, %s, 0, %s)",
                    (EMPTY_ROOT, checkpoint),
                )
                cur.execute("INSERT INTO audit_checkpoints (size, note) VALUES (0, %s)", (checkpoint,))
        head = self.head()
        assert head is not None
        return head

    def take_fence(self, expected: int) -> int:
        """Become the writer without a lease (a single broker): increment the fence if unchanged.

        Raises:
            AuditLogError: another writer took the log in between.
        """
        with self._writing() as cur:
            cur.execute("UPDATE audit_head SET fence = fence + 1 WHERE id = 1 AND fence = %s", (expected,))
            taken = cur.rowcount == 1
        if not taken:
            raise AuditLogError("another writer holds the audit log (fencing token changed)")
        return expected + 1

    # -- the lease -------------------------------------------------------------------------

    def acquire(self, holder: str, ttl_s: float) -> Lease | None:
        """Take the sequencer's lease if it has expired (incrementing the fence); None if it is held."""
        with self._writing() as cur:
            cur.execute(_ACQUIRE, {"me": holder, "ttl": ttl_s})
            row = cur.fetchone()
        if row is None:
            return None
        return Lease(Head(int(row[0]), bytes(row[1]), int(row[2]), str(row[3])), str(row[4]))

    def renew(self, fence: int, ttl_s: float) -> bool:
        """Extend the lease held under ``fence`` while it is still live; False if it expired or another
        replica took it (an expired lease is lost even if nobody took it: the holder acquires anew)."""
        with self._writing() as cur:
            cur.execute(
                "UPDATE audit_head SET lease_until = now() + make_interval(secs => %s) "
                "WHERE id = 1 AND fence = %s AND lease_until > now()",
                (ttl_s, fence),
            )
            return bool(cur.rowcount == 1)

    def release(self, fence: int) -> None:
        """Give the lease up (an orderly stop), so that another replica takes over at once."""
        with self._writing() as cur:
            cur.execute("UPDATE audit_head SET lease_until = '-infinity' WHERE id = 1 AND fence = %s", (fence,))

    # -- the hand-off queue ------------------------------------------------------------------

    def hand_off(self, replica: str, events: Sequence[bytes], tag: Callable[[int, bytes], bytes]) -> list[int]:
        """Queue encoded events for the sequencer in one durable transaction; returns their
        hand-off ids, in order (ids grow with the order of insertion within it). Each row is
        tagged with ``tag(id, data)`` in the same transaction, once its id is known."""
        with self._writing() as cur:
            cur.execute(
                "INSERT INTO audit_handoff (replica, data) "
                "SELECT %s, d FROM unnest(%s::bytea[]) WITH ORDINALITY AS u(d, n) ORDER BY n RETURNING id",
                (replica, list(events)),
            )
            ids = sorted(int(r[0]) for r in cur.fetchall())
            if len(ids) != len(events):
                raise AuditLogError("the hand-off queue did not take every event")
            cur.execute(
                "UPDATE audit_handoff h SET mac = u.m "
                "FROM unnest(%s::bigint[], %s::bytea[]) AS u(i, m) WHERE h.id = u.i",
                (ids, [tag(i, data) for i, data in zip(ids, events, strict=True)]),
            )
            cur.execute(f"NOTIFY {HANDOFF_CHANNEL}")
        return ids

    def handoffs(self, skip: Sequence[int], limit: int) -> list[HandoffRow]:
        """Queued hand-offs in id order, except the ids in ``skip`` (already being appended), each
        marked if the log already holds its id (one query: the pump runs on every notification)."""
        with self._reading() as cur:
            cur.execute(
                "SELECT h.id, h.replica, h.data, h.mac, "
                "EXISTS (SELECT 1 FROM audit_entries e WHERE e.handoff = h.id) "
                "FROM audit_handoff h WHERE NOT (h.id = ANY(%s)) ORDER BY h.id LIMIT %s",
                (list(skip), limit),
            )
            return [
                HandoffRow(int(r[0]), str(r[1]), bytes(r[2]), None if r[3] is None else bytes(r[3]), bool(r[4]))
                for r in cur.fetchall()
            ]

    def discard(self, handoff: int) -> None:
        """Delete one hand-off row that must not be appended (a replayed one, already recorded)."""
        with self._writing() as cur:
            cur.execute("DELETE FROM audit_handoff WHERE id = %s", (handoff,))

    def handed_off(self, ids: Sequence[int]) -> dict[int, tuple[StoredEntry, int]]:
        """The committed entries of these hand-off ids, each with the head's size then (a signed
        checkpoint that covers it); those not committed yet are absent."""
        with self._reading() as cur:
            cur.execute(
                "SELECT idx, data, ts, tenant, type, handoff, (SELECT size FROM audit_head WHERE id = 1) "
                "FROM audit_entries WHERE handoff = ANY(%s)",
                (list(ids),),
            )
            return {
                int(r[5]): (StoredEntry(int(r[0]), bytes(r[1]), int(r[2]), str(r[3]), str(r[4]), int(r[5])), int(r[6]))
                for r in cur.fetchall()
            }

    # -- appending ---------------------------------------------------------------------------

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
        """Advance the head by compare-and-swap, persist the batch and consume its hand-offs, in
        one transaction; then notify waiting replicas.

        Raises:
            AuditLogError: the fence or head changed (this writer must stop), or a hand-off was
                consumed by someone else; nothing is written.
            AuditUnavailableError: the database failed; the commit may or may not have happened
                (the caller compares the head with ``new``).
        """
        handoffs = [e.handoff for e in entries if e.handoff is not None]
        with self._writing() as cur:
            cur.execute(
                "UPDATE audit_head SET size = %s, root = %s, checkpoint = %s "
                "WHERE id = 1 AND fence = %s AND size = %s AND root = %s",
                (new[0], new[1], checkpoint, fence, old[0], old[1]),
            )
            if cur.rowcount != 1:
                raise AuditLogError("audit log head changed under this writer (fenced out or forked)")
            if handoffs:
                cur.execute("DELETE FROM audit_handoff WHERE id = ANY(%s)", (handoffs,))
                if cur.rowcount != len(handoffs):
                    raise AuditLogError("a handed-off event was consumed by another writer")
            # COPY: one round trip per table, whatever the batch's size (group commit's batches are large).
            with cur.copy("COPY audit_entries (idx, data, ts, tenant, type, handoff) FROM STDIN") as copy:
                for e in entries:
                    copy.write_row((e.index, e.data, e.ts, e.tenant, e.type, e.handoff))
            with cur.copy("COPY audit_nodes (level, idx, hash) FROM STDIN") as copy:
                for node in nodes:
                    copy.write_row(node)
            cur.execute(
                "INSERT INTO audit_checkpoints (size, note) VALUES (%s, %s) "
                "ON CONFLICT (size) DO UPDATE SET note = excluded.note",
                (new[0], checkpoint),
            )
            if published:
                self._mark_published(cur, new[0])
            if handoffs:
                cur.execute(f"NOTIFY {COMMIT_CHANNEL}")

    def store_published(self, size: int, note: str) -> None:
        with self._writing() as cur:
            cur.execute(
                "INSERT INTO audit_checkpoints (size, note) VALUES (%s, %s) "
                "ON CONFLICT (size) DO UPDATE SET note = excluded.note",
                (size, note),
            )
            self._mark_published(cur, size)

    @staticmethod
    def _mark_published(cur: Any, size: int) -> None:
        cur.execute(
            "INSERT INTO audit_meta (k, v) VALUES ('published', %s) ON CONFLICT (k) DO UPDATE "
            "SET v = excluded.v WHERE CAST(audit_meta.v AS BIGINT) < CAST(excluded.v AS BIGINT)",
            (str(size),),
        )

    # -- reading -----------------------------------------------------------------------------

    def published_checkpoint(self) -> str | None:
        row = self._one(
            "SELECT c.note FROM audit_meta m JOIN audit_checkpoints c ON c.size = CAST(m.v AS BIGINT) "
            "WHERE m.k = 'published'"
        )
        return None if row is None else str(row[0])

    def checkpoint(self, size: int) -> str | None:
        row = self._one("SELECT note FROM audit_checkpoints WHERE size = %s", (size,))
        return None if row is None else str(row[0])

    def entry(self, index: int) -> StoredEntry:
        row = self._one("SELECT idx, data, ts, tenant, type FROM audit_entries WHERE idx = %s", (index,))
        if row is None:
            raise AuditLogError(f"no entry {index}")
        return StoredEntry(int(row[0]), bytes(row[1]), int(row[2]), str(row[3]), str(row[4]))

    def entries(
        self,
        start: int = 0,
        stop: int | None = None,
        *,
        tenant: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[StoredEntry]:
        clauses = ["idx >= %s"]
        args: list[object] = [start]
        for clause, value in (
            ("idx < %s", stop),
            ("tenant = %s", tenant),
            ("ts >= %s", since_ms),
            ("ts < %s", until_ms),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        sql = f"SELECT idx, data, ts, tenant, type FROM audit_entries WHERE {' AND '.join(clauses)} ORDER BY idx"  # noqa: S608 - fixed clauses, bound values
        # Pages, so that a long export neither holds every row in memory nor one long query open.
        while True:
            with self._reading() as cur:
                cur.execute(sql + " LIMIT 2000", args)
                rows = cur.fetchall()
            for r in rows:
                yield StoredEntry(int(r[0]), bytes(r[1]), int(r[2]), str(r[3]), str(r[4]))
            if len(rows) < 2000:
                return
            args[0] = int(rows[-1][0]) + 1

    def recent(
        self, stop: int, *, tenant: str | None = None, type_prefix: str | None = None, limit: int = 100
    ) -> list[StoredEntry]:
        """At most ``limit`` entries below index ``stop``, newest first (see :meth:`LogStorage.recent`)."""
        clauses = ["idx < %s"]
        args: list[object] = [stop]
        if tenant is not None:
            clauses.append("tenant = %s")
            args.append(tenant)
        if type_prefix:
            clauses.append("left(type, %s) = %s")
            args += [len(type_prefix), type_prefix]
        where = " AND ".join(clauses)
        sql = f"SELECT idx, data, ts, tenant, type FROM audit_entries WHERE {where} ORDER BY idx DESC LIMIT %s"  # noqa: S608 - fixed clauses, bound values
        with self._reading() as cur:
            cur.execute(sql, [*args, limit])
            rows = cur.fetchall()
        return [StoredEntry(int(r[0]), bytes(r[1]), int(r[2]), str(r[3]), str(r[4])) for r in rows]

    # -- moving a log between SQLite files and this database (backup and restore) --------------

    def export_sqlite(self, dst: Path) -> int:
        """Write the log as it stands into a new SQLite log file ``dst`` (the file storage's schema);
        returns its size. Safe while replicas append: everything is cut at the head read first
        (the log only grows, so rows below it never change)."""
        head = self.head()
        if head is None:
            raise AuditLogError("the log in this database has no head")
        size = head.size
        out = sqlite3.connect(dst, isolation_level=None)
        try:
            out.executescript(SQLITE_LOG_SCHEMA)
            out.execute("BEGIN")
            out.execute("INSERT INTO meta (k, v) VALUES ('origin', ?), ('schema', ?)", (self.origin, SCHEMA_VERSION))
            with self._reading() as cur:
                cur.execute(
                    "SELECT idx, data, ts, tenant, type FROM audit_entries WHERE idx < %s ORDER BY idx", (size,)
                )
                out.executemany(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?)", ((r[0], bytes(r[1]), *r[2:]) for r in cur)
                )
                # Perfect nodes wholly inside the first ``size`` leaves.
                cur.execute("SELECT level, idx, hash FROM audit_nodes WHERE (idx + 1) << level <= %s", (size,))
                out.executemany("INSERT INTO nodes VALUES (?, ?, ?)", ((r[0], r[1], bytes(r[2])) for r in cur))
                cur.execute("SELECT size, note FROM audit_checkpoints WHERE size <= %s", (size,))
                out.executemany("INSERT INTO checkpoints VALUES (?, ?)", cur.fetchall())
                cur.execute(
                    "SELECT MAX(size) FROM audit_checkpoints WHERE size <= %s AND size <= "
                    "(SELECT CAST(v AS BIGINT) FROM audit_meta WHERE k = 'published')",
                    (size,),
                )
                published = cur.fetchone()
            if published is not None and published[0] is not None:
                out.execute("INSERT INTO meta (k, v) VALUES ('published', ?)", (str(published[0]),))
            out.execute(
                "INSERT INTO head (id, size, root, fence, checkpoint) VALUES (1, ?, ?, 0, ?)",
                (size, head.root, head.checkpoint),
            )
            out.execute("COMMIT")
        finally:
            out.close()
        return size

    def import_sqlite(self, src: Path) -> int:
        """Load a SQLite log file into this database, whose log must be empty (a restore); returns
        its size. The caller verifies the file first (fsck)."""
        conn = sqlite3.connect(src)
        try:
            head = conn.execute("SELECT size, root, checkpoint FROM head WHERE id = 1").fetchone()
            if head is None:
                raise AuditLogError(f"{src}: not an audit log")
            with self._writing() as cur:
                cur.execute("LOCK TABLE audit_head IN EXCLUSIVE MODE")
                cur.execute("SELECT (SELECT COUNT(*) FROM audit_head) + (SELECT COUNT(*) FROM audit_entries)")
                row = cur.fetchone()
                if row is None or row[0] != 0:
                    raise AuditLogError("the database already holds an audit log: restore into a new database")
                cur.executemany(
                    "INSERT INTO audit_entries (idx, data, ts, tenant, type) VALUES (%s, %s, %s, %s, %s)",
                    conn.execute("SELECT idx, data, ts, tenant, type FROM entries ORDER BY idx"),
                )
                cur.executemany(
                    "INSERT INTO audit_nodes (level, idx, hash) VALUES (%s, %s, %s)",
                    conn.execute("SELECT level, idx, hash FROM nodes"),
                )
                cur.executemany(
                    "INSERT INTO audit_checkpoints (size, note) VALUES (%s, %s)",
                    conn.execute("SELECT size, note FROM checkpoints"),
                )
                published = conn.execute("SELECT v FROM meta WHERE k = 'published'").fetchone()
                if published is not None:
                    cur.execute("INSERT INTO audit_meta (k, v) VALUES ('published', %s)", (published[0],))
                cur.execute(
                    "INSERT INTO audit_head (id, size, root, fence, checkpoint) VALUES (1, %s, %s, 0, %s)",
                    (head[0], bytes(head[1]), head[2]),
                )
        finally:
            conn.close()
        return int(head[0])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._readers:
                with contextlib.suppress(Exception):
                    conn.close()
            self._readers.clear()
            with contextlib.suppress(Exception):
                self._conn.close()
