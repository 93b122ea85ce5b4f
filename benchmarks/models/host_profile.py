"""Where the host time of an eager forward goes: torch.profiler's CPU-side view of one model's inference step (self
CPU time per op, Triton launches included as their Python ranges), next to the step's wall time. For the eager
gap (our models enqueue a 5.5 ms H200 inference step in 14-16 ms of host time, docs/status.md). `--train` profiles a
training step (forward, backward, AdamW) instead, with the ops of an eager step (since session 16 PyTorch's modules
where a CUDA-graph step captures the fused training ops: `SFMAMBA_TRAIN_KERNELS=always` for those);
`official:mamba_vision_T` profiles the official code (its wheel and mamba_ssm on PYTHONPATH, as
`benchmarks/models/run_targets.sh` sets them), for op counts side by side.

    python benchmarks/models/host_profile.py --model sf_mamba_tiny --batch 128 [--train] [--out FILE.txt]
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
from sfmamba.bench.throughput import OPTIMIZERS, make_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sf_mamba_tiny")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--train", action="store_true", help="profile forward + backward + AdamW step")
    parser.add_argument("--kernels", action="store_true", help="also list the GPU kernels by device time")
    parser.add_argument("--opt", choices=OPTIMIZERS, default="adamw", help="optimizer of --train")
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="profile the Python side instead (cProfile of 10 steps: where launches spend host time)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(args.model).train(args.train).to(device, memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device).to(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (args.batch,), device=device)
    optimizer = make_optimizer(args.opt, list(model.parameters()), 1e-4) if args.train else None

    def step() -> None:
        if optimizer is None:
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
                model(x)
            return
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):  # compiles, autotunes, picks cuDNN algorithms
        step()
    torch.cuda.synchronize() if device == "cuda" else None
    start = time.perf_counter()
    for _ in range(10):
        step()
    host_ms = (time.perf_counter() - start) * 100  # per step, before the final sync
    torch.cuda.synchronize() if device == "cuda" else None
    wall_ms = (time.perf_counter() - start) * 100
    kind = "training" if args.train else "inference"
    header = f"{args.model} {kind} bs {args.batch}: host {host_ms:.2f} ms per step to enqueue, wall {wall_ms:.2f} ms"
    report = f"{header}\n{python_profile(step, args.top) if args.cprofile else kernel_tables(step, args, device)}"
    print(report)
    if args.out:
        args.out.write_text(report)


def kernel_tables(step, args: argparse.Namespace, device: str) -> str:
    """torch.profiler of 3 steps: ops by self CPU time, and with --kernels on a GPU the kernels by device time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.kernels and device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
    report = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=70)
    if len(activities) > 1:
        kernels = prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.top,
                                            max_name_column_width=70)  # fmt: skip
        report += f"\n3 steps, by GPU time:\n{kernels}"
    return report


def python_profile(step, top: int) -> str:
    """cProfile of 10 steps (backward included), the functions by own time and by cumulative time."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    with torch.autograd.set_multithreading_enabled(False):  # backward on this thread, where cProfile looks
        profiler.enable()
        for _ in range(10):
            step()
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def build(name: str) -> torch.nn.Module:
    if name.startswith("official:"):
        from sfmamba.bench.official import official_model

        return official_model(name.split(":", 1)[1], scan="mamba_ssm")
    return timm.create_model(name)


if __name__ == "__main__":
    main()
