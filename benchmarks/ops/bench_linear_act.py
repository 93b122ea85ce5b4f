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

import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from train_op_bench import compare_backends, main, reference_fwd_bwd  # noqa: E402

from sfmamba.layers import Mlp, fused_linear  # noqa: E402

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


def run_case(label: str, kind: str, tokens: int, channels: int, batch: int) -> dict:
    torch.manual_seed(0)
    module = (Mlp(channels, 4 * channels) if kind == "mlp" else Qkv(channels)).cuda()
    x = torch.randn(batch, tokens, channels, device="cuda").bfloat16().requires_grad_()
    out_features = channels if kind == "mlp" else 3 * channels
    dout = torch.randn(batch, tokens, out_features, device="cuda").bfloat16() * 1e-2
    row = dict(case=label, batch=batch, tokens=tokens, channels=channels)
    return compare_backends(row, module, x, dout, TOLERANCE, lambda: reference_fwd_bwd(module, x, dout))


if __name__ == "__main__":
    main(__doc__, "linear_act", CASES, run_case)
