"""Sealed tensors straight into device memory: read, copy, verify and decrypt on the device.

Data path for a ChaCha20-Poly1305 file and ``device="cuda:N"``::

    file (page cache or disk) --preadv--> pinned staging buffer --async H2D--> destination tensor
        (R reader threads, 2 buffers each, one copy stream each; the GIL is released in preadv;
        a remote file's ranges arrive the same way, through its source's read_into)
    destination (ciphertext) --Poly1305 kernel--> tags, compared on the device with the tag table
        (on a compute stream, launched for tensor k as soon as its last piece is copied,
        so MACs overlap the reads and copies of the tensors after it)
    one host synchronisation: did every chunk of every tensor verify?
    destination --ChaCha20 kernel, in place--> plaintext

The ciphertext is copied exactly once, into the memory that will hold the tensor;
plaintext never exists in host memory, and on the device only after every tag of the
file matched. Tensor keys reach the device once, as one table, which is zeroed
(on the device and on the host) when the load ends, successfully or not. Any
failure zeroes every destination buffer before the error propagates.

Without CUDA (tests, ``TRITON_INTERPRET=1``) the same code runs sequentially on CPU
tensors: staging buffers are ordinary memory, copies are synchronous, and one
reader thread feeds the verifying thread through the same hand-off.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import torch

from weightvault.crypto.aead import TAG_BYTES, AEADSuite
from weightvault.errors import PayloadError, UnsupportedError
from weightvault.format.header import TensorEntry
from weightvault.format.stream import AAD_BYTES, chunk_count
from weightvault.gpu.aead import chacha20_xor_, poly1305_tags
from weightvault.sealing.reader import OpenedFile, SealedFile

__all__ = ["load_to_device"]

_STAGE_BYTES: Final = 32 << 20
_READERS: Final = 4


class _Stager:
    """One reader: its own pinned buffers and copy stream (CUDA), or plain memory (CPU)."""

    def __init__(self, device: torch.device, size: int) -> None:
        cuda = device.type == "cuda"
        self.buffers = [torch.empty(size, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
        self.stream: Any = torch.cuda.Stream(device=device) if cuda else None  # type: ignore[no-untyped-call]
        self.events: list[Any] = [None, None]
        self.turn = 0

    def copy(self, sealed: SealedFile, offset: int, dst: torch.Tensor) -> Any:
        """Read ``len(dst)`` bytes at ``offset`` into ``dst``; on CUDA asynchronously, returning the copy's event."""
        slot = self.turn
        self.turn ^= 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the previous copy out of this buffer is done
        staging = self.buffers[slot][: dst.numel()]
        sealed.read_into(staging.numpy().data.cast("B"), offset, "sealed file truncated while reading tensor data")
        if self.stream is None:
            dst.copy_(staging)
            return None
        with torch.cuda.stream(self.stream):
            dst.copy_(staging, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(self.stream)
        self.events[slot] = event
        return event

    def drain(self) -> None:
        for event in self.events:
            if event is not None:
                event.synchronize()
        for buf in self.buffers:
            buf.zero_()  # ciphertext only, but leave nothing behind


class _Arrivals:
    """Hand-off from the reader threads to the verifying thread: which tensors are fully copied.

    Invariant: ``wait(k)`` returns only after every piece of tensor k was copied (its
    CUDA events are returned for the compute stream to wait on), or raises the first
    reader error; readers stop early once any of them failed.
    """

    def __init__(self, pieces_per_tensor: Sequence[int]) -> None:
        self._left = list(pieces_per_tensor)
        self._events: list[list[Any]] = [[] for _ in pieces_per_tensor]
        self._cond = threading.Condition()
        self.error: BaseException | None = None

    def arrived(self, k: int, event: Any) -> None:
        with self._cond:
            self._left[k] -= 1
            if event is not None:
                self._events[k].append(event)
            if self._left[k] == 0:
                self._cond.notify_all()

    def failed(self, error: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = error
            self._cond.notify_all()

    def wait(self, k: int) -> list[Any]:
        with self._cond:
            self._cond.wait_for(lambda: self._left[k] == 0 or self.error is not None)
            if self.error is not None:
                raise self.error
            return self._events[k]


def load_to_device(
    opened: OpenedFile,
    entries: Sequence[TensorEntry],
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    allocate: Callable[[int], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Decrypt ``entries`` into uint8 tensors on ``device`` (views by dtype are the caller's).

    ``allocate(nbytes)`` makes each destination (default: ``torch.empty`` on ``device``).
    No tensor is returned unless every chunk of every entry verified; on any failure
    every destination is zeroed before the error propagates.

    Raises:
        UnsupportedError: the file's suite has no device kernels (AES-256-GCM: use the CPU path).
        KeyAccessError: the key does not cover a requested tensor.
        PayloadError: a chunk fails authentication or the file is truncated.
    """
    p = opened.layout.preamble
    if p.suite is not AEADSuite.CHACHA20_POLY1305:
        raise UnsupportedError(f"device decryption supports chacha20-poly1305 files, not {p.suite.label}")
    if not entries:
        return {}
    chunk_log2 = p.chunk_log2
    counts = [chunk_count(e.nbytes, chunk_log2) for e in entries]
    # One upload each for keys, associated data and tags: no host round trip per tensor.
    keys_host = bytearray(32 * len(entries))
    try:
        for k, entry in enumerate(entries):
            keys_host[32 * k : 32 * (k + 1)] = opened.keys.tensor_aead_key(entry.index)
        keys = torch.frombuffer(keys_host, dtype=torch.int32).to(device, copy=True).view(-1, 8)
    finally:
        keys_host[:] = bytes(len(keys_host))
    aads = _table(b"".join(opened.chunk_aad(e) for e in entries), device).view(-1, AAD_BYTES)
    tags = _table(b"".join(opened.tags(e) for e in entries), device)
    make = allocate or (lambda n: torch.empty(n, dtype=torch.uint8, device=device))
    outputs: list[torch.Tensor] = []
    cuda = device.type == "cuda"
    compute: Any = torch.cuda.Stream(device=device) if cuda else None  # type: ignore[no-untyped-call]
    try:
        outputs.extend(make(e.nbytes) for e in entries)
        if cuda:
            compute.wait_stream(torch.cuda.current_stream(device))  # destinations are allocated
        with torch.cuda.stream(compute) if cuda else contextlib.nullcontext():
            failures = _copy_and_verify(
                opened, entries, counts, outputs, keys=keys, aads=aads, tags=tags, device=device, progress=progress
            )
            # The one host synchronisation of the verify pass: did any chunk of any tensor fail?
            failed: list[bool] = torch.stack([f.any() for f in failures]).tolist() if failures else []
            if any(failed):
                k = failed.index(True)
                first = int(torch.nonzero(failures[k])[0, 0])
                raise PayloadError(f"tensor {entries[k].name!r}: chunk {first} failed authentication")
            for k in range(len(entries)):
                chacha20_xor_(outputs[k], keys[k], chunk_log2=chunk_log2, n_chunks=counts[k])
        if cuda:
            torch.cuda.synchronize(device)
    except BaseException:
        if cuda:
            torch.cuda.synchronize(device)  # nothing queued on any stream may write after the wipe
        for out in outputs:
            out.zero_()
        if cuda:
            torch.cuda.synchronize(device)
        raise
    finally:
        keys.zero_()
        if cuda:
            torch.cuda.synchronize(device)
    return {e.name: out for e, out in zip(entries, outputs, strict=True)}


def _table(data: bytes, device: torch.device) -> torch.Tensor:
    return torch.frombuffer(bytearray(data or b"\0"), dtype=torch.uint8).to(device)


def _copy_and_verify(
    opened: OpenedFile,
    entries: Sequence[TensorEntry],
    counts: Sequence[int],
    outputs: Sequence[torch.Tensor],
    *,
    keys: torch.Tensor,
    aads: torch.Tensor,
    tags: torch.Tensor,
    device: torch.device,
    progress: Callable[[int], None] | None,
) -> list[torch.Tensor]:
    """Copy every tensor's ciphertext into its destination and MAC each as soon as it has arrived.

    R reader threads copy round-robin pieces in tensor order; this thread launches
    tensor k's Poly1305 kernel on the current (compute) stream once all of k's
    copies are enqueued, after making that stream wait on their events. Returns,
    per tensor, a device boolean per chunk: True where the tag did not match.
    """
    sealed = opened.sealed
    chunk_log2 = opened.layout.preamble.chunk_log2
    pieces: list[tuple[int, int, torch.Tensor]] = []
    per_tensor = [0] * len(entries)
    for k, (entry, out) in enumerate(zip(entries, outputs, strict=True)):
        start, _ = opened.layout.data_range(entry)
        for a in range(0, entry.nbytes, _STAGE_BYTES):
            pieces.append((k, start + a, out[a : min(entry.nbytes, a + _STAGE_BYTES)]))
            per_tensor[k] += 1
    readers = _READERS if device.type == "cuda" else 1
    stage = min(_STAGE_BYTES, max((d.numel() for _, _, d in pieces), default=1))
    stagers = [_Stager(device, stage) for _ in range(readers)]
    if device.type == "cuda":
        for stager in stagers:
            stager.stream.wait_stream(torch.cuda.default_stream(device))
    arrivals = _Arrivals(per_tensor)
    lock = threading.Lock()

    def run(r: int) -> None:
        try:
            for k, offset, dst in pieces[r::readers]:
                if arrivals.error is not None:
                    return
                arrivals.arrived(k, stagers[r].copy(sealed, offset, dst))
                if progress is not None:
                    with lock:
                        progress(dst.numel())
        except BaseException as exc:
            arrivals.failed(exc)
        finally:
            stagers[r].drain()

    failures: list[torch.Tensor] = []
    tag_at = 0
    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="wv-gpu-reader") as pool:
        running = [pool.submit(run, r) for r in range(readers)]
        try:
            for k, count in enumerate(counts):
                stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
                for event in arrivals.wait(k):
                    stream.wait_event(event)  # type: ignore[union-attr]
                computed = poly1305_tags(outputs[k], keys[k], aads[k], chunk_log2=chunk_log2, n_chunks=count)
                expected = tags[tag_at : tag_at + count * TAG_BYTES]
                tag_at += count * TAG_BYTES
                failures.append((computed.view(count, TAG_BYTES) != expected.view(count, TAG_BYTES)).any(dim=1))
        except BaseException as exc:
            arrivals.failed(exc)  # stop the readers early
            raise
        finally:
            for future in running:
                future.result()  # readers never raise: their errors went through ``arrivals``
    return failures
