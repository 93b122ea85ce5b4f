#!/usr/bin/env bash
# Session 17 call 1 (one H200; no .bench_deps needed): the step forward with its state as a tuple of N [BLOCK_D] rows
# (STATE_TUPLE 1: no shuffles, no layout conversions) against session 12's pick (BLOCK_D 64, PREFETCH 4, UNROLL 4,
# [N, BD] tile), inference forward at (128, 160, 196, 8) and (128, 320, 49, 8), bf16 and fp32; then fwd+bwd with the
# training forward restricted to each layout.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
export PYTHONPATH=src
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
run() {  # name, timeout (s), then scan_configs arguments
  local name=$1 limit=$2; shift 2
  timeout $limit $P benchmarks/ops/experiments/scan_configs.py --out-dir $OUT "$@" 2>&1 | grep -v Warning \
    | sed 's/num_ctas: 1, num_stages: 3, //; s/maxnreg: None//' | tee $OUT/$name.txt
}
CONFIGS=('{"STATE_TUPLE": 0}' '{"STATE_TUPLE": 1, "BLOCK_D": 32, "PREFETCH": 2}' '{"STATE_TUPLE": 1, "BLOCK_D": 32}'
         '{"STATE_TUPLE": 1, "PREFETCH": 2}' '{"STATE_TUPLE": 1}' '{"STATE_TUPLE": 1, "BLOCK_D": 128, "PREFETCH": 2}')
run fwd 200 --kernel fwd --shapes 0 2 --dtypes bfloat16 float32 --fwd-configs "${CONFIGS[@]}" --budget-s 170
run fwdbwd_tile 40 --kernel bwd --unroll 16 --shapes 0 --dtypes bfloat16 --budget-s 20 --bwd-configs '{"TILES": 1}' \
  --fwd-configs '{"STATE_TUPLE": 0}'
run fwdbwd_tuple 40 --kernel bwd --unroll 16 --shapes 0 --dtypes bfloat16 --budget-s 20 --bwd-configs '{"TILES": 1}' \
  --fwd-configs '{"STATE_TUPLE": 1, "BLOCK_D": 32}' '{"STATE_TUPLE": 1}'
