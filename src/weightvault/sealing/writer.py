"""Sealing: plain safetensors files and other files into sealed format v2.

Order of operations (see docs/format.md):

1. draw a fresh file id; derive HS, the key commitment, K_mac, K_meta and every
   tensor secret from the file key;
2. wrap the file key for each recipient, bound to the stanza context;
3. write preamble, recipients region and header to a temporary file;
4. encrypt every chunk, writing ciphertext at its final offset and keeping tags;
5. write the tag table and the header MAC, fsync, and rename into place.

Step 4 runs on every core (``SealOptions.workers``): each worker reads and encrypts
runs of whole chunks (pyca/cryptography releases the GIL inside its AEAD calls), and
the calling thread writes each finished run at its offset. The output is fsynced once,
at the end.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from weightvault.crypto.aead import TAG_BYTES, AEADSuite, seal_single_use
from weightvault.crypto.mac import hmac_sha256
from weightvault.crypto.secret import random_bytes
from weightvault.files import atomic_file
from weightvault.format.container import TensorSpec, header_digest, plan_tensors
from weightvault.format.dtypes import DTYPES
from weightvault.format.header import HeaderKind, HeaderTable, TensorEntry
from weightvault.format.keys import FileKey, derive_header_keys, tensor_commitment, unlock
from weightvault.format.preamble import (
    DEFAULT_CHUNK_LOG2,
    FILE_ID_BYTES,
    MAC_BYTES,
    PREAMBLE_BYTES,
    Flags,
    Preamble,
)
from weightvault.format.recipients import Recipient, Stanza, encode_recipients_region, region_bytes_needed
from weightvault.format.stream import TensorStream, chunk_count
from weightvault.format.wire import ALIGNMENT, align_up
from weightvault.sealing.fileio import pread_exact, pwrite_all, zero_fill
from weightvault.sealing.safetensors_source import read_safetensors_source
from weightvault.sealing.workers import resolve_workers

__all__ = [
    "DEFAULT_RECIPIENTS_BYTES",
    "Progress",
    "SealOptions",
    "SealResult",
    "recipients_capacity",
    "seal_blob",
    "seal_safetensors",
]

#: With the preamble, the default recipients region ends on an 8 KiB boundary; room for
#: about four hybrid post-quantum stanzas. It grows (without re-encryption) when needed.
DEFAULT_RECIPIENTS_BYTES: Final = 8192 - PREAMBLE_BYTES
_BLOCK_BYTES: Final = 8 << 20
_SOURCE_CHANGED: Final = "source file changed size while it was being sealed"

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class SealOptions:
    """How to seal: suite, chunk size, and whether the header is encrypted."""

    suite: AEADSuite = AEADSuite.AES_256_GCM
    chunk_log2: int = DEFAULT_CHUNK_LOG2
    sealed_metadata: bool = False
    #: Encrypting threads; None: one per usable core (the output is fsynced once, at the end).
    workers: int | None = None


DEFAULT_OPTIONS: Final = SealOptions()


@dataclass(frozen=True, slots=True)
class SealResult:
    """What sealing produced."""

    path: Path
    file_id: bytes
    header_mac: bytes
    tensors: int
    data_bytes: int


def recipients_capacity(stanzas: Sequence[Stanza], minimum: int = DEFAULT_RECIPIENTS_BYTES) -> int:
    """Region size for ``stanzas``: at least ``minimum``, else grown so the region ends on 4 KiB."""
    need = region_bytes_needed(stanzas)
    if need <= minimum:
        return minimum
    return align_up(PREAMBLE_BYTES + need, ALIGNMENT) - PREAMBLE_BYTES


@dataclass(frozen=True, slots=True)
class _Source:
    """Where tensor ``i``'s plaintext lies in the source file."""

    spec: TensorSpec
    offset: int


def seal_safetensors(
    src: Path,
    dst: Path,
    *,
    file_key: FileKey,
    recipients: Sequence[Recipient] = (),
    options: SealOptions = DEFAULT_OPTIONS,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SealResult:
    """Seal a ``.safetensors`` file; unsealing gives back the identical bytes.

    Raises:
        HeaderError: ``src`` is not a well-formed safetensors file.
        UnsupportedError: ``src`` uses a dtype format v1 does not support.
        ConfigError: ``dst`` exists and ``overwrite`` is false.
    """
    source = read_safetensors_source(Path(src))
    sources = [_Source(t.spec, source.data_start + t.begin) for t in source.tensors]
    return _seal(
        src=Path(src),
        dst=Path(dst),
        kind=HeaderKind.SAFETENSORS,
        sources=sources,
        metadata=source.metadata,
        safetensors_header=source.header_text,
        file_key=file_key,
        recipients=recipients,
        options=options,
        overwrite=overwrite,
        progress=progress,
    )


def seal_blob(
    src: Path,
    dst: Path,
    *,
    name: str,
    file_key: FileKey,
    recipients: Sequence[Recipient] = (),
    options: SealOptions = DEFAULT_OPTIONS,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SealResult:
    """Seal any file (a tokenizer, a config) as a single opaque byte vector called ``name``."""
    size = Path(src).stat().st_size
    sources = [_Source(TensorSpec(name, DTYPES["U8"], (size,)), 0)]
    return _seal(
        src=Path(src),
        dst=Path(dst),
        kind=HeaderKind.BLOB,
        sources=sources,
        metadata={},
        safetensors_header=None,
        file_key=file_key,
        recipients=recipients,
        options=options,
        overwrite=overwrite,
        progress=progress,
    )


def _seal(
    *,
    src: Path,
    dst: Path,
    kind: HeaderKind,
    sources: Sequence[_Source],
    metadata: dict[str, str],
    safetensors_header: str | None,
    file_key: FileKey,
    recipients: Sequence[Recipient],
    options: SealOptions,
    overwrite: bool,
    progress: Progress | None,
    _file_id: bytes | None = None,
) -> SealResult:
    # ``_file_id`` exists only for the known-answer vector generator (tests/vectors); every
    # other caller gets a fresh random id, which is what keeps tensor keys unique per seal.
    file_id = random_bytes(FILE_ID_BYTES) if _file_id is None else _file_id
    header_secret = file_key.header_secret(file_id)
    hkeys = derive_header_keys(header_secret)
    grant = file_key.tensor_keys(file_id, range(len(sources)))
    unlocked = unlock(grant, file_id, hkeys.commitment)
    specs = [s.spec for s in sources]
    offsets, data_len = plan_tensors(specs)
    entries = tuple(
        TensorEntry(
            index=i,
            name=spec.name,
            dtype=spec.dtype,
            shape=spec.shape,
            offset=offsets[i],
            nbytes=spec.nbytes,
            key_commitment=tensor_commitment(unlocked.tensor_secret(i)),
        )
        for i, spec in enumerate(specs)
    )
    table = HeaderTable(kind=kind, tensors=entries, metadata=metadata, safetensors_header=safetensors_header)
    header_json = table.to_bytes()
    chunk_total = sum(max(1, -(-e.nbytes >> options.chunk_log2)) for e in entries)
    flags = Flags.SEALED_METADATA if options.sealed_metadata else Flags.NONE
    header_len = len(header_json) + (TAG_BYTES if options.sealed_metadata else 0)

    def preamble_with(recipients_len: int) -> Preamble:
        return Preamble(
            suite=options.suite,
            flags=flags,
            file_id=file_id,
            key_commitment=hkeys.commitment,
            chunk_log2=options.chunk_log2,
            header_len=header_len,
            tags_len=TAG_BYTES * chunk_total,
            data_len=data_len,
            recipients_len=recipients_len,
        )

    context = preamble_with(DEFAULT_RECIPIENTS_BYTES).stanza_context()
    stanzas = [r.wrap(file_key, context) for r in recipients]
    preamble = preamble_with(recipients_capacity(stanzas))
    core = preamble.authenticated_core()
    if options.sealed_metadata:
        header_stored = seal_single_use(options.suite, hkeys.metadata_key, header_json, core)
    else:
        header_stored = header_json
    digest = header_digest(core, header_stored)

    tags = bytearray(preamble.tags_len)
    with atomic_file(dst, overwrite=overwrite) as out, open(src, "rb") as inp:
        out.write(preamble.to_bytes())
        out.write(
            encode_recipients_region(
                stanzas, preamble.recipients_len, hkeys.recipients_mac_key, preamble.recipients_mac_context()
            )
        )
        out.write(header_stored)
        out.truncate(preamble.file_size)
        tag_cursor = 0
        streams = []
        for entry in entries:
            streams.append(
                TensorStream.create(
                    options.suite,
                    unlocked.tensor_aead_key(entry.index),
                    file_id=file_id,
                    header_digest=digest,
                    tensor_index=entry.index,
                    name=entry.name,
                    nbytes=entry.nbytes,
                    chunk_log2=options.chunk_log2,
                )
            )
        workers = resolve_workers(options.workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wv-seal") as pool:
            tag_cursor = _encrypt_all(
                src_fd=inp.fileno(),
                dst_fd=out.fileno(),
                preamble=preamble,
                entries=entries,
                sources=sources,
                streams=streams,
                tags=tags,
                pool=pool,
                workers=workers,
                progress=progress,
            )
        assert tag_cursor == len(tags)
        mac = hmac_sha256(hkeys.mac_key, [core, header_stored, bytes(tags)])
        os.pwrite(out.fileno(), bytes(tags) + mac, preamble.tags_offset)
        assert len(mac) == MAC_BYTES
    unlocked.forget()
    grant.wipe()
    return SealResult(Path(dst), file_id, mac, len(entries), data_len)


def _encrypt_all(
    *,
    src_fd: int,
    dst_fd: int,
    preamble: Preamble,
    entries: Sequence[TensorEntry],
    sources: Sequence[_Source],
    streams: Sequence[TensorStream],
    tags: bytearray,
    pool: ThreadPoolExecutor,
    workers: int,
    progress: Progress | None,
) -> int:
    """Encrypt every tensor on the pool's threads; returns the number of tag bytes written.

    Each task takes a free pair of buffers, reads a run of whole chunks of one tensor
    into the first, encrypts it chunk by chunk into the second (pyca releases the GIL
    there) and stores the chunks' tags at their places in the tag table. The calling
    thread alone writes each finished run at its offset and frees its pair: writers of
    one file serialise on its inode lock in the kernel, and with several of them the
    waiting costs more system time than the encryption saves. Runs are independent, so
    threads share nothing but the tag table, where each writes only its own slots. On
    failure the caller's atomic writer discards the output.
    """
    chunk = preamble.chunk_size
    block = max(chunk, _BLOCK_BYTES // chunk * chunk)
    first_tag = 0
    work = []
    for i, e in enumerate(entries):
        for start in range(0, max(e.nbytes, 1), block):
            work.append((i, start, min(e.nbytes, start + block), first_tag + (start >> preamble.chunk_log2)))
        first_tag += chunk_count(e.nbytes, preamble.chunk_log2)

    # Two pairs of buffers per thread, so that threads encrypt while the caller writes;
    # reused run after run and zeroed at the end. A pair is held by a running task or
    # by a finished run waiting to be written, and the loop below frees the latter.
    free: queue.SimpleQueue[tuple[bytearray, bytearray]] = queue.SimpleQueue()
    pairs = [(bytearray(block), bytearray(block + TAG_BYTES)) for _ in range(2 * workers)]
    for pair in pairs:
        free.put(pair)

    def encrypt(i: int, a: int, b: int, tag_index: int) -> tuple[tuple[bytearray, bytearray], int, int]:
        pair = free.get()
        try:
            plain, out = memoryview(pair[0]), memoryview(pair[1])
            pread_exact(src_fd, plain[: b - a], sources[i].offset + a, _SOURCE_CHANGED)
            stream = streams[i]
            at = tag_index * TAG_BYTES
            for j in range(a >> preamble.chunk_log2, max(1, -(-b >> preamble.chunk_log2))):
                c0, c1 = stream.chunk_bounds(j)
                lo, hi = c0 - a, c1 - a
                stream.encrypt_chunk_into(j, plain[lo:hi], out[lo : hi + TAG_BYTES])
                tags[at : at + TAG_BYTES] = out[hi : hi + TAG_BYTES]
                at += TAG_BYTES
        except BaseException:
            free.put(pair)
            raise
        return pair, b - a, preamble.data_offset + entries[i].offset + a

    futures = [pool.submit(encrypt, *item) for item in work]
    try:
        for future in as_completed(futures):
            pair, done, offset = future.result()
            pwrite_all(dst_fd, memoryview(pair[1])[:done], offset)
            free.put(pair)
            if progress is not None:
                progress(done)
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise
    finally:
        for plain_buf, _ in pairs:
            zero_fill(memoryview(plain_buf))
    return first_tag * TAG_BYTES
