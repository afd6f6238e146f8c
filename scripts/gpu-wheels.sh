#!/usr/bin/env bash
# Wheels that a GPU machine without network needs beside its own PyTorch, Triton,
# safetensors, transformers, numpy, hypothesis and pytest: weightvault's crypto and
# canonical-JSON dependencies, for CPython 3.12 on x86-64 Linux, into .whl/ (git-ignored).
# Then run scripts/gpu-check.sh there with .whl carried.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "cryptography>=48,<51" "cffi>=1.17" "pycparser" "rfc8785>=0.1.4,<0.2"
ls -1 .whl
