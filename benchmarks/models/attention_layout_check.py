"""The window attention's q/k/v layout, forward + backward: q, k, v as `qkv.permute(2, 0, 3, 1, 4).unbind(0)` (timm's
and the official MambaVision's) against `qkv.unbind(2)` + `transpose(1, 2)` (ours: the backward's stack of dq, dk,
dv then lands in qkv's layout and the view back to [B, N, 3C] needs no copy). Checks that both give the same
gradient, then times both (median of `do_bench`) at sf_mamba_tiny's stage 3 and 4 shapes, bf16.

    python benchmarks/models/attention_layout_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

SHAPES = [(128, 198, 8, 40), (128, 51, 16, 40)]  # (windows, tokens, heads, head dim): stage 3 and 4, bs 128


def attention_step(qkv: torch.Tensor, grad: torch.Tensor, heads: int, layout: str) -> torch.Tensor:
    b, n, _ = qkv.shape
    qkv5 = qkv.view(b, n, 3, heads, -1)
    if layout == "permute":
        q, k, v = qkv5.permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (t.transpose(1, 2) for t in qkv5.unbind(2))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
    (dqkv,) = torch.autograd.grad(out, qkv, grad)
    return dqkv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = []
    for b, n, h, d in SHAPES:
        qkv = torch.randn(b, n, 3 * h * d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(b, n, h * d, device="cuda", dtype=torch.bfloat16)
        same = torch.equal(attention_step(qkv, grad, h, "permute"), attention_step(qkv, grad, h, "unbind"))
        us = {layout: do_bench(lambda: attention_step(qkv, grad, h, layout), warmup=50, rep=300) * 1e3
              for layout in ("permute", "unbind")}  # fmt: skip
        rows.append(dict(shape=[b, n, h, d], same_gradient=same, **{f"{k}_us": v for k, v in us.items()}))
        print(
            f"| {b}x{n}, {h} heads x {d} | permute {us['permute']:.1f} us | unbind {us['unbind']:.1f} us | "
            f"{us['permute'] / us['unbind']:.2f}x | same dqkv: {same} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, date=stamp, dtype="bfloat16")
    path = args.out / f"attention_layout_{stamp}.json"
    path.write_text(json.dumps(dict(meta, rows=rows), indent=1))
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
