#!/usr/bin/env bash
# Session 11 call 2: the narrow tiled forward with block prefetch and one chunk per row (#4 scan-only), the #4 op
# benchmark at VMamba-T stage 1, and the direct-launch GPU check. One H200.
set -uo pipefail
P=/opt/torch/.venv/bin/python3
export PYTHONPATH=src
X=benchmarks/ops/experiments/scan_tiled_vs_step.py
timeout 150 $P -u $X --shapes 3 4 --kernels tiled --dtypes bf16 fp32 --out $OUT/sweep_tiled.json 2>&1 | grep -v Warning | tail -9
(cd benchmarks/ops && timeout 170 $P -u bench_vmeanba.py --cuda-graph --shapes 0 --layouts BLD \
  --output $OUT/vmeanba_graph.json 2>&1 | tail -6)
SFMAMBA_DIRECT_LAUNCH=1 timeout 200 $P -u benchmarks/ops/check_direct_launch.py --out $OUT 2>&1 | tail -45
