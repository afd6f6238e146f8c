"""The broker's root key, and the keys it unwraps: tenant KEKs, model file keys, token signing keys.

A broker without a root key is *sealed*: it serves custody ceremonies and reads,
and refuses everything that needs a key (:class:`~weightvault.errors.SealedError`).
The hierarchy is root key → tenant KEK (versioned) → model file key, each wrap
bound to its context (:mod:`weightvault.broker.keystore`).
"""

from __future__ import annotations

from weightvault.broker.keystore import (
    RootKey,
    unwrap_file_key,
    unwrap_kek,
    unwrap_signing_key,
    wrap_file_key,
    wrap_kek,
)
from weightvault.broker.storage import BrokerStore, ModelRow
from weightvault.broker.tokens import TokenSigner
from weightvault.crypto.secret import random_bytes
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import KeyAccessError, NotFoundError, SealedError
from weightvault.format.keys import FileKey

__all__ = ["Keyring"]

_SEALED_MESSAGE = (
    "the broker is sealed: an operator opens an unseal ceremony (weightvault custody open unseal) "
    "and custodians submit their shares (weightvault custody submit)"
)


class Keyring:
    """Thread-safe by construction: the root key is replaced whole, never mutated in place."""

    def __init__(self, store: BrokerStore, root: RootKey | None, signer: TokenSigner) -> None:
        self._store = store
        self._root = root
        self.signer = signer
        if root is not None:
            self.load_signing_keys()

    @property
    def sealed(self) -> bool:
        return self._root is None

    def root(self) -> RootKey:
        """The root key; raises SealedError when the broker is sealed."""
        root = self._root
        if root is None:
            raise SealedError(_SEALED_MESSAGE)
        return root

    def install(self, raw: bytes) -> None:
        """Install the root key an unseal ceremony reconstructed (its KCV was checked)."""
        self._root = RootKey(raw)
        self.load_signing_keys()

    def wipe(self) -> None:
        """Seal: forget the root key."""
        root, self._root = self._root, None
        if root is not None:
            root.wipe()

    def load_signing_keys(self) -> None:
        root = self.root()
        live = [k for k in self._store.keys.signing_keys("token") if k.retired_at is None]
        for key in live:
            self.signer.add_key(Ed25519Signer(unwrap_signing_key(root, "token", key.kid, key.wrapped)))
        if live:
            self.signer.current_kid = live[-1].kid

    @property
    def shared(self) -> bool:
        """Whether other broker processes (replicas) may change the keys in the database."""
        return self._store.db.shared

    def sync_signing_keys(self) -> None:
        """Bring the token signer in line with the database, where another replica may have rotated
        or retired a key since this one loaded them: retired keys stop verifying here too, new ones
        verify, and the newest live key signs. One query; a key is unwrapped only when new here.

        Keys the database never held (the configured key of a broker not yet rotated) are kept.
        """
        root = self._root
        if root is None:
            return
        rows = self._store.keys.signing_keys("token")
        known = self.signer.public_keys()
        live = [k for k in rows if k.retired_at is None]
        for key in live:
            if key.kid not in known:
                signer = Ed25519Signer(unwrap_signing_key(root, "token", key.kid, key.wrapped))
                self.signer.add_key(signer, current=False)
        self.signer.sync({k.kid for k in rows if k.retired_at is not None}, live[-1].kid if live else None)

    def new_kek(self, tenant: str, version: int) -> bytes:
        """A fresh KEK for ``tenant``, returned wrapped under the root key (the plaintext is not kept)."""
        return wrap_kek(self.root(), tenant, version, random_bytes(32))

    def kek(self, tenant: str, version: int, *, refuse_retired: bool = False) -> bytes:
        """A tenant's KEK of ``version``, unwrapped.

        Raises:
            NotFoundError: no such KEK version.
            KeyAccessError: ``refuse_retired`` and the version is retired (its models need a rewrap).
        """
        row = self._store.keys.kek(tenant, version)
        if row is None:
            raise NotFoundError(f"KEK v{version} of {tenant} is missing")
        if refuse_retired and row.retired:
            raise KeyAccessError(f"KEK v{version} of {tenant} is retired; rewrap the model")
        return unwrap_kek(self.root(), tenant, version, row.wrapped)

    def wrap_for_model(self, tenant: str, name: str, version: str, file_key: FileKey) -> tuple[int, bytes]:
        """Wrap a model's file key under the tenant's newest KEK; returns (KEK version, blob).

        Raises:
            NotFoundError: the tenant has no KEK (no such tenant).
        """
        latest = self._store.keys.latest_kek(tenant)
        if latest is None:
            raise NotFoundError("no such tenant")
        kek = unwrap_kek(self.root(), tenant, latest.version, latest.wrapped)
        blob = wrap_file_key(
            kek, tenant=tenant, model=name, version=version, kek_version=latest.version, file_key=file_key
        )
        return latest.version, blob

    def file_key_of(self, model: ModelRow, *, refuse_retired: bool = False) -> FileKey:
        """Unwrap a model's file key: root key → the tenant's KEK of the model's version → file key.

        Raises:
            NotFoundError: the KEK version is missing.
            KeyAccessError: ``refuse_retired`` and the KEK version is retired (the model needs a rewrap).
        """
        kek = self.kek(model.tenant_id, model.kek_version, refuse_retired=refuse_retired)
        return unwrap_file_key(
            kek,
            tenant=model.tenant_id,
            model=model.name,
            version=model.version,
            kek_version=model.kek_version,
            blob=model.wrapped_key,
        )
