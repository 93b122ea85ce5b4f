"""Shared pieces of the training-op benchmarks (`bench_layer_norm.py`, `bench_linear_act.py`, `bench_batch_norm.py`):
check a module's forward + backward against an fp32 reference under both kernel backends, time each one that passes
by the device time of its kernels (torch.profiler), print a table and write JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import torch
from bench_conv_bn import environment
from torch import nn

from sfmamba.testing import relative_error
from sfmamba.utils._config import graph_train_kernels, set_kernel_backend

__all__ = ["compare_backends", "device_us", "main", "reference_fwd_bwd", "report"]


def device_us(call, iters: int = 20) -> tuple[float, dict]:
    """Mean device time of `call` (sum of its kernels) and the per-kernel means, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    for event in prof.events():  # the kernels and memsets themselves, not the host ops that launched them
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] = kernels.get(event.name, 0.0) + event.time_range.elapsed_us() / iters
    return sum(kernels.values()), kernels


def _fwd_bwd(module: nn.Module, x: torch.Tensor, dout: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, ...]:
    x.grad = None
    for p in module.parameters():
        p.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = module(x)
    out.backward(dout)
    return out, x.grad, *(p.grad for p in module.parameters())


def compare_backends(
    row: dict, module: nn.Module, x: torch.Tensor, dout: torch.Tensor, tolerance: float,
    reference: Callable[[], tuple[torch.Tensor, ...]],
) -> dict:  # fmt: skip
    """Fill `row` with errors and device times of module's bf16-autocast forward + backward under the PyTorch path
    ('naive' backend) and ours ('triton'); `reference()` gives the fp32 (output, dx, *parameter gradients)."""
    want = reference()
    for backend, name in (("naive", "pytorch"), ("triton", "sfmamba")):
        set_kernel_backend(backend)
        try:
            with graph_train_kernels():  # the fused training ops, as a CUDA-graph step captures them
                got = _fwd_bwd(module, x, dout, True)
                errors = [relative_error(w.float(), g.float()) for w, g in zip(want, got)]
                row[f"{name}_errors"] = errors
                if max(errors) <= tolerance:
                    row[f"{name}_us"], row[f"{name}_kernels"] = device_us(lambda: _fwd_bwd(module, x, dout, True))
        finally:
            set_kernel_backend(None)
    if "pytorch_us" in row and "sfmamba_us" in row:
        row["speedup"] = row["pytorch_us"] / row["sfmamba_us"]
    return row


def reference_fwd_bwd(module: nn.Module, x: torch.Tensor, dout: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """fp32 forward + backward of module on the PyTorch path (x cast up, no autocast); pass a copy of a module whose
    state changes in training (BN's running statistics)."""
    ref_x = x.detach().float().requires_grad_()
    set_kernel_backend("naive")
    try:
        out = _fwd_bwd(module, ref_x, dout.float(), False)[0]
    finally:
        set_kernel_backend(None)
    return (out, ref_x.grad, *(p.grad.clone() for p in module.parameters()))


def report(name: str, rows: list[dict], out_dir: Path, settings: dict) -> None:
    print("| case | PyTorch fwd+bwd (us) | sfmamba fwd+bwd (us) | speed-up | max rel. error (ours / PyTorch) |")
    print("|---|---|---|---|---|")
    for r in rows:
        mine = f"{r['sfmamba_us']:.1f}" if "sfmamba_us" in r else "FAILED check"
        theirs = f"{r['pytorch_us']:.1f}" if "pytorch_us" in r else "FAILED check"
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        errors = f"{max(r['sfmamba_errors']):.1e} / {max(r['pytorch_errors']):.1e}"
        print(f"| {r['case']} | {theirs} | {mine} | {speedup} | {errors} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{name}_{stamp}.json"
    settings = settings | dict(dtype="bf16 autocast", timer="torch.profiler device time, mean of 20 fwd+bwd")
    path.write_text(json.dumps(dict(environment=environment(), settings=settings, rows=rows), indent=1))
    print(f"# wrote {path}")


def main(doc: str, name: str, cases: list[tuple], run_case: Callable[..., dict], **settings) -> None:
    """The command line of a training-op benchmark: `--batch`, `--out`; runs `run_case(*case, batch)` for every case
    and reports them as `name`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(f"{name}: the benchmark times CUDA kernels, it needs a GPU")
    rows = [run_case(*case, args.batch) for case in cases]
    report(name, rows, args.out, dict(batch=args.batch, **settings))
