"""Launchers for the ChaCha20-Poly1305 kernels (``weightvault.gpu.kernels``).

These are the primitives the device pipeline composes: ``poly1305_tags`` computes
every chunk's tag of a tensor's ciphertext (or, with an explicit nonce, the RFC 8439
AEAD tag of one message), ``chacha20_xor_`` applies the keystream in place. Neither
synchronises with the host; keys and associated data may already live on the
device, so a whole load uploads them once.
"""

from __future__ import annotations

from typing import Final

import torch

from weightvault.gpu.kernels import chacha20_xor_kernel, poly1305_kernel

__all__ = ["chacha20_xor_", "key_words", "poly1305_tags"]

#: Tile sizes per device kind. Triton runs kernels on CPU tensors only in its interpreter
#: (TRITON_INTERPRET=1), which pays per program and per operation rather than per element,
#: so big tiles keep CPU runs quick; CUDA devices get the sizes tuned for them.
_BLOCKS: Final = {"cpu": 1024, "cuda": 64}
_LANES: Final = {"cpu": (64, 6), "cuda": (128, 7)}


def _tiles(device: torch.device) -> tuple[int, int, int]:
    """(ChaCha20 blocks per program, Poly1305 lanes, log2 lanes) for ``device``."""
    kind = "cpu" if device.type == "cpu" else "cuda"
    return (_BLOCKS[kind], *_LANES[kind])


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
    per_program, _, _ = _tiles(buf.device)
    grid = (-(-blocks // per_program),)
    chacha20_xor_kernel[grid](
        buf,
        n,
        key,
        _nonce_words(nonce, buf.device),
        counter,
        chunk_log2 - 6,
        n_chunks,
        BLOCKS=per_program,
        EXPLICIT_NONCE=nonce is not None,
    )


def poly1305_tags(
    buf: torch.Tensor,
    key: torch.Tensor,
    aad: bytes | torch.Tensor = b"",
    *,
    chunk_log2: int = 30,
    n_chunks: int = 1,
    nonce: bytes | None = None,
    raw_mac: bool = False,
) -> torch.Tensor:
    """Tags (uint8, 16 per chunk) of ``buf``'s chunks: the AEAD tag, or with ``raw_mac`` a bare Poly1305 MAC.

    ``aad`` is bytes, or a contiguous uint8 tensor already on ``buf``'s device.
    """
    device = buf.device
    _, lanes, log2_lanes = _tiles(device)
    out = torch.empty(4 * n_chunks, dtype=torch.int32, device=device)
    if isinstance(aad, torch.Tensor):
        aad_len = aad.numel()
        aad_t = aad if aad_len else torch.zeros(1, dtype=torch.uint8, device=device)
    else:
        aad_len = len(aad)
        aad_t = torch.frombuffer(bytearray(aad or b"\0"), dtype=torch.uint8).to(device)
    source = buf if buf.numel() else torch.zeros(1, dtype=torch.uint8, device=device)
    poly1305_kernel[(n_chunks,)](
        source,
        buf.numel(),
        key,
        _nonce_words(nonce, device),
        aad_t,
        aad_len,
        chunk_log2,
        n_chunks,
        out,
        LANES=lanes,
        LOG2_LANES=log2_lanes,
        EXPLICIT_NONCE=nonce is not None,
        RAW_MAC=raw_mac,
    )
    return out.view(torch.uint8)
