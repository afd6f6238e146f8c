"""Opening sealed files: parse, unlock, authenticate, then decrypt.

Order of operations when a sealed file is unlocked (each step raises before the
next runs):

1. preamble: magic, version, suite, flags, reserved fields, limits;
2. file size equals the size the preamble implies (no truncation, no trailing bytes);
3. recipients region parses; padding before the data area is zero;
4. the key: a file key or grant as given, or one unwrapped from a stanza by an identity;
5. the key commitment, in constant time (:func:`weightvault.format.keys.unlock`);
6. the recipients-region MAC and the header MAC;
7. the header: decrypted when sealed, parsed, cross-checked against the preamble;
8. every per-tensor key commitment the key covers; zero bytes between tensors;
9. only then are chunks read, each verified before its plaintext is handed out.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias, TypeVar

from weightvault.crypto.aead import TAG_BYTES, InvalidTag, open_single_use
from weightvault.crypto.mac import InvalidSignature, verify_hmac_sha256
from weightvault.errors import (
    HeaderAuthError,
    HeaderError,
    KeyMismatchError,
    NoMatchingRecipientError,
    PayloadError,
)
from weightvault.format.container import SealedLayout, header_digest
from weightvault.format.header import HeaderTable, TensorEntry
from weightvault.format.keys import FileKey, KeyMaterial, TensorKeys, UnlockedKeys, unlock
from weightvault.format.preamble import MAC_BYTES, PREAMBLE_BYTES, Preamble
from weightvault.format.recipients import Identity, RecipientsRegion, decode_recipients_region
from weightvault.format.stream import TensorStream, chunk_aad, chunk_count
from weightvault.sealing.fileio import zero_fill
from weightvault.sealing.sources import ByteSource, LocalSource, Location, display, is_remote, open_source
from weightvault.sealing.workers import resolve_workers

__all__ = ["KeySource", "OpenedFile", "SealedFile", "open_sealed"]

KeySource: TypeAlias = FileKey | TensorKeys | Identity | Sequence[Identity]
_T = TypeVar("_T")
_R = TypeVar("_R")
#: Bytes a worker reads and then decrypts in one go: small enough to be decrypted while
#: still in the cache it was read into, large enough that a run's last chunk (decrypted
#: from a private copy) is a small share of the work.
_RUN_BYTES: Final = 4 << 20
_GAP_CHECK_MAX: Final = 1 << 20


class SealedFile:
    """A sealed file opened for reading, not yet unlocked: a local path, or an HTTP(S) or S3 URL.

    Everything read here is unauthenticated until :meth:`unlock` succeeds, wherever it
    comes from (:mod:`weightvault.sealing.sources`).
    """

    def __init__(self, location: Location) -> None:
        self.location = location
        self.path = Path(location) if not is_remote(location) else Path(display(location))
        self.source: ByteSource = open_source(location)
        try:
            self._load()
        except BaseException:
            self.source.close()
            raise

    def read(self, size: int, offset: int, what: str) -> bytes:
        """``size`` bytes at ``offset`` (unauthenticated); PayloadError if the file ends first."""
        buf = bytearray(size)
        self.source.read_into(memoryview(buf), offset, f"file is truncated ({what})")
        return bytes(buf)

    def read_into(self, buf: memoryview, offset: int, short: str) -> None:
        """Fill ``buf`` from ``offset`` (unauthenticated): safe from several threads at once."""
        self.source.read_into(buf, offset, short)

    def _load(self) -> None:
        size = self.source.size
        head = self.read(min(PREAMBLE_BYTES, size), 0, "preamble")
        self.preamble = p = Preamble.from_bytes(head)
        if size < p.data_offset:
            raise HeaderError("file is truncated (before the data area)")
        if size < p.file_size:
            raise PayloadError(f"file is truncated: {p.file_size - size} bytes of the data area are missing")
        if size > p.file_size:
            raise PayloadError(f"{size - p.file_size} unexpected bytes after the data area")
        self._region_bytes = self.read(p.recipients_len, p.recipients_offset, "recipients")
        self.header_bytes = self.read(p.header_len, p.header_offset, "header")
        self.tag_bytes = self.read(p.tags_len, p.tags_offset, "tag table")
        self.header_mac = self.read(MAC_BYTES, p.mac_offset, "header MAC")
        pad = self.read(p.data_offset - p.mac_offset - MAC_BYTES, p.mac_offset + MAC_BYTES, "padding")
        if any(pad):
            raise PayloadError("padding before the data area is not zero")
        self.recipients: RecipientsRegion = decode_recipients_region(self._region_bytes)

    def fileno(self) -> int:
        """The descriptor of a local file (the GPU pipeline reads it directly).

        Raises:
            TypeError: the file is remote.
        """
        if not isinstance(self.source, LocalSource):
            raise TypeError(f"{self.source.name} is remote: read it with read_into()")
        return self.source.fileno()

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> SealedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def public_table(self) -> HeaderTable:
        """The tensor table, read without a key and therefore unauthenticated.

        Raises:
            HeaderError: the header is sealed, or malformed.
        """
        if self.preamble.sealed_metadata:
            raise HeaderError("the tensor table is sealed; a key is needed to list tensors")
        table = HeaderTable.from_bytes(self.header_bytes)
        SealedLayout.check(self.preamble, table)
        return table

    def resolve(self, keys: KeySource) -> KeyMaterial:
        """Turn ``keys`` into this file's key material, unwrapping a stanza if needed.

        Raises:
            NoMatchingRecipientError: no identity opens a stanza.
            KeyMismatchError: a stanza opened but its key fails the key commitment.
        """
        if isinstance(keys, FileKey | TensorKeys):
            return keys
        identities = _identities(keys)
        context = self.preamble.stanza_context()
        mismatched = False
        for stanza in self.recipients.stanzas:
            for identity in identities:
                candidate = identity.unwrap(stanza, context)
                if candidate is None:
                    continue
                try:
                    unlock(candidate, self.preamble.file_id, self.preamble.key_commitment)
                except KeyMismatchError:
                    mismatched = True
                    continue
                return candidate
        if mismatched:
            raise KeyMismatchError("a recipient stanza opened, but its key fails the key commitment")
        raise NoMatchingRecipientError("no supplied identity opens any recipient stanza of this file")

    def unlock(self, keys: KeySource) -> OpenedFile:
        """Authenticate the file with ``keys`` and return it ready for decryption.

        Raises:
            KeyAccessError: no usable key (see :meth:`resolve`).
            KeyMismatchError: the key is not this file's key.
            HeaderAuthError: the recipients region, header or tag table was modified.
            HeaderError: the authenticated header is malformed or inconsistent.
            PayloadError: non-zero bytes between tensors.
        """
        material = self.resolve(keys)
        p = self.preamble
        unlocked = unlock(material, p.file_id, p.key_commitment)
        self.recipients.verify(unlocked.header.recipients_mac_key, p.recipients_mac_context())
        core = p.authenticated_core()
        try:
            verify_hmac_sha256(unlocked.header.mac_key, [core, self.header_bytes, self.tag_bytes], self.header_mac)
        except InvalidSignature as exc:
            raise HeaderAuthError("header MAC mismatch: the header or tag table was modified") from exc
        header_json = self.header_bytes
        if p.sealed_metadata:
            try:
                header_json = open_single_use(p.suite, unlocked.header.metadata_key, self.header_bytes, core)
            except InvalidTag as exc:
                raise HeaderAuthError("sealed header failed authentication") from exc
        table = HeaderTable.from_bytes(header_json)
        layout = SealedLayout.check(p, table)
        for entry in table.tensors:
            if unlocked.has_tensor(entry.index):
                try:
                    unlocked.check_tensor_commitment(entry.index, entry.key_commitment)
                except KeyMismatchError as exc:
                    if unlocked.is_partial:
                        raise
                    raise HeaderAuthError(f"tensor {entry.name!r}: key commitment does not match") from exc
        self._check_gaps(layout)
        return OpenedFile(self, unlocked, layout, header_digest(core, self.header_bytes))

    def _check_gaps(self, layout: SealedLayout) -> None:
        for start, stop in layout.gaps():
            for at in range(start, stop, _GAP_CHECK_MAX):
                if any(self.read(min(stop - at, _GAP_CHECK_MAX), at, "data")):
                    raise PayloadError("non-zero bytes between tensors")


def _identities(keys: object) -> Sequence[Identity]:
    """``keys`` as a list of identities; misuse is a TypeError that says what to pass instead."""
    if isinstance(keys, str | bytes | bytearray | os.PathLike):
        raise TypeError(
            "keys must be key objects, not a path or a string: load a key file with "
            "weightvault.read_key_file(path) and pass what it returns (a FileKey, KEK or HPKEIdentity)"
        )
    candidates = list(keys) if isinstance(keys, Sequence) else [keys]
    for candidate in candidates:
        if not callable(getattr(candidate, "unwrap", None)):
            raise TypeError(
                f"{type(candidate).__name__} is not a key: pass a FileKey, TensorKeys, an identity (KEK, "
                "HPKEIdentity, Passphrase, BrokerIdentity) or a list of identities; weightvault.read_key_file "
                "reads one from a key file"
            )
    return candidates  # type: ignore[return-value]


def open_sealed(path: Location) -> SealedFile:
    """Open a sealed file (the caller closes it, or uses ``with``)."""
    return SealedFile(path)


Allocator: TypeAlias = Callable[[TensorEntry], memoryview]


@dataclass(frozen=True, slots=True)
class _Job:
    entry: TensorEntry
    stream: TensorStream
    tags: bytes


class OpenedFile:
    """An authenticated sealed file. Chunks are verified before plaintext is handed out."""

    def __init__(self, sealed: SealedFile, keys: UnlockedKeys, layout: SealedLayout, digest: bytes) -> None:
        self.sealed = sealed
        self.keys = keys
        self.layout = layout
        self._digest = digest
        self._names = layout.table.by_name()

    @property
    def table(self) -> HeaderTable:
        return self.layout.table

    @property
    def entries(self) -> tuple[TensorEntry, ...]:
        return self.layout.table.tensors

    def entry(self, name: str) -> TensorEntry:
        """Look up a tensor by name; raises ``KeyError`` when absent."""
        return self._names[name]

    def stream(self, entry: TensorEntry) -> TensorStream:
        """The chunk stream of ``entry``; raises KeyAccessError when the grant does not cover it."""
        p = self.layout.preamble
        return TensorStream.create(
            p.suite,
            self.keys.tensor_aead_key(entry.index),
            file_id=p.file_id,
            header_digest=self._digest,
            tensor_index=entry.index,
            name=entry.name,
            nbytes=entry.nbytes,
            chunk_log2=p.chunk_log2,
        )

    def chunk_aad(self, entry: TensorEntry) -> bytes:
        """The associated data of every chunk of ``entry`` (docs/format.md section 6)."""
        p = self.layout.preamble
        count = chunk_count(entry.nbytes, p.chunk_log2)
        return chunk_aad(p.file_id, self._digest, entry.index, count, entry.nbytes)

    def tags(self, entry: TensorEntry) -> bytes:
        a, b = self.layout.tag_range(entry)
        return self.sealed.tag_bytes[a:b]

    def close(self) -> None:
        self.keys.forget()
        self.sealed.close()

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_range(self, entry: TensorEntry, start: int, stop: int, *, workers: int | None = None) -> bytearray:
        """Plaintext bytes [start, stop) of a tensor, decrypting only the chunks that cover them.

        Chunks are verified and decrypted on ``workers`` threads (default: one per usable
        core), each in a private scratch buffer; nothing is returned unless all verify.

        Raises:
            PayloadError: a covering chunk fails authentication.
        """
        if not 0 <= start <= stop <= entry.nbytes:
            raise ValueError("range outside the tensor")
        out = bytearray(stop - start)
        if start == stop:
            return out
        chunk = self.layout.preamble.chunk_size
        first, last = start // chunk, (stop - 1) // chunk
        job = _Job(entry, self.stream(entry), self.tags(entry))
        target = memoryview(out)

        def one(j: int) -> None:
            c0, c1 = job.stream.chunk_bounds(j)
            lo, hi = max(start, c0), min(stop, c1)
            with self._verified_in_scratch(job, c0, c1) as plain:
                target[lo - start : hi - start] = plain[lo - c0 : hi - c0]

        try:
            self._map(one, range(first, last + 1), workers)
        except BaseException:
            zero_fill(target)
            raise
        return out

    def verify(self, progress: Callable[[int], None] | None = None, *, workers: int | None = None) -> None:
        """Check every chunk tag of every tensor the key covers, releasing no plaintext.

        Raises:
            PayloadError: a chunk fails authentication.
        """
        self.each_verified(lambda entry, start, plain: None, progress=progress, workers=workers)

    def each_verified(
        self,
        sink: Callable[[TensorEntry, int, memoryview], None],
        *,
        progress: Callable[[int], None] | None = None,
        workers: int | None = None,
    ) -> None:
        """Call ``sink(entry, start, plaintext)`` for every run of verified chunks of every tensor the key covers.

        Runs (about 4 MiB of whole chunks) are read, verified and decrypted on ``workers``
        threads (default: one per usable core), in per-thread scratch buffers zeroed after
        ``sink`` returns; ``sink`` runs on those threads, in no particular order (unsealing
        writes each run at its own offset). On the first failure the remaining runs are
        cancelled and the error propagates once every started run has finished.

        Raises:
            PayloadError: a chunk fails authentication.
        """
        jobs = [_Job(e, self.stream(e), self.tags(e)) for e in self.entries if self.keys.has_tensor(e.index)]
        runs = [(jobs[k], a, b) for k, a, b in self._runs(jobs)]

        def one(item: tuple[_Job, int, int]) -> int:
            job, a, b = item
            with self._verified_in_scratch(job, a, b) as plain:
                sink(job.entry, a, plain)
            return b - a

        for done in self._map(one, runs, workers):
            if progress is not None:
                progress(done)

    @contextlib.contextmanager
    def _verified_in_scratch(self, job: _Job, a: int, b: int) -> Iterator[memoryview]:
        """Bytes [a, b) of a tensor (whole chunks but for the tensor's end) verified and decrypted
        in this thread's scratch buffer, which is zeroed when the block ends."""
        stream, tags, entry = job.stream, job.tags, job.entry
        chunk = self.layout.preamble.chunk_size
        scratch = _scratch(b - a)
        base, _ = self.layout.data_range(entry)
        try:
            self.sealed.read_into(scratch[: b - a], base + a, "file is truncated (tensor data)")
            for j in range(a // chunk, max(a // chunk + 1, -(-b // chunk))):
                c0, _ = stream.chunk_bounds(j)
                stream.decrypt_chunk_in_place(j, scratch[c0 - a :], tags[j * TAG_BYTES : (j + 1) * TAG_BYTES])
            yield scratch[: b - a]
        finally:
            zero_fill(scratch)

    def _runs(self, jobs: Sequence[_Job]) -> list[tuple[int, int, int]]:
        """Every run of every job, in file order: (job position, start, stop), whole chunks of about
        ``_RUN_BYTES`` (an empty tensor is one empty run)."""
        chunk = self.layout.preamble.chunk_size
        run = max(chunk, _RUN_BYTES // chunk * chunk)
        return [
            (k, a, min(job.entry.nbytes, a + run))
            for k, job in enumerate(jobs)
            for a in range(0, max(job.entry.nbytes, 1), run)
        ]

    @staticmethod
    def _map(fn: Callable[[_T], _R], items: Sequence[_T], workers: int | None) -> list[_R]:
        """``fn`` over ``items`` on up to ``workers`` threads, results in order; on the first
        failure the rest are cancelled and every started call finishes before the error propagates."""
        count = min(resolve_workers(workers), max(1, len(items)))
        if count == 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="wv-verify") as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def decrypt_tensors(
        self,
        entries: Sequence[TensorEntry],
        allocate: Allocator,
        progress: Callable[[int], None] | None = None,
        workers: int | None = None,
    ) -> list[memoryview]:
        """Decrypt whole tensors into buffers from ``allocate``, on every core.

        ``allocate(entry)`` returns a writable buffer of at least ``entry.nbytes + 16``
        bytes. The tensors are cut into runs of whole chunks (about 4 MiB); each of
        ``workers`` threads (default: one per usable core) takes the next run, reads its
        ciphertext straight into the buffer (``preadv``, which also takes the page
        faults of fresh memory) and verifies and decrypts it in place while it is still
        in cache. Returns the buffers in order once every chunk of every tensor has
        verified: no plaintext is handed out before the whole file is authenticated. If
        anything fails, the other workers stop at their next chunk, every buffer is
        zeroed, and the error propagates; no thread outlives the call.

        Raises:
            PayloadError: a chunk fails authentication, or the file is truncated.
            ValueError: ``workers`` is below 1, or a buffer is too small.
        """
        # A remote source's threads spend most of their time waiting on the network: more of
        # them keep ranges in flight while the others decrypt (ByteSource.overlap).
        count = resolve_workers(workers) * self.sealed.source.overlap
        jobs = [_Job(e, self.stream(e), self.tags(e)) for e in entries]
        buffers: list[memoryview] = []
        runs = self._runs(jobs)
        abort = threading.Event()
        pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="wv-decrypt")
        try:
            for job in jobs:
                buf = allocate(job.entry)
                if len(buf) < job.entry.nbytes + TAG_BYTES:
                    raise ValueError("allocator returned a buffer that is too small")
                buffers.append(buf)
            futures = {pool.submit(self._decrypt_run, jobs[k], buffers[k], a, b, abort): b - a for k, a, b in runs}
            for future in as_completed(futures):
                future.result()  # the first failure raises here; the handler below stops the rest
                if progress is not None:
                    progress(futures[future])
        except BaseException:
            abort.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for buf in buffers:
                zero_fill(buf)
            raise
        pool.shutdown(wait=True)
        return buffers

    def _decrypt_run(self, job: _Job, buf: memoryview, a: int, b: int, abort: threading.Event) -> None:
        """Read bytes [a, b) of one tensor into ``buf`` and verify-decrypt their chunks in place.

        Each chunk borrows the 16 bytes after it for its tag (pyca needs ciphertext and
        tag contiguous) and restores them. Inside the run those bytes are the run's own;
        after the tensor they are the buffer's slack. Only the run's last chunk, when
        another run follows, would borrow bytes another worker may be writing: it is
        decrypted from a private copy instead.
        """
        stream, tags, entry = job.stream, job.tags, job.entry
        if entry.nbytes == 0:
            stream.decrypt_chunk_in_place(0, buf, tags[:TAG_BYTES])
            return
        base, _ = self.layout.data_range(entry)
        self.sealed.read_into(buf[a:b], base + a, "file is truncated (tensor data)")
        chunk = self.layout.preamble.chunk_size
        for j in range(a // chunk, -(-b // chunk)):
            if abort.is_set():
                return
            c0, c1 = stream.chunk_bounds(j)
            tag = tags[j * TAG_BYTES : (j + 1) * TAG_BYTES]
            if c1 < b or b == entry.nbytes:
                stream.decrypt_chunk_in_place(j, buf[c0:], tag)
                continue
            scratch = _scratch(chunk)
            try:
                scratch[: c1 - c0] = buf[c0:c1]
                scratch[c1 - c0 : c1 - c0 + TAG_BYTES] = tag
                stream.decrypt_chunk_into(j, scratch[: c1 - c0 + TAG_BYTES], buf[c0:c1])
            finally:
                zero_fill(scratch)


_SCRATCH = threading.local()


def _scratch(chunk: int) -> memoryview:
    """This thread's buffer of one chunk and a tag (allocated once per thread and chunk size)."""
    held: bytearray | None = getattr(_SCRATCH, "buf", None)
    if held is None or len(held) < chunk + TAG_BYTES:
        held = bytearray(chunk + TAG_BYTES)
        _SCRATCH.buf = held
    return memoryview(held)
