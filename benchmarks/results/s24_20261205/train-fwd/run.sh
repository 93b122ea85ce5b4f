#!/bin/bash
# Session 24's experiment: the training forward (checkpoints stored) of chunk.py at 0c6446d ("old") and with each
# patch of this folder applied ("nested", "block"), each config checked through a TILES backward and timed under CUDA
# graphs. From the repository root on the GPU machine: OUT=<dir> bash benchmarks/results/s24_20261205/train-fwd/run.sh
set -u
cd "$(dirname "$0")/../../../.."
HERE=benchmarks/results/s24_20261205/train-fwd
PY=/opt/torch/.venv/bin/python3; [ -x "$PY" ] || PY=python3
export PYTHONPATH=src PYTHONUNBUFFERED=1
ring='{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}'
split='{"BLOCK_D": 16, "SPLIT": 2, "PREFETCH": 8, "UNROLL": 8}'
p4='{"BLOCK_D": 32, "PREFETCH": 4, "UNROLL": 4}'
for v in ${VARIANTS:-old nested block}; do
  git checkout -q 0c6446d -- src/sfmamba/ops/selective_scan/chunk.py
  [ "$v" = old ] || git apply "$HERE/chunk_$v.patch"
  echo "=== $v $(date -u +%H:%M:%S)"
  timeout ${STEP_S:-170} "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --train --no-autotuned --shapes 0 2 \
    --dtypes bfloat16 float32 --chunks 0 --fwd-configs "$ring" "$split" "$p4" --precompile 12 --budget-s 100 \
    --out-dir "$OUT/$v" 2>&1 | grep -v Warning | tee "$OUT/$v.log"
done
git checkout -q HEAD -- src/sfmamba/ops/selective_scan/chunk.py
