#!/usr/bin/env bash
# Session 14 call 1 (one H200; carry .bench_deps): where the step backward's time goes at (128, 160, 196, 8):
# (1) torch.profiler device time per kernel of fwd+bwd; (2) Nsight Compute (full set, SASS-level stall samples) of
# the backward kernel, branched and BRANCHLESS; (3) session 13's untimed BRANCHLESS configs timed fwd+bwd and checked
# against the fp32 reference at the MambaVision-T shapes.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
timeout 60 $P benchmarks/ops/experiments/ncu_scan_bwd.py --profile 2>&1 | grep -v Warning | tail -24 | tee $OUT/profile.txt
for b in 0 1; do
  timeout 100 $NCU --clock-control none --kernel-name regex:selective_scan_bwd_kernel --launch-skip 1 --launch-count 1 \
    --set full -o $OUT/bwd_branchless$b -f $P benchmarks/ops/experiments/ncu_scan_bwd.py --branchless $b \
    > $OUT/ncu_run$b.txt 2>&1; tail -3 $OUT/ncu_run$b.txt
  $NCU --import $OUT/bwd_branchless$b.ncu-rep --page details > $OUT/ncu_details$b.txt 2>&1
  $NCU --import $OUT/bwd_branchless$b.ncu-rep --page source --csv --print-source sass > $OUT/ncu_sass$b.csv 2>&1
  grep -E "Duration|Registers|Warp Cycles Per Issued|Issue Slots Busy|Achieved Occupancy|Stall" $OUT/ncu_details$b.txt | head -20
done
timeout 170 $P benchmarks/ops/experiments/scan_configs.py --kernel bwd --shapes 0 2 --dtypes bfloat16 float32 \
  --unroll 16 --bwd-spans 0 --budget-s 150 --out-dir $OUT 2>&1 | grep -v Warning | sed 's/num_ctas: 1, num_stages: 3, maxnreg: None//' | tee $OUT/configs.txt
