#!/usr/bin/env bash
# Session 17 call 4 (one H200; carry .bench_deps): (1) L1 hints AHEAD steps ahead in the forward (fp32 at L = 196 runs
# at ~21 % of copy bandwidth: few warps, few loads in flight); (2) every default forward config (the tuple layout,
# B_t/C_t by 16-byte loads where aligned) against the fp32 reference on the GPU (check_scan_fwd_configs.py: resets,
# chunk lengths, initial/last states, every gradient, N = 1/4/8/16, groups, fp16, B/C sliced from a projection);
# (3) the rest of issue #2's table (L = 49 and 51, fwd and fwd+bwd) against mamba_ssm.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
export PYTHONPATH=src:benchmarks/ops
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $OUT/log.txt
mkdir -p /tmp/res
echo "=== ahead" >> $OUT/log.txt
timeout 130 $P benchmarks/ops/experiments/scan_configs.py --out-dir /tmp/res --kernel fwd --shapes 0 2 \
  --dtypes float32 bfloat16 --fwd-configs '{}' '{"AHEAD": 8}' '{"AHEAD": 16}' \
  '{"BLOCK_D": 32, "PREFETCH": 2}' '{"BLOCK_D": 32, "PREFETCH": 2, "AHEAD": 16}' --budget-s 115 2>&1 \
  | grep -v Warning | sed 's/num_ctas: 1, num_stages: 3, maxnreg: None//; s/chunks=0 span=0 unroll=16 //' \
  | tee -a $OUT/log.txt
echo "=== check" >> $OUT/log.txt
timeout 260 $P benchmarks/ops/check_scan_fwd_configs.py --out /tmp/res 2>&1 | grep -v Warning | tee -a $OUT/log.txt
echo "=== table" >> $OUT/log.txt
PYTHONPATH=".bench_deps/ext:.bench_deps:src" timeout 150 $P benchmarks/ops/bench_selective_scan.py --timers graph \
  --folds --providers sfmamba-BLD mamba_ssm --shapes 2 3 --out-dir /tmp/res 2>&1 | grep -v Warning | tee -a $OUT/log.txt
tar czf $OUT/results.tgz -C /tmp res
