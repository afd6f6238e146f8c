"""Unsealing back to the original bytes, and rewrapping recipients without re-encryption."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

from weightvault.errors import HeaderError, KeyAccessError
from weightvault.files import atomic_file
from weightvault.format.header import HeaderKind, TensorEntry
from weightvault.format.keys import FileKey, derive_header_keys
from weightvault.format.preamble import MAC_BYTES, Preamble
from weightvault.format.recipients import Recipient, Stanza, encode_recipients_region
from weightvault.sealing.fileio import pwrite_all
from weightvault.sealing.reader import KeySource, OpenedFile, SealedFile
from weightvault.sealing.safetensors_source import parse_safetensors_header
from weightvault.sealing.writer import SealOptions, SealResult, recipients_capacity

__all__ = ["RewrapResult", "reseal_file", "rewrap_file", "unseal_file", "unseal_to"]


def _check_source_header(opened: OpenedFile) -> bytes:
    """The exact safetensors header bytes, checked against the authenticated table."""
    table = opened.table
    assert table.safetensors_header is not None
    raw = table.safetensors_header.encode("utf-8")
    data_size = sum(e.nbytes for e in table.tensors)
    _, tensors = parse_safetensors_header(raw, data_size, "sealed source")
    expected = [(e.name, e.dtype, e.shape, e.nbytes) for e in table.tensors]
    actual = [(t.spec.name, t.spec.dtype, t.spec.shape, t.spec.nbytes) for t in tensors]
    if expected != actual:
        raise HeaderError("the stored safetensors header does not match the tensor table")
    return raw


def unseal_to(
    opened: OpenedFile, out_fd: int, progress: Callable[[int], None] | None = None, *, workers: int | None = None
) -> None:
    """Write the original file's bytes to ``out_fd`` (from offset 0), verifying every chunk on the way.

    Runs of chunks are verified and written at their own offsets on ``workers`` threads;
    on failure the caller discards the output (the atomic writers do).

    Raises:
        KeyAccessError: the key is a partial grant.
        PayloadError: a chunk fails authentication.
    """
    if opened.keys.is_partial:
        raise KeyAccessError("unsealing needs the file key, not a partial grant")
    head = b""
    if opened.table.kind is HeaderKind.SAFETENSORS:
        raw = _check_source_header(opened)
        head = struct.pack("<Q", len(raw)) + raw
    # The original's layout: the header, then every tensor's bytes back to back in table order.
    where: dict[int, int] = {}
    cursor = len(head)
    for entry in opened.entries:
        where[entry.index] = cursor
        cursor += entry.nbytes
    pwrite_all(out_fd, memoryview(head), 0)

    def write(entry: TensorEntry, start: int, plain: memoryview) -> None:
        pwrite_all(out_fd, plain, where[entry.index] + start)

    opened.each_verified(write, progress=progress, workers=workers)
    os.ftruncate(out_fd, cursor)
    os.lseek(out_fd, cursor, os.SEEK_SET)


def unseal_file(
    src: Path,
    dst: Path,
    keys: KeySource,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> None:
    """Unseal ``src`` into ``dst`` atomically, on ``workers`` threads: on any failure no output remains."""
    with SealedFile(src) as sealed:
        opened = sealed.unlock(keys)
        with atomic_file(Path(dst), overwrite=overwrite, mode=0o600) as out:
            unseal_to(opened, out.fileno(), progress, workers=workers)
        opened.keys.forget()


def reseal_file(
    src: Path,
    dst: Path,
    keys: KeySource,
    *,
    file_key: FileKey,
    recipients: Sequence[Recipient] = (),
    overwrite: bool = False,
) -> SealResult:
    """Re-encrypt a sealed file under a new file key (hence a new file id) without plaintext on disk.

    The plaintext passes through an anonymous in-memory file (``memfd``), verified
    chunk by chunk on the way out of ``src``; keys released for ``src`` do not open
    ``dst``. Use it after a suspected key exposure, when rewrapping is not enough.

    Raises:
        FormatError / KeyAccessError: ``src`` does not verify or does not open.
        ConfigError: ``dst`` exists and ``overwrite`` is false.
    """
    from weightvault.sealing.writer import seal_blob, seal_safetensors

    with SealedFile(src) as sealed:
        opened = sealed.unlock(keys)
        kind, table = opened.table.kind, opened.table
        fd = os.memfd_create("weightvault-reseal", os.MFD_CLOEXEC)
        try:
            unseal_to(opened, fd)
            opened.keys.forget()
            plain = Path(f"/proc/self/fd/{fd}")
            pre = opened.layout.preamble
            options = SealOptions(pre.suite, pre.chunk_log2, pre.sealed_metadata)
            if kind is HeaderKind.SAFETENSORS:
                return seal_safetensors(
                    plain, Path(dst), file_key=file_key, recipients=recipients, options=options, overwrite=overwrite
                )
            return seal_blob(
                plain,
                Path(dst),
                name=table.tensors[0].name,
                file_key=file_key,
                recipients=recipients,
                options=options,
                overwrite=overwrite,
            )
        finally:
            os.ftruncate(fd, 0)
            os.close(fd)


class RewrapResult:
    """Stanzas after a rewrap, and whether the file had to be rewritten to grow the region."""

    def __init__(self, stanzas: Sequence[Stanza], grew: bool) -> None:
        self.stanzas = tuple(stanzas)
        self.grew = grew


def rewrap_file(
    path: Path,
    keys: KeySource,
    *,
    add: Sequence[Recipient] = (),
    remove: Sequence[str] = (),
    replace_all: bool = False,
) -> RewrapResult:
    """Add, remove or replace recipient stanzas; no data is re-encrypted.

    ``remove`` lists key ids or stanza types to drop. The file is opened and fully
    authenticated with ``keys`` first. The new file is written beside the old one
    and renamed over it (a copy of the bytes, never a re-encryption); only the
    recipients region and, if it must grow, the position of the later regions change.

    Raises:
        KeyAccessError: ``keys`` do not yield the file key.
        ValueError: the result would have no recipient and ``add`` is empty.
    """
    path = Path(path)
    with SealedFile(path) as sealed:
        material = sealed.resolve(keys)
        if not isinstance(material, FileKey):
            raise KeyAccessError("rewrapping needs the file key, not a partial grant")
        sealed.unlock(material)
        p = sealed.preamble
        context = p.stanza_context()
        keep = (
            []
            if replace_all
            else [s for s in sealed.recipients.stanzas if s.kid not in remove and s.type not in remove]
        )
        stanzas = keep + [r.wrap(material, context) for r in add]
        if not stanzas:
            raise ValueError("refusing to remove the last recipient")
        rmac = derive_header_keys(material.header_secret(p.file_id)).recipients_mac_key
        capacity = recipients_capacity(stanzas, p.recipients_len)
        grew = capacity != p.recipients_len
        new = Preamble(
            suite=p.suite,
            flags=p.flags,
            file_id=p.file_id,
            key_commitment=p.key_commitment,
            chunk_log2=p.chunk_log2,
            header_len=p.header_len,
            tags_len=p.tags_len,
            data_len=p.data_len,
            recipients_len=capacity,
        )
        region = encode_recipients_region(stanzas, capacity, rmac, new.recipients_mac_context())
        with atomic_file(path, overwrite=True, mode=0o644) as out:
            out.write(new.to_bytes())
            out.write(region)
            out.flush()
            fd_out = out.fileno()
            _copy(
                sealed.fileno(), p.header_offset, fd_out, new.header_offset, p.mac_offset + MAC_BYTES - p.header_offset
            )
            _copy(sealed.fileno(), p.data_offset, fd_out, new.data_offset, p.data_len)
            os.ftruncate(fd_out, new.file_size)
            out.seek(new.file_size)
    return RewrapResult(stanzas, grew)


def _copy(src_fd: int, src_off: int, dst_fd: int, dst_off: int, n: int) -> None:
    """Copy ``n`` bytes between files with copy_file_range (reflinks where the filesystem can)."""
    done = 0
    while done < n:
        step = os.copy_file_range(src_fd, dst_fd, n - done, src_off + done, dst_off + done)
        if step == 0:
            raise HeaderError("file shrank while it was being rewrapped")
        done += step
