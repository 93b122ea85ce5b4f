#!/usr/bin/env bash
# Session 12 call 1 (one H200): build the mamba_ssm baseline (background, 16 cores), sweep the step forward's new
# UNROLL x BLOCK_D x chunks-per-row settings at the MambaVision-T shapes (#2), then the direct-launch check with the
# autotuners trimmed to 2 configs (#3 eager host cost).
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
export PYTHONPATH=src
(COPY_SO_TO=$OUT SKIP_SMOKE=0 PY=$P timeout 420 bash .bench_deps/build_on_device.sh > $OUT/mamba_build.log 2>&1; echo "build rc $?" >> $OUT/mamba_build.log) &
timeout 330 $P -u benchmarks/ops/experiments/scan_configs.py --kernel fwd --shapes 0 2 --dtypes bfloat16 \
  --blocks 16 32 64 --warps 1 --fwd-unroll 1 2 4 --prefetch 1 --chunks 1 0 2 --rep-ms 40 --budget-s 300 2>&1 \
  | grep -v Warning | tee $OUT/fwd_sweep.txt | tail -70
cp benchmarks/results/scan_configs_fwd_*.json $OUT/ 2>/dev/null
SFMAMBA_DIRECT_LAUNCH=1 timeout 170 $P -u benchmarks/ops/check_direct_launch.py --max-configs 2 --out $OUT 2>&1 | tail -40
wait
tail -5 $OUT/mamba_build.log
