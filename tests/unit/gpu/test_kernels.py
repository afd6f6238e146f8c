"""The Triton ChaCha20-Poly1305 kernels, bit-exact with RFC 8439's vectors and pyca/cryptography.

CI has no GPU: the kernels run under Triton's interpreter on CPU tensors (the same
kernel code, executed by NumPy). Inputs stay small because the interpreter is slow.
``TRITON_INTERPRET=0`` on a CUDA machine runs them compiled, on the GPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import kernel_device, require_module

require_module("triton")
DEVICE = kernel_device()

from weightvault.gpu.aead import chacha20_xor_, key_words, poly1305_tags  # noqa: E402

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "rfc8439"


def _records(name: str) -> list[dict[str, str]]:
    """NIST-style ``KEY = value`` records separated by blank lines (pyca's vector format)."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for raw in (VECTORS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            if current:
                records.append(current)
                current = {}
            continue
        key, _, value = line.partition(" = ")
        current[key.upper()] = value.strip()
    if current:
        records.append(current)
    return records


def _buf(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data or b"\0"), dtype=torch.uint8)[: len(data)].to(DEVICE, copy=True)


def _bytes(t: torch.Tensor) -> bytes:
    return bytes(t.cpu().numpy())


@pytest.mark.parametrize("vector", _records("chacha20.txt"), ids=lambda v: f"A.2-{v['COUNT']}")
def test_chacha20_rfc_vectors(vector: dict[str, str]) -> None:
    data = _buf(bytes.fromhex(vector["PLAINTEXT"]))
    nonce = bytes(4) + bytes.fromhex(vector["NONCE"])  # the RFC's 96-bit nonce for a 64/64 split vector
    chacha20_xor_(
        data, key_words(bytes.fromhex(vector["KEY"]), DEVICE), nonce=nonce, counter=int(vector["INITIAL_BLOCK_COUNTER"])
    )
    assert vector["CIPHERTEXT"] == _bytes(data).hex()


@pytest.mark.parametrize("vector", _records("poly1305.txt"), ids=lambda v: f"A.3-{v['COUNT']}")
def test_poly1305_rfc_vectors(vector: dict[str, str]) -> None:
    tag = poly1305_tags(
        _buf(bytes.fromhex(vector["MSG"])), key_words(bytes.fromhex(vector["KEY"]), DEVICE), raw_mac=True
    )
    assert vector["TAG"].lower() == _bytes(tag).hex()


@pytest.mark.parametrize("vector", _records("chacha20poly1305.txt"), ids=lambda v: f"openssl-{v['COUNT']}")
def test_aead_vectors(vector: dict[str, str]) -> None:
    """Tag over the ciphertext, then decryption (RFC 7539 A.5 and OpenSSL's vectors, failures included)."""
    key = key_words(bytes.fromhex(vector["KEY"]), DEVICE)
    nonce = bytes.fromhex(vector["IV"])
    if len(nonce) != 12:
        pytest.skip("only 96-bit nonces are in scope")
    ciphertext = _buf(bytes.fromhex(vector["CIPHERTEXT"]))
    tag = poly1305_tags(ciphertext, key, bytes.fromhex(vector["AAD"]), nonce=nonce)
    matches = _bytes(tag).hex() == vector["TAG"].lower()
    assert matches == (vector.get("RESULT") != "CIPHERFINAL_ERROR")
    if matches:
        chacha20_xor_(ciphertext, key, nonce=nonce, counter=1)
        assert vector["PLAINTEXT"] == _bytes(ciphertext).hex()


@settings(max_examples=25, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
    data=st.binary(max_size=700),
    aad=st.binary(max_size=100),
)
def test_bit_exact_with_pyca(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> None:
    """Any length (partial blocks, up to 3.4 rounds of 64 lanes), any AAD: same bytes as pyca/cryptography."""
    words = key_words(key, DEVICE)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, data, aad)
    buf = _buf(sealed[: len(data)])
    assert sealed[len(data) :] == _bytes(poly1305_tags(buf, words, aad, nonce=nonce))
    chacha20_xor_(buf, words, nonce=nonce, counter=1)
    assert data == _bytes(buf)
    assert Poly1305.generate_tag(key, data) == _bytes(poly1305_tags(_buf(data), words, raw_mac=True))


def test_counter_and_nonce_words() -> None:
    """Counter near 2^32 - 1 within a block range, and a nonce with every byte set."""
    key, nonce = bytes(range(32)), bytes(range(200, 212))
    data = bytes(300)
    buf = _buf(data)
    chacha20_xor_(buf, key_words(key, DEVICE), nonce=nonce, counter=0xFFFFFFF0)
    expected = Cipher(algorithms.ChaCha20(key, (0xFFFFFFF0).to_bytes(4, "little") + nonce), None)
    assert expected.encryptor().update(data) == _bytes(buf)


def test_format_chunks_against_pyca_at_chunk_scale() -> None:
    """Several 64 KiB chunks with the format's nonces and counters, decrypted and tagged like pyca does it."""
    from weightvault.format.stream import chunk_nonce

    key = bytes(range(1, 33))
    chunk_log2, n = 16, (3 << 16) + 4097  # three full chunks and a partial final one
    data = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    plain = _bytes(data)
    count = -(-n // (1 << chunk_log2))
    aad = b"chunk-aad"
    ciphertext, tags = bytearray(), bytearray()
    for j in range(count):
        sealed = ChaCha20Poly1305(key).encrypt(
            chunk_nonce(j, j == count - 1), plain[j << chunk_log2 : (j + 1) << chunk_log2], aad
        )
        ciphertext += sealed[:-16]
        tags += sealed[-16:]
    buf, words = _buf(bytes(ciphertext)), key_words(key, DEVICE)
    assert _bytes(poly1305_tags(buf, words, aad, chunk_log2=chunk_log2, n_chunks=count)) == bytes(tags)
    chacha20_xor_(buf, words, chunk_log2=chunk_log2, n_chunks=count)
    assert _bytes(buf) == plain
