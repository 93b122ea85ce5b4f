"""Linear + activation training benchmark: forward + backward of `layers.Mlp` (fc1 + GELU + fc2) and of one biased
Linear (attention's qkv) at sf_mamba_tiny's token-block shapes under bf16 autocast, the Triton backward
(`ops.linear_act`: GELU gradient and fp32 bias gradient in one kernel, weight gradient in fp32 from the GEMM) vs the
PyTorch path (timm's Mlp / nn.Linear: a bf16 bias reduction, a GELU backward pass, fp32 casts of the gradients).

Checks the output and every gradient of both against an fp32 reference first (no number for a case that fails), then
sums the device time of every kernel of one forward + backward under torch.profiler (mean of 20). Writes JSON to
benchmarks/results/ and a table to stdout.

    python benchmarks/ops/bench_linear_act.py [--batch 128]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from bench_conv_bn import environment  # noqa: E402
from bench_layer_norm import device_us  # noqa: E402

from sfmamba.layers import Mlp, fused_linear  # noqa: E402
from sfmamba.testing import relative_error  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

# (label, module kind, tokens per image, channels): sf_mamba_tiny's stage 3 and 4 token rows
CASES = [("mlp stage 3", "mlp", 198, 320), ("mlp stage 4", "mlp", 51, 640), ("qkv stage 3", "qkv", 196, 320),
         ("qkv stage 4", "qkv", 49, 640)]  # fmt: skip
TOLERANCE = 3e-2  # bf16 outputs and gradients against fp32


class Qkv(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.qkv = nn.Linear(channels, 3 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_linear(self.qkv, x)


def fwd_bwd(module: nn.Module, x: torch.Tensor, dout: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x.grad = None
    for p in module.parameters():
        p.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = module(x)
    out.backward(dout)
    return out, x.grad, *(p.grad for p in module.parameters())


def run_case(label: str, kind: str, tokens: int, channels: int, batch: int) -> dict:
    torch.manual_seed(0)
    module = (Mlp(channels, 4 * channels) if kind == "mlp" else Qkv(channels)).cuda()
    x = torch.randn(batch, tokens, channels, device="cuda").bfloat16().requires_grad_()
    out_features = channels if kind == "mlp" else 3 * channels
    dout = torch.randn(batch, tokens, out_features, device="cuda").bfloat16() * 1e-2
    ref_x = x.detach().float().requires_grad_()
    ref = module(ref_x)  # fp32, no autocast: the reference
    want = (ref, *torch.autograd.grad(ref, (ref_x, *module.parameters()), dout.float()))
    row = dict(case=label, batch=batch, tokens=tokens, channels=channels)
    for backend, name in (("naive", "pytorch"), ("triton", "sfmamba")):
        set_kernel_backend(backend)
        try:
            got = fwd_bwd(module, x, dout)
            errors = [relative_error(w.float(), g.float()) for w, g in zip(want, got)]
            row[f"{name}_errors"] = errors
            if max(errors) <= TOLERANCE:
                row[f"{name}_us"], row[f"{name}_kernels"] = device_us(lambda: fwd_bwd(module, x, dout))
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
        raise SystemExit("bench_linear_act.py times CUDA kernels: it needs a GPU")
    rows = [run_case(*case, args.batch) for case in CASES]
    print("| case | PyTorch fwd+bwd (us) | sfmamba fwd+bwd (us) | speed-up | max rel. error (ours / PyTorch) |")
    print("|---|---|---|---|---|")
    for r in rows:
        mine = f"{r['sfmamba_us']:.1f}" if "sfmamba_us" in r else "FAILED check"
        theirs = f"{r['pytorch_us']:.1f}" if "pytorch_us" in r else "FAILED check"
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        errors = f"{max(r['sfmamba_errors']):.1e} / {max(r['pytorch_errors']):.1e}"
        print(f"| {r['case']} | {theirs} | {mine} | {speedup} | {errors} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"linear_act_{stamp}.json"
    settings = dict(batch=args.batch, dtype="bf16 autocast", timer="torch.profiler device time, mean of 20 fwd+bwd")
    path.write_text(json.dumps(dict(environment=environment(), settings=settings, rows=rows), indent=1))
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
