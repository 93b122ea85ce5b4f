#!/usr/bin/env bash
# Session 12 call 5 (one H200; carry .bench_deps): call 3 again after the scan forward's autotuner switched to
# timing configs on L2-resident inputs (graph replay, no flush): the scan table vs mamba_ssm, then the training step
# under CUDA graphs.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
timeout 330 $P benchmarks/ops/bench_selective_scan.py --timers graph --providers sfmamba-BLD mamba_ssm --folds \
  --out-dir $OUT 2>&1 | grep -v Warning | tail -22
timeout 200 $P -m sfmamba.cli.main bench --bench train --model sf_mamba_tiny official:mamba_vision_T -b 128 \
  --img-size 224 --amp --amp-dtype bfloat16 --channels-last --official-scan mamba_ssm --num-warm-iter 10 \
  --num-bench-iter 50 --opt adamw-fused --cuda-graph --results-file $OUT/train_graph.json 2>&1 | tail -4
