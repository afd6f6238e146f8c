# One task runner for people and CI. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned to the CPU build that pip finds locally on these machines; any
# torch the extras allow works elsewhere.
TORCH_SPEC ?= torch==2.13.0

.PHONY: all venv demo test lint typecheck unit unit-postgresql vectors vectors-check wheel-check vllm-check bench clean

all: test

$(STAMP): pyproject.toml scripts/system-deps.sh tests/differential/shamir/package-lock.json
	bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[torch,transformers,gpu,postgresql,s3,signing,tdx,nvidia,dev]'
	# The TPM extra compiles against libtss2; without it the TPM parts skip (and fail under CI=true).
	if pkg-config --exists tss2-esys 2>/dev/null; then \
		$(BIN)/python -m pip install --quiet -e '.[tpm]'; \
	else \
		echo "note: libtss2-dev missing, TPM support not installed"; \
	fi
	# The differential Shamir test's oracle (an independent implementation, under Node).
	if command -v npm >/dev/null; then \
		npm ci --prefix tests/differential/shamir --silent --no-audit --no-fund; \
	fi
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

vectors: $(STAMP)
	$(BIN)/python tests/vectors/format/generate.py

vectors-check: $(STAMP)
	$(BIN)/python tests/vectors/format/generate.py --check

unit: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

# The whole suite again with the broker on PostgreSQL (a server the run starts itself).
unit-postgresql: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --database postgresql

# The wheel users install, built and installed alone into a clean venv, then used (scripts/wheel-check.sh).
wheel-check: $(STAMP)
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" bash scripts/wheel-check.sh

# vLLM's CPU build serving sealed models (scripts/vllm-check.sh: a venv of its own, .venv-vllm).
vllm-check: $(STAMP)
	PYTHON=$(PYTHON) bash scripts/vllm-check.sh

test: lint typecheck vectors-check wheel-check vllm-check unit unit-postgresql

bench: $(STAMP)
	$(BIN)/python bench/cpu_load.py

clean:
	rm -rf $(VENV) .venv-vllm .mypy_cache .ruff_cache .pytest_cache
