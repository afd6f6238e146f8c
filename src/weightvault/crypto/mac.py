"""HMAC-SHA256 from pyca/cryptography, with constant-time verification."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

__all__ = ["InvalidSignature", "hmac_sha256", "verify_hmac_sha256"]


def _hmac(key: bytes, parts: Iterable[bytes | memoryview]) -> hmac.HMAC:
    if len(key) < 32:
        raise ValueError("HMAC keys are at least 32 bytes")
    h = hmac.HMAC(key, hashes.SHA256())
    for part in parts:
        h.update(part)
    return h


def hmac_sha256(key: bytes, parts: Iterable[bytes | memoryview]) -> bytes:
    """HMAC-SHA256 over the concatenation of ``parts``."""
    return _hmac(key, parts).finalize()


def verify_hmac_sha256(key: bytes, parts: Iterable[bytes | memoryview], tag: bytes) -> None:
    """Check a tag in constant time; raises :class:`InvalidSignature` on mismatch."""
    _hmac(key, parts).verify(tag)
