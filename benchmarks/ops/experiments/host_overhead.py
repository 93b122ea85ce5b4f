"""Host (Python + launch) cost per call of sfmamba's ops, for the eager-inference gap (docs/status.md, "Next session"
item 1: our tiny models enqueue a 5.5 ms H200 step in 14-16 ms of host time; torch.profiler put ~0.86 ms of self CPU
time in each selective-scan call).

For each op at sf_mamba_tiny's stage-3 shapes (bs 128, L 198, D 160, N 8, bf16, BLD): the host time to enqueue one
call (median over batches of calls, no sync inside a batch), the GPU wall time per call, and a cProfile of many calls
(the functions with the most own time: Triton's launcher, the autotuner, our checks and planners). A trivial Triton
kernel with 1 and with 60 int arguments gives the launch floor. With `--no-value-checks` the ops skip their value
checks (SFMAMBA_VALUE_CHECKS=0). With `--train` every call is a forward and a backward with gradients for every float
input (the training step's host cost), and PyTorch's LayerNorm is timed beside ours. Prints a table and the
profiles; writes JSON with --out.

    python benchmarks/ops/experiments/host_overhead.py [--top 15] [--train] [--out FILE.json]
    # CPU smoke of the plumbing (the naive ops; SFMAMBA_KERNEL=triton TRITON_INTERPRET=1 for the kernels):
    python benchmarks/ops/experiments/host_overhead.py --batch 1 --batches 1 --per-batch 1 --warmup 1 --profile-calls 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "src"))


@triton.jit
def _one_arg_kernel(x_ptr):
    tl.store(x_ptr + tl.program_id(0), 1.0)


@triton.jit
def _many_args_kernel(x_ptr, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
                      c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9,
                      e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, f0, f1, f2, f3, f4, f5, f6, f7, f8):  # fmt: skip
    tl.store(x_ptr + tl.program_id(0), (a0 + f8).to(tl.float32))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def host_and_wall_us(call: Callable[[], object], device: str, batches: int, per_batch: int) -> tuple:
    """(median host us per call to enqueue, median wall us per call including the GPU)."""
    host, wall = [], []
    for _ in range(batches):
        sync(device)
        start = time.perf_counter()
        for _ in range(per_batch):
            call()
        enqueued = time.perf_counter()
        sync(device)
        done = time.perf_counter()
        host.append((enqueued - start) / per_batch * 1e6)
        wall.append((done - start) / per_batch * 1e6)
    return statistics.median(host), statistics.median(wall)


def profile_text(call: Callable[[], object], calls: int, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def op_calls(device: str, b: int) -> dict[str, Callable[[], object]]:
    from sfmamba.ops import depthwise_conv1d, selective_scan
    from sfmamba.ops.add_norm import add_layer_norm
    from sfmamba.ops.conv_bn import bias_act, fold_batch_norm

    length, d, n, dtype = 198, 160, 8, torch.bfloat16
    kw = dict(device=device)
    u, dt = torch.randn(b, length, d, dtype=dtype, **kw), torch.randn(b, length, d, dtype=dtype, **kw)
    B, C = torch.randn(b, length, n, dtype=dtype, **kw), torch.randn(b, length, n, dtype=dtype, **kw)
    A, D, bias = -torch.rand(d, n, **kw), torch.randn(d, **kw), torch.randn(d, **kw)
    w_conv = torch.randn(d, 3, **kw)
    x2, y2, w_ln = torch.randn(b, length, 2 * d, dtype=dtype, **kw), torch.randn(b, length, 2 * d, dtype=dtype, **kw), \
        torch.randn(2 * d, **kw)  # fmt: skip
    conv_y = torch.randn(b, 160, 28, 28, dtype=dtype, **kw).to(memory_format=torch.channels_last)
    conv_w = torch.randn(160, 160, 3, 3, **kw).to(memory_format=torch.channels_last)
    bn = [torch.rand(160, **kw) + 0.5 for _ in range(4)]
    many = torch.empty(1, **kw)
    return {
        "selective_scan (fold 1)": lambda: selective_scan(u, dt, A, B, C, D, None, bias, True, layout="BLD"),
        "selective_scan (seq_len 99)": lambda: selective_scan(
            u, dt, A, B, C, D, None, bias, True, seq_len=99, layout="BLD"
        ),  # fmt: skip
        "depthwise_conv1d silu": lambda: depthwise_conv1d(u, w_conv, None, padding="same", activation="silu"),
        "add_layer_norm": lambda: add_layer_norm(x2, y2, None, w_ln, w_ln, 1e-5, dtype),
        "fold_batch_norm": lambda: fold_batch_norm(conv_w, bn[0], bn[1], bn[2], bn[3], bn[0], 1e-5, None, dtype),
        "bias_act gelu_tanh": lambda: bias_act(conv_y, bn[0], "gelu_tanh"),
        "triton launch, 1 arg": lambda: _one_arg_kernel[(1,)](many),
        "triton launch, 60 args": lambda: _many_args_kernel[(1,)](many, *range(1, 60)),
    }


def train_calls(device: str, b: int) -> dict[str, Callable[[], object]]:
    """Forward + backward per call, every float input needing its gradient."""
    import torch.nn.functional as F

    from sfmamba.ops import depthwise_conv1d, selective_scan
    from sfmamba.ops.layer_norm import layer_norm

    length, d, n, dtype = 198, 160, 8, torch.bfloat16

    def leaf(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_()

    u, dt, B, C = (leaf(b, length, k, dtype=dtype) for k in (d, d, n, n))
    A = (-torch.rand(d, n, device=device)).requires_grad_()
    D, bias, w_conv = leaf(d), leaf(d), leaf(d, 3)
    x2, w_ln, b_ln = leaf(b, length, 2 * d, dtype=dtype), leaf(2 * d), leaf(2 * d)
    g1, g2 = torch.randn_like(u), torch.randn_like(x2)
    return {
        "selective_scan fwd+bwd": lambda: selective_scan(u, dt, A, B, C, D, None, bias, True, layout="BLD").backward(
            g1
        ),
        "depthwise_conv1d silu fwd+bwd": lambda: depthwise_conv1d(
            u, w_conv, None, padding="same", activation="silu"
        ).backward(g1),  # fmt: skip
        "layer_norm fwd+bwd (ours)": lambda: layer_norm(x2, w_ln, b_ln).backward(g2),
        "F.layer_norm bf16 fwd+bwd (PyTorch)": lambda: F.layer_norm(
            x2, (2 * d,), w_ln.bfloat16(), b_ln.bfloat16()
        ).backward(g2),  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--profile-calls", type=int, default=100)
    parser.add_argument("--no-value-checks", action="store_true")
    parser.add_argument("--train", action="store_true", help="forward + backward per call")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=7, help="timed batches of calls (median)")
    parser.add_argument("--per-batch", type=int, default=50, help="calls per timed batch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.no_value_checks:
        os.environ["SFMAMBA_VALUE_CHECKS"] = "0"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, profiles = [], {}
    calls = train_calls(device, args.batch) if args.train else op_calls(device, args.batch)
    with torch.enable_grad() if args.train else torch.no_grad():
        for name, call in calls.items():
            for _ in range(args.warmup):  # compile, autotune
                call()
            host_us, wall_us = host_and_wall_us(call, device, args.batches, args.per_batch)
            rows.append(dict(op=name, host_us=host_us, wall_us=wall_us))
            profiles[name] = profile_text(call, args.profile_calls, args.top)
            print(f"{name:32s} host {host_us:8.1f} us/call   wall {wall_us:8.1f} us/call", flush=True)
    for name, text in profiles.items():
        print(f"\n===== {name}: cProfile of {args.profile_calls} calls, by own time\n{text}")
    if args.out:
        meta = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
                    triton=triton.__version__, value_checks=not args.no_value_checks)  # fmt: skip
        args.out.write_text(json.dumps(dict(meta=meta, rows=rows, profiles=profiles), indent=1))


if __name__ == "__main__":
    main()
