"""Launchers for the ChaCha20-Poly1305 kernels, and in-place verify-then-decrypt of one tensor.

``decrypt_tensor_`` is the whole AEAD for one tensor already copied (as
ciphertext) into its destination storage on the device:

1. verify: the Poly1305 kernel computes every chunk's tag over the ciphertext;
   the tags are compared with the authenticated tag table on the device, and only
   one boolean crosses back to the host;
2. decrypt: only if every tag matched, the ChaCha20 kernel XORs the keystream in
   place. Plaintext never exists on the device for data that failed to verify.

On failure the destination is zeroed (it held only ciphertext) and the same
``PayloadError`` as the CPU path is raised, naming the first failed chunk.
A fused single pass would also be safe (nothing is released before the host has
checked the tags), but the two passes keep the rule simple: no plaintext of
unverified data, ever, anywhere.
"""

from __future__ import annotations

import os
from typing import Final

import torch

from weightvault.errors import PayloadError
from weightvault.gpu.kernels import chacha20_xor_kernel, poly1305_kernel

__all__ = ["chacha20_xor_", "decrypt_tensor_", "key_words", "poly1305_tags"]

#: The interpreter pays per program and per operation, not per element: big tiles keep CPU tests quick.
_INTERPRET: Final = os.environ.get("TRITON_INTERPRET") == "1"
_BLOCKS: Final = 1024 if _INTERPRET else 64
_LANES, _LOG2_LANES = (64, 6) if _INTERPRET else (128, 7)


def key_words(key: bytes, device: torch.device | str) -> torch.Tensor:
    """A 32-byte key as eight little-endian int32 words on ``device`` (zero it after use)."""
    if len(key) != 32:
        raise ValueError("ChaCha20 keys are 32 bytes")
    return torch.frombuffer(bytearray(key), dtype=torch.int32).to(device)


def _nonce_words(nonce: bytes | None, device: torch.device) -> torch.Tensor:
    if nonce is None:
        return torch.zeros(3, dtype=torch.int32, device=device)
    if len(nonce) != 12:
        raise ValueError("nonces are 12 bytes")
    return torch.frombuffer(bytearray(nonce), dtype=torch.int32).to(device)


def chacha20_xor_(
    buf: torch.Tensor,
    key: torch.Tensor,
    *,
    chunk_log2: int = 30,
    n_chunks: int = 1,
    nonce: bytes | None = None,
    counter: int = 0,
) -> None:
    """XOR ``buf`` (uint8, contiguous) in place with ChaCha20 keystream.

    With ``nonce`` the RFC 8439 stream for (key, nonce, counter); without, the
    format's per-chunk nonces with counters starting at 1 in every chunk.
    """
    n = buf.numel()
    if n == 0:
        return
    blocks = -(-n // 64)
    grid = (-(-blocks // _BLOCKS),)
    chacha20_xor_kernel[grid](
        buf,
        n,
        key,
        _nonce_words(nonce, buf.device),
        counter,
        chunk_log2 - 6,
        n_chunks,
        BLOCKS=_BLOCKS,
        EXPLICIT_NONCE=nonce is not None,
    )


def poly1305_tags(
    buf: torch.Tensor,
    key: torch.Tensor,
    aad: bytes = b"",
    *,
    chunk_log2: int = 30,
    n_chunks: int = 1,
    nonce: bytes | None = None,
    raw_mac: bool = False,
) -> torch.Tensor:
    """Tags (uint8, 16 per chunk) of ``buf``'s chunks: the AEAD tag, or with ``raw_mac`` a bare Poly1305 MAC."""
    device = buf.device
    out = torch.empty(4 * n_chunks, dtype=torch.int32, device=device)
    aad_t = torch.frombuffer(bytearray(aad or b"\0"), dtype=torch.uint8).to(device)
    source = buf if buf.numel() else torch.zeros(1, dtype=torch.uint8, device=device)
    poly1305_kernel[(n_chunks,)](
        source,
        buf.numel(),
        key,
        _nonce_words(nonce, device),
        aad_t,
        len(aad),
        chunk_log2,
        n_chunks,
        out,
        LANES=_LANES,
        LOG2_LANES=_LOG2_LANES,
        EXPLICIT_NONCE=nonce is not None,
        RAW_MAC=raw_mac,
    )
    return out.view(torch.uint8)


def decrypt_tensor_(
    buf: torch.Tensor,
    key: torch.Tensor,
    *,
    aad: bytes,
    tags: torch.Tensor,
    chunk_log2: int,
    n_chunks: int,
    name: str,
) -> None:
    """Verify every chunk of ``buf`` against ``tags`` (uint8, on the device), then decrypt in place.

    Raises:
        PayloadError: a chunk does not authenticate; ``buf`` is zeroed first.
    """
    computed = poly1305_tags(buf, key, aad, chunk_log2=chunk_log2, n_chunks=n_chunks)
    bad = (computed.view(n_chunks, 16) != tags.view(n_chunks, 16)).any(dim=1)
    if bool(bad.any()):  # the one host synchronisation of the verify pass
        first = int(torch.nonzero(bad)[0, 0])
        buf.zero_()
        raise PayloadError(f"tensor {name!r}: chunk {first} failed authentication")
    chacha20_xor_(buf, key, chunk_log2=chunk_log2, n_chunks=n_chunks)
