"""OpenSSF model signing of a 1 GiB model, plain (model_signing alone) against sealed (weightvault).

Generates a model directory with --size-mib MiB of safetensors (random float32 tensors of
64 MiB) and a config.json, and an EC P-256 key pair, then runs, round after round in the
same order (interleaved, so slow phases of a noisy machine hit every method alike):

* ``sign plain``: ``model_signing``'s signing of the plain directory (what a trainer does);
* ``seal + sign``: ``weightvault seal --sign-key`` in process: sealing, then signing the
  sealed directory (what a publisher does with weightvault);
* ``sign sealed``: the signing step alone, on the sealed directory;
* ``verify plain`` and ``verify sealed``: ``model_signing``'s verification of each.

Signing and verifying hash every file (SHA-256, in the library), so a sealed directory costs
what its size costs; sealing itself is the difference between the second and third lines.
Prints min and median seconds and the throughput, and the ratios sealed / plain.

(Not named model_signing.py: run as a script, it would shadow the library it measures.)

Usage: python bench/openssf_signing.py [--size-mib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))
    import numpy as np
    from bench.cpu_load import cpu_model
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from safetensors.numpy import save_file

    from weightvault.format.keys import FileKey
    from weightvault.sealing import seal_model_dir
    from weightvault.sealing.signatures import sign_model_dir, verify_model_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wv-signing-bench-"))
    try:
        plain = work / "plain"
        plain.mkdir()
        rng = np.random.default_rng(7)
        per = 16 << 20  # float32 elements in 64 MiB
        shards = max(1, args.size_mib // 64)
        for start in range(0, shards, 4):  # four tensors per file, as a sharded checkpoint
            names = range(start, min(shards, start + 4))
            tensors = {f"t{i}": rng.standard_normal(per, dtype=np.float32) for i in names}
            save_file(tensors, str(plain / f"model-{start // 4:05d}.safetensors"))
            del tensors
        (plain / "config.json").write_text(json.dumps({"model_type": "bench"}))
        key = ec.generate_private_key(ec.SECP256R1())
        private, public = work / "k.pem", work / "k.pub.pem"
        pkcs8, pem = serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM
        private.write_bytes(key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        plain_sig = work / "plain.sig"  # beside the directory: the plain model stays as it was
        sealed = work / "sealed"

        def sign_plain() -> None:
            sign_model_dir(plain, private, signature=plain_sig)

        def seal_and_sign() -> None:
            file_key = FileKey.generate()
            try:
                seal_model_dir(plain, sealed, file_key=file_key, overwrite=True)
            finally:
                file_key.wipe()
            sign_model_dir(sealed, private)

        methods: dict[str, Callable[[], object]] = {
            "sign plain": sign_plain,
            "seal + sign": seal_and_sign,
            "sign sealed": lambda: sign_model_dir(sealed, private),
            "verify plain": lambda: verify_model_dir(plain, public, signature=plain_sig),
            "verify sealed": lambda: verify_model_dir(sealed, public),
        }
        for fn in methods.values():  # warm: page cache, imports
            fn()
        seconds: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - t0)
        size = sum(p.stat().st_size for p in plain.iterdir())
        files = len(list(plain.glob("*.safetensors")))
        print(f"CPU: {cpu_model()}; {args.rounds} interleaved rounds; model {size / 2**20:.0f} MiB in {files} files")
        print(f"{'method':<14} {'min s':>7} {'median s':>9} {'MB/s (median)':>14}")
        for name, times in seconds.items():
            mid = statistics.median(times)
            print(f"{name:<14} {min(times):>7.2f} {mid:>9.2f} {size / mid / 1e6:>14.0f}")
        for a, b in (("sign sealed", "sign plain"), ("verify sealed", "verify plain"), ("seal + sign", "sign plain")):
            ratio = statistics.median(seconds[a]) / statistics.median(seconds[b])
            print(f"{a} / {b}: {ratio:.2f} (median seconds)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
