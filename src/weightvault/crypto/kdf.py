"""Key derivation: HKDF-SHA256 (RFC 5869) and scrypt (RFC 7914), from pyca/cryptography."""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["SCRYPT_MAX_LOG_N", "hkdf_expand", "hkdf_extract", "scrypt"]

#: scrypt work factors above 2**20 need over 1 GiB of memory; refuse them on read.
SCRYPT_MAX_LOG_N: Final = 20


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256: a 32-byte pseudorandom key."""
    return HKDF.extract(hashes.SHA256(), salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-Expand with SHA-256 over a pseudorandom key of at least 32 bytes."""
    if len(prk) < 32:
        raise ValueError("HKDF-Expand needs a pseudorandom key of at least 32 bytes")
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def scrypt(passphrase: bytes, salt: bytes, *, log_n: int, r: int, p: int, length: int = 32) -> bytes:
    """Derive a key from a passphrase with scrypt; parameters are checked against sane bounds."""
    if not 10 <= log_n <= SCRYPT_MAX_LOG_N or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError("scrypt parameters out of range")
    return Scrypt(salt=salt, length=length, n=1 << log_n, r=r, p=p).derive(passphrase)
