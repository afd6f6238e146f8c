"""pyca/cryptography releases the GIL inside AEAD calls: the loaders' and sealer's threads depend on it.

A benchmark-style check, marked slow: two threads decrypting must keep more than one
core busy. It measures the ratio of process CPU time to wall time rather than
seconds, so a slower or busier machine does not change the verdict: threads that
serialise on the GIL cannot use more than about one core's worth of CPU time.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from weightvault.crypto.aead import AEADSuite, chunk_cipher
from weightvault.sealing.workers import usable_cpus

pytestmark = pytest.mark.slow

_CHUNK = 1 << 20
_ROUNDS = 600  # long enough (0.2-0.5 s a thread) that thread start-up does not dominate


def _busy_ratio(suite: AEADSuite, threads: int) -> float:
    cipher = chunk_cipher(suite, os.urandom(32))
    nonce, aad = bytes(12), b"aad"
    sealed = bytearray(_CHUNK + 16)
    cipher.encrypt_into(nonce, memoryview(bytearray(_CHUNK)), aad, memoryview(sealed))

    def work() -> None:
        out = memoryview(bytearray(_CHUNK))
        for _ in range(_ROUNDS):
            cipher.decrypt_into(nonce, memoryview(sealed), aad, out)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    wall, cpu = time.perf_counter(), time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


@pytest.mark.skipif(usable_cpus() < 2, reason="needs two usable CPUs")
@pytest.mark.parametrize("suite", [AEADSuite.AES_256_GCM, AEADSuite.CHACHA20_POLY1305])
def test_two_decrypting_threads_use_two_cores(suite: AEADSuite) -> None:
    """Best of three runs: two threads keep more than 1.4 cores busy (about 2 when the GIL is released)."""
    best = max(_busy_ratio(suite, 2) for _ in range(3))
    assert best > 1.4, f"two decrypting threads used {best:.2f} cores: pyca/cryptography holds the GIL again"
