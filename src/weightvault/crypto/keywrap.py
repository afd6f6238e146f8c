"""Wrapping a file key for a recipient: HPKE (RFC 9180) and derived-key AEAD.

HPKE runs in base mode with HKDF-SHA256 and AES-256-GCM, over one of two KEMs:

* ``x25519``: DHKEM(X25519, HKDF-SHA256);
* ``mlkem768-x25519``: the ML-KEM-768 + X25519 hybrid KEM of pyca/cryptography,
  which stays confidential as long as either component is unbroken.

Private keys are held as raw bytes: 32 for X25519; 64 (the ML-KEM seed) then 32
(X25519) for the hybrid. Public keys are 32 bytes (X25519) or 1184 then 32 bytes.

:func:`wrap_with_secret` encrypts under a key derived with HKDF from a long-lived
secret (a key-encryption key, or a scrypt output) and a fresh 256-bit salt. Each
derived key encrypts exactly one message, so the AEAD's fixed nonce can never
repeat under a key; the salt's 2**-128 collision bound is the only limit.
"""

from __future__ import annotations

import enum
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from weightvault.crypto.aead import AEADSuite, open_single_use, seal_single_use
from weightvault.crypto.kdf import hkdf_expand, hkdf_extract

__all__ = [
    "WRAP_SALT_BYTES",
    "HPKEKem",
    "InvalidTag",
    "hpke_derive",
    "hpke_generate",
    "hpke_open",
    "hpke_public_key",
    "hpke_seal",
    "unwrap_with_secret",
    "wrap_with_secret",
]

WRAP_SALT_BYTES: Final = 32
_X25519_BYTES: Final = 32
_MLKEM768_SEED_BYTES: Final = 64
_MLKEM768_PUBLIC_BYTES: Final = 1184


class HPKEKem(enum.Enum):
    """The KEMs a recipient public key may use."""

    X25519 = "x25519"
    MLKEM768_X25519 = "mlkem768-x25519"

    @property
    def private_key_bytes(self) -> int:
        """Length of the raw private key."""
        return _X25519_BYTES if self is HPKEKem.X25519 else _MLKEM768_SEED_BYTES + _X25519_BYTES

    @property
    def public_key_bytes(self) -> int:
        """Length of the raw public key."""
        return _X25519_BYTES if self is HPKEKem.X25519 else _MLKEM768_PUBLIC_BYTES + _X25519_BYTES


def _suite(kem: HPKEKem) -> hpke.Suite:
    pyca_kem = hpke.KEM.X25519 if kem is HPKEKem.X25519 else hpke.KEM.MLKEM768_X25519
    return hpke.Suite(pyca_kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _private(kem: HPKEKem, raw: bytes) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
    if len(raw) != kem.private_key_bytes:
        raise ValueError(f"a {kem.value} private key is {kem.private_key_bytes} bytes")
    if kem is HPKEKem.X25519:
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    return hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM768_SEED_BYTES]),
        x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM768_SEED_BYTES:]),
    )


def _public(kem: HPKEKem, raw: bytes) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
    if len(raw) != kem.public_key_bytes:
        raise ValueError(f"a {kem.value} public key is {kem.public_key_bytes} bytes")
    if kem is HPKEKem.X25519:
        return x25519.X25519PublicKey.from_public_bytes(raw)
    return hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_BYTES]),
        x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_BYTES:]),
    )


def hpke_generate(kem: HPKEKem) -> tuple[bytes, bytes]:
    """Generate a key pair; returns (raw private key, raw public key)."""
    if kem is HPKEKem.X25519:
        sk = x25519.X25519PrivateKey.generate()
        return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()
    ml = mlkem.MLKEM768PrivateKey.generate()
    xk = x25519.X25519PrivateKey.generate()
    private = ml.private_bytes_raw() + xk.private_bytes_raw()
    public = ml.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
    return private, public


def hpke_derive(kem: HPKEKem, secret: bytes, info: bytes) -> bytes:
    """A raw private key derived from a secret of at least 32 uniformly random bytes.

    HKDF-SHA256 (extract with an empty salt, then expand with ``info``) gives exactly
    :attr:`HPKEKem.private_key_bytes`: every string of that length is a valid key (X25519
    clamps its scalar, ML-KEM-768 expands its 64-byte seed), so the same secret and
    ``info`` always give the same key pair, and distinct ``info`` give independent ones.
    """
    if len(secret) < 32:
        raise ValueError("a derived HPKE key needs a secret of at least 32 bytes")
    return hkdf_expand(hkdf_extract(b"", secret), info, kem.private_key_bytes)


def hpke_public_key(kem: HPKEKem, private: bytes) -> bytes:
    """Return the raw public key of a raw private key."""
    if kem is HPKEKem.X25519:
        return x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    if len(private) != kem.private_key_bytes:
        raise ValueError(f"a {kem.value} private key is {kem.private_key_bytes} bytes")
    ml = mlkem.MLKEM768PrivateKey.from_seed_bytes(private[:_MLKEM768_SEED_BYTES])
    xk = x25519.X25519PrivateKey.from_private_bytes(private[_MLKEM768_SEED_BYTES:])
    return ml.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()


def hpke_seal(kem: HPKEKem, public: bytes, plaintext: bytes, info: bytes) -> bytes:
    """HPKE base-mode single-shot encryption; returns enc ‖ ciphertext ‖ tag."""
    return _suite(kem).encrypt(plaintext, _public(kem, public), info=info)


def hpke_open(kem: HPKEKem, private: bytes, sealed: bytes, info: bytes) -> bytes:
    """Open a message made by :func:`hpke_seal`; raises :class:`InvalidTag` on any failure."""
    try:
        return _suite(kem).decrypt(sealed, _private(kem, private), info=info)
    except ValueError as exc:  # malformed encapsulation or low-order point
        raise InvalidTag() from exc


def _derived_key(secret: bytes, salt: bytes, info: bytes) -> bytes:
    if len(salt) != WRAP_SALT_BYTES:
        raise ValueError("wrap salts are 32 bytes")
    return hkdf_expand(hkdf_extract(salt, secret), info)


def wrap_with_secret(secret: bytes, salt: bytes, info: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM under a single-use key HKDF(secret, salt, info); returns ciphertext ‖ tag."""
    return seal_single_use(AEADSuite.AES_256_GCM, _derived_key(secret, salt, info), plaintext, aad)


def unwrap_with_secret(secret: bytes, salt: bytes, info: bytes, wrapped: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`wrap_with_secret`; raises :class:`InvalidTag` on failure."""
    return open_single_use(AEADSuite.AES_256_GCM, _derived_key(secret, salt, info), wrapped, aad)
