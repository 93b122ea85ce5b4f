"""Where the scan kernels' time goes, from Nsight Compute: stall reasons, issue rate, occupancy and memory throughput
of the forward (summary + main pass), the chunk combine and the backward at one shape.

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy --section SchedulerStats \
        --section WarpStateStats --section LaunchStats --csv --page details \
        python benchmarks/ops/experiments/scan_ncu.py [--op scan|vmeanba] [--shape 0] [--dtype bfloat16] > ncu.csv
        [--fwd-config JSON] [--bwd-config JSON]

`--fwd-config` / `--bwd-config`: profile one step-kernel config instead of the autotuner's pick (e.g. the forward's
8-step ring against SPLIT, two lanes per channel). `pending_gpu.sh scan-ncu-split` collects the stall reasons so
(`--page raw` with `smsp__average_warps_issue_stalled_*` metrics) and prints them with `ncu_summary.py`.

`--op vmeanba`: the VMeanba SS2D path (`ops.vmeanba.cross.vmeanba_cross_merged`: channel means, reduced scans,
merged output) at VMamba-T stage 1 (x [128, 56, 56, 96], rank 6, N = 1), whose channel-mean kernel took 485 of its
664 us on the H100 (docs/vmeanba_evidence.md) while its instruction count allows ~120.

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


def vmeanba_step(dtype: torch.dtype):
    """One VMeanba SS2D forward at VMamba-T stage 1 (random weights shaped like the official ones)."""
    from sfmamba.ops.vmeanba.cross import vmeanba_cross_merged

    g = torch.Generator(device="cuda").manual_seed(0)
    batch, side, dim, rank, nstate, k = 128, 56, 96, 6, 1, 4

    def rand(*size, scale=1.0):
        return torch.randn(*size, device="cuda", generator=g) * scale

    x = rand(batch, side, side, dim).to(dtype)
    weights = (rand(k, rank + 2 * nstate, dim, scale=dim**-0.5), rand(k, dim, rank, scale=rank**-0.5),
               rand(k, dim, scale=0.5) - 4.0, -torch.rand(k * dim, nstate, device="cuda", generator=g) - 0.5,
               rand(k * dim))  # fmt: skip

    def step() -> None:
        with torch.no_grad():
            vmeanba_cross_merged(x, *weights)

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--op", choices=["scan", "vmeanba"], default="scan")
    parser.add_argument("--shape", type=int, default=0, help="scan: index into bench_selective_scan.MAIN_SHAPES")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--fwd-config", help='scan: force this step forward config (JSON kwargs, e.g. \'{"BLOCK_D": 16, '
                        '"PREFETCH": 8, "UNROLL": 8, "SPLIT": 2}\'; num_warps 1 unless given)')  # fmt: skip
    parser.add_argument("--bwd-config", help="scan: force this step backward config (JSON kwargs, as --fwd-config)")
    args = parser.parse_args()
    from sfmamba.ops.selective_scan import chunk

    force_config(chunk.selective_scan_fwd_kernel, args.fwd_config)
    force_config(chunk.selective_scan_bwd_kernel, args.bwd_config)
    if args.op == "vmeanba":
        return profile(vmeanba_step(getattr(torch, args.dtype)), f"vmeanba stage 1 {args.dtype}")
    layout, fn = providers(None)["sfmamba-BLD"]
    x = make_inputs(MAIN_SHAPES[args.shape], getattr(torch, args.dtype), layout, requires_grad=True, seed=0)
    dout = torch.randn_like(x["u"])

    def step() -> None:
        with torch.no_grad():
            fn(x)  # inference forward (no checkpoints)
        torch.autograd.grad(fn(x), [x[k] for k in GRAD_KEYS], dout)  # training forward + backward

    profile(step, f"{MAIN_SHAPES[args.shape]} {args.dtype} {layout}")


def force_config(kernel, text: str | None) -> None:
    """Make the autotuned `kernel` run the one config of JSON kwargs `text` (nothing when None)."""
    if text is None:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scan_configs import json_configs

    kernel.configs = json_configs([text], {})
    kernel.cache.clear()


def profile(step, label: str) -> None:
    """`step` once to autotune and compile, then once inside the profiled range."""
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"# profiled {label}", file=sys.stderr)


if __name__ == "__main__":
    main()
