#!/usr/bin/env bash
# On a CUDA machine: the GPU kernel tests compiled on the device (bit-exact with the RFC 8439
# vectors, pyca/cryptography and the CPU loader, tampering included), then bench/gpu_load.py.
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
