"""Where the scan kernels' time goes, from Nsight Compute: stall reasons, issue rate, occupancy and memory throughput
of the forward (summary + main pass), the chunk combine and the backward at one shape.

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy --section SchedulerStats \
        --section WarpStateStats --section LaunchStats --csv --page details \
        python benchmarks/ops/experiments/scan_ncu.py [--shape 0] [--dtype bfloat16] > ncu.csv

The script autotunes and compiles outside the profiled range (a warm-up forward+backward), then runs one
forward+backward inside `cudaProfilerStart/Stop`, so ncu sees only the timed launches. Why: at (128, 160, 196, 8)
the step forward issues about a third of the instructions its time allows (static count: 3.1 per channel-step at
BLOCK_D 128, `sass_loop_counts.py`; 65 us measured on an H200), so it waits on something -- load latency, MUFU, or
too few warps -- and only the stall counters can say which.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_selective_scan import GRAD_KEYS, MAIN_SHAPES, make_inputs, providers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, default=0, help="index into bench_selective_scan.MAIN_SHAPES")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    layout, fn = providers(None)["sfmamba-BLD"]
    x = make_inputs(MAIN_SHAPES[args.shape], getattr(torch, args.dtype), layout, requires_grad=True, seed=0)
    dout = torch.randn_like(x["u"])

    def step() -> None:
        with torch.no_grad():
            fn(x)  # inference forward (no checkpoints)
        torch.autograd.grad(fn(x), [x[k] for k in GRAD_KEYS], dout)  # training forward + backward

    step()  # autotune + compile
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"# profiled {MAIN_SHAPES[args.shape]} {args.dtype} {layout}", file=sys.stderr)


if __name__ == "__main__":
    main()
