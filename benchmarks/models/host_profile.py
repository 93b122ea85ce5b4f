"""Where the host time of an eager forward goes: torch.profiler's CPU-side view of one model's inference step (self
CPU time per op, Triton launches included as their Python ranges), next to the step's wall time. For the eager
inference gap (our models enqueue a 5.5 ms H200 step in 14-16 ms of host time, docs/status.md).

    python benchmarks/models/host_profile.py --model sf_mamba_tiny --batch 128 [--out FILE.txt]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import timm
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import sfmamba.models  # noqa: E402, F401  (registers the models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sf_mamba_tiny")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model(args.model).eval().to(device, memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device).to(memory_format=torch.channels_last)

    def step() -> None:
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            model(x)

    for _ in range(5):  # compiles, autotunes, picks cuDNN algorithms
        step()
    torch.cuda.synchronize() if device == "cuda" else None
    start = time.perf_counter()
    for _ in range(10):
        step()
    host_ms = (time.perf_counter() - start) * 100  # per step, before the final sync
    torch.cuda.synchronize() if device == "cuda" else None
    wall_ms = (time.perf_counter() - start) * 100
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=70)
    report = f"{args.model} bs {args.batch}: host {host_ms:.2f} ms per step to enqueue, wall {wall_ms:.2f} ms\n{table}"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
