"""CPU speed of the PyTorch reference (`selective_scan_naive`, the CPU path) against a plain per-step loop.

    python benchmarks/ops/bench_naive_cpu.py            # (8, 160, 196, 8) fp32 and two more shapes
Median of --reps calls after warm-up, in the same process; JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from sfmamba.ops.selective_scan import selective_scan_naive  # noqa: E402

SHAPES = [(8, 160, 196, 8), (8, 320, 49, 8), (2, 384, 3136, 1)]


def plain_loop(u, delta, A, B, C, D, delta_bias):
    """The obvious vectorised reference: one step at a time over L, everything computed inside the loop."""
    batch, dim, length = u.shape
    dt_all = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = dt_all[:, :, t]
        h = torch.exp(dt[..., None] * A) * h + (dt * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


def median_ms(fn, reps: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), statistics.pstdev(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    for b, d, length, n in SHAPES:
        u, delta = torch.randn(b, d, length), torch.randn(b, d, length) * 0.5 - 1
        A, D, bias = -torch.rand(d, n) - 0.5, torch.randn(d), torch.randn(d) * 0.1
        B, C = torch.randn(b, n, length), torch.randn(b, n, length)
        with torch.no_grad():
            ref = plain_loop(u, delta, A, B, C, D, bias)
            ours = selective_scan_naive(u, delta, A, B, C, D, None, bias, True)
            assert torch.allclose(ref, ours, rtol=1e-4, atol=1e-4), "naive disagrees with the plain loop"
            for name, fn in (
                ("selective_scan_naive", lambda: selective_scan_naive(u, delta, A, B, C, D, None, bias, True)),
                ("plain per-step loop", lambda: plain_loop(u, delta, A, B, C, D, bias)),
            ):
                med, std = median_ms(fn, args.reps if length < 1000 else max(3, args.reps // 10))
                rows.append(dict(shape=[b, d, length, n], impl=name, median_ms=med, std_ms=std))
                print(f"B{b} D{d} L{length} N{n} fp32 fwd  {name:22s} {med:8.2f} ms  (std {std:.2f})")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    meta = dict(
        device="cpu", cpu_count=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
        python=platform.python_version(), date=stamp, command="python " + " ".join(sys.argv), reps=args.reps,
    )  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"naive_cpu_{stamp}.json"
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"# wrote {out}")


if __name__ == "__main__":
    main()
