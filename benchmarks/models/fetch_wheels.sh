#!/usr/bin/env bash
# Put the pure-Python wheels the official MambaVision baseline needs into .bench_deps/wheels/ (git-ignored), on a
# machine with network access; the GPU machine has none, so the folder travels with `.bench_deps` (run's `carry`).
# They are used straight from the wheel files on PYTHONPATH (zipimport), nothing is installed on the GPU machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PY:-.venv/bin/python}"
mkdir -p .bench_deps/wheels
"$PY" -m pip download --no-deps --dest .bench_deps/wheels mambavision==1.2.0 einops==0.8.1
ls -l .bench_deps/wheels
