#!/usr/bin/env bash
# Session 13 call 1 (one H200; carry .bench_deps): the GPU check of every default scan-forward config (session 12's
# check_scan_fwd_configs.py, never run on a GPU), then session 12's call5 (scan table vs mamba_ssm + training step
# under CUDA graphs) to time the untimed session-12 changes (STORE_CKPT autotune key, own bench_l2_warm, fold 8/SM).
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
export PYTHONPATH=src
timeout 200 $P -u benchmarks/ops/check_scan_fwd_configs.py 2>&1 | grep -v Warning | tail -40
bash benchmarks/results/s12_20261203/call5.sh
