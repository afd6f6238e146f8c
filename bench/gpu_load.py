"""Loading sealed weights onto a GPU, against plain safetensors and the copy ceiling, in one run.

On a generated bf16 model (default 4 GiB, in the page cache) it reports GB/s for:

* plain ``safetensors.torch.load_file(device="cuda")`` (the baseline);
* a pinned host-to-device copy of the same bytes (the ceiling of any loader);
* our sealed ChaCha20-Poly1305 load with the device kernels (read into pinned
  buffers, async copy into the tensors, verify every tag on the GPU, decrypt in
  place): the time until every tensor is resident and verified, i.e. token-ready;
* our sealed AES-256-GCM load (decrypted on the CPU, then copied);

and the ratios to the baseline. Needs a CUDA device; without one it says so and exits 0.

Usage: python bench/gpu_load.py [--size-gib 4] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))

    import torch

    if not torch.cuda.is_available():
        print("gpu_load: no CUDA device here; this benchmark needs a GPU (the kernels' tests run on the CPU)")
        return 0
    from safetensors.torch import load_file as st_load_file
    from safetensors.torch import save_file

    from weightvault import AEADSuite, FileKey
    from weightvault.loaders import torch as wv_torch
    from weightvault.sealing import SealOptions, seal_safetensors

    work = Path(args.workdir or tempfile.mkdtemp(prefix="wv-gpu-bench-"))
    if args.workdir is None:  # a scratch directory of this run's own: removed at exit
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    plain = work / "model.safetensors"
    total = int(args.size_gib * (1 << 30))
    if not plain.exists():
        per = 64 << 20
        tensors = {
            f"layer{i}.weight": torch.randn(per // 2, dtype=torch.bfloat16).view(4096, -1)
            for i in range(max(1, total // per))
        }
        save_file(tensors, str(plain))
        del tensors
    size = os.path.getsize(plain)
    key = FileKey.generate()
    sealed = {}
    for suite in (AEADSuite.CHACHA20_POLY1305, AEADSuite.AES_256_GCM):
        out = work / f"model.{suite.label}.wvlt"  # resealed every run: the key is new each time
        seal_safetensors(plain, out, file_key=key, options=SealOptions(suite), overwrite=True)
        sealed[suite] = out
    for path in (plain, *sealed.values()):  # into the page cache
        with path.open("rb") as f:
            while f.read(64 << 20):
                pass
    device = torch.device("cuda:0")

    def timed(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(args.repeat):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            del result
            torch.cuda.empty_cache()
        return statistics.median(times)

    host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    dest = torch.empty(size, dtype=torch.uint8, device=device)
    rows = {
        "safetensors load_file(cuda)": timed(lambda: st_load_file(str(plain), device="cuda:0")),
        "pinned H2D copy (ceiling)": timed(lambda: dest.copy_(host, non_blocking=True)),
        "weightvault chacha20 (GPU kernels)": timed(
            lambda: wv_torch.load_file(sealed[AEADSuite.CHACHA20_POLY1305], key, device)
        ),
        "weightvault aes-256-gcm (CPU + copy)": timed(
            lambda: wv_torch.load_file(sealed[AEADSuite.AES_256_GCM], key, device)
        ),
    }
    base = rows["safetensors load_file(cuda)"]
    print(
        f"\n{size / 1e9:.2f} GB bf16 model in the page cache, {torch.cuda.get_device_name(0)}, median of {args.repeat}"
    )
    print(f"{'loader':<38} {'seconds':>9} {'GB/s':>8} {'vs plain':>9}")
    for name, seconds in rows.items():
        print(f"{name:<38} {seconds:9.3f} {size / seconds / 1e9:8.1f} {base / seconds:8.2f}x")
    print("weightvault rows are time to a token-ready model: every tensor resident and every tag verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
