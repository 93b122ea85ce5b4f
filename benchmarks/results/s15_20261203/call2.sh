#!/usr/bin/env bash
# Session 15 call 2 (one H200; carry .bench_deps): the step backward's register cap. At 245 registers an SM holds 8
# one-warp programs, so (128, 320, 49, 8)'s 1280 programs take 1.2 waves; maxnreg 200 (192 registers, no spills in the
# sm_90 build) fits 10 per SM, 184 fits 11. Also two spans per row at L = 196 (1280 programs: summary pass + main).
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
run() {  # name, timeout (s), then scan_configs arguments
  local name=$1 limit=$2; shift 2
  timeout $limit $P benchmarks/ops/experiments/scan_configs.py --kernel bwd --unroll 16 --out-dir $OUT "$@" 2>&1 \
    | grep -v Warning | sed 's/num_ctas: 1, num_stages: 3, //; s/PREFETCH: 1, NEXT_TO_L1: 1, BRANCHLESS: 0, //' \
    | tee $OUT/$name.txt
}
CAPS=('{"TILES": 1}' '{"maxnreg": 200}' '{"maxnreg": 184}')
run caps_bf16 150 --shapes 2 0 --dtypes bfloat16 --bwd-spans 0 --budget-s 130 --bwd-configs "${CAPS[@]}"
run spans2_bf16 80 --shapes 0 --dtypes bfloat16 --bwd-spans 13 --budget-s 60 --bwd-configs "${CAPS[@]}"
run caps_fp32 60 --shapes 2 --dtypes float32 --bwd-spans 0 --budget-s 40 --bwd-configs "${CAPS[@]:0:2}"
