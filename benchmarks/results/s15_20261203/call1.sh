#!/usr/bin/env bash
# Session 15 call 1 (one H200; carry .bench_deps): the step backward with one channel per lane (LANES: no layout
# conversions through shared memory) and with BLOCK_D 16 (twice the programs), against session 14's default
# (BLOCK_D 32, TILES 1), each checked against the fp32 reference and timed fwd+bwd at the MambaVision-T shapes;
# then torch.profiler's per-kernel device time (bc_partials_kernel with int32 row arithmetic).
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
CONFIGS=('{"TILES": 1}' '{"LANES": 1}' '{"BLOCK_D": 16}' '{"BLOCK_D": 16, "maxnreg": 128}')
timeout 170 $P benchmarks/ops/experiments/scan_configs.py --kernel bwd --shapes 0 2 --dtypes bfloat16 \
  --unroll 16 --bwd-spans 0 --budget-s 150 --out-dir $OUT --bwd-configs "${CONFIGS[@]}" 2>&1 | grep -v Warning \
  | sed 's/num_ctas: 1, num_stages: 3, //' | tee $OUT/configs_bf16.txt
timeout 90 $P benchmarks/ops/experiments/scan_configs.py --kernel bwd --shapes 0 --dtypes float32 \
  --unroll 16 --bwd-spans 0 --budget-s 70 --out-dir $OUT --bwd-configs "${CONFIGS[@]}" 2>&1 | grep -v Warning \
  | sed 's/num_ctas: 1, num_stages: 3, //' | tee $OUT/configs_fp32.txt
timeout 60 $P benchmarks/ops/experiments/ncu_scan_bwd.py --profile 2>&1 | grep -v Warning | tail -16 | tee $OUT/profile.txt
