"""Low-level pieces of sealed format v2.

.. warning::
   This module is hazardous material. It exposes the chunk nonce and
   associated-data construction, the key schedule and in-place chunk
   decryption so that other implementations (the GPU kernels, test-vector
   generators, other languages) can interoperate bit for bit. Using these pieces
   out of order can release unauthenticated plaintext or reuse a nonce. Use
   :mod:`weightvault.sealing` and the loaders unless you are implementing the
   format itself.
"""

from __future__ import annotations

from weightvault.format.container import header_digest
from weightvault.format.keys import UnlockedKeys, derive_header_keys, tensor_commitment, unlock
from weightvault.format.stream import AAD_BYTES, TensorStream, chunk_aad, chunk_count, chunk_nonce

__all__ = [
    "AAD_BYTES",
    "TensorStream",
    "UnlockedKeys",
    "chunk_aad",
    "chunk_count",
    "chunk_nonce",
    "derive_header_keys",
    "header_digest",
    "tensor_commitment",
    "unlock",
]
