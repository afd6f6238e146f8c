#!/usr/bin/env bash
# On a CUDA machine: the GPU kernel tests compiled on the device (bit-exact with the RFC 8439
# vectors, pyca/cryptography and the CPU loader, tampering included), then bench/gpu_load.py,
# then, where vLLM is installed, tests/vllm on the GPU (the weightvault load format).
# With no network there, first run scripts/gpu-wheels.sh here and carry .whl/.
#   usage: bash scripts/gpu-check.sh [--size-gib 4] [--repeat 3]
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wv-site .whl/*.whl
  export PYTHONPATH="/tmp/wv-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import sys, torch, triton; print('torch', torch.__version__, 'triton', triton.__version__); sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device here')"
# Warnings stay warnings there: another torch or Triton may deprecate something without failing the check.
python3 -m pytest -q -p no:cacheprovider -o addopts="" -W default tests/unit/gpu
python3 bench/gpu_load.py "$@"
# vLLM finds its plugins through installed entry points; from a source tree on PYTHONPATH there
# is none, so a minimal dist-info declares weightvault's (the same line as pyproject.toml).
if python3 -c "import vllm" 2>/dev/null; then
  plugin=/tmp/wv-vllm-plugin/weightvault_vllm_plugin-0.dist-info
  mkdir -p "$plugin"
  printf 'Metadata-Version: 2.1\nName: weightvault-vllm-plugin\nVersion: 0\n' >"$plugin/METADATA"
  printf '[vllm.general_plugins]\nweightvault = weightvault.serving.vllm:register\n' >"$plugin/entry_points.txt"
  PYTHONPATH="/tmp/wv-vllm-plugin:$PYTHONPATH" python3 -m pytest -q -p no:cacheprovider -o addopts="" --noconftest -W default tests/vllm
else
  echo "gpu-check: vLLM is not installed here: the vLLM load format was not checked on the GPU"
fi
