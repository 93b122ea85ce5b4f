# `make test` and `make demo` work on a fresh machine: they build the virtual environment themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sfmamba-installed
# torch/torchvision are pinned here (dev set-up), never in the library's requirements
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_WORKERS ?= 2
MAMBAVISION_WHEEL ?= mambavision==1.2.0

.PHONY: setup test lint bench-ops clean demo demo-data

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,bench,export]'
	# the official MambaVision code, only for tests/models/test_official_mambavision.py; --no-deps: its pins
	# (mamba-ssm, transformers, timm==1.0.15) are not wanted, the test supplies a stand-in mamba_ssm
	$(PY) -m pip install -q --no-deps $(MAMBAVISION_WHEEL)
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 tests

# Fashion-MNIST from Debian's package when absent (as root, or through sudo); `make demo FMNIST_DIR=...` uses a copy
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_ARGS ?=

demo-data:
	@if ls $(FMNIST_DIR)/t10k-labels-idx1-ubyte* >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	  echo "Fashion-MNIST is not in $(FMNIST_DIR) and installing it needs root: run 'apt-get install dataset-fashion-mnist' as root, or 'make demo FMNIST_DIR=<folder with the four IDX files>'" >&2; exit 1; fi; \
	echo "installing Debian's dataset-fashion-mnist (into /usr/share/datasets/fashion-mnist)"; \
	{ $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || { \
	  echo "could not install dataset-fashion-mnist with apt-get (no network, not Debian/Ubuntu, or no permission); put the four IDX files in a folder and run 'make demo FMNIST_DIR=<folder>'" >&2; exit 1; }

# OMP_WAIT_POLICY=PASSIVE: on a shared 2-core machine, spinning OpenMP threads made a training step 25x slower
demo: setup demo-data
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(VENV)/bin/sfmamba demo --data-dir $(FMNIST_DIR) $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench-ops: setup
	$(PY) benchmarks/ops/bench_selective_scan.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
