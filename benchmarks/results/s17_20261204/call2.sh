#!/usr/bin/env bash
# Session 17 call 2 (one H200; carry .bench_deps): mamba_ssm's selective_scan_cuda built (the .so comes back stripped,
# in 15 MiB parts, to skip later builds); the tuple forward with B_t/C_t by 16-byte loads (VECTOR_BC, the default where
# B/C rows are aligned) against scalar loads; tile vs tuple at N = 16 and at the VMamba-v2 shape (N = 1, G = 4).
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
export PYTHONPATH=src
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $OUT/log.txt
mkdir -p /tmp/so
COPY_SO_TO=/tmp/so SKIP_SMOKE=0 PY="$P" timeout 200 bash .bench_deps/build_on_device.sh 2>&1 | tail -8 | tee -a $OUT/log.txt
if [ -f /tmp/so/selective_scan_cuda.so ]; then
  strip --strip-debug /tmp/so/selective_scan_cuda.so 2>/dev/null; ls -la /tmp/so | tee -a $OUT/log.txt
  cp /tmp/so/BUILD_INFO.json $OUT/ && split -b 15M -d /tmp/so/selective_scan_cuda.so $OUT/so_part_
fi
mkdir -p /tmp/res
run() {  # name, timeout (s), then scan_configs arguments
  local name=$1 limit=$2; shift 2
  echo "=== $name" >> $OUT/log.txt
  timeout $limit $P benchmarks/ops/experiments/scan_configs.py --out-dir /tmp/res "$@" 2>&1 | grep -v Warning \
    | sed 's/num_ctas: 1, num_stages: 3, //; s/maxnreg: None//; s/chunks=0 span=0 unroll=16 //' | tee -a $OUT/log.txt
}
VEC=('{"STATE_TUPLE": 1, "BLOCK_D": 32, "PREFETCH": 2}' '{"STATE_TUPLE": 1, "BLOCK_D": 32}'
     '{"STATE_TUPLE": 1, "PREFETCH": 2}' '{"STATE_TUPLE": 1}')
run fwd_vec 110 --kernel fwd --shapes 0 2 --dtypes bfloat16 float32 --fwd-configs "${VEC[@]}" --budget-s 95
run fwd_scalar 45 --kernel fwd --shapes 0 2 --dtypes bfloat16 float32 --fwd-configs '{"STATE_TUPLE": 1}' \
  --no-vector-bc --budget-s 35
run fwd_n16 45 --kernel fwd --shapes --extra-shapes 128,160,196,16 --dtypes bfloat16 \
  --fwd-configs '{"STATE_TUPLE": 0}' '{"STATE_TUPLE": 0, "BLOCK_D": 32}' --budget-s 35
run fwd_vmamba 70 --kernel fwd --shapes 4 --dtypes bfloat16 \
  --fwd-configs '{"STATE_TUPLE": 0, "BLOCK_D": 128, "PREFETCH": 1, "UNROLL": 1}' --budget-s 50
tar czf $OUT/results.tgz -C /tmp res
