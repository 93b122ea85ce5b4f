#!/usr/bin/env bash
# Session 13 call 2 (one H200; carry .bench_deps): the step backward walking whole rows (spans of chunks: no summary
# pass, no combine, one read of the inputs) against one chunk per program (span 1, the old behaviour): every backward
# config at each span, checked against the fp32 reference (forward and every gradient) and timed fwd+bwd (CUDA
# graphs); then the scan table vs mamba_ssm at the MambaVision-T shapes (--quick: L 196, 198, 49).
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
timeout 260 $P benchmarks/ops/experiments/scan_configs.py --kernel bwd --shapes 0 2 --dtypes bfloat16 float32 \
  --unroll 16 --bwd-spans 1 0 --budget-s 230 --out-dir $OUT 2>&1 | grep -v Warning
timeout 240 $P benchmarks/ops/bench_selective_scan.py --quick --timers graph --providers sfmamba-BLD mamba_ssm \
  --folds --out-dir $OUT 2>&1 | grep -v Warning | tail -26
