"""Run the selective scan's forward+backward at one shape with one backward config, for Nsight Compute (no timing
here): the stall breakdown of the step backward's main pass says what bounds it (memory latency, shuffles, issue).

    ncu --clock-control none --kernel-name regex:selective_scan_bwd_kernel --launch-skip 1 --launch-count 1 \
        --section WarpStateStats --section Occupancy --section SpeedOfLight --section MemoryWorkloadAnalysis \
        python benchmarks/ops/experiments/ncu_scan_bwd.py [--shape 0] [--dtype bfloat16] [--block-d 32] [--span 0] [--next-to-l1 1] [--branchless 0] [--tiles 1]

`--span`: chunks per backward program (`chunk.forced_bwd_span`; 0 = the planner's). Runs fwd+bwd three times.
`--profile`: instead, print torch.profiler's device time per kernel over 10 fwd+bwd runs (where the op's time goes
besides the backward kernel: the forward, the partial sums, casts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_selective_scan import MAIN_SHAPES, make_inputs, providers  # noqa: E402

from sfmamba.ops.selective_scan import chunk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, default=0, help="index into bench_selective_scan.MAIN_SHAPES")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--block-d", type=int, default=32)
    parser.add_argument("--span", type=int, default=0)
    parser.add_argument("--next-to-l1", type=int, default=1, choices=[0, 1])
    parser.add_argument("--branchless", type=int, default=0, choices=[0, 1])
    parser.add_argument("--tiles", type=int, default=1, choices=[0, 1])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    kernel = chunk.selective_scan_bwd_kernel
    kernel.configs = [
        triton.Config(
            {
                "BLOCK_D": args.block_d,
                "PREFETCH": 1,
                "NEXT_TO_L1": args.next_to_l1,
                "BRANCHLESS": args.branchless,
                "TILES": args.tiles,
            },
            num_warps=1,
        )
    ]
    chunk.forced_bwd_span = args.span or None
    shape = MAIN_SHAPES[args.shape]
    layout, fn = providers(None)["sfmamba-BLD"]
    inputs = make_inputs(shape, getattr(torch, args.dtype), layout, True, seed=0)
    for _ in range(3):
        out = fn(inputs)
        out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                out = fn(inputs)
                out.backward(torch.ones_like(out))
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=70))
    print(
        f"ran {shape} {args.dtype} BLOCK_D {args.block_d} span {args.span or 'planner'} next-to-L1 {args.next_to_l1} branchless {args.branchless} tiles {args.tiles}: {out.float().norm():.4g}"
    )


if __name__ == "__main__":
    main()
