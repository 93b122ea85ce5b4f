#!/usr/bin/env bash
# Session 16 call 2 (one H200; carry .bench_deps): build mamba_ssm's selective_scan_cuda, then eager training of
# sf_mamba_tiny with the fused training ops on (SFMAMBA_TRAIN_KERNELS=always, sessions 8-15's eager path) and off
# (never: PyTorch's Linear/GELU/LayerNorm/BatchNorm/addcmul/cat, C++ backward) against the official MambaVision-T in
# the same process, alternating processes (the device host's speed drifts); then CUDA-graph training with the
# default (auto: fused ops inside the graph capture) to check it keeps session 14's 1.558x.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
W=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$W/mambavision-1.2.0-py3-none-any.whl:$W/einops-0.8.1-py3-none-any.whl"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
COPY_SO_TO=$OUT PY=$P timeout 260 bash .bench_deps/build_on_device.sh > $OUT/mamba_build.log 2>&1; echo "build rc $?"
tail -4 $OUT/mamba_build.log
COMMON=(--model sf_mamba_tiny official:mamba_vision_T -b 128 --img-size 224 --amp --amp-dtype bfloat16 --channels-last
        --official-scan mamba_ssm --num-warm-iter 10 --num-bench-iter 40 --opt adamw-fused)
bench() {  # tag, timeout, then more flags
  local tag=$1 limit=$2; shift 2
  echo "=== $tag"
  timeout $limit $P -m sfmamba.cli.main bench --bench train "${COMMON[@]}" "$@" --results-file $OUT/$tag.json 2>&1 \
    | grep -v Warning | grep -A4 "^model " | tee $OUT/$tag.txt
}
SFMAMBA_TRAIN_KERNELS=never bench eager_never_1 70 --repeats 2
SFMAMBA_TRAIN_KERNELS=always bench eager_always_1 70 --repeats 2
SFMAMBA_TRAIN_KERNELS=never bench eager_never_2 70 --repeats 2
SFMAMBA_TRAIN_KERNELS=always bench eager_always_2 70 --repeats 2
bench graph_auto 90 --cuda-graph
