"""CPU load benchmark: plain safetensors against sealed loads, measured side by side in one run.

Generates a safetensors file of --size-gib GiB (random bf16 tensors of 64 MiB),
seals it with AES-256-GCM and with ChaCha20-Poly1305, makes sure all files are
in the page cache, then measures in fresh subprocesses (so every run starts with
the same allocator state and its peak memory can be read):

* plain: ``safetensors.torch.load_file`` followed by ``clone()`` of each tensor,
  so the result owns its memory like ours does;
* sealed: ``weightvault.loaders.torch.load_file`` for each suite;
* seal throughput for each suite.

Prints GB/s, the ratio to plain, and the peak memory beyond the loaded tensors.

On a virtual machine the first write to guest memory that the host never
backed is very slow (measured here: about 0.5 GB/s), and which loader happens
to receive such memory skews the comparison. The benchmark therefore first
touches --warm-memory-gib GiB of memory in a throwaway process (default: most
of the free memory), so every loader runs on memory the host already backs.

Sealed loads put large tensors on 2 MiB huge pages unless the host reclaims free
guest memory (``weightvault.loaders._host``); the run says which it used.

Usage: python bench/cpu_load.py [--size-gib 2] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TENSOR_BYTES = 64 << 20


def write_plain(path: Path, size: int) -> None:
    """A safetensors file of random bf16 tensors, written in a stream."""
    count = max(1, size // TENSOR_BYTES)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i in range(count):
        header[f"layers.{i}.weight"] = {
            "dtype": "BF16",
            "shape": [TENSOR_BYTES // 2 // 4096, 4096],
            "data_offsets": [i * TENSOR_BYTES, (i + 1) * TENSOR_BYTES],
        }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        block = os.urandom(TENSOR_BYTES)
        for i in range(count):
            out.write(block[i % 7 :] + block[: i % 7])


def warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(64 << 20):
            pass


CHILD = r"""
import json, resource, sys, time
mode, path, key = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
if mode == "plain":
    from safetensors.torch import load_file
    def run():
        return {k: v.clone() for k, v in load_file(path).items()}
else:
    from weightvault import FileKey
    from weightvault.loaders.torch import load_file as wv_load
    fk = FileKey(bytes.fromhex(key))
    def run():
        return wv_load(path, fk)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
out = run()
cold = time.perf_counter() - t0
nbytes = sum(t.numel() * t.element_size() for t in out.values())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
del out
t0 = time.perf_counter()
out = run()
warm = time.perf_counter() - t0
print(json.dumps({"cold": cold, "warm": warm, "bytes": nbytes, "extra": peak - base - nbytes}))
"""


WARM = r"""
import mmap, sys
size = int(sys.argv[1])
region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
if hasattr(mmap, "MADV_HUGEPAGE"):
    region.madvise(mmap.MADV_HUGEPAGE)
for offset in range(0, size, 4096):
    region[offset] = 1
"""


def warm_memory(gib: float) -> None:
    """Touch ``gib`` GiB once so that the hypervisor backs it before anything is timed."""
    if gib > 0:
        subprocess.run([sys.executable, "-c", WARM, str(int(gib * (1 << 30)))], check=True)


def free_gib() -> float:
    with open("/proc/meminfo") as handle:
        info = {line.split(":")[0]: int(line.split()[1]) for line in handle}
    return info.get("MemFree", 0) / (1 << 20)


def measure(mode: str, path: Path, key: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path), key], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--warm-memory-gib", type=float, default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from weightvault import AEADSuite, FileKey, SealOptions, seal_safetensors
    from weightvault.loaders._host import huge_pages_pay

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wv-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plain = workdir / "plain.safetensors"
    size = int(args.size_gib * (1 << 30))
    if not plain.exists() or plain.stat().st_size < size:
        write_plain(plain, size)
    file_key = FileKey.generate()
    sealed: dict[str, Path] = {}
    seal_rates: dict[str, float] = {}
    data_bytes = plain.stat().st_size
    for suite in AEADSuite:
        out = workdir / f"sealed-{suite.label}.wvlt"
        warm(plain)
        t0 = time.perf_counter()
        seal_safetensors(plain, out, file_key=file_key, options=SealOptions(suite=suite), overwrite=True)
        seal_rates[suite.label] = data_bytes / (time.perf_counter() - t0) / 1e9
        sealed[suite.label] = out
    key = file_key.reveal().hex()
    warm_memory(args.warm_memory_gib if args.warm_memory_gib is not None else max(0.0, free_gib() - 3.0))
    rows: dict[str, list[dict[str, float]]] = {"plain safetensors + clone": []}
    rows.update({f"weightvault {label}": [] for label in sealed})
    for _ in range(args.repeat + 1):  # the first round warms the page cache and is discarded
        for name, runs in rows.items():
            path = plain if name.startswith("plain") else sealed[name.split()[1]]
            warm(path)
            runs.append(measure("plain" if name.startswith("plain") else "sealed", path, key))
    print(
        f"\nCPU load, {data_bytes / 2**30:.2f} GiB in the page cache, {os.cpu_count()} CPUs, median of "
        f"{args.repeat} fresh processes (loaders interleaved). cold = first load in the process, "
        "warm = second load in the same process."
    )
    print(
        "tensor buffers use "
        + ("2 MiB huge pages" if huge_pages_pay() else "4 KiB pages (the host reclaims free memory, or disabled)")
        + "; WEIGHTVAULT_HUGEPAGES=auto|1|0 chooses"
    )
    print(f"{'loader':32} {'cold GB/s':>10} {'ratio':>6} {'warm GB/s':>10} {'ratio':>6} {'extra peak MiB':>15}")
    base: dict[str, float] = {}
    for name, runs in rows.items():
        kept = runs[1:]
        line = f"{name:32}"
        for phase in ("cold", "warm"):
            rate = statistics.median(r["bytes"] / r[phase] / 1e9 for r in kept)
            base.setdefault(phase, rate)
            line += f" {rate:10.2f} {rate / base[phase]:6.2f}"
        extra = statistics.median(r["extra"] for r in kept) / 2**20
        print(f"{line} {extra:15.0f}")
    print("\nseal throughput (write to page cache, fsync included)")
    for label, rate in seal_rates.items():
        print(f"  {label:32} {rate:8.2f} GB/s")


if __name__ == "__main__":
    main()
