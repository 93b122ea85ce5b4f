"""Where a selective-scan training step's GPU time goes: every kernel of one forward+backward through the op
(`selective_scan(..., layout="BLD")`, issue #2's MambaVision-T shapes), its time per call from torch.profiler, and
the kernels' sum against the CUDA-graph time of the whole step (the gap: launch gaps and the graph's own cost).

    python benchmarks/ops/experiments/scan_fb_profile.py [--shapes 0 2] [--dtypes bf16 fp32] [--calls 20]
        [--out benchmarks/results/scan_fb_profile_<date>.json]

Inputs and gradients as `bench_selective_scan.py`'s fwd+bwd rows (same `make_inputs`, `GRAD_KEYS`).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("SFMAMBA_VALUE_CHECKS", "0")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks" / "ops"))

from bench_selective_scan import DTYPES, GRAD_KEYS, MAIN_SHAPES, make_inputs, providers  # noqa: E402

from sfmamba.utils.files import atomic_write_text  # noqa: E402


def step_call(shape, dtype: torch.dtype):
    """One fwd+bwd of the op at `shape`, as the benchmark's fwd+bwd rows run it."""
    x = make_inputs(shape, dtype, "BLD", requires_grad=True, seed=0)
    _, fn = providers(None)["sfmamba-BLD"]
    dout = torch.randn_like(x["u"])

    def call():
        return torch.autograd.grad(fn(x), [x[k] for k in GRAD_KEYS], dout)

    return call


def kernel_times(call, calls: int) -> dict[str, float]:
    """GPU time per call of every kernel name, in us (torch.profiler's device events over `calls` calls)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    totals: dict[str, float] = collections.defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name] += event.device_time / calls
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def main() -> None:
    import triton

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    parser.add_argument("--shapes", type=int, nargs="+", default=[0, 2], help="indices into MAIN_SHAPES")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"scan_fb_profile_{stamp}.json")
    args = parser.parse_args()
    meta = dict(date=stamp, device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                calls=args.calls)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in args.shapes:
        shape = MAIN_SHAPES[index]
        for name in args.dtypes:
            call = step_call(shape, DTYPES[name])
            call()  # autotune and build outside the timings
            torch.cuda.synchronize()
            graph_us = triton.testing.do_bench_cudagraph(call, rep=200) * 1e3
            kernels = kernel_times(call, args.calls)
            print(f"\n{shape.name} {name}: graph {graph_us:.1f} us, kernels {sum(kernels.values()):.1f} us")
            for kernel, us in kernels.items():
                print(f"  {us:8.1f}  {kernel[:110]}")
            rows.append(dict(shape=shape.name, dtype=name, graph_us=graph_us, kernels_us=kernels))
            # after every row: a call cut by its time limit keeps the rows it finished
            atomic_write_text(args.out, json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
