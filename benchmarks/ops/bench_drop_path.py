"""Stochastic-depth residual benchmark: forward + backward of `layers.residual.add_drop_path` (x + DropPath(y)) at
sf_mamba_tiny's token-block shapes under bf16 autocast, the Triton op (`ops.drop_path_add`) vs one `torch.addcmul`
(PyTorch's broadcast elementwise kernel).

Checks the output and both gradients against an fp32 reference first (the same mask: the module reseeds before each
draw), then sums the device time of every kernel of one forward + backward under torch.profiler (mean of 20).
Writes JSON to benchmarks/results/ and a table to stdout.

    python benchmarks/ops/bench_drop_path.py [--batch 128]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from timm.layers import DropPath
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from train_op_bench import compare_backends, main, reference_fwd_bwd  # noqa: E402

from sfmamba.layers.residual import add_drop_path  # noqa: E402

# (label, windows per image, tokens per window, channels): sf_mamba_tiny's stage 3 and 4 token blocks
CASES = [("stage 3", 4, 198, 320), ("stage 4", 1, 51, 640)]
TOLERANCE = 2e-2  # bf16 against fp32


class Residual(nn.Module):
    """x + DropPath(branch) with the branch a parameter (so its gradient is checked) and a fixed mask per call."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.branch = nn.Parameter(torch.randn(shape))
        self.drop = DropPath(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        return add_drop_path(x, self.branch.to(x.dtype), self.drop)


def run_case(label: str, windows: int, tokens: int, channels: int, batch: int) -> dict:
    torch.manual_seed(0)
    shape = (batch * windows, tokens, channels)
    module = Residual(shape).cuda().train()
    x = torch.randn(shape, device="cuda").bfloat16().requires_grad_()
    dout = torch.randn(shape, device="cuda").bfloat16()
    row = dict(case=label, shape=list(shape))
    return compare_backends(row, module, x, dout, TOLERANCE, lambda: reference_fwd_bwd(module, x, dout))


if __name__ == "__main__":
    main(__doc__, "drop_path_add", CASES, run_case, drop_prob=0.2)
