"""LayerNorm training benchmark: forward + backward of `layers.LayerNorm` at sf_mamba_tiny's token-block shapes under
bf16 autocast, the Triton op (`ops.layer_norm`, the default on the GPU; weight/bias gradients reduced in the backward
kernel) vs the PyTorch path it replaced (F.layer_norm in the autocast dtype, PyTorch's separate weight/bias-gradient
kernel).

Checks outputs and the x/weight/bias gradients of both against an fp32 reference first (no number for a case that
fails), then sums the device time of every kernel of one forward + backward under torch.profiler (mean of 20; the
device time, not the host's launch cost). Writes JSON to benchmarks/results/ and a table to stdout.

    python benchmarks/ops/bench_layer_norm.py [--batch 128]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from bench_conv_bn import environment  # noqa: E402

from sfmamba.layers import LayerNorm  # noqa: E402
from sfmamba.testing import relative_error  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

# (label, tokens per image, channels): sf_mamba_tiny's stage 3 and 4 token rows (windows of 7x7 + 2 aux tokens)
CASES = [("stage 3, 320 ch", 196, 320), ("stage 3 + aux, 320 ch", 198, 320), ("stage 4, 640 ch", 49, 640),
         ("stage 4 + aux, 640 ch", 51, 640)]  # fmt: skip
TOLERANCE = 2e-2  # bf16 outputs and gradients against fp32


def fwd_bwd(norm: LayerNorm, x: torch.Tensor, dout: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x.grad = norm.weight.grad = norm.bias.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = norm(x)
    out.backward(dout)
    return out, x.grad, norm.weight.grad, norm.bias.grad


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


def run_case(label: str, tokens: int, channels: int, batch: int) -> dict:
    torch.manual_seed(0)
    norm = LayerNorm(channels).cuda()
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_()
    x = (torch.randn(batch, tokens, channels, device="cuda") * 2 + 0.5).bfloat16().requires_grad_()
    dout = torch.randn(batch, tokens, channels, device="cuda").bfloat16()
    ref_x = x.detach().float().requires_grad_()
    ref = torch.nn.functional.layer_norm(ref_x, (channels,), norm.weight, norm.bias, norm.eps)
    want = (ref, *torch.autograd.grad(ref, (ref_x, norm.weight, norm.bias), dout.float()))
    row = dict(case=label, batch=batch, tokens=tokens, channels=channels)
    for backend, name in (("naive", "pytorch"), ("triton", "sfmamba")):
        set_kernel_backend(backend)
        try:
            got = fwd_bwd(norm, x, dout)
            errors = [relative_error(w.float(), g.float()) for w, g in zip(want, got)]
            row[f"{name}_errors"] = errors
            if max(errors) <= TOLERANCE:
                row[f"{name}_us"], row[f"{name}_kernels"] = device_us(lambda: fwd_bwd(norm, x, dout))
        finally:
            set_kernel_backend(None)
    if "pytorch_us" in row and "sfmamba_us" in row:
        row["speedup"] = row["pytorch_us"] / row["sfmamba_us"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_layer_norm.py times CUDA graphs: it needs a GPU")
    rows = [run_case(label, tokens, channels, args.batch) for label, tokens, channels in CASES]
    print(
        "| case | PyTorch fwd+bwd (us) | sfmamba fwd+bwd (us) | speed-up | max rel. error (ours) |\n|---|---|---|---|---|"
    )
    for r in rows:
        mine = f"{r['sfmamba_us']:.1f}" if "sfmamba_us" in r else "FAILED check"
        theirs = f"{r['pytorch_us']:.1f}" if "pytorch_us" in r else "FAILED check"
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        print(f"| {r['case']} | {theirs} | {mine} | {speedup} | {max(r['sfmamba_errors']):.1e} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"layer_norm_{stamp}.json"
    settings = dict(batch=args.batch, dtype="bf16 autocast", timer="torch.profiler device time, mean of 20 fwd+bwd")
    path.write_text(json.dumps(dict(environment=environment(), settings=settings, rows=rows), indent=1))
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
