"""Host buffers for decrypted tensors.

Large tensors get their own anonymous memory mapping, advised for transparent huge
pages where that pays. Writing to fresh 4 KiB pages costs a page fault per page,
which dominates the cost of loading; 2 MiB pages cut the faults 512 times (measured:
second load in a process 5.8 against 2.4 GB/s with AES-256-GCM).

The exception is a virtual machine whose balloon device reports free pages to the
host (virtio-balloon ``VIRTIO_BALLOON_F_REPORTING``, e.g. Firecracker): the host
drops free memory in 2 MiB blocks, so every huge-page fault waits for the host to
back a whole block again (measured first touch: 0.4-0.7 GB/s against 1.8-2.0 GB/s
with 4 KiB pages). There huge pages are not requested. ``WEIGHTVAULT_HUGEPAGES``
(``auto``, ``1``, ``0``) overrides the choice: the one environment variable a library
module reads (docs/adr/0008), because it tunes how a process uses memory for every
caller, CLI or Python, like ``OMP_NUM_THREADS``, and is read in one function below.

Each buffer has 16 bytes of slack after the tensor, which the in-place decryption
borrows for the last chunk's tag.
"""

from __future__ import annotations

import functools
import glob
import mmap
import os
from typing import Final

from weightvault.crypto.aead import TAG_BYTES
from weightvault.errors import ConfigError

__all__ = ["HUGE_THRESHOLD", "host_buffer", "huge_pages_pay"]

HUGE_THRESHOLD: Final = 2 << 20


def host_buffer(nbytes: int) -> mmap.mmap | bytearray:
    """A zero-initialised writable buffer of ``nbytes`` + 16 bytes that owns its memory."""
    size = nbytes + TAG_BYTES
    if nbytes >= HUGE_THRESHOLD and hasattr(mmap, "MAP_ANONYMOUS"):
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE") and huge_pages_pay():
            region.madvise(mmap.MADV_HUGEPAGE)
        return region
    return bytearray(size)


_BALLOON_FEATURES: Final = "/sys/bus/virtio/drivers/virtio_balloon/virtio*/features"
_F_REPORTING: Final = 5  # VIRTIO_BALLOON_F_REPORTING, virtio spec 5.5.3


def huge_pages_pay() -> bool:
    """Whether to advise huge pages for tensor buffers (see the module docstring).

    Raises:
        ConfigError: ``WEIGHTVAULT_HUGEPAGES`` is set to something other than auto, 1 or 0.
    """
    setting = os.environ.get("WEIGHTVAULT_HUGEPAGES", "auto").strip().lower()
    if setting in {"1", "0"}:
        return setting == "1"
    if setting != "auto":
        raise ConfigError(f"WEIGHTVAULT_HUGEPAGES must be auto, 1 or 0, not {setting!r}")
    return not _host_reclaims_free_pages()


@functools.cache
def _host_reclaims_free_pages() -> bool:
    """True when a virtio balloon negotiated free page reporting (its sysfs feature bit string)."""
    for path in glob.glob(_BALLOON_FEATURES):
        try:
            with open(path, encoding="ascii") as handle:
                bits = handle.read().strip()
        except OSError:
            continue
        if len(bits) > _F_REPORTING and bits[_F_REPORTING] == "1":
            return True
    return False
