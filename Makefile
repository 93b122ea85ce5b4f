# `make test` and `make demo` work on a fresh machine: they build the virtual environment themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sfmamba-installed
# torch/torchvision are pinned here (dev set-up), never in the library's requirements
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_WORKERS ?= 2
MAMBAVISION_WHEEL ?= mambavision==1.2.0

.PHONY: setup test lint bench-ops clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,bench]'
	# the official MambaVision code, only for tests/models/test_official_mambavision.py; --no-deps: its pins
	# (mamba-ssm, transformers, timm==1.0.15) are not wanted, the test supplies a stand-in mamba_ssm
	$(PY) -m pip install -q --no-deps $(MAMBAVISION_WHEEL)
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 tests

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench-ops: setup
	$(PY) benchmarks/ops/bench_selective_scan.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
