"""Sealed tensors straight into device memory: read, copy, verify and decrypt on the device.

Data path for a ChaCha20-Poly1305 file and ``device="cuda:N"``::

    file (page cache or disk) --preadv--> pinned staging buffer --async H2D--> destination tensor
        (R reader threads, 2 buffers each, one copy stream each; the GIL is released in preadv)
    destination (ciphertext) --Poly1305 kernel--> tags, compared on the device with the tag table
    one host synchronisation: did every chunk of every tensor verify?
    destination --ChaCha20 kernel, in place--> plaintext

The ciphertext is copied exactly once, into the memory that will hold the tensor;
plaintext never exists in host memory, and on the device only after every tag of the
file matched. Tensor keys reach the device once, as one table, which is zeroed
(on the device and on the host) when the load ends, successfully or not. Any
failure zeroes every destination buffer before the error propagates.

Without CUDA (tests, ``TRITON_INTERPRET=1``) the same code runs sequentially on CPU
tensors: staging buffers are ordinary memory and copies are synchronous.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import torch

from weightvault.crypto.aead import TAG_BYTES, AEADSuite
from weightvault.errors import PayloadError, UnsupportedError
from weightvault.format.header import TensorEntry
from weightvault.format.stream import chunk_count
from weightvault.gpu.aead import chacha20_xor_, poly1305_tags
from weightvault.sealing.reader import OpenedFile

__all__ = ["load_to_device"]

_STAGE_BYTES: Final = 32 << 20
_READERS: Final = 4


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise PayloadError("sealed file truncated while reading tensor data")
        done += got


class _Stager:
    """One reader: its own pinned buffers and copy stream (CUDA), or plain memory (CPU)."""

    def __init__(self, device: torch.device, size: int) -> None:
        cuda = device.type == "cuda"
        self.buffers = [torch.empty(size, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
        self.stream: Any = torch.cuda.Stream(device=device) if cuda else None  # type: ignore[no-untyped-call]
        self.events: list[Any] = [None, None]
        self.turn = 0

    def copy(self, fd: int, offset: int, dst: torch.Tensor) -> None:
        """Read ``len(dst)`` bytes at ``offset`` and copy them into ``dst`` (asynchronously on CUDA)."""
        slot = self.turn
        self.turn ^= 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the previous copy out of this buffer is done
        staging = self.buffers[slot][: dst.numel()]
        _pread_into(fd, staging.numpy().data.cast("B"), offset)
        if self.stream is None:
            dst.copy_(staging)
            return
        with torch.cuda.stream(self.stream):
            dst.copy_(staging, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(self.stream)
        self.events[slot] = event

    def drain(self) -> None:
        for event in self.events:
            if event is not None:
                event.synchronize()
        for buf in self.buffers:
            buf.zero_()  # ciphertext only, but leave nothing behind


def load_to_device(
    opened: OpenedFile,
    entries: Sequence[TensorEntry],
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    allocate: Callable[[int], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Decrypt ``entries`` into uint8 tensors on ``device`` (views by dtype are the caller's).

    ``allocate(nbytes)`` makes each destination (default: ``torch.empty`` on ``device``).

    Raises:
        UnsupportedError: the file's suite has no device kernels (AES-256-GCM: use the CPU path).
        KeyAccessError: the key does not cover a requested tensor.
        PayloadError: a chunk fails authentication or the file is truncated.
    """
    p = opened.layout.preamble
    if p.suite is not AEADSuite.CHACHA20_POLY1305:
        raise UnsupportedError(f"device decryption supports chacha20-poly1305 files, not {p.suite.label}")
    chunk_log2 = p.chunk_log2
    keys_host = bytearray(32 * max(1, len(entries)))
    for k, entry in enumerate(entries):
        keys_host[32 * k : 32 * (k + 1)] = opened.keys.tensor_aead_key(entry.index)
    keys = torch.frombuffer(keys_host, dtype=torch.int32).to(device, copy=True).view(-1, 8)
    keys_host[:] = bytes(len(keys_host))
    make = allocate or (lambda n: torch.empty(n, dtype=torch.uint8, device=device))
    outputs = [make(e.nbytes) for e in entries]
    try:
        _copy_ciphertext(opened, entries, outputs, device, progress)
        failures = []
        for k, entry in enumerate(entries):
            count = chunk_count(entry.nbytes, chunk_log2)
            tags = torch.frombuffer(bytearray(opened.tags(entry)), dtype=torch.uint8).to(device)
            computed = poly1305_tags(
                outputs[k], keys[k], opened.chunk_aad(entry), chunk_log2=chunk_log2, n_chunks=count
            )
            failures.append((computed.view(count, TAG_BYTES) != tags.view(count, TAG_BYTES)).any(dim=1))
        # The one host synchronisation of the verify pass: did any chunk of any tensor fail?
        failed: list[bool] = torch.stack([f.any() for f in failures]).tolist() if failures else []
        if any(failed):
            k = failed.index(True)
            first = int(torch.nonzero(failures[k])[0, 0])
            raise PayloadError(f"tensor {entries[k].name!r}: chunk {first} failed authentication")
        for k, entry in enumerate(entries):
            chacha20_xor_(outputs[k], keys[k], chunk_log2=chunk_log2, n_chunks=chunk_count(entry.nbytes, chunk_log2))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except BaseException:
        for out in outputs:
            out.zero_()
        raise
    finally:
        keys.zero_()
    return {e.name: out for e, out in zip(entries, outputs, strict=True)}


def _copy_ciphertext(
    opened: OpenedFile,
    entries: Sequence[TensorEntry],
    outputs: Sequence[torch.Tensor],
    device: torch.device,
    progress: Callable[[int], None] | None,
) -> None:
    """Every tensor's ciphertext into its destination, by R readers in parallel (round-robin pieces)."""
    fd = opened.sealed.fileno()
    pieces = []
    for entry, out in zip(entries, outputs, strict=True):
        start, _ = opened.layout.data_range(entry)
        for a in range(0, entry.nbytes, _STAGE_BYTES):
            b = min(entry.nbytes, a + _STAGE_BYTES)
            pieces.append((start + a, out[a:b]))
    readers = _READERS if device.type == "cuda" else 1
    stagers = [_Stager(device, min(_STAGE_BYTES, max((len(o) for _, o in pieces), default=1))) for _ in range(readers)]
    lock = threading.Lock()

    def run(r: int) -> None:
        for offset, dst in pieces[r::readers]:
            stagers[r].copy(fd, offset, dst)
            if progress is not None:
                with lock:
                    progress(dst.numel())
        stagers[r].drain()

    if readers == 1:
        run(0)
        return
    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="wv-gpu-reader") as pool:
        for future in [pool.submit(run, r) for r in range(readers)]:
            future.result()
