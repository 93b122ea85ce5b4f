#!/usr/bin/env bash
# Session 16 call 1 (one H200; no .bench_deps needed): where eager training's host time goes (cProfile and
# torch.profiler of sf_mamba_tiny's training step, bs 128, bf16, channels-last, fused AdamW) and its eager img/s;
# the backward's TILES 0 vs 1 at N = 16 and at VMamba's N = 1; the forward at L = 49 with BLOCK_D 16.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
export PYTHONPATH=src
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
timeout 100 $P benchmarks/models/host_profile.py --model sf_mamba_tiny --batch 128 --train --opt adamw-fused \
  --cprofile --top 60 --out $OUT/cprofile_train.txt > /dev/null 2>&1; head -3 $OUT/cprofile_train.txt
timeout 60 $P benchmarks/models/host_profile.py --model sf_mamba_tiny --batch 128 --train --opt adamw-fused \
  --top 60 --out $OUT/ops_train.txt > /dev/null 2>&1; head -1 $OUT/ops_train.txt
timeout 70 $P -m sfmamba.cli.main bench --bench train --model sf_mamba_tiny -b 128 --img-size 224 --amp \
  --amp-dtype bfloat16 --channels-last --num-warm-iter 10 --num-bench-iter 40 --opt adamw-fused --results-file $OUT/eager_train.json \
  2>&1 | grep -v Warning | tail -6 | tee $OUT/eager_train.txt
run() {  # name, timeout (s), then scan_configs arguments
  local name=$1 limit=$2; shift 2
  timeout $limit $P benchmarks/ops/experiments/scan_configs.py --out-dir $OUT "$@" 2>&1 | grep -v Warning \
    | sed 's/num_ctas: 1, num_stages: 3, //; s/PREFETCH: 1, NEXT_TO_L1: 1, BRANCHLESS: 0, //' | tee $OUT/$name.txt
}
run tiles_n16 70 --kernel bwd --unroll 16 --shapes --extra-shapes 128,160,196,16 --dtypes bfloat16 --budget-s 50 \
  --bwd-configs '{"TILES": 1}' '{"TILES": 0}'
run fwd_l49 50 --kernel fwd --shapes 2 --dtypes bfloat16 --blocks 16 32 --warps 1 --prefetch 2 4 --budget-s 35
run tiles_vmamba 80 --kernel bwd --unroll 16 --shapes 4 --dtypes bfloat16 --budget-s 50 \
  --bwd-configs '{"TILES": 1}' '{"TILES": 0}'
