"""Chunked AEAD over one tensor: STREAM-style nonces and the per-chunk associated data.

A tensor of ``n`` bytes is cut into ``c = max(1, ceil(n / 2**chunk_log2))`` chunks;
only the last may be short, and an empty tensor has one empty chunk. Chunk ``j``
is encrypted under the tensor key K_i with

* nonce ``be64(j) ‖ u8(final) ‖ 00 00 00``, ``final`` = 1 on chunk ``c - 1`` only;
* associated data (88 bytes) ``"wv1\\0" ‖ file_id ‖ header_digest ‖ be32(i) ‖ be64(c) ‖ be64(n)``.

K_i is unique to (file, tensor), so every (key, nonce) pair is used once with no
randomness and no birthday bound. The nonce stops reordering, truncation at a
chunk boundary and extension; the associated data ties each chunk to the exact
header (names, dtypes, shapes, offsets), the tensor index and length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from weightvault.crypto.aead import TAG_BYTES, AEADSuite, ChunkCipher, InvalidTag, chunk_cipher
from weightvault.errors import PayloadError

__all__ = ["AAD_BYTES", "TensorStream", "chunk_aad", "chunk_count", "chunk_nonce"]

AAD_BYTES: Final = 88
_AAD_PREFIX: Final = b"wv1\x00"
_NONCE: Final = struct.Struct(">QB3x")
_AAD_TAIL: Final = struct.Struct(">IQQ")


def chunk_count(nbytes: int, chunk_log2: int) -> int:
    """Number of chunks of a tensor of ``nbytes`` bytes (at least one)."""
    return max(1, -(-nbytes >> chunk_log2))


def chunk_nonce(index: int, final: bool) -> bytes:
    """The 96-bit nonce of chunk ``index``."""
    return _NONCE.pack(index, 1 if final else 0)


def chunk_aad(file_id: bytes, header_digest: bytes, tensor_index: int, count: int, nbytes: int) -> bytes:
    """The 88-byte associated data shared by every chunk of one tensor."""
    aad = _AAD_PREFIX + file_id + header_digest + _AAD_TAIL.pack(tensor_index, count, nbytes)
    assert len(aad) == AAD_BYTES
    return aad


@dataclass(frozen=True, slots=True, repr=False)
class TensorStream:
    """Encrypts or decrypts the chunks of one tensor.

    Invariant: ``cipher`` is keyed with K_i of tensor ``tensor_index`` and is used
    only through the methods below, which derive every nonce themselves.
    """

    cipher: ChunkCipher
    aad: bytes
    name: str
    nbytes: int
    chunk_log2: int
    count: int

    @classmethod
    def create(
        cls,
        suite: AEADSuite,
        key: bytes,
        *,
        file_id: bytes,
        header_digest: bytes,
        tensor_index: int,
        name: str,
        nbytes: int,
        chunk_log2: int,
    ) -> TensorStream:
        count = chunk_count(nbytes, chunk_log2)
        return cls(
            cipher=chunk_cipher(suite, key),
            aad=chunk_aad(file_id, header_digest, tensor_index, count, nbytes),
            name=name,
            nbytes=nbytes,
            chunk_log2=chunk_log2,
            count=count,
        )

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        """Byte range [start, stop) of chunk ``index`` within the tensor."""
        if not 0 <= index < self.count:
            raise IndexError(index)
        start = index << self.chunk_log2
        return start, min(self.nbytes, start + (1 << self.chunk_log2))

    def _nonce(self, index: int) -> bytes:
        return chunk_nonce(index, index == self.count - 1)

    def encrypt_chunk_into(self, index: int, plaintext: memoryview, out: memoryview) -> None:
        """Encrypt chunk ``index``; ``out`` receives ciphertext ‖ tag (len(plaintext) + 16 bytes)."""
        self.cipher.encrypt_into(self._nonce(index), plaintext, self.aad, out)

    def decrypt_chunk_into(self, index: int, ciphertext_and_tag: memoryview, out: memoryview) -> None:
        """Decrypt ciphertext ‖ tag of chunk ``index`` into ``out``.

        ``out`` may be the same memory as the ciphertext (in-place). On failure
        ``out`` is zeroed before the error is raised.

        Raises:
            PayloadError: the chunk does not authenticate.
        """
        try:
            self.cipher.decrypt_into(self._nonce(index), ciphertext_and_tag, self.aad, out)
        except InvalidTag as exc:
            out[:] = bytes(len(out))
            raise PayloadError(f"tensor {self.name!r}: chunk {index} failed authentication") from exc

    def decrypt_chunk_in_place(self, index: int, region: memoryview, tag: bytes) -> None:
        """Decrypt chunk ``index`` held at the start of ``region`` in place.

        ``region`` holds the chunk's ciphertext followed by at least 16 bytes
        that this call borrows for the tag and restores afterwards. pyca's
        ``decrypt_into`` needs ciphertext and tag contiguous, and the format keeps
        tags in a separate table so that the data stays length-preserving.

        Raises:
            PayloadError: the chunk does not authenticate; its bytes are zeroed.
        """
        start, stop = self.chunk_bounds(index)
        size = stop - start
        slack = region[size : size + TAG_BYTES]
        saved = bytes(slack)
        slack[:] = tag
        try:
            self.decrypt_chunk_into(index, region[: size + TAG_BYTES], region[:size])
        finally:
            slack[:] = saved
