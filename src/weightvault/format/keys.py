"""The key schedule of sealed format v2.

::

    FK   32 random bytes, the file key (one per sealed model; wrapped for recipients)
    PRK  = HKDF-Extract(salt = file_id, IKM = FK)
    HS   = HKDF-Expand(PRK, "weightvault/v1 header")                 header secret
    TS_i = HKDF-Expand(PRK, "weightvault/v1 tensor" ‖ be32(i))        tensor secret of tensor i

    key_commitment = HKDF-Expand(HS, "weightvault/v1 key-commitment")   stored in the preamble
    K_mac          = HKDF-Expand(HS, "weightvault/v1 header-mac")       HMAC-SHA256 key over the header
    K_meta         = HKDF-Expand(HS, "weightvault/v1 metadata")         AEAD key of a sealed header
    K_rmac         = HKDF-Expand(HS, "weightvault/v1 recipients-mac")   HMAC-SHA256 key over the recipients
    K_i            = HKDF-Expand(TS_i, "weightvault/v1 tensor-aead")     AEAD key of tensor i's chunks
    C_i            = HKDF-Expand(TS_i, "weightvault/v1 tensor-commitment")  stored in the header
    K_manifest     = HKDF-Expand(HKDF-Extract("weightvault/v1 model-manifest", FK), "weightvault/v1 manifest-mac")

A holder of FK derives everything. A key broker can instead release
:class:`TensorKeys`: HS plus the TS_i of the tensors one tensor- or
pipeline-parallel worker needs. HS authenticates and (when sealed) decrypts the
header; TS_i opens tensor i and nothing else. Both kinds of holder check a
commitment before using a key: FK holders check ``key_commitment`` (which pins
HS, hence FK), partial holders check it for HS and ``C_i`` for each TS_i. A file
therefore decrypts under exactly one key (no "invisible salamanders").
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from weightvault.crypto.kdf import hkdf_expand, hkdf_extract
from weightvault.crypto.secret import SecretBytes, random_bytes
from weightvault.errors import KeyAccessError, KeyMismatchError

__all__ = [
    "FILE_KEY_BYTES",
    "FileKey",
    "HeaderKeys",
    "KeyMaterial",
    "TensorKeys",
    "UnlockedKeys",
    "derive_header_keys",
    "tensor_commitment",
    "unlock",
]

FILE_KEY_BYTES: Final = 32
_P: Final = b"weightvault/v1 "
_L_HEADER: Final = _P + b"header"
_L_TENSOR: Final = _P + b"tensor"
_L_COMMIT: Final = _P + b"key-commitment"
_L_MAC: Final = _P + b"header-mac"
_L_META: Final = _P + b"metadata"
_L_RMAC: Final = _P + b"recipients-mac"
_L_TENSOR_AEAD: Final = _P + b"tensor-aead"
_L_TENSOR_COMMIT: Final = _P + b"tensor-commitment"
_L_MANIFEST_SALT: Final = _P + b"model-manifest"
_L_MANIFEST: Final = _P + b"manifest-mac"


def _check_secret(value: bytes, what: str) -> None:
    if len(value) != FILE_KEY_BYTES:
        raise ValueError(f"{what} is {FILE_KEY_BYTES} bytes")
    if value == bytes(FILE_KEY_BYTES):
        raise ValueError(f"{what} is all zero")


class FileKey:
    """The 32-byte file key FK. Its ``repr`` never shows the value."""

    __slots__ = ("_secret",)

    def __init__(self, value: bytes | bytearray) -> None:
        _check_secret(bytes(value), "a file key")
        self._secret = SecretBytes(value)

    @classmethod
    def generate(cls) -> FileKey:
        """A fresh random file key."""
        return cls(random_bytes(FILE_KEY_BYTES))

    def reveal(self) -> bytes:
        """The raw key; every call site is a place where the key leaves this object."""
        return self._secret.reveal()

    def wipe(self) -> None:
        """Overwrite this object's copy of the key."""
        self._secret.wipe()

    def __repr__(self) -> str:
        return "FileKey(<redacted>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileKey):
            return NotImplemented
        return self._secret == other._secret

    __hash__ = None  # type: ignore[assignment]

    def _prk(self, file_id: bytes) -> bytes:
        return hkdf_extract(file_id, self._secret.reveal())

    def header_secret(self, file_id: bytes) -> bytes:
        """HS for the file with ``file_id``."""
        return hkdf_expand(self._prk(file_id), _L_HEADER)

    def manifest_mac_key(self) -> bytes:
        """K_manifest: authenticates a sealed model directory's manifest."""
        return hkdf_expand(hkdf_extract(_L_MANIFEST_SALT, self._secret.reveal()), _L_MANIFEST)

    def tensor_keys(self, file_id: bytes, indices: list[int] | range) -> TensorKeys:
        """Derive the partial grant for ``indices`` of the file with ``file_id``."""
        prk = self._prk(file_id)
        return TensorKeys(
            file_id=file_id,
            header_secret=hkdf_expand(prk, _L_HEADER),
            tensor_secrets={i: _tensor_secret(prk, i) for i in indices},
        )


def _tensor_secret(prk: bytes, index: int) -> bytes:
    return hkdf_expand(prk, _L_TENSOR + struct.pack(">I", index))


def tensor_commitment(tensor_secret: bytes) -> bytes:
    """C_i, the commitment to a tensor secret stored in the header."""
    return hkdf_expand(tensor_secret, _L_TENSOR_COMMIT)


class TensorKeys:
    """A partial grant: the header secret and some tensor secrets of one file.

    This is what a key broker releases to a worker that needs only some tensors.
    """

    __slots__ = ("_header", "_tensors", "file_id")

    def __init__(self, file_id: bytes, header_secret: bytes, tensor_secrets: Mapping[int, bytes]) -> None:
        _check_secret(header_secret, "a header secret")
        for secret in tensor_secrets.values():
            _check_secret(secret, "a tensor secret")
        self.file_id = bytes(file_id)
        self._header = SecretBytes(header_secret)
        self._tensors = {int(i): SecretBytes(s) for i, s in tensor_secrets.items()}

    @property
    def indices(self) -> frozenset[int]:
        """Indices of the tensors this grant opens."""
        return frozenset(self._tensors)

    def header_secret(self) -> bytes:
        return self._header.reveal()

    def tensor_secret(self, index: int) -> bytes | None:
        secret = self._tensors.get(index)
        return None if secret is None else secret.reveal()

    def wipe(self) -> None:
        """Overwrite this object's copies of the secrets."""
        self._header.wipe()
        for secret in self._tensors.values():
            secret.wipe()

    def __repr__(self) -> str:
        return f"TensorKeys(file_id={self.file_id.hex()[:16]}…, tensors={sorted(self._tensors)}, <redacted>)"


KeyMaterial: TypeAlias = FileKey | TensorKeys


@dataclass(frozen=True, slots=True, repr=False)
class HeaderKeys:
    """Keys derived from the header secret."""

    commitment: bytes
    mac_key: bytes
    metadata_key: bytes
    recipients_mac_key: bytes


def derive_header_keys(header_secret: bytes) -> HeaderKeys:
    """Derive the commitment, MAC key and metadata key from HS."""
    return HeaderKeys(
        commitment=hkdf_expand(header_secret, _L_COMMIT),
        mac_key=hkdf_expand(header_secret, _L_MAC),
        metadata_key=hkdf_expand(header_secret, _L_META),
        recipients_mac_key=hkdf_expand(header_secret, _L_RMAC),
    )


class UnlockedKeys:
    """Keys for one file whose key commitment has been checked.

    Only :func:`unlock` builds this object, and only after a constant-time
    comparison of the key commitment succeeded.
    """

    __slots__ = ("_partial", "_prk", "_tensor_secrets", "header")

    def __init__(self, header: HeaderKeys, prk: bytes | None, partial: TensorKeys | None) -> None:
        self.header = header
        self._prk = prk
        self._partial = partial
        self._tensor_secrets: dict[int, bytes] = {}

    @property
    def is_partial(self) -> bool:
        """Whether only some tensors can be opened."""
        return self._partial is not None

    def has_tensor(self, index: int) -> bool:
        return self._partial is None or index in self._partial.indices

    def tensor_secret(self, index: int) -> bytes:
        """TS_i; raises KeyAccessError when a partial grant does not cover tensor ``index``."""
        cached = self._tensor_secrets.get(index)
        if cached is not None:
            return cached
        if self._prk is not None:
            secret = _tensor_secret(self._prk, index)
        else:
            assert self._partial is not None
            found = self._partial.tensor_secret(index)
            if found is None:
                raise KeyAccessError(f"the key grant does not cover tensor #{index}")
            secret = found
        self._tensor_secrets[index] = secret
        return secret

    def tensor_aead_key(self, index: int) -> bytes:
        """K_i, the AEAD key of tensor ``index``."""
        return hkdf_expand(self.tensor_secret(index), _L_TENSOR_AEAD)

    def check_tensor_commitment(self, index: int, expected: bytes) -> None:
        """Compare C_i in constant time; raises KeyMismatchError on mismatch."""
        if not hmac.compare_digest(tensor_commitment(self.tensor_secret(index)), expected):
            raise KeyMismatchError(f"tensor #{index}: key commitment mismatch")

    def forget(self) -> None:
        """Drop derived secrets held by this object."""
        self._tensor_secrets.clear()
        self._prk = None


def unlock(keys: KeyMaterial, file_id: bytes, key_commitment: bytes) -> UnlockedKeys:
    """Check the key commitment, then return the file's derived keys.

    This is the first thing done with a key: nothing else is derived or used
    until the commitment matches.

    Raises:
        KeyMismatchError: the key is not this file's key.
    """
    if isinstance(keys, FileKey):
        prk: bytes | None = hkdf_extract(file_id, keys.reveal())
        assert prk is not None
        header_secret = hkdf_expand(prk, _L_HEADER)
        partial = None
    else:
        if not hmac.compare_digest(keys.file_id, file_id):
            raise KeyMismatchError("the key grant is for another file")
        prk = None
        header_secret = keys.header_secret()
        partial = keys
    header = derive_header_keys(header_secret)
    if not hmac.compare_digest(header.commitment, key_commitment):
        raise KeyMismatchError("key commitment mismatch: this key does not open this file")
    return UnlockedKeys(header, prk, partial)
