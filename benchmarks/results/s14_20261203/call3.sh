#!/usr/bin/env bash
# Session 14 call 3 (one H200; carry .bench_deps): (1) TILES 0/1 at (128, 320, 49, 8) bf16 (call 2 ran out of its
# budget before it); (2) the scan table vs mamba_ssm at the MambaVision-T shapes (--quick: L 196, 198, 49; graph
# timers; no folds), the backward's default configs now BLOCK_D 32 with TILES 1 and 0.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
timeout 100 $P benchmarks/ops/experiments/scan_configs.py --kernel bwd --shapes 2 --dtypes bfloat16 \
  --unroll 16 --bwd-spans 0 --budget-s 80 --out-dir $OUT 2>&1 | grep -v Warning | sed 's/num_ctas: 1, num_stages: 3, maxnreg: None//' | tee $OUT/configs.txt
timeout 250 $P benchmarks/ops/bench_selective_scan.py --quick --timers graph --providers sfmamba-BLD mamba_ssm \
  --folds --out-dir $OUT 2>&1 | grep -v Warning | tail -26 | tee $OUT/table.txt
