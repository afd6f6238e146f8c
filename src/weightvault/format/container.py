"""Whole-file structure: where each region lies and how the parts bind together.

File layout::

    [0, 128)            preamble                      (weightvault.format.preamble)
    [128, 128+R)        recipients region             (weightvault.format.recipients)
    [.., +H)            header: JSON, or AEAD(K_meta) of it when metadata is sealed
    [.., +T)            tag table: 16-byte tags, tensor order then chunk order
    [.., +32)           header MAC = HMAC-SHA256(K_mac, core ‖ header ‖ tags)
    [.., D)             zero padding to the next 4 KiB boundary D
    [D, D+L)            data: each tensor's ciphertext, same length as its plaintext,
                        4 KiB aligned, zero bytes between tensors; the file ends at D+L

``core`` is bytes [0, 112) of the preamble. The header digest
``SHA-256(core ‖ header)`` (stored header bytes) enters every chunk's associated
data. This module is pure: it computes offsets and checks consistency, and the
code around it does the reading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from weightvault.crypto.aead import TAG_BYTES
from weightvault.errors import HeaderError
from weightvault.format.dtypes import DType
from weightvault.format.header import HeaderTable, TensorEntry, canonical_offsets, nbytes_of
from weightvault.format.preamble import Preamble
from weightvault.format.stream import chunk_count

__all__ = ["SealedLayout", "TensorEntry", "TensorSpec", "header_digest", "plan_tensors"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor to be sealed: name, dtype and shape, before offsets are assigned."""

    name: str
    dtype: DType
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.shape, self.dtype)


def plan_tensors(specs: Sequence[TensorSpec]) -> tuple[list[int], int]:
    """Assign canonical data-area offsets; returns (offsets, data_len)."""
    return canonical_offsets([s.nbytes for s in specs])


def header_digest(core: bytes, header: bytes | memoryview) -> bytes:
    """SHA-256 over the authenticated core and the stored header bytes."""
    h = hashlib.sha256(core)
    h.update(header)
    return h.digest()


@dataclass(frozen=True, slots=True)
class SealedLayout:
    """A preamble and the header table it was checked against.

    Invariant: the table's data length, tag count and chunk size agree with the
    preamble, so every offset computed from this object lies inside the file.
    """

    preamble: Preamble
    table: HeaderTable
    tag_starts: tuple[int, ...]

    @classmethod
    def check(cls, preamble: Preamble, table: HeaderTable) -> SealedLayout:
        """Cross-check a preamble and a table.

        Raises:
            HeaderError: the table's sizes disagree with the preamble.
        """
        if table.data_len != preamble.data_len:
            raise HeaderError(f"data length {preamble.data_len} does not match the tensor table ({table.data_len})")
        counts = [chunk_count(t.nbytes, preamble.chunk_log2) for t in table.tensors]
        if TAG_BYTES * sum(counts) != preamble.tags_len:
            raise HeaderError("tag table length does not match the tensor table")
        starts = (0, *accumulate(counts))[:-1] if counts else ()
        return cls(preamble, table, tuple(starts))

    def chunks(self, entry: TensorEntry) -> int:
        return chunk_count(entry.nbytes, self.preamble.chunk_log2)

    def tag_range(self, entry: TensorEntry) -> tuple[int, int]:
        """Byte range of ``entry``'s tags within the tag table."""
        first = self.tag_starts[entry.index]
        return first * TAG_BYTES, (first + self.chunks(entry)) * TAG_BYTES

    def data_range(self, entry: TensorEntry) -> tuple[int, int]:
        """Absolute file offsets [start, stop) of ``entry``'s ciphertext."""
        start = self.preamble.data_offset + entry.offset
        return start, start + entry.nbytes

    def gaps(self) -> list[tuple[int, int]]:
        """Absolute file ranges that must be zero: padding before D and between tensors."""
        p = self.preamble
        out = [(p.mac_offset + 32, p.data_offset)]
        end = 0
        for entry in self.table.tensors:
            out.append((p.data_offset + end, p.data_offset + entry.offset))
            end = entry.offset + entry.nbytes
        return [(a, b) for a, b in out if b > a]
