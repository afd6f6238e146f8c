"""Loading a model into vLLM, sealed (the weightvault load format) against plain safetensors.

Runs in vLLM's environment (``make vllm-check`` builds .venv-vllm):
``.venv-vllm/bin/python bench/vllm_load.py``. Builds a Llama of --layers layers and
--hidden width with random weights (float32, about 0.4 GB at the defaults), saves it as
safetensors and seals it (AES-256-GCM, a key file), then starts vLLM on each, round after
round in the same order (interleaved), each in a fresh process, and reads two times from
vLLM's log: ``Loading weights took`` (the loader's part: vLLM's own safetensors loader, or
weightvault's, which also opens the key and verifies every chunk) and the whole start of the
engine (``LLM(...)`` returning). Prints min and median of both and the ratios.

Usage: .venv-vllm/bin/python bench/vllm_load.py [--layers 8] [--hidden 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_LOADING = re.compile(r"Loading weights took ([0-9.]+) seconds")
_CHILD = """
import sys, time
from vllm import LLM
if __name__ == "__main__":
    t0 = time.perf_counter()
    LLM(model=sys.argv[1], load_format=sys.argv[2], model_loader_extra_config={extra},
        skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=128, max_num_seqs=1)
    print(f"ENGINE {{time.perf_counter() - t0:.3f}}", flush=True)
"""


def _start(model: Path, load_format: str, extra: dict[str, str]) -> tuple[float, float]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    script = _CHILD.format(extra=repr(extra))
    done = subprocess.run(
        [sys.executable, "-c", script, str(model), load_format], capture_output=True, text=True, env=env, check=False
    )
    out = done.stdout + done.stderr
    engine = [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("ENGINE ")]
    loading = [float(m) for m in _LOADING.findall(out)]
    if done.returncode != 0 or not engine or not loading:
        raise RuntimeError(out[-3000:])
    return loading[-1], engine[0]


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import torch
    from bench.cpu_load import cpu_model
    from transformers import LlamaConfig, LlamaForCausalLM

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wv-vllm-bench-"))
    try:
        config = LlamaConfig(
            vocab_size=8192, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
            num_key_value_heads=args.hidden // 64, max_position_embeddings=128, tie_word_embeddings=False,
        )  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(work / "plain", safe_serialization=True)
        size = sum(p.stat().st_size for p in (work / "plain").glob("*.safetensors"))
        subprocess.run(
            [sys.executable, "-m", "weightvault", "seal", str(work / "plain"), str(work / "sealed"),
             "--key-out", str(work / "file.key")],
            check=True, capture_output=True,
        )  # fmt: skip
        methods = {
            "plain (vLLM's loader)": (work / "plain", "auto", {}),
            "sealed (weightvault)": (work / "sealed", "weightvault", {"identity": str(work / "file.key")}),
        }
        for model, fmt, extra in methods.values():  # warm: page cache, vLLM's imports
            _start(model, fmt, extra)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, (model, fmt, extra) in methods.items():
                results[name].append(_start(model, fmt, extra))
        print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}; {args.rounds} rounds")
        print(f"model: Llama, {args.layers} layers, width {args.hidden}, {size / 1e9:.2f} GB of float32 weights")
        print(f"{'method':<24} {'load min s':>10} {'load median s':>14} {'GB/s':>6} {'engine median s':>16}")
        medians = {}
        for name, runs in results.items():
            loads, engines = [r[0] for r in runs], [r[1] for r in runs]
            medians[name] = (statistics.median(loads), statistics.median(engines))
            rate = size / medians[name][0] / 1e9
            print(f"{name:<24} {min(loads):>10.2f} {medians[name][0]:>14.2f} {rate:>6.2f} {medians[name][1]:>16.1f}")
        (plain_load, plain_engine), (sealed_load, sealed_engine) = medians.values()
        print(f"sealed / plain: {plain_load / sealed_load:.2f}x the weight-loading throughput")
        print(f"sealed / plain: {sealed_engine / plain_engine:.2f}x the engine start time")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
