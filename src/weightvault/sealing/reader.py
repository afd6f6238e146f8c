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

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

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

__all__ = ["KeySource", "OpenedFile", "SealedFile", "open_sealed"]

KeySource: TypeAlias = FileKey | TensorKeys | Identity | Sequence[Identity]
_READ_BLOCK: Final = 4 << 20
#: Two readers keep both cores of a small machine faulting in fresh pages while the
#: decrypting thread (which holds the GIL inside pyca) stays a few blocks behind.
_READERS: Final = 2
_READ_AHEAD_BLOCKS: Final = 16
_GAP_CHECK_MAX: Final = 1 << 20


def _pread_exact(fd: int, buf: memoryview, offset: int, what: str) -> None:
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise PayloadError(f"file is truncated ({what})")
        done += n


def _pread(fd: int, size: int, offset: int, what: str) -> bytes:
    buf = bytearray(size)
    _pread_exact(fd, memoryview(buf), offset, what)
    return bytes(buf)


class SealedFile:
    """A sealed file opened for reading, not yet unlocked.

    Everything read here is unauthenticated until :meth:`unlock` succeeds.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self._load()
        except BaseException:
            os.close(self._fd)
            raise

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, PREAMBLE_BYTES, 0)
        self.preamble = p = Preamble.from_bytes(head)
        if size < p.data_offset:
            raise HeaderError("file is truncated (before the data area)")
        if size < p.file_size:
            raise PayloadError(f"file is truncated: {p.file_size - size} bytes of the data area are missing")
        if size > p.file_size:
            raise PayloadError(f"{size - p.file_size} unexpected bytes after the data area")
        self._region_bytes = _pread(self._fd, p.recipients_len, p.recipients_offset, "recipients")
        self.header_bytes = _pread(self._fd, p.header_len, p.header_offset, "header")
        self.tag_bytes = _pread(self._fd, p.tags_len, p.tags_offset, "tag table")
        self.header_mac = _pread(self._fd, MAC_BYTES, p.mac_offset, "header MAC")
        pad = _pread(self._fd, p.data_offset - p.mac_offset - MAC_BYTES, p.mac_offset + MAC_BYTES, "padding")
        if any(pad):
            raise PayloadError("padding before the data area is not zero")
        self.recipients: RecipientsRegion = decode_recipients_region(self._region_bytes)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

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
                if any(_pread(self._fd, min(stop - at, _GAP_CHECK_MAX), at, "data")):
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


def open_sealed(path: Path | str) -> SealedFile:
    """Open a sealed file (the caller closes it, or uses ``with``)."""
    return SealedFile(Path(path))


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

    def read_range(self, entry: TensorEntry, start: int, stop: int) -> bytearray:
        """Plaintext bytes [start, stop) of a tensor, decrypting only the chunks that cover them.

        Raises:
            PayloadError: a covering chunk fails authentication.
        """
        if not 0 <= start <= stop <= entry.nbytes:
            raise ValueError("range outside the tensor")
        out = bytearray(stop - start)
        if start == stop:
            return out
        stream = self.stream(entry)
        tags = self.tags(entry)
        chunk = self.layout.preamble.chunk_size
        scratch = bytearray(chunk + TAG_BYTES)
        view = memoryview(scratch)
        base, _ = self.layout.data_range(entry)
        try:
            for j in range(start // chunk, (stop - 1) // chunk + 1):
                c0, c1 = stream.chunk_bounds(j)
                size = c1 - c0
                _pread_exact(self.sealed.fileno(), view[:size], base + c0, "tensor data")
                view[size : size + TAG_BYTES] = tags[j * TAG_BYTES : (j + 1) * TAG_BYTES]
                stream.decrypt_chunk_into(j, view[: size + TAG_BYTES], view[:size])
                lo, hi = max(start, c0), min(stop, c1)
                out[lo - start : hi - start] = view[lo - c0 : hi - c0]
        except BaseException:
            _zero_fill(memoryview(out))
            raise
        finally:
            _zero_fill(view)
        return out

    def verify(self, progress: Callable[[int], None] | None = None) -> None:
        """Check every chunk tag of every tensor the key covers, releasing no plaintext.

        Plaintext exists only in a scratch buffer that is zeroed afterwards.

        Raises:
            PayloadError: a chunk fails authentication.
        """
        chunk = self.layout.preamble.chunk_size
        scratch = bytearray(max(chunk, _READ_BLOCK) + TAG_BYTES)
        try:
            for entry in self.entries:
                if self.keys.has_tensor(entry.index):
                    for _ in self._decrypt_streaming(entry, memoryview(scratch)):
                        pass
                    if progress is not None:
                        progress(entry.nbytes)
        finally:
            _zero_fill(memoryview(scratch))

    def _decrypt_streaming(self, entry: TensorEntry, scratch: memoryview) -> Iterator[memoryview]:
        """Decrypt a tensor block by block into ``scratch``, yielding each verified block."""
        stream = self.stream(entry)
        tags = self.tags(entry)
        chunk = self.layout.preamble.chunk_size
        block = (len(scratch) - TAG_BYTES) // chunk * chunk
        if block == 0:
            raise ValueError("scratch buffer smaller than one chunk")
        base, _ = self.layout.data_range(entry)
        for a in range(0, max(entry.nbytes, 1), block):
            b = min(entry.nbytes, a + block)
            _pread_exact(self.sealed.fileno(), scratch[: b - a], base + a, "tensor data")
            for j in range(a // chunk, max(a // chunk + 1, -(-b // chunk))):
                c0, _ = stream.chunk_bounds(j)
                tag = tags[j * TAG_BYTES : (j + 1) * TAG_BYTES]
                stream.decrypt_chunk_in_place(j, scratch[c0 - a :], tag)
            yield scratch[: b - a]

    def decrypt_tensors(
        self,
        entries: Sequence[TensorEntry],
        allocate: Allocator,
        progress: Callable[[int], None] | None = None,
        readers: int = _READERS,
    ) -> list[memoryview]:
        """Decrypt whole tensors into buffers from ``allocate``, overlapping reads with decryption.

        ``allocate(entry)`` returns a writable buffer of at least ``entry.nbytes + 16``
        bytes. Reader threads copy ciphertext straight into each buffer (the format
        is length-preserving; ``preadv`` releases the GIL, and the first write to
        fresh memory, its page faults, happens there too) while this thread decrypts
        and verifies in place, block by block behind the readers. Returns the buffers
        in order, each fully verified. If anything fails, every buffer is zeroed
        before the error propagates, so no plaintext is released.

        Raises:
            PayloadError: a chunk fails authentication, or the file is truncated.
        """
        jobs = [_Job(e, self.stream(e), self.tags(e)) for e in entries]
        buffers: list[memoryview] = []
        fd = self.sealed.fileno()
        chunk = self.layout.preamble.chunk_size
        block = max(chunk, _READ_BLOCK // chunk * chunk)
        # Every block of every tensor, in file order: (job index, start, stop).
        blocks = [
            (k, a, min(j.entry.nbytes, a + block)) for k, j in enumerate(jobs) for a in range(0, j.entry.nbytes, block)
        ]
        pending: dict[int, Future[None]] = {}
        pool = ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="wv-load-reader")
        next_submit = 0

        def submit_until(limit: int) -> None:
            nonlocal next_submit
            while next_submit < min(limit, len(blocks)):
                k, a, b = blocks[next_submit]
                base, _ = self.layout.data_range(jobs[k].entry)
                pending[next_submit] = pool.submit(_pread_exact, fd, buffers[k][a:b], base + a, "tensor data")
                next_submit += 1

        try:
            for job in jobs:
                buf = allocate(job.entry)
                if len(buf) < job.entry.nbytes + TAG_BYTES:
                    raise ValueError("allocator returned a buffer that is too small")
                buffers.append(buf)
            cursor = 0
            for k, job in enumerate(jobs):
                stream, tags, buf = job.stream, job.tags, buffers[k]
                if job.entry.nbytes == 0:
                    stream.decrypt_chunk_in_place(0, buf, tags[:TAG_BYTES])
                while cursor < len(blocks) and blocks[cursor][0] == k:
                    _, a, b = blocks[cursor]
                    submit_until(cursor + _READ_AHEAD_BLOCKS)
                    pending.pop(cursor).result()
                    # The last chunk of a block borrows the next block's first 16 bytes
                    # for its tag, so that block must be in memory first.
                    if b < job.entry.nbytes:
                        pending[cursor + 1].result()
                    for j in range(a // chunk, -(-b // chunk)):
                        c0, _ = stream.chunk_bounds(j)
                        stream.decrypt_chunk_in_place(j, buf[c0:], tags[j * TAG_BYTES : (j + 1) * TAG_BYTES])
                    cursor += 1
                if progress is not None:
                    progress(job.entry.nbytes)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            for buf in buffers:
                _zero_fill(buf)
            raise
        pool.shutdown(wait=True)
        return buffers


_ZEROS: Final = bytes(1 << 20)


def _zero_fill(buf: memoryview) -> None:
    """Zero a buffer of any size without allocating a same-sized bytes object."""
    for a in range(0, len(buf), len(_ZEROS)):
        b = min(len(buf), a + len(_ZEROS))
        buf[a:b] = _ZEROS[: b - a]
