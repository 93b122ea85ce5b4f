#!/usr/bin/env bash
# Session 14 call 4 (one H200; carry .bench_deps): the backward's partial sums in two Triton launches (partials.py)
# instead of five torch reductions and three copies: (1) torch.profiler device time per kernel of a (128, 160, 196, 8)
# bf16 fwd+bwd; (2) the bf16 scan table vs mamba_ssm at the MambaVision-T shapes (--quick, graph timers, no folds).
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
timeout 70 $P benchmarks/ops/experiments/ncu_scan_bwd.py --profile 2>&1 | grep -v Warning | tail -24 | tee $OUT/profile.txt
timeout 200 $P benchmarks/ops/bench_selective_scan.py --quick --timers graph --providers sfmamba-BLD mamba_ssm \
  --folds --dtypes bf16 --out-dir $OUT 2>&1 | grep -v Warning | tail -14 | tee $OUT/table.txt
