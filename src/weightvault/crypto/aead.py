"""AEAD suites of sealed format v1: AES-256-GCM and ChaCha20-Poly1305.

Both come from pyca/cryptography. :class:`ChunkCipher` is a typed view of the
two pyca classes, used by the chunk stream in :mod:`weightvault.format.stream`,
which is the only place that builds nonces for bulk data.

:func:`seal_single_use` and :func:`open_single_use` use the all-zero nonce. That
is safe only because each of their keys encrypts exactly one message: every
such key is derived with HKDF from a fresh 256-bit salt or file id, and the
call sites document why the key is single-use.
"""

from __future__ import annotations

import enum
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "AEADSuite",
    "ChunkCipher",
    "InvalidTag",
    "chunk_cipher",
    "open_single_use",
    "seal_single_use",
]

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
_ZERO_NONCE: Final = bytes(NONCE_BYTES)


class AEADSuite(enum.IntEnum):
    """AEAD suite identifiers, as stored in the sealed file preamble."""

    AES_256_GCM = 1
    CHACHA20_POLY1305 = 2

    @property
    def label(self) -> str:
        """The suite's name on the command line and in JSON output."""
        return _LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> AEADSuite:
        """Parse a command-line label such as ``aes-256-gcm``."""
        for suite, name in _LABELS.items():
            if name == label:
                return suite
        raise ValueError(f"unknown AEAD suite {label!r}")


_LABELS: Final = {
    AEADSuite.AES_256_GCM: "aes-256-gcm",
    AEADSuite.CHACHA20_POLY1305: "chacha20-poly1305",
}


class ChunkCipher(Protocol):
    """The subset of pyca's AESGCM and ChaCha20Poly1305 used for bulk data."""

    def encrypt_into(
        self, nonce: bytes, data: bytes | bytearray | memoryview, associated_data: bytes, buf: bytearray | memoryview
    ) -> int: ...

    def decrypt_into(
        self, nonce: bytes, data: bytes | bytearray | memoryview, associated_data: bytes, buf: bytearray | memoryview
    ) -> int: ...

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


def chunk_cipher(suite: AEADSuite, key: bytes) -> ChunkCipher:
    """Return the pyca AEAD object for ``suite`` keyed with the 32-byte ``key``."""
    if len(key) != KEY_BYTES:
        raise ValueError("AEAD keys are 32 bytes")
    if suite is AEADSuite.AES_256_GCM:
        return AESGCM(key)
    if suite is AEADSuite.CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown suite {suite!r}")


def seal_single_use(suite: AEADSuite, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt one message under a key that is never used again; returns ciphertext ‖ tag."""
    return chunk_cipher(suite, key).encrypt(_ZERO_NONCE, plaintext, aad)


def open_single_use(suite: AEADSuite, key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt a message made by :func:`seal_single_use`; raises :class:`InvalidTag` on failure."""
    return chunk_cipher(suite, key).decrypt(_ZERO_NONCE, ciphertext, aad)
