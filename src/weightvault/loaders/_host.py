"""Host buffers for decrypted tensors.

Large tensors get their own anonymous memory mapping advised for transparent
huge pages. Writing to fresh 4 KiB pages costs a page fault per page, which on
virtual machines dominates the cost of loading; 2 MiB pages cut the faults 512
times. Each buffer has 16 bytes of slack after the tensor, which the in-place
decryption borrows for the last chunk's tag.
"""

from __future__ import annotations

import mmap
from typing import Final

from weightvault.crypto.aead import TAG_BYTES

__all__ = ["HUGE_THRESHOLD", "host_buffer"]

HUGE_THRESHOLD: Final = 2 << 20


def host_buffer(nbytes: int) -> mmap.mmap | bytearray:
    """A zero-initialised writable buffer of ``nbytes`` + 16 bytes that owns its memory."""
    size = nbytes + TAG_BYTES
    if nbytes >= HUGE_THRESHOLD and hasattr(mmap, "MAP_ANONYMOUS"):
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            region.madvise(mmap.MADV_HUGEPAGE)
        return region
    return bytearray(size)
