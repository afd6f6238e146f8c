"""Envelope keys of the broker: root key → per-tenant KEKs (versioned) → model file keys.

::

    wrapped KEK      = salt ‖ AES-256-GCM(HKDF(RK, salt, "weightvault/v1 tenant-kek"), KEK,
                                          aad = JCS({"purpose": "tenant-kek", "tenant", "version"}))
    wrapped file key = salt ‖ AES-256-GCM(HKDF(KEK, salt, "weightvault/v1 model-key"), FK,
                                          aad = JCS({"purpose": "model-key", "tenant", "model",
                                                     "version", "kek_version"}))

Each wrap derives a fresh single-use key from a 256-bit random salt, so the
AEAD nonce can be fixed. The associated data binds every wrapped key to its
tenant, model and version: a wrapped key copied to another tenant's row, or to
another model, does not unwrap. Rotated signing keys are wrapped the same way
(info "weightvault/v1 signing-key", aad = JCS({"purpose", "kid"})), and so is a backup's
file key (info "weightvault/v1 backup-key", aad = JCS({"purpose", "broker", "created_at"})).

A broker under custody has no root key to hand when it is backed up, so its backups'
file keys are sealed to a public key instead, whose private half only the root key gives::

    backup recipient = HPKE key pair (ML-KEM-768 + X25519) derived from
                       HKDF(RK, "weightvault/v1 backup-recipient")
    sealed file key  = HPKE(recipient, FK, info = "weightvault/v1 backup-key" ‖ 0x00 ‖
                                                  JCS({"broker", "created_at"}))

The public half is in every share set (dealt while the root key is in memory), so
anyone can seal a backup to it and only a quorum of custodians, by rebuilding the root
key, can open one.

The root key
comes from a key file, or from an M-of-N unseal ceremony (docs/custody.md).
"""

from __future__ import annotations

from weightvault.crypto.keywrap import (
    WRAP_SALT_BYTES,
    HPKEKem,
    InvalidTag,
    hpke_derive,
    hpke_open,
    hpke_public_key,
    hpke_seal,
    unwrap_with_secret,
    wrap_with_secret,
)
from weightvault.crypto.secret import SecretBytes, random_bytes
from weightvault.encoding import canonical_json
from weightvault.errors import ConfigError, KeyAccessError
from weightvault.format.keys import FileKey

__all__ = [
    "RootKey",
    "backup_recipient",
    "open_backup_key",
    "seal_backup_key",
    "unwrap_backup_key",
    "unwrap_file_key",
    "unwrap_kek",
    "unwrap_signing_key",
    "wrap_backup_key",
    "wrap_file_key",
    "wrap_kek",
    "wrap_signing_key",
]

_INFO_KEK = b"weightvault/v1 tenant-kek"
_INFO_MODEL = b"weightvault/v1 model-key"
_INFO_SIGNING = b"weightvault/v1 signing-key"
_INFO_BACKUP = b"weightvault/v1 backup-key"
_INFO_RECIPIENT = b"weightvault/v1 backup-recipient"
_BACKUP_KEM = HPKEKem.MLKEM768_X25519


class RootKey:
    """The broker's root key. Its ``repr`` never shows the key."""

    __slots__ = ("_secret",)

    def __init__(self, value: bytes) -> None:
        if len(value) != 32 or value == bytes(32):
            raise ConfigError("the root key must be 32 random bytes")
        self._secret = SecretBytes(value)

    @classmethod
    def generate(cls) -> RootKey:
        return cls(random_bytes(32))

    def reveal(self) -> bytes:
        return self._secret.reveal()

    def wipe(self) -> None:
        self._secret.wipe()

    def __repr__(self) -> str:
        return "RootKey(<redacted>)"


def _aad(**fields: object) -> bytes:
    return canonical_json(fields)


def _split(blob: bytes) -> tuple[bytes, bytes]:
    if len(blob) <= WRAP_SALT_BYTES:
        raise KeyAccessError("wrapped key is malformed")
    return blob[:WRAP_SALT_BYTES], blob[WRAP_SALT_BYTES:]


def wrap_kek(root: RootKey, tenant: str, version: int, kek: bytes) -> bytes:
    salt = random_bytes(WRAP_SALT_BYTES)
    aad = _aad(purpose="tenant-kek", tenant=tenant, version=version)
    return salt + wrap_with_secret(root.reveal(), salt, _INFO_KEK, kek, aad)


def unwrap_kek(root: RootKey, tenant: str, version: int, blob: bytes) -> bytes:
    """Raises KeyAccessError if the blob does not belong to (tenant, version) under this root key."""
    salt, wrapped = _split(blob)
    aad = _aad(purpose="tenant-kek", tenant=tenant, version=version)
    try:
        return unwrap_with_secret(root.reveal(), salt, _INFO_KEK, wrapped, aad)
    except InvalidTag as exc:
        raise KeyAccessError(f"tenant {tenant} KEK v{version} does not unwrap under this root key") from exc


def _model_aad(tenant: str, model: str, version: str, kek_version: int) -> bytes:
    return _aad(purpose="model-key", tenant=tenant, model=model, version=version, kek_version=kek_version)


def wrap_file_key(kek: bytes, *, tenant: str, model: str, version: str, kek_version: int, file_key: FileKey) -> bytes:
    salt = random_bytes(WRAP_SALT_BYTES)
    return salt + wrap_with_secret(
        kek, salt, _INFO_MODEL, file_key.reveal(), _model_aad(tenant, model, version, kek_version)
    )


def unwrap_file_key(kek: bytes, *, tenant: str, model: str, version: str, kek_version: int, blob: bytes) -> FileKey:
    """Raises KeyAccessError if the blob does not belong to this tenant, model and KEK version."""
    salt, wrapped = _split(blob)
    try:
        raw = unwrap_with_secret(kek, salt, _INFO_MODEL, wrapped, _model_aad(tenant, model, version, kek_version))
    except InvalidTag as exc:
        raise KeyAccessError(f"model key of {tenant}/{model}@{version} does not unwrap") from exc
    return FileKey(raw)


def wrap_signing_key(root: RootKey, purpose: str, kid: str, seed: bytes) -> bytes:
    """A rotated signing key at rest: wrapped under the root key, bound to its purpose and id."""
    salt = random_bytes(WRAP_SALT_BYTES)
    return salt + wrap_with_secret(root.reveal(), salt, _INFO_SIGNING, seed, _aad(purpose=purpose, kid=kid))


def unwrap_signing_key(root: RootKey, purpose: str, kid: str, blob: bytes) -> bytes:
    salt, wrapped = _split(blob)
    try:
        return unwrap_with_secret(root.reveal(), salt, _INFO_SIGNING, wrapped, _aad(purpose=purpose, kid=kid))
    except InvalidTag as exc:
        raise KeyAccessError(f"signing key {purpose}/{kid} does not unwrap under this root key") from exc


def wrap_backup_key(root: RootKey, broker: str, created_at: int, file_key: FileKey) -> bytes:
    """The file key of a backup's sealed payload, wrapped under the root key for this broker and time."""
    salt = random_bytes(WRAP_SALT_BYTES)
    aad = _aad(purpose="backup-key", broker=broker, created_at=created_at)
    return salt + wrap_with_secret(root.reveal(), salt, _INFO_BACKUP, file_key.reveal(), aad)


def unwrap_backup_key(root: RootKey, broker: str, created_at: int, blob: bytes) -> FileKey:
    """Raises KeyAccessError if the blob was not wrapped under this root key for (broker, created_at)."""
    salt, wrapped = _split(blob)
    aad = _aad(purpose="backup-key", broker=broker, created_at=created_at)
    try:
        return FileKey(unwrap_with_secret(root.reveal(), salt, _INFO_BACKUP, wrapped, aad))
    except InvalidTag as exc:
        raise KeyAccessError("the backup's key does not unwrap under this root key") from exc


def _backup_info(broker: str, created_at: int) -> bytes:
    return _INFO_BACKUP + b"\x00" + canonical_json({"broker": broker, "created_at": created_at})


def backup_recipient(root: bytes) -> bytes:
    """The public key that backups of a broker under custody are sealed to (derived from ``root``)."""
    return hpke_public_key(_BACKUP_KEM, hpke_derive(_BACKUP_KEM, root, _INFO_RECIPIENT))


def seal_backup_key(recipient: bytes, broker: str, created_at: int, file_key: FileKey) -> bytes:
    """A backup's file key sealed to ``recipient`` (:func:`backup_recipient`) for this broker and time."""
    return hpke_seal(_BACKUP_KEM, recipient, file_key.reveal(), _backup_info(broker, created_at))


def open_backup_key(root: RootKey, broker: str, created_at: int, sealed: bytes) -> FileKey:
    """Raises KeyAccessError unless ``sealed`` was sealed to this root key's recipient for (broker, created_at)."""
    private = SecretBytes(hpke_derive(_BACKUP_KEM, root.reveal(), _INFO_RECIPIENT))
    try:
        return FileKey(hpke_open(_BACKUP_KEM, private.reveal(), sealed, _backup_info(broker, created_at)))
    except InvalidTag as exc:
        raise KeyAccessError("the backup's key does not open under this root key") from exc
    finally:
        private.wipe()
