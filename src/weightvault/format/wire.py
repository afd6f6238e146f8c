"""The sealed format's wire limits and alignment (strict JSON itself is :mod:`weightvault.encoding`).

Every limit is checked before any allocation that depends on it.
"""

from __future__ import annotations

from typing import Final

from weightvault.errors import HeaderError

__all__ = [
    "ALIGNMENT",
    "MAX_HEADER_BYTES",
    "MAX_JSON_INT",
    "MAX_RANK",
    "MAX_RECIPIENTS_BYTES",
    "MAX_STANZAS",
    "MAX_TENSORS",
    "align_up",
    "require",
]

#: Data-area alignment: every tensor starts on a 4 KiB boundary (O_DIRECT, GDS, mmap).
ALIGNMENT: Final = 4096
#: Header cap, as in safetensors.
MAX_HEADER_BYTES: Final = 100_000_000
MAX_TENSORS: Final = 1_000_000
MAX_RANK: Final = 32
#: The recipients region holds a handful of small stanzas; 1 MiB bounds a hostile file.
MAX_RECIPIENTS_BYTES: Final = 1 << 20
MAX_STANZAS: Final = 64
#: Integers stay exactly representable as IEEE doubles, as RFC 8785 requires.
MAX_JSON_INT: Final = (1 << 53) - 1


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    """Round ``n`` up to a multiple of ``alignment`` (a power of two)."""
    return (n + alignment - 1) & ~(alignment - 1)


def require(condition: bool, message: str, error: type[Exception] = HeaderError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds."""
    if not condition:
        raise error(message)
