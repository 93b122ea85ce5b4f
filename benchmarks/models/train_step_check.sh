#!/usr/bin/env bash
# One device call for issue #3's training target: the training ops checked and timed (bench_layer_norm.py,
# bench_linear_act.py, bench_batch_norm.py), the GPU kernel table of one sf_mamba_tiny training step (host_profile.py --train --kernels),
# and `sfmamba bench --bench train` of sf_mamba_tiny vs the official MambaVision-T (mamba_ssm) under CUDA graphs and
# eagerly, fused AdamW. Output under $OUT (default benchmarks/results/train_step_check). Carry .bench_deps.
#
#   OUT=... bash benchmarks/models/train_step_check.sh [OPT]        (OPT: adamw-fused by default)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT="${OUT:-benchmarks/results/train_step_check}"
OPT="${1:-adamw-fused}"
mkdir -p "$OUT"
P="${PY:-/opt/torch/.venv/bin/python3}"
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
C=(-b 128 --img-size 224 --amp --amp-dtype bfloat16 --channels-last --official-scan mamba_ssm --num-warm-iter 10
   --num-bench-iter 50 --opt "$OPT")
(cd benchmarks/ops && for b in bench_layer_norm bench_linear_act bench_batch_norm bench_drop_path; do
   timeout 120 "$P" $b.py --out "$OUT" 2>&1 | tail -8; done)
timeout 100 "$P" benchmarks/models/host_profile.py --model sf_mamba_tiny --train --kernels --opt "$OPT" --top 70 \
  --out "$OUT/hp_train_sf_mamba_tiny.txt" > /dev/null 2>&1 && head -1 "$OUT/hp_train_sf_mamba_tiny.txt"
for mode in graph eager; do
  flag=(); [ "$mode" = graph ] && flag=(--cuda-graph)
  timeout 160 "$P" -m sfmamba.cli.main bench --bench train --model sf_mamba_tiny official:mamba_vision_T "${C[@]}" \
    "${flag[@]}" --results-file "$OUT/train_${mode}.json" 2>&1 | tail -4
done
