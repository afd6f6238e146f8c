"""The audit log: one writer, group commit, signed checkpoints, witnesses, write-ahead intents.

Order of operations for every batch (the writer thread):

1. take up to ``batch_max`` pending events: as soon as one of them has a caller
   waiting for it (:meth:`AuditLog.append`), everything queued at that moment;
   events only queued (:meth:`AuditLog.submit`) wait at most ``batch_delay_s`` for
   company. Events queued while a batch commits form the next one (group commit);
2. stamp each with the log's clock, encode it (canonical JSON), hash it into the tree;
3. sign the new checkpoint with the log key (never a key-encryption key);
4. in one durable transaction, compare-and-swap the head under this writer's
   fencing token and write entries, new tree nodes and the checkpoint (and, when
   the log has no witnesses to ask, mark it published in the same transaction);
5. advance the watermark kept in a separate file (fsynced at most once a second:
   see :class:`~weightvault.auditlog.storage.Watermark`; if it cannot be written, it
   only lags, and the next commit writes the newest size again);
6. only then tell the appenders their index: an index is a promise that the event
   is on stable storage and in a signed checkpoint;
7. with witnesses, hand the checkpoint to the publisher thread, which gathers
   cosignatures and publishes it once the witness policy's quorum is met.

If step 4 fails, every appender of the batch and of the batches queued behind
it gets :class:`AuditLogError`, and the log accepts no events (fail closed): the
write-ahead rule then refuses every sensitive action. Every second the writer then
checks whether it can go on: if it still holds the fence and the stored tree matches
the stored head (a full disk that has room again, a database that answers again), it
adopts the head as stored and accepts events again. A writer whose fence was taken
stays failed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Final, Protocol

from weightvault.auditlog.bundle import ProofBundle
from weightvault.auditlog.checkpoint import Checkpoint, sign_checkpoint
from weightvault.auditlog.events import AuditEvent, decode_event
from weightvault.auditlog.merkle import (
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    range_hash,
)
from weightvault.auditlog.note import Note, NoteSignature, NoteSigner, parse_note
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.auditlog.storage import LogStorage, LogStore, StoredEntry, Watermark
from weightvault.errors import AuditLogError, AuditUnavailableError, WeightVaultError

__all__ = ["AuditLog", "AuditSink", "LogConfig", "LogReader", "Pending", "Receipt", "WitnessEndpoint", "write_ahead"]

_STOP: Final = object()
#: The watermark's commits are fsynced when this long has passed since the last fsynced one.
WATERMARK_SYNC_S: Final = 1.0
#: How often a failed log checks whether it can go on (the disk has room again, the database answers).
RECOVERY_S: Final = 1.0


class Pending(Future["Receipt"]):
    """A submitted event: its reserved index now, its receipt once durable."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    @property
    def index(self) -> int:
        """The event's position in the log (reserved in submission order)."""
        return self._index


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof of durability: the event's index and the first checkpoint that includes it."""

    index: int
    leaf_hash: bytes
    checkpoint_size: int


class AuditSink(Protocol):
    """The seam through which services record events; ``append`` returns only once the event is durable."""

    def append(self, event: AuditEvent) -> Receipt: ...


class WitnessEndpoint(Protocol):
    """A witness reachable in-process or over HTTP (tlog-witness ``add-checkpoint``)."""

    name: str

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: Note) -> Sequence[str]:
        """Return cosignature lines; raises WitnessConflictError (409 with the witness's size) or AuditLogError."""
        ...


class WitnessConflictError(AuditLogError):
    """The witness's latest size differs from what the client sent (HTTP 409)."""

    def __init__(self, message: str, size: int | None) -> None:
        super().__init__(message)
        self.size = size


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How the log commits and publishes."""

    batch_max: int = 512
    #: How long events that nobody waits for may wait for company; a waiting append never waits.
    batch_delay_s: float = 0.002
    #: Raise instead of continuing when witnesses cannot be reached (strict deployments).
    require_witnesses: bool = False


class LogReader:
    """Read access to a log's storage: entries, checkpoints and proofs. Never writes.

    Auditors and monitors open a log database with this class; the writer
    (:class:`AuditLog`) extends it.
    """

    def __init__(self, storage: LogStore) -> None:
        self._storage: LogStore = storage
        head = storage.head()
        if head is None:
            raise AuditLogError("the log database has no head")

    @classmethod
    def open(cls, path: Path, origin: str) -> LogReader:
        return cls(LogStorage(Path(path), origin))

    def _current_size(self) -> int:
        head = self._storage.head()
        assert head is not None
        return head.size

    @property
    def size(self) -> int:
        return self._current_size()

    def latest_checkpoint(self) -> Note:
        """The newest checkpoint signed by the log (it may not be witnessed yet)."""
        head = self._storage.head()
        assert head is not None
        return parse_note(head.checkpoint)

    def checkpoint_at(self, size: int) -> Note:
        text = self._storage.checkpoint(size)
        if text is None:
            raise AuditLogError(f"no checkpoint of size {size}")
        return parse_note(text)

    def root_at(self, size: int) -> bytes:
        return CompactRange().root() if size == 0 else range_hash(self._storage, 0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self._storage, index, size or self.size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return consistency_proof(self._storage, old_size, new_size or self.size)

    def entry(self, index: int) -> bytes:
        return self._storage.entry(index).data

    def event(self, index: int) -> AuditEvent:
        return decode_event(self._storage.entry(index).data)

    def events(
        self, *, tenant: str | None = None, since_ms: int | None = None, until_ms: int | None = None, start: int = 0
    ) -> Iterator[tuple[int, AuditEvent]]:
        """Committed events, optionally filtered by tenant and time range [since, until)."""
        for stored in self._storage.entries(start, self.size, tenant=tenant, since_ms=since_ms, until_ms=until_ms):
            yield stored.index, decode_event(stored.data)

    def recent(
        self, *, before: int | None = None, tenant: str | None = None, type_prefix: str | None = None, limit: int = 100
    ) -> list[tuple[int, AuditEvent]]:
        """Committed events below index ``before`` (default: all), newest first: at most ``limit``."""
        stop = self.size if before is None else min(before, self.size)
        found = self._storage.recent(stop, tenant=tenant, type_prefix=type_prefix, limit=limit)
        return [(stored.index, decode_event(stored.data)) for stored in found]

    def proof_bundle(self, index: int, checkpoint: Note | None = None) -> ProofBundle:
        """A c2sp.org/tlog-proof bundle for entry ``index`` (the entry travels in ``extra``)."""
        note = checkpoint or self._best_checkpoint()
        size = Checkpoint.from_text(note.text).size
        if not 0 <= index < size:
            raise AuditLogError(f"entry {index} is not covered by the checkpoint of size {size}")
        return ProofBundle(index, tuple(self.inclusion_proof(index, size)), note, self.entry(index))

    def published_checkpoint(self) -> Note | None:
        """The newest checkpoint that met the witness policy, with its cosignatures (None before the first)."""
        text = self._storage.published_checkpoint()
        return None if text is None else parse_note(text)

    def served_checkpoint(self) -> Note:
        """What the tiles API and exports hand out: the newest published checkpoint, else the head's.

        Auditors who require witnesses need the cosigned form; the head's own
        checkpoint is only signed by the log.
        """
        return self.published_checkpoint() or self.latest_checkpoint()

    def _best_checkpoint(self) -> Note:
        """The stored checkpoint at the head size (with any cosignatures gathered for it)."""
        size = self.size
        text = self._storage.checkpoint(size)
        return parse_note(text) if text is not None else self.latest_checkpoint()

    def fsck(self) -> int:
        """Re-hash every stored entry and re-derive the root; returns the size checked.

        Raises:
            AuditLogError: an entry does not hash to its stored leaf, or the root differs.
        """
        head = self._storage.head()
        assert head is not None
        size = head.size
        seen = 0
        for stored in self._storage.entries(0, size):
            if stored.index != seen:
                raise AuditLogError(f"entry {seen} is missing")
            if leaf_hash(stored.data) != self._storage.node(0, stored.index):
                raise AuditLogError(f"entry {stored.index} does not match its leaf hash")
            seen += 1
        if seen != size:
            raise AuditLogError(f"entries {seen}..{size - 1} are missing")
        if self.root_at(size) != head.root:
            raise AuditLogError("stored tree does not match the head root")
        return size

    @property
    def storage(self) -> LogStore:
        return self._storage

    def close(self) -> None:
        self._storage.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AuditLog(LogReader):
    """A tamper-evident log with a single writer: over SQLite (a path), or over a storage it is
    given (a replica's PostgreSQL storage, whose lease the caller took: ``fence``).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        path: Path | LogStore,
        signer: NoteSigner,
        *,
        witnesses: Sequence[WitnessEndpoint] = (),
        policy: WitnessPolicy | None = None,
        config: LogConfig = LogConfig(),
        clock: Callable[[], float] = time.time,
        watermark_path: Path | None = None,
        fence: int | None = None,
    ) -> None:
        self.origin = signer.name
        self._signer = signer
        self._clock = clock
        self._config = config
        self._witnesses = list(witnesses)
        self._policy = policy or WitnessPolicy({}, {}, "none")
        if isinstance(path, str | Path):
            path = Path(path)
            self._storage = LogStorage(path, self.origin)
            self._owns_storage = True
            watermark_path = watermark_path or path.with_name(path.name + ".watermark")
        else:
            if watermark_path is None or fence is None:
                raise AuditLogError("a log over a given storage needs a watermark path and its fence")
            self._storage = path
            self._owns_storage = False
        self._watermark = Watermark(watermark_path, self.origin)
        self._open_state(fence)
        self._queue: SimpleQueue[tuple[StoredEntry, Pending, bool] | object] = SimpleQueue()
        # Without witness endpoints, a checkpoint needs no cosignature to be published: the
        # commit publishes it in its own transaction and the publisher thread has nothing to do.
        self._publish_in_commit = not self._witnesses and self._policy.satisfied(set())
        self._watermark_synced = float("-inf")
        self._submit_lock = threading.Lock()
        self._next_index = self._tree.size
        self._last_ts = 0
        self._failed: BaseException | None = None
        self._published: Note | None = None
        self._published_cond = threading.Condition()
        self._pending_publish: Note | None = None
        self._witness_sizes: dict[str, int] = {}
        self._writer = threading.Thread(target=self._run, name="wv-audit-writer", daemon=True)
        self._publisher = threading.Thread(target=self._publish_loop, name="wv-audit-publisher", daemon=True)
        self._closing = False
        self._writer.start()
        self._publisher.start()

    # -- opening ---------------------------------------------------------------

    def _current_size(self) -> int:
        return self._tree.size

    def latest_checkpoint(self) -> Note:
        return self._head_note

    def published_checkpoint(self) -> Note | None:
        """The newest checkpoint that met the witness quorum."""
        return self._published or super().published_checkpoint()

    def _best_checkpoint(self) -> Note:
        return self._published or self._head_note

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    @property
    def fence(self) -> int:
        """This writer's fencing token."""
        return self._fence

    def _open_state(self, fence: int | None) -> None:
        head = self._storage.head()
        mark = self._watermark.read()
        if head is None:
            if mark is not None or self._storage.count():
                raise AuditLogError("the log database has no head but the log existed: refusing to start afresh")
            head = self._storage.initialise_head(self._sign(CompactRange()).to_text())
        count = self._storage.count()
        if count != head.size or self._storage.size() != head.size:
            raise AuditLogError(
                f"the log database holds {count} entries but its head says {head.size}: "
                "entries were deleted or the database was edited; refusing to open"
            )
        if mark is not None:
            if head.size < mark[0]:
                raise AuditLogError(
                    f"the log database is at size {head.size} but size {mark[0]} was committed before: "
                    "history was truncated or an old backup was restored; refusing to open"
                )
            if self.root_at(mark[0]) != mark[1]:
                raise AuditLogError("the log database does not extend the committed watermark: history was rewritten")
        self._tree = self._storage.compact_range(head.size)
        if self._tree.root() != head.root:
            raise AuditLogError("the log database root does not match its head: history was rewritten")
        self._watermark.advance(head.size, head.root)
        if fence is None:
            self._fence = self._storage.take_fence(head.fence)
        elif head.fence != fence:
            raise AuditLogError("another writer took the audit log while this one opened it")
        else:
            self._fence = fence
        self._head_note = parse_note(head.checkpoint)

    def _sign(self, tree: CompactRange) -> Note:
        return sign_checkpoint(Checkpoint(self.origin, tree.size, tree.root()), self._signer)

    # -- appending ---------------------------------------------------------------

    def append(self, event: AuditEvent, timeout_s: float = 15.0) -> Receipt:
        """Append ``event`` and wait until it is durable.

        The default wait outlasts the storage's busy timeout, so a locked database
        surfaces as the writer's own failure rather than as a timeout here.

        Raises:
            AuditLogError: the event is invalid, the log has failed or is closed, or
                the commit did not finish within ``timeout_s``.
        """
        try:
            return self._enqueue(event, waited=True).result(timeout=timeout_s)
        except FutureTimeoutError as exc:
            raise AuditLogError(f"the audit log did not commit within {timeout_s:g} s") from exc

    def submit(self, event: AuditEvent) -> Pending:
        """Stamp, encode and queue ``event``; the returned future resolves once it is durable.

        The event's index is reserved here, in submission order, which is the order
        the single writer commits in. A caller may therefore refer to an event it
        has submitted (``refs``) before that event is durable; both become durable in
        the same or consecutive batches, and a failed batch fails the whole log.
        A submitted event is committed with the next appended one, or after
        ``batch_delay_s`` at the latest.
        """
        return self._enqueue(event, waited=False)

    def enqueue_handoffs(self, events: Sequence[tuple[int, AuditEvent]]) -> list[Pending]:
        """Queue events other replicas handed off, as ``(hand-off id, event)``; each is committed in
        the same transaction that deletes it from the hand-off queue. Only the last one counts as
        waited for, so that the writer takes them all into one commit rather than one each."""
        last = len(events) - 1
        return [self._enqueue(event, waited=i == last, handoff=h) for i, (h, event) in enumerate(events)]

    def _enqueue(self, event: AuditEvent, *, waited: bool, handoff: int | None = None) -> Pending:
        if self._closing:
            raise AuditLogError("the audit log is closed")
        with self._submit_lock:
            # Checked under the lock that recovery takes (_recover): no position is reserved
            # while the log is failed, so recovery finds the queue drained.
            if self._failed is not None:
                raise AuditLogError(f"the audit log has failed and accepts no events: {self._failed}")
            ts = max(self._last_ts, int(self._clock() * 1000))
            stamped = event.with_ts(ts)
            data = stamped.encode()  # raises for oversized or non-canonical events: nothing is reserved
            pending = Pending(self._next_index)
            self._next_index += 1
            self._last_ts = ts
            entry = StoredEntry(pending.index, data, ts, stamped.tenant, stamped.type, handoff)
            self._queue.put((entry, pending, waited))
        return pending

    def _run(self) -> None:
        while True:
            try:
                # A failed log looks every second whether it can go on (_recover).
                item = self._queue.get(timeout=RECOVERY_S if self._failed is not None else None)
            except Empty:
                self._recover()
                continue
            if item is _STOP:
                return
            batch = [item]
            waited = item[2]  # type: ignore[index]
            deadline = time.monotonic() + self._config.batch_delay_s
            while len(batch) < self._config.batch_max:
                try:
                    if waited:  # someone waits: take what is queued now, and commit
                        nxt = self._queue.get(block=False)
                    else:
                        nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(nxt)
                waited = waited or nxt[2]  # type: ignore[index]
            self._commit(batch)  # type: ignore[arg-type]

    def _commit(self, batch: list[tuple[StoredEntry, Pending, bool]]) -> None:
        if self._failed is not None:
            for _, future, _ in batch:
                future.set_exception(AuditLogError(f"the audit log has failed: {self._failed}"))
            return
        tree = self._tree.copy()
        old = (tree.size, tree.root())
        entries: list[StoredEntry] = []
        nodes: list[tuple[int, int, bytes]] = []
        receipts = []
        for entry, _, _ in batch:
            assert entry.index == tree.size, "submission order is commit order"
            h = leaf_hash(entry.data)
            entries.append(entry)
            nodes.extend(tree.append(h))
            receipts.append((tree.size - 1, h))
        note = self._sign(tree)
        try:
            self._storage.append_batch(
                entries,
                nodes,
                fence=self._fence,
                old=old,
                new=(tree.size, tree.root()),
                checkpoint=note.to_text(),
                published=self._publish_in_commit,
            )
        except AuditUnavailableError as exc:
            # The database failed during the commit, which may have happened anyway (its
            # acknowledgement lost): the head under this writer's fence says which.
            if not self._landed(tree):
                self._fail(batch, exc)
                return
        except BaseException as exc:  # storage or CAS failure: fail closed
            self._fail(batch, exc)
            return
        # The batch is durable. A watermark that cannot be written now (its disk full) only lags,
        # which its design allows (storage.Watermark); the next commit writes the newest again.
        with contextlib.suppress(OSError, sqlite3.Error):
            self._advance_watermark(tree)
        self._tree = tree
        self._head_note = note
        for (_, future, _), (index, h) in zip(batch, receipts, strict=True):
            future.set_result(Receipt(index, h, tree.size))
        with self._published_cond:
            if self._publish_in_commit:
                self._published = note
            else:
                self._pending_publish = note
            self._published_cond.notify_all()

    def _recover(self) -> None:
        """After a failed commit: go on if this writer still holds the log and its stored state
        verifies, adopting the head as stored (a commit whose acknowledgement was lost counts).

        Runs on the writer thread once the queue is drained: the batches behind the failure
        were refused, and no position can be reserved while failed, so the next index is the
        stored size. A log another writer took (the fence moved), or whose stored tree does not
        match its head, stays failed.
        """
        if self._failed is None or self._closing:
            return
        try:
            head = self._storage.head()
            if head is None or head.fence != self._fence:
                return  # fenced out: another writer holds the log, this one never writes again
            tree = self._storage.compact_range(head.size)
            mark = self._watermark.read()
        except (WeightVaultError, OSError, sqlite3.Error):
            return  # still failing: try again later
        if tree.root() != head.root or (mark is not None and head.size < mark[0]):
            return
        with self._submit_lock:
            if not self._queue.empty():
                return
            self._tree = tree
            self._head_note = parse_note(head.checkpoint)
            self._next_index = head.size
            self._failed = None

    def _landed(self, tree: CompactRange) -> bool:
        """Whether a commit whose outcome is unknown advanced the head to ``tree`` under our fence."""
        try:
            head = self._storage.head()
        except WeightVaultError:
            return False
        return head is not None and head.fence == self._fence and (head.size, head.root) == (tree.size, tree.root())

    def _fail(self, batch: list[tuple[StoredEntry, Pending, bool]], exc: BaseException) -> None:
        """Fail closed: the batch is refused and so is everything queued behind it, whose positions
        depended on it; then :meth:`_recover` looks every second whether the log can go on."""
        self._failed = exc if isinstance(exc, WeightVaultError) else AuditLogError(f"commit failed: {exc}")
        for _, future, _ in batch:
            future.set_exception(AuditLogError(f"audit append failed: {self._failed}"))

    def _advance_watermark(self, tree: CompactRange, *, sync: bool = False) -> None:
        now = time.monotonic()
        durable = sync or now - self._watermark_synced >= WATERMARK_SYNC_S
        self._watermark.advance(tree.size, tree.root(), durable=durable)
        if durable:
            self._watermark_synced = now

    # -- publishing ----------------------------------------------------------------

    def _publish_loop(self) -> None:
        while True:
            with self._published_cond:
                while self._pending_publish is None and not self._closing:
                    self._published_cond.wait()
                note = self._pending_publish
                self._pending_publish = None
            if note is None:
                return
            with contextlib.suppress(WeightVaultError):
                self._publish(note)

    def _publish(self, note: Note) -> Note:
        """Collect cosignatures for ``note``; store and publish it if the quorum is met."""
        checkpoint = Checkpoint.from_text(note.text)
        signatures: list[NoteSignature] = []
        cosigned = set()
        for witness in self._witnesses:
            try:
                lines = self._cosign(witness, note, checkpoint)
            except WeightVaultError:
                if self._config.require_witnesses:
                    raise
                continue
            parsed = parse_note(note.text + "\n" + "".join(lines))
            signatures.extend(parsed.signatures)
            cosigned.add(witness.name)
        full = note.with_signatures(signatures)
        verified_names = {n for n, w in self._policy.witnesses.items() if any(w.matches(s) for s in full.signatures)}
        if not self._policy.satisfied(verified_names):
            raise AuditLogError(f"witness quorum not met for size {checkpoint.size}")
        self._storage.store_published(checkpoint.size, full.to_text())
        with self._published_cond:
            if self._published is None or Checkpoint.from_text(self._published.text).size <= checkpoint.size:
                self._published = full
            self._published_cond.notify_all()
        del cosigned
        return full

    def _cosign(self, witness: WitnessEndpoint, note: Note, checkpoint: Checkpoint) -> Sequence[str]:
        old = self._witness_sizes.get(witness.name, 0)
        for _ in range(2):
            proof = self.consistency_proof(old, checkpoint.size) if 0 < old < checkpoint.size else []
            try:
                lines = witness.add_checkpoint(old, proof, note)
            except WitnessConflictError as conflict:
                if conflict.size is None or conflict.size == old or conflict.size > checkpoint.size:
                    raise
                old = conflict.size
                continue
            self._witness_sizes[witness.name] = checkpoint.size
            return lines
        raise AuditLogError(f"witness {witness.name} keeps reporting a conflicting size")

    def publish_now(self, timeout_s: float = 10.0) -> Note:
        """Publish the current head (gathering cosignatures) and return the published checkpoint."""
        with self._published_cond:
            self._pending_publish = None
        return self._publish(self._head_note)

    def wait_published(self, size: int, timeout_s: float = 10.0) -> Note:
        """Wait for a published (quorum-cosigned) checkpoint of at least ``size``.

        Raises:
            AuditLogError: none was published in time (strict deployments refuse the action).
        """
        deadline = time.monotonic() + timeout_s
        with self._published_cond:
            while True:
                pub = self._published
                if pub is not None and Checkpoint.from_text(pub.text).size >= size:
                    return pub
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AuditLogError(f"no witnessed checkpoint covering size {size} within {timeout_s} s")
                self._published_cond.wait(remaining)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._queue.put(_STOP)
        self._writer.join()
        if self._failed is None:
            with contextlib.suppress(WeightVaultError, OSError, sqlite3.Error):
                self._advance_watermark(self._tree, sync=True)  # an orderly stop leaves it on disk
        with self._published_cond:
            self._published_cond.notify_all()
        self._publisher.join()
        if self._owns_storage:
            self._storage.close()
        self._watermark.close()

    def __enter__(self) -> AuditLog:
        return self


@contextlib.contextmanager
def write_ahead(sink: AuditSink, intent: AuditEvent, *, wait_done: bool = True) -> Iterator[Receipt]:
    """The write-ahead rule for sensitive actions.

    Appends ``intent`` (a ``*.intent`` event) and waits until it is durable; only
    then runs the block. Afterwards appends ``*.done``, or ``*.fail`` if the block
    raised, each referring to the intent's index. If the intent cannot be appended,
    :class:`AuditLogError` propagates and the block never runs: the action is refused.
    """
    if not intent.type.endswith(".intent"):
        raise ValueError("write_ahead needs an *.intent event")
    base = intent.type[: -len(".intent")]
    receipt = sink.append(intent)
    try:
        yield receipt
    except BaseException as exc:
        with contextlib.suppress(WeightVaultError):
            sink.append(
                intent.derive(
                    f"{base}.fail",
                    refs={**intent.refs, "intent": receipt.index},
                    decision="fail",
                    reasons=(type(exc).__name__,),
                )
            )
        raise
    done = intent.derive(f"{base}.done", refs={**intent.refs, "intent": receipt.index}, decision="done")
    submit = getattr(sink, "submit", None)
    if not wait_done and submit is not None:
        submit(done)
    else:
        sink.append(done)
