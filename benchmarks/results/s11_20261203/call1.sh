#!/usr/bin/env bash
# Session 11 call 1: the narrow tiled forward on VMeanba's reduced scans (#4 scan-only target), one H200.
set -uo pipefail
P=/opt/torch/.venv/bin/python3
export PYTHONPATH=src SFMAMBA_DIRECT_LAUNCH=0
X=benchmarks/ops/experiments/scan_tiled_vs_step.py
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 90 $P $X --shapes 3 4 --kernels step --dtypes bf16 fp32 --out $OUT/sweep_step.json 2>&1 | grep -v Warning | tail -12
timeout 270 $P $X --shapes 3 --kernels tiled --dtypes bf16 fp32 --chunk-lens 0 3136 1568 784 392 \
  --out $OUT/sweep_tiled.json 2>&1 | grep -v Warning | tail -30
timeout 80 $P $X --shapes 4 --kernels tiled --dtypes bf16 fp32 --chunk-lens 0 784 392 \
  --out $OUT/sweep_tiled_784.json 2>&1 | grep -v Warning | tail -14
(cd benchmarks/ops && timeout 140 $P bench_vmeanba.py --cuda-graph --shapes 0 1 --output $OUT/vmeanba_graph.json 2>&1 | tail -12)
PYTHONPATH=src SFMAMBA_DIRECT_LAUNCH=1 timeout 90 $P benchmarks/ops/check_direct_launch.py --out $OUT 2>&1 | tail -30
