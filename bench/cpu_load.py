"""CPU load benchmark: plain safetensors against sealed loads, interleaved in one run.

Generates a safetensors file of --size-gib GiB (random bf16 tensors of 64 MiB), seals
it with AES-256-GCM and with ChaCha20-Poly1305, keeps every file in the page cache,
then loads each way in a fresh process, round after round in the same order (A B C
... A B C ...), so slow phases of a noisy machine hit every method alike:

* ``plain``: ``safetensors.torch.load_file`` followed by ``clone()`` of each tensor, so
  the result owns its memory like ours does;
* ``<suite> xN``: ``weightvault.loaders.torch.load_file`` with N decrypting workers, for
  N = 1 .. the usable CPUs (the scaling table), both suites. Each worker reads, takes
  the page faults of fresh memory and decrypts, so x1 does all three on one core.

For each method it prints the min, median and spread ((max - min) / median) of the
throughput, the ratio of its median and of its min to plain's, and the peak memory of
the load as a multiple of the model size (VmHWM, reset in the fresh process just before
the load, so the import of torch does not count). Then seal throughput with 1 and N
workers (min and median of up to three interleaved rounds), and which CPU it ran on.

On a virtual machine the first write to guest memory the host never backed is slow,
and which loader happens to receive such memory skews the comparison: the benchmark
first touches --warm-memory-gib GiB in a throwaway process (default: most of the free
memory). Sealed loads put large tensors on 2 MiB huge pages unless the host reclaims
free guest memory (``weightvault.loaders._host``); the run says which it used.

With ``--baseline-src``, the loader of another source tree joins every round (its own
sealer writes its own file), e.g. the commit before a change:
``git worktree add /tmp/base <commit>`` then ``--baseline-src /tmp/base/src``.

Usage: python bench/cpu_load.py [--size-gib 2] [--rounds 5] [--workdir DIR] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
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
import json, sys, time
mode, path, key, workers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
import torch

def status(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0

if mode == "plain":
    from safetensors.torch import load_file
    def run():
        return {k: v.clone() for k, v in load_file(path).items()}
else:
    from weightvault import FileKey
    from weightvault.loaders.torch import load_file as wv_load
    fk = FileKey(bytes.fromhex(key))
    kwargs = {} if workers == "-" else {"workers": int(workers)}  # "-": a tree from before the pool
    def run():
        return wv_load(path, fk, **kwargs)
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset VmHWM to the current RSS: the peak counts from here
base = status("VmRSS")
t0 = time.perf_counter()
out = run()
seconds = time.perf_counter() - t0
nbytes = sum(t.numel() * t.element_size() for t in out.values())
print(json.dumps({"seconds": seconds, "bytes": nbytes, "peak": status("VmHWM") - base}))
"""


SEAL = r"""
import sys
from weightvault import AEADSuite, FileKey, SealOptions, seal_safetensors
suite = next(s for s in AEADSuite if s.label == sys.argv[3])
key, options = FileKey(bytes.fromhex(sys.argv[4])), SealOptions(suite=suite)
seal_safetensors(sys.argv[1], sys.argv[2], file_key=key, options=options, overwrite=True)
"""


def seal_with(tree: Path, plain: Path, out: Path, label: str, key: str) -> None:
    """Seal ``plain`` with the weightvault of another source tree (a baseline)."""
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    subprocess.run([sys.executable, "-c", SEAL, str(plain), str(out), label, key], check=True, env=env)


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


def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def measure(mode: str, path: Path, key: str, workers: str, src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path), key, workers],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--warm-memory-gib", type=float, default=None)
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="the src/ of another weightvault tree (e.g. a git worktree of an older commit): its loader joins the run",
    )
    args = parser.parse_args()

    src = Path(__file__).resolve().parents[1] / "src"
    sys.path.insert(0, str(src))
    from weightvault import AEADSuite, FileKey, SealOptions, seal_safetensors
    from weightvault.loaders._host import huge_pages_pay
    from weightvault.sealing.workers import usable_cpus

    cpus = usable_cpus()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wv-bench-"))
    if args.workdir is None:  # a scratch directory of this run's own: removed at exit
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    plain = workdir / "plain.safetensors"
    size = int(args.size_gib * (1 << 30))
    if not plain.exists() or plain.stat().st_size < size:
        write_plain(plain, size)
    file_key = FileKey.generate()
    data_bytes = plain.stat().st_size
    sealed = {suite.label: workdir / f"sealed-{suite.label}.wvlt" for suite in AEADSuite}
    seal_rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(max(1, min(args.rounds, 3))):  # interleaved too; each seal writes and fsyncs the whole file
        for suite in AEADSuite:
            for workers in sorted({1, cpus}):
                warm(plain)
                t0 = time.perf_counter()
                options = SealOptions(suite=suite, workers=workers)
                seal_safetensors(plain, sealed[suite.label], file_key=file_key, options=options, overwrite=True)
                rate = data_bytes / (time.perf_counter() - t0) / 1e9
                seal_rates.setdefault((suite.label, workers), []).append(rate)
    key = file_key.reveal().hex()
    warm_memory(args.warm_memory_gib if args.warm_memory_gib is not None else max(0.0, free_gib() - 3.0))

    methods: list[tuple[str, str, Path, str, Path]] = [("plain safetensors + clone", "plain", plain, "-", src)]
    for label, path in sealed.items():
        if args.baseline_src is not None:
            old = workdir / f"baseline-{label}.wvlt"
            seal_with(args.baseline_src, plain, old, label, key)  # its own format version, its own sealer
            methods.append((f"{label} baseline", "sealed", old, "-", args.baseline_src.resolve()))
        methods += [(f"{label} x{n}", "sealed", path, str(n), src) for n in range(1, cpus + 1)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in methods}
    for round_ in range(args.rounds + 1):  # round 0 warms page cache and allocator paths; it is dropped
        for name, mode, path, threads, tree in methods:
            warm(path)
            result = measure(mode, path, key, threads, tree)
            if round_:
                runs[name].append(result)

    print(
        f"\nCPU load of {data_bytes / 2**30:.2f} GiB (bf16, in the page cache) on {cpu_model()}, "
        f"{cpus} usable CPUs; {args.rounds} rounds, methods interleaved, each load in a fresh process."
    )
    print(
        "tensor buffers: "
        + ("2 MiB huge pages" if huge_pages_pay() else "4 KiB pages (the host reclaims free memory, or disabled)")
        + " (WEIGHTVAULT_HUGEPAGES=auto|1|0 chooses)"
    )
    header = f"{'loader':28} {'min GB/s':>9} {'median':>8} {'spread':>7} {'x plain':>8} {'(min)':>6} {'peak/model':>11}"
    print(header)
    rates = {name: [r["bytes"] / r["seconds"] / 1e9 for r in kept] for name, kept in runs.items()}
    base_med = statistics.median(rates[methods[0][0]])
    base_min = min(rates[methods[0][0]])
    for name, values in rates.items():
        med, low = statistics.median(values), min(values)
        spread = (max(values) - low) / med
        peak = statistics.median(r["peak"] / r["bytes"] for r in runs[name])
        print(f"{name:28} {low:9.2f} {med:8.2f} {spread:7.0%} {med / base_med:8.2f} {low / base_min:6.2f} {peak:11.2f}")
    print("\nscaling (median throughput with N workers / with 1):")
    for label in sealed:
        one = statistics.median(rates[f"{label} x1"])
        steps = ", ".join(f"x{n}: {statistics.median(rates[f'{label} x{n}']) / one:.2f}" for n in range(1, cpus + 1))
        print(f"  {label:20} {steps}")
        if args.baseline_src is not None:
            best = statistics.median(rates[f"{label} x{cpus}"])
            print(f"  {'':20} x{cpus} / baseline: {best / statistics.median(rates[f'{label} baseline']):.2f}")
    print(f"\nseal throughput, GB/s (source in the page cache; the output is fsynced once, in {workdir}):")
    for (label, workers), values in seal_rates.items():
        print(f"  {label:20} x{workers}: min {min(values):5.2f}  median {statistics.median(values):5.2f}")


if __name__ == "__main__":
    main()
