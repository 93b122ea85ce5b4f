#!/usr/bin/env bash
# Session 17 call 3 (one H200; carry .bench_deps with ext/selective_scan_cuda.so from call 2): issue #2's table, the
# tuple forward (STATE_TUPLE, VECTOR_BC) vs mamba_ssm in the same run, fwd and fwd+bwd, 5 shapes, CUDA graphs; then the
# tuple vs tile forward at N = 16.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
export PYTHONPATH=src
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $OUT/log.txt
mkdir -p /tmp/res
PYTHONPATH=".bench_deps/ext:.bench_deps:src" timeout 330 $P benchmarks/ops/bench_selective_scan.py --timers graph \
  --folds --providers sfmamba-BLD mamba_ssm --out-dir /tmp/res 2>&1 | grep -v Warning | tee -a $OUT/log.txt | tail -45
echo "=== n16" >> $OUT/log.txt
timeout 60 $P benchmarks/ops/experiments/scan_configs.py --out-dir /tmp/res --kernel fwd --shapes \
  --extra-shapes 128,160,196,16 --dtypes bfloat16 --fwd-configs '{"STATE_TUPLE": 0, "BLOCK_D": 32}' \
  '{"STATE_TUPLE": 1, "BLOCK_D": 32, "PREFETCH": 2}' --budget-s 45 2>&1 | grep -v Warning | tee -a $OUT/log.txt
tar czf $OUT/results.tgz -C /tmp res
