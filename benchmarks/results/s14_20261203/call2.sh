#!/usr/bin/env bash
# Session 14 call 2 (one H200; carry .bench_deps): (1) the step backward's TILES configs (chunk states as a tuple of
# tiles in the step math's layout) against the [CHUNK, BN, BD] tensor, each checked against the fp32 reference and
# timed fwd+bwd at the MambaVision-T shapes; (2) the training step under CUDA graphs, sf_mamba_tiny vs the official
# MambaVision-T (#3's 1.5x target) with the new backward.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
timeout 200 $P benchmarks/ops/experiments/scan_configs.py --kernel bwd --shapes 0 2 --dtypes bfloat16 float32 \
  --unroll 16 --bwd-spans 0 --budget-s 180 --out-dir $OUT 2>&1 | grep -v Warning | sed 's/num_ctas: 1, num_stages: 3, maxnreg: None//' | tee $OUT/configs.txt
timeout 170 $P -m sfmamba.cli.main bench --bench train --model sf_mamba_tiny official:mamba_vision_T -b 128 \
  --img-size 224 --amp --amp-dtype bfloat16 --channels-last --official-scan mamba_ssm --num-warm-iter 10 \
  --num-bench-iter 50 --opt adamw-fused --cuda-graph --results-file $OUT/train_graph.json 2>&1 | tail -4 | tee $OUT/train.txt
