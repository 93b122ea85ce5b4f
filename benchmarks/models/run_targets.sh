#!/usr/bin/env bash
# Issue #3 whole-model targets on the GPU machine (bs 128, 224 px, bf16 autocast; baselines in the same process).
# One STEP per device call keeps each call under the 10-minute limit; see benchmarks/models/README.md.
#
#   bash benchmarks/models/run_targets.sh STEP [STEP ...]
#   STEP: setup | smoke | eager | graph | compile-ours | compile-baselines | train | train-graph | train-fused |
#         compile-train | base | profile |
#         ablation
#         (cpu-smoke: the same plumbing on a CPU machine)
#
# Results (JSON + log) go to $OUT when set (the device runner's output folder), else benchmarks/results/.
# Env: PY (python; default the device's /opt/torch/.venv/bin/python3 when present), ITERS (default 200),
#      WARM (default 50), REPEATS (default 1; 5 for the numbers the issue reports as mean ± std over runs),
#      EXTRA (more `sfmamba bench` flags for every step, e.g. "--channels-last").
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

WHEELS=.bench_deps/wheels
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:$WHEELS/mambavision-1.2.0-py3-none-any.whl:$WHEELS/einops-0.8.1-py3-none-any.whl${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PY:-}" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then PY=/opt/torch/.venv/bin/python3; else PY=python3; fi
fi
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
COMMON=(-b 128 --img-size 224 --amp --amp-dtype bfloat16 --num-warm-iter "${WARM:-50}" --num-bench-iter "${ITERS:-200}"
        --repeats "${REPEATS:-1}" --official-scan mamba_ssm ${EXTRA:-})
TINY=(mambavision_tiny sf_mamba_tiny official:mamba_vision_T deit_small_patch16_224)

bench() {  # bench TAG ARGS... : one `sfmamba bench` run, its JSON and log named by TAG
  local tag=$1; shift
  echo "=== $tag: sfmamba bench $*"
  "$PY" -m sfmamba.cli.main bench "$@" --results-file "$RESULTS/models_${tag}_${STAMP}.json" 2>&1 \
    | tee "$RESULTS/models_${tag}_${STAMP}.log"
  [ "${PIPESTATUS[0]}" = 0 ] || echo "=== $tag: some models failed (see the table)"
}

step() {
  case "$1" in
    setup)  # mamba_ssm's selective_scan_cuda for the official baseline (reuses an existing build), then a check
      SKIP_SMOKE=${SKIP_SMOKE:-1} PY="$PY" bash .bench_deps/build_on_device.sh
      "$PY" -c "import torch, timm, triton, sfmamba, mamba_baseline; from sfmamba.bench.official import official_model; \
m = official_model('mamba_vision_T', scan='mamba_ssm'); print('official baseline OK', torch.__version__, timm.__version__, triton.__version__)"
      ;;
    cpu-smoke)  # the plumbing on a CPU box (wheels on PYTHONPATH, official code on our scan), no GPU needed
      bench cpu_smoke --device cpu --bench both --model mambavision_nano official:mamba_vision_T -b 2 --img-size 64 \
        --num-warm-iter 0 --num-bench-iter 1 --official-scan sfmamba
      ;;
    smoke)  # seconds: every model of the comparison builds and runs on the GPU
      bench smoke --bench both --model "${TINY[@]}" -b 8 --num-warm-iter 2 --num-bench-iter 3 --amp --cuda-graph
      ;;
    eager)             bench eager --bench inference --model "${TINY[@]}" "${COMMON[@]}" ;;
    graph)             bench graph --bench inference --model "${TINY[@]}" "${COMMON[@]}" --cuda-graph ;;
    compile-ours)      bench compile_ours --bench inference --model mambavision_tiny sf_mamba_tiny "${COMMON[@]}" \
                         --torchcompile --torchcompile-mode reduce-overhead ;;
    compile-baselines) bench compile_baselines --bench inference --model official:mamba_vision_T \
                         deit_small_patch16_224 "${COMMON[@]}" --torchcompile --torchcompile-mode reduce-overhead ;;
    train)             bench train --bench train --model "${TINY[@]}" "${COMMON[@]}" --num-warm-iter 10 \
                         --num-bench-iter 50 ;;
    train-graph)       bench train_graph --bench train --model "${TINY[@]}" "${COMMON[@]}" --num-warm-iter 10 \
                         --num-bench-iter 50 --cuda-graph ;;  # forward+backward replayed from CUDA graphs
    train-fused)       bench train_fused --bench train --model sf_mamba_tiny official:mamba_vision_T "${COMMON[@]}" \
                         --num-warm-iter 10 --num-bench-iter 50 --cuda-graph --opt adamw-fused ;;  # fused AdamW
    compile-train)     bench compile_train --bench train --model sf_mamba_tiny official:mamba_vision_T "${COMMON[@]}" \
                         --num-warm-iter 10 --num-bench-iter 50 --torchcompile --opt adamw-fused ;;
    base)              bench base --bench inference --model mambavision_base sf_mamba_base official:mamba_vision_B \
                         "${COMMON[@]}" --cuda-graph ;;
    profile)           bench profile_eager --bench profile --model "${TINY[@]}" "${COMMON[@]}" --num-bench-iter 10 \
                         --profile-top 30
                       bench profile_graph --bench profile --model mambavision_tiny sf_mamba_tiny \
                         official:mamba_vision_T "${COMMON[@]}" --num-bench-iter 10 --profile-top 30 --cuda-graph ;;
    ablation)          bench ablation --bench inference --cuda-graph "${COMMON[@]}" --model sf_mamba_tiny \
                         sf_mamba_tiny:fold=1 sf_mamba_tiny:aux_tokens=False sf_mamba_tiny:aux_tokens=False,fold=1 ;;
    *) echo "unknown step $1"; exit 2 ;;
  esac
}

[ $# -gt 0 ] || { sed -n '2,13p' "$0"; exit 2; }
for s in "$@"; do step "$s"; done
