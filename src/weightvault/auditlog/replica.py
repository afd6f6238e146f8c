"""The audit log of one broker replica among several: one sequencer by lease, hand-off for the rest.

Every replica opens a :class:`ReplicatedAuditLog` over the same PostgreSQL storage
(:mod:`weightvault.auditlog.pgstorage`). At any moment at most one of them can
write: the **sequencer**, which holds the lease and the fencing token that the
lease acquisition incremented. It runs an ordinary :class:`~weightvault.auditlog.log.AuditLog`
(group commit, signed checkpoints, witnesses) over the shared storage.

The others are **followers**. ``append`` on a follower encodes the event, inserts it
into the hand-off queue and commits (the event is now durable), then waits for the
sequencer to append it and returns the entry's receipt, after checking that the
committed entry is its event (only the log's timestamp may differ). The sequencer
pulls hand-offs in id order and appends them like its own events; each batch
deletes the hand-offs it appends in the same transaction.

Takeover. A lease thread renews the sequencer's lease every ``lease_ttl_s / 4``; a
follower tries to take an expired lease as often. The new sequencer re-reads the
head from storage (the same checks as opening a log: entry count, root, this
replica's watermark), then appends ``log.handover`` naming the previous holder,
the new one and the new fence, before anything else. Hand-offs that the dead
sequencer had pulled but not committed are still in the queue, so the new one
appends them; events the dead sequencer had only in memory were never
acknowledged (their appends fail, and the write-ahead rule refused their actions).

A sequencer that loses its lease (paused, partitioned, or its database connection
broken) learns it at its next commit, whose compare-and-swap fails: its batch and
queue are refused (AuditLogError), it steps down, and from then on it hands off.
Checkpoints are therefore signed and stored only under the current fence.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Final

from weightvault.auditlog.checkpoint import Checkpoint
from weightvault.auditlog.events import AuditEvent, decode_event, digest
from weightvault.auditlog.log import AuditLog, LogConfig, LogReader, Pending, Receipt, WitnessEndpoint
from weightvault.auditlog.merkle import CompactRange, leaf_hash
from weightvault.auditlog.note import Note, NoteSigner
from weightvault.auditlog.pgstorage import COMMIT_CHANNEL, HANDOFF_CHANNEL, HandoffRow, PostgresLogStorage
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.auditlog.storage import StoredEntry
from weightvault.crypto.mac import InvalidSignature, hmac_sha256, verify_hmac_sha256
from weightvault.errors import AuditLogError, AuditUnavailableError, WeightVaultError

__all__ = ["DEFAULT_LEASE_TTL_S", "ReplicatedAuditLog", "handoff_tag"]

#: How long a sequencer's lease lasts without renewal: the longest a dead sequencer stalls the log.
DEFAULT_LEASE_TTL_S: Final = 5.0
#: How often a waiting follower or the sequencer looks without a notification (a lost NOTIFY costs this).
_POLL_S: Final = 0.2
_DEFAULT_CONFIG: Final = LogConfig()


class ReplicatedAuditLog(LogReader):
    """One replica's view of a shared log: the sequencer's writer when it holds the lease, a
    hand-off client otherwise. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        storage: PostgresLogStorage,
        signer: NoteSigner,
        *,
        replica: str,
        watermark_path: Path,
        handoff_key: bytes,
        witnesses: Sequence[WitnessEndpoint] = (),
        policy: WitnessPolicy | None = None,
        config: LogConfig = _DEFAULT_CONFIG,
        clock: Callable[[], float] = time.time,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    ) -> None:
        if not 0.5 <= lease_ttl_s <= 300:
            raise AuditLogError("the sequencer lease lasts 0.5 to 300 seconds")
        if len(handoff_key) < 32:
            raise AuditLogError("the hand-off key is at least 32 bytes")
        self._handoff_key = bytes(handoff_key)
        self.origin = signer.name
        self.replica = replica
        #: Unique per process: a restarted replica is a new holder and waits for the old lease to expire.
        self.holder = f"{replica}/{os.getpid()}/{secrets.token_hex(4)}"
        self._signer = signer
        self._make_log: Callable[[int], AuditLog] = lambda fence: AuditLog(
            storage,
            signer,
            witnesses=witnesses,
            policy=policy,
            config=config,
            clock=clock,
            watermark_path=watermark_path,
            fence=fence,
        )
        self._clock = clock
        self._ttl = lease_ttl_s
        self._batch_max = config.batch_max
        if storage.head() is None:
            storage.initialise_head(_empty_checkpoint(signer))
        super().__init__(storage)
        self._pg = storage
        self._role = threading.Lock()
        self._sequencer: AuditLog | None = None
        self._in_flight: set[int] = set()
        self._in_flight_lock = threading.Lock()
        self._last_ts = 0
        self._ts_lock = threading.Lock()
        # The follower's side: events waiting to be queued (one transaction for all of them), and
        # queued ones waiting for their entries (resolved together on each commit notification).
        self._outgoing: SimpleQueue[tuple[bytes, Future[int], Future[tuple[StoredEntry, int]]] | None] = SimpleQueue()
        self._waiting: dict[int, Future[tuple[StoredEntry, int]]] = {}
        self._waiting_lock = threading.Lock()
        self._closing = threading.Event()
        self._refused: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._lease_loop, name="wv-audit-lease", daemon=True),
            threading.Thread(target=self._listen_loop, name="wv-audit-listen", daemon=True),
            threading.Thread(target=self._hand_off_loop, name="wv-audit-handoff", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- state -------------------------------------------------------------------------------

    @property
    def is_sequencer(self) -> bool:
        log = self._sequencer
        return log is not None and log.failed is None

    @property
    def failed(self) -> BaseException | None:
        """Why this replica refuses to sequence the log (it does not verify against its watermark or
        its own entries), else None. A failed commit is not a failure: the replica steps down and
        takes the lease again once the database answers."""
        return self._refused

    def _current_size(self) -> int:
        log = self._sequencer
        if log is not None and log.failed is None:
            return log.size
        return super()._current_size()

    def latest_checkpoint(self) -> Note:
        log = self._sequencer
        return log.latest_checkpoint() if log is not None and log.failed is None else super().latest_checkpoint()

    def wait_sequencer(self, timeout_s: float) -> bool:
        """Wait until this replica is the sequencer (tests and single-replica start-up)."""
        deadline = time.monotonic() + timeout_s
        while not self.is_sequencer:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    # -- appending -----------------------------------------------------------------------------

    def append(self, event: AuditEvent, timeout_s: float = 15.0) -> Receipt:
        """Append ``event`` and wait until it is durable in the log (through the sequencer).

        Raises:
            AuditLogError: the event is invalid; this replica lost the lease during the commit;
                or the event was not in the log within ``timeout_s`` (it may still be appended
                later: a hand-off is durable once queued).
            AuditUnavailableError: the database is unreachable.
        """
        if self._closing.is_set():
            raise AuditLogError("the audit log is closed")
        log = self._sequencer
        if log is not None and log.failed is None:
            return log.append(event, timeout_s)
        return self._hand_off(event, timeout_s)

    def submit(self, event: AuditEvent) -> Pending:
        """Queue ``event`` without waiting for the log.

        On the sequencer, as :meth:`AuditLog.submit`. On a follower the event is durable in the
        hand-off queue when this returns (sooner than a sequencer's queued event, which is only
        in memory until its batch commits); reading the result's ``index`` waits until the
        sequencer has appended it, since a follower cannot reserve log positions.
        """
        log = self._sequencer
        if log is not None and log.failed is None:
            return log.submit(event)
        handoff, entry = self._queue_hand_off(event, 15.0)
        pending = _HandedOff(15.0)
        entry.add_done_callback(functools.partial(self._settle, pending, event, handoff))
        return pending

    def _hand_off(self, event: AuditEvent, timeout_s: float) -> Receipt:
        deadline = time.monotonic() + timeout_s
        handoff, entry = self._queue_hand_off(event, timeout_s)
        try:
            found, size = entry.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeoutError as exc:
            with self._waiting_lock:
                self._waiting.pop(handoff, None)
            raise AuditLogError(
                f"the sequencer did not append hand-off {handoff} within {timeout_s:g} s (it stays queued)"
            ) from exc
        return _receipt(event, handoff, found, size)

    def _queue_hand_off(self, event: AuditEvent, timeout_s: float) -> tuple[int, Future[tuple[StoredEntry, int]]]:
        """Stamp, encode and queue ``event`` durably; returns its hand-off id and the future of its entry."""
        with self._ts_lock:
            ts = max(self._last_ts, int(self._clock() * 1000))
            self._last_ts = ts
        data = event.with_ts(ts).encode()  # validates size and form before anything is queued
        queued: Future[int] = Future()
        entry: Future[tuple[StoredEntry, int]] = Future()
        self._outgoing.put((data, queued, entry))
        try:
            return queued.result(timeout=timeout_s), entry  # durable in the queue from here on
        except FutureTimeoutError as exc:
            raise AuditUnavailableError(f"the hand-off queue did not commit within {timeout_s:g} s") from exc

    @staticmethod
    def _settle(pending: Pending, event: AuditEvent, handoff: int, entry: Future[tuple[StoredEntry, int]]) -> None:
        try:
            pending.set_result(_receipt(event, handoff, *entry.result()))
        except BaseException as exc:
            pending.set_exception(exc)

    def _hand_off_loop(self) -> None:
        """Queue what is waiting in one transaction (group commit of the follower's side)."""
        while True:
            item = self._outgoing.get()
            batch = [item]
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._outgoing.get_nowait())
                except Empty:
                    break
            items = [b for b in batch if b is not None]
            if items:
                try:
                    ids = self._pg.hand_off(
                        self.replica,
                        [data for data, _, _ in items],
                        functools.partial(self._tag, self.replica),
                    )
                except BaseException as exc:
                    for _, queued, _ in items:
                        queued.set_exception(exc)
                else:
                    with self._waiting_lock:
                        for (_, _, entry), handoff in zip(items, ids, strict=True):
                            self._waiting[handoff] = entry
                    for (_, queued, _), handoff in zip(items, ids, strict=True):
                        queued.set_result(handoff)
                    # The sequencer may have committed them before they were registered (its
                    # notification then came too early): look once now, the listener does after.
                    with contextlib.suppress(WeightVaultError):
                        self._resolve()
            if len(items) != len(batch):
                return

    def _resolve(self) -> None:
        """Hand waiting followers the entries the sequencer has committed for them (one query)."""
        with self._waiting_lock:
            ids = list(self._waiting)
        if not ids:
            return
        found = self._pg.handed_off(ids)
        with self._waiting_lock:
            for handoff, entry in found.items():
                waiter = self._waiting.pop(handoff, None)
                if waiter is not None:
                    waiter.set_result(entry)

    # -- the sequencer's side -------------------------------------------------------------------

    def _pump(self, log: AuditLog) -> None:
        """Queue hand-offs not yet queued into the sequencer's writer, in id order."""
        with self._in_flight_lock:
            skip = sorted(self._in_flight)
        events: list[tuple[int, AuditEvent]] = []
        for row in self._pg.handoffs(skip, self._batch_max):
            if row.appended:
                # The log holds this id already: the row was inserted again (its tag may be a
                # copied valid one). Recorded, then removed; never appended twice.
                log.append(_rejected(row, "a hand-off the log holds already (replayed)"))
                self._pg.discard(row.id)
                continue
            try:
                if row.mac is None or not self._tag_ok(row):
                    raise AuditLogError("not tagged by a replica of this broker (hand-off key)")
                event = decode_event(row.data)
            except AuditLogError as exc:
                # Whoever wrote it has the database's credentials but not the replicas' key: the
                # row is consumed and recorded (by digest), never appended as what it claims.
                event = _rejected(row, str(exc))
            events.append((row.id, event))
        if not events:
            return
        with self._in_flight_lock:
            self._in_flight.update(h for h, _ in events)
        for (handoff, _), pending in zip(events, log.enqueue_handoffs(events), strict=True):
            pending.add_done_callback(functools.partial(self._landed, handoff))

    def _tag(self, replica: str, handoff: int, data: bytes) -> bytes:
        return handoff_tag(self._handoff_key, self.origin, replica, handoff, data)

    def _tag_ok(self, row: HandoffRow) -> bool:
        assert row.mac is not None
        try:
            verify_hmac_sha256(self._handoff_key, _tag_parts(self.origin, row.replica, row.id, row.data), row.mac)
        except InvalidSignature:
            return False
        return True

    def _landed(self, handoff: int, _done: object) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(handoff)

    def _promote(self) -> None:
        lease = self._pg.acquire(self.holder, self._ttl)
        if lease is None:
            return
        try:
            log = self._make_log(lease.head.fence)
        except WeightVaultError as exc:
            if not isinstance(exc, AuditUnavailableError):
                self._refused = exc  # the log does not verify here: readiness reports it
            with contextlib.suppress(WeightVaultError):
                self._pg.release(lease.head.fence)
            raise
        self._refused = None
        with self._in_flight_lock:
            self._in_flight.clear()
        try:
            log.append(
                AuditEvent(
                    "log.handover",
                    "",
                    f"replica:{self.replica}"[:64],
                    details={
                        "previous": lease.previous_holder,
                        "holder": self.holder,
                        "fence": lease.head.fence,
                        "size": lease.head.size,
                    },
                )
            )
        except WeightVaultError:
            log.close()
            raise
        self._sequencer = log

    def _demote(self) -> None:
        log, self._sequencer = self._sequencer, None
        if log is not None:
            log.close()

    def _lease_loop(self) -> None:
        interval = self._ttl / 4
        while True:
            with self._role, contextlib.suppress(WeightVaultError):
                log = self._sequencer
                if log is None:
                    self._promote()
                elif log.failed is not None or not self._pg.renew(log.fence, self._ttl):
                    self._demote()
            if self._closing.wait(interval):
                return

    def _listen_loop(self) -> None:
        conn = None
        while not self._closing.is_set():
            try:
                if conn is None:
                    conn = self._pg.listener(HANDOFF_CHANNEL, COMMIT_CHANNEL)
                for _ in conn.notifies(timeout=_POLL_S, stop_after=1):
                    pass
                log = self._sequencer
                if log is not None and log.failed is None:
                    self._pump(log)
                self._resolve()
            except WeightVaultError:
                time.sleep(_POLL_S)
            except Exception:  # the driver's connection errors: reconnect
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                time.sleep(_POLL_S)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- reading and publishing ------------------------------------------------------------------

    def published_checkpoint(self) -> Note | None:
        log = self._sequencer
        return log.published_checkpoint() if log is not None else super().published_checkpoint()

    def wait_published(self, size: int, timeout_s: float = 10.0) -> Note:
        """A published checkpoint of at least ``size`` (the sequencer publishes; followers read it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            log = self._sequencer
            if log is not None and log.failed is None:
                return log.wait_published(size, max(0.0, deadline - time.monotonic()))
            note = super().published_checkpoint()
            if note is not None and Checkpoint.from_text(note.text).size >= size:
                return note
            if time.monotonic() >= deadline:
                raise AuditLogError(f"no witnessed checkpoint covering size {size} within {timeout_s} s")
            time.sleep(_POLL_S / 4)

    def publish_now(self, timeout_s: float = 10.0) -> Note:
        log = self._sequencer
        if log is None or log.failed is not None:
            raise AuditUnavailableError("this replica is not the audit log's sequencer")
        return log.publish_now(timeout_s)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop; a sequencer commits what it queued, then releases its lease for the next one."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._outgoing.put(None)
        for thread in self._threads:
            thread.join()
        with self._role:
            log, self._sequencer = self._sequencer, None
            if log is not None:
                log.close()
                if log.failed is None:
                    with contextlib.suppress(WeightVaultError):
                        self._pg.release(log.fence)
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        for entry in waiting.values():  # still queued: the next sequencer appends them
            entry.set_exception(AuditLogError("this replica closed while its hand-off waited for the sequencer"))
        self._pg.close()

    def abandon(self) -> None:
        """Stop every thread without committing, releasing or closing anything: what ``kill -9``
        leaves behind, for drills run in one process."""
        self._closing.set()
        log = self._sequencer
        if log is not None:
            log._failed = AuditLogError("abandoned")  # simulating a crash

    def __enter__(self) -> ReplicatedAuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HandedOff(Pending):
    """A follower's submitted event: durable in the hand-off queue; reading ``index`` waits for
    the sequencer to append it (at most ``timeout_s``)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(-1)
        self._timeout_s = timeout_s

    @property
    def index(self) -> int:
        try:
            return self.result(timeout=self._timeout_s).index
        except FutureTimeoutError as exc:
            raise AuditLogError(f"the sequencer did not append this event within {self._timeout_s:g} s") from exc


def _tag_parts(origin: str, replica: str, handoff: int, data: bytes) -> list[bytes]:
    return [
        b"weightvault audit hand-off v1\x00",
        origin.encode(),
        b"\x00",
        replica.encode(),
        b"\x00",
        handoff.to_bytes(8, "big", signed=True),
        data,
    ]


def handoff_tag(key: bytes, origin: str, replica: str, handoff: int, data: bytes) -> bytes:
    """HMAC-SHA256 of a hand-off row under the replicas' shared hand-off key: it binds the event
    to the log (origin), the replica that queued it and the row's id, so that a row written by
    anyone without the key, or a valid row copied under another id, is refused."""
    return hmac_sha256(key, _tag_parts(origin, replica, handoff, data))


def _rejected(row: HandoffRow, reason: str) -> AuditEvent:
    return AuditEvent(
        "outbox.reject",
        "",
        f"replica:{row.replica}"[:64],
        details={"handoff": row.id, "digest": digest(row.data), "reason": reason[:200]},
    )


def _receipt(event: AuditEvent, handoff: int, found: StoredEntry, size: int) -> Receipt:
    """The receipt of a hand-off, once the sequencer has appended it; it must be the event handed off
    (only the timestamp may differ: the sequencer stamps events with its clock)."""
    committed = decode_event(found.data)
    if committed.with_ts(0).encode() != event.with_ts(0).encode():
        raise AuditLogError(f"hand-off {handoff} was committed as another event ({committed.type})")
    return Receipt(found.index, leaf_hash(found.data), max(size, found.index + 1))


def _empty_checkpoint(signer: NoteSigner) -> str:
    from weightvault.auditlog.checkpoint import sign_checkpoint

    return sign_checkpoint(Checkpoint(signer.name, 0, CompactRange().root()), signer).to_text()
