"""Positional reads and writes of whole buffers, and zeroing buffers that held plaintext.

The sealer, the reader, unsealing and the device pipeline all move runs of chunks
between files and buffers from several threads at once, each at its own offset, so
they use ``preadv``/``pwrite`` (no shared file position) and loop until the whole
buffer has moved.
"""

from __future__ import annotations

import os
from typing import Final

from weightvault.errors import PayloadError

__all__ = ["pread_exact", "pwrite_all", "zero_fill"]

_ZEROS: Final = bytes(1 << 20)


def pread_exact(fd: int, buf: memoryview, offset: int, short: str) -> None:
    """Fill ``buf`` from ``fd`` at ``offset``; raises ``PayloadError(short)`` if the file ends first."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise PayloadError(short)
        done += n


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` to ``fd`` at ``offset``."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def zero_fill(buf: memoryview) -> None:
    """Zero a buffer of any size without allocating a same-sized bytes object."""
    for a in range(0, len(buf), len(_ZEROS)):
        b = min(len(buf), a + len(_ZEROS))
        buf[a:b] = _ZEROS[: b - a]
