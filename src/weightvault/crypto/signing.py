"""Ed25519 signatures (RFC 8032) from pyca/cryptography."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from weightvault.crypto.secret import SecretBytes

__all__ = ["Ed25519Signer", "InvalidSignature", "ed25519_public_key", "verify_ed25519"]


class Ed25519Signer:
    """An Ed25519 private key; its ``repr`` never shows the key."""

    __slots__ = ("_key", "_seed", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("Ed25519 private keys are 32 bytes")
        self._seed = SecretBytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def reveal_seed(self) -> bytes:
        return self._seed.reveal()

    def private_pem(self) -> bytes:
        """PKCS#8 PEM of the private key (for JOSE libraries); handle as a secret."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM of the public key."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def __repr__(self) -> str:
        return f"Ed25519Signer(public={self.public.hex()[:16]}…)"


def ed25519_public_key(public: bytes) -> Ed25519PublicKey:
    """Parse a raw 32-byte public key; raises ValueError when malformed."""
    if len(public) != 32:
        raise ValueError("Ed25519 public keys are 32 bytes")
    return Ed25519PublicKey.from_public_bytes(public)


def verify_ed25519(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is valid; callers turn ``False`` into their own specific error."""
    try:
        ed25519_public_key(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
