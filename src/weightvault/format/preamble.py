"""The fixed 128-byte preamble of a sealed file.

Layout (all integers little-endian)::

    off  size  field
    0    8     magic "\\x89WVLT\\r\\n\\x1a"
    8    2     format_version = 2
    10   2     suite: 1 AES-256-GCM, 2 ChaCha20-Poly1305
    12   4     flags: bit 0 sealed_metadata; every other bit must be 0
    16   32    file_id (random, fresh per seal; HKDF salt)
    48   32    key_commitment
    80   4     chunk_log2, 16..24
    84   4     reserved, must be 0
    88   8     header_len H
    96   8     tags_len T
    104  8     data_len L
    112  8     recipients_len R
    120  8     reserved, must be 0

Bytes [0, 112) are the *authenticated core*: the header MAC and the header digest
bound into every chunk cover them. ``recipients_len`` and the reserved word at
120 stay outside the core, so the recipients region can grow or shrink without
touching any tag; the recipients MAC covers all 128 bytes instead (its key comes
from the file key too, so only a key holder can move the header).

Invariant: a :class:`Preamble` only exists with every field in range.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from weightvault.crypto.aead import AEADSuite
from weightvault.errors import HeaderError, UnsupportedError
from weightvault.format.wire import (
    ALIGNMENT,
    MAX_HEADER_BYTES,
    MAX_JSON_INT,
    MAX_RECIPIENTS_BYTES,
    MAX_TENSORS,
    align_up,
)

__all__ = [
    "AUTHENTICATED_CORE_BYTES",
    "CHUNK_LOG2_RANGE",
    "DEFAULT_CHUNK_LOG2",
    "FILE_ID_BYTES",
    "FORMAT_VERSION",
    "MAC_BYTES",
    "MAGIC",
    "PREAMBLE_BYTES",
    "STANZA_CONTEXT_BYTES",
    "Flags",
    "Preamble",
]

MAGIC: Final = b"\x89WVLT\r\n\x1a"
FORMAT_VERSION: Final = 2
#: Version 1 left ``recipients_len`` unauthenticated (fixed in 2, never released).
_RETIRED_VERSIONS: Final = frozenset({1})
PREAMBLE_BYTES: Final = 128
AUTHENTICATED_CORE_BYTES: Final = 112
#: Recipient stanzas bind bytes [0, 80): magic, version, suite, flags, file id, commitment.
STANZA_CONTEXT_BYTES: Final = 80
FILE_ID_BYTES: Final = 32
COMMITMENT_BYTES: Final = 32
MAC_BYTES: Final = 32
DEFAULT_CHUNK_LOG2: Final = 20
CHUNK_LOG2_RANGE: Final = range(16, 25)
_TAG_BYTES: Final = 16

_STRUCT: Final = struct.Struct("<8sHHI32s32sII5Q")
assert _STRUCT.size == PREAMBLE_BYTES


class Flags(enum.IntFlag):
    """Preamble flag bits."""

    NONE = 0
    SEALED_METADATA = 1


_KNOWN_FLAGS: Final = int(Flags.SEALED_METADATA)


@dataclass(frozen=True, slots=True)
class Preamble:
    """The parsed, range-checked preamble."""

    suite: AEADSuite
    flags: Flags
    file_id: bytes
    key_commitment: bytes
    chunk_log2: int
    header_len: int
    tags_len: int
    data_len: int
    recipients_len: int

    def __post_init__(self) -> None:
        if len(self.file_id) != FILE_ID_BYTES or len(self.key_commitment) != COMMITMENT_BYTES:
            raise ValueError("file_id and key_commitment are 32 bytes")
        if self.file_id == bytes(FILE_ID_BYTES):
            raise HeaderError("all-zero file id (broken random source)")
        if self.chunk_log2 not in CHUNK_LOG2_RANGE:
            raise HeaderError(f"chunk_log2 {self.chunk_log2} outside 16..24")
        if not 2 <= self.header_len <= MAX_HEADER_BYTES:
            raise HeaderError(f"header length {self.header_len} outside 2..{MAX_HEADER_BYTES}")
        if not 0 <= self.data_len <= MAX_JSON_INT:
            raise HeaderError("data length out of range")
        # Each tensor has at least one chunk and at most one partial chunk, so the
        # tag count is bounded by the tensor cap plus the data area in whole chunks.
        # A file of no tensors (a valid safetensors file can have none) has no tags.
        max_chunks = MAX_TENSORS + (self.data_len >> self.chunk_log2)
        if self.tags_len % _TAG_BYTES or not 0 <= self.tags_len <= _TAG_BYTES * max_chunks:
            raise HeaderError(f"tag table length {self.tags_len} is not a plausible multiple of 16")
        if not 4 <= self.recipients_len <= MAX_RECIPIENTS_BYTES:
            raise HeaderError(f"recipients region length {self.recipients_len} outside 4..{MAX_RECIPIENTS_BYTES}")

    @property
    def chunk_size(self) -> int:
        """Plaintext bytes per chunk (the last chunk of a tensor may be shorter)."""
        return 1 << self.chunk_log2

    @property
    def sealed_metadata(self) -> bool:
        """Whether the header is encrypted."""
        return bool(self.flags & Flags.SEALED_METADATA)

    @property
    def recipients_offset(self) -> int:
        return PREAMBLE_BYTES

    @property
    def header_offset(self) -> int:
        return PREAMBLE_BYTES + self.recipients_len

    @property
    def tags_offset(self) -> int:
        return self.header_offset + self.header_len

    @property
    def mac_offset(self) -> int:
        return self.tags_offset + self.tags_len

    @property
    def data_offset(self) -> int:
        """Start of the data area: the first 4 KiB boundary after the header MAC."""
        return align_up(self.mac_offset + MAC_BYTES, ALIGNMENT)

    @property
    def file_size(self) -> int:
        """The exact size a well-formed file with this preamble has."""
        return self.data_offset + self.data_len

    def to_bytes(self) -> bytes:
        """Serialise to exactly 128 bytes."""
        return _STRUCT.pack(
            MAGIC,
            FORMAT_VERSION,
            int(self.suite),
            int(self.flags),
            self.file_id,
            self.key_commitment,
            self.chunk_log2,
            0,
            self.header_len,
            self.tags_len,
            self.data_len,
            self.recipients_len,
            0,
        )

    def authenticated_core(self) -> bytes:
        """Bytes [0, 112): what the header MAC and header digest cover."""
        return self.to_bytes()[:AUTHENTICATED_CORE_BYTES]

    def recipients_mac_context(self) -> bytes:
        """All 128 bytes: what the recipients MAC binds besides the stanzas themselves.

        Binding ``recipients_len`` here is what fixes the position of the header,
        tag table and data area: without it, a region padded with zeros would move
        them all and still verify.
        """
        return self.to_bytes()

    def stanza_context(self) -> bytes:
        """Bytes [0, 80): what every recipient stanza is bound to."""
        return self.to_bytes()[:STANZA_CONTEXT_BYTES]

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Preamble:
        """Parse and range-check a preamble.

        Raises:
            HeaderError: wrong magic, short input, nonzero reserved fields, or a field out of range.
            UnsupportedError: an unknown version, suite or flag bit.
        """
        if len(data) < PREAMBLE_BYTES:
            raise HeaderError("file is shorter than the 128-byte preamble")
        (
            magic,
            version,
            suite,
            flags,
            file_id,
            commitment,
            chunk_log2,
            reserved1,
            header_len,
            tags_len,
            data_len,
            recipients_len,
            reserved2,
        ) = _STRUCT.unpack(bytes(data[:PREAMBLE_BYTES]))
        if magic != MAGIC:
            raise HeaderError("not a weightvault sealed file (bad magic)")
        if version in _RETIRED_VERSIONS:
            raise UnsupportedError(
                f"format version {version} is no longer read: its layout was not fully authenticated; "
                "unseal it with the weightvault release that wrote it and seal it again"
            )
        if version != FORMAT_VERSION:
            raise UnsupportedError(f"unsupported format version {version}")
        if suite not in AEADSuite._value2member_map_:
            raise UnsupportedError(f"unsupported AEAD suite {suite}")
        if flags & ~_KNOWN_FLAGS:
            raise UnsupportedError(f"unknown flag bits {flags & ~_KNOWN_FLAGS:#x}")
        if reserved1 or reserved2:
            raise HeaderError("nonzero reserved preamble field")
        return cls(
            suite=AEADSuite(suite),
            flags=Flags(flags),
            file_id=file_id,
            key_commitment=commitment,
            chunk_log2=chunk_log2,
            header_len=header_len,
            tags_len=tags_len,
            data_len=data_len,
            recipients_len=recipients_len,
        )
