#!/usr/bin/env bash
# Session 12 call 2 (one H200): the step forward's load ring (PREFETCH 2-8 steps ahead) x UNROLL x BLOCK_D, one
# chunk per row vs the planner's chunks, at the MambaVision-T shapes (#2); then the direct-launch check with the
# autotuners trimmed to 2 configs (#3 eager host cost).
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
export PYTHONPATH=src
timeout 300 $P -u benchmarks/ops/experiments/scan_configs.py --kernel fwd --shapes 0 2 --dtypes bfloat16 \
  --blocks 32 64 --warps 1 --fwd-unroll 1 4 --prefetch 2 4 8 --chunks 1 0 --rep-ms 40 --budget-s 270 2>&1 \
  | grep -v Warning > $OUT/fwd_sweep.txt
cp benchmarks/results/scan_configs_fwd_*.json $OUT/ 2>/dev/null
$P - <<'PY'
import json, glob, re
d = json.load(open(sorted(glob.glob("benchmarks/results/scan_configs_fwd_*.json"))[-1]))
for r in d["rows"]:
    m = re.search(r"BLOCK_D: (\d+), PREFETCH: (\d+), UNROLL: (\d+)", r["config"])
    cfg = "BD%s P%s U%s" % m.groups() if m else r["config"]
    print(r["shape"], "chunks", r["chunks"], "auto" if r["setting"] == "autotuned" else "    ", cfg,
          "%.1f" % r["us"][0], "flushed %.1f" % r["flushed_us"], "err %.0e" % r["rel_err"], r["regs_spills"])
PY
SFMAMBA_DIRECT_LAUNCH=1 timeout 200 $P -u benchmarks/ops/check_direct_launch.py --max-configs 2 --out $OUT 2>&1 | tail -40
