"""Training BatchNorm + activation benchmark: forward + backward of `layers.bn_act` (a BatchNorm2d in training mode
and the activation after it) at MambaVision-T's conv-stage shapes (stem, stage 1, stage 2; channels-last, bf16
autocast), the Triton op (`ops.batch_norm_act`) vs PyTorch's BN kernels plus the separate activation.

Checks the output and the x/weight/bias gradients of both against an fp32 reference first (no number for a case that
fails), then sums the device time of every kernel of one forward + backward under torch.profiler (mean of 20).
Writes JSON to benchmarks/results/ and a table to stdout.

    python benchmarks/ops/bench_batch_norm.py [--batch 128]
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from train_op_bench import compare_backends, main, reference_fwd_bwd  # noqa: E402

from sfmamba.layers.conv_bn import bn_act  # noqa: E402

# (label, channels, height = width, activation): MambaVision-T's BNs (stem conv 1 and 2, stage 1, stage 2)
CASES = [("stem 1, relu", 32, 112, nn.ReLU), ("stem 2, relu", 80, 56, nn.ReLU),
         ("stage 1, gelu_tanh", 80, 56, lambda: nn.GELU(approximate="tanh")), ("stage 1, none", 80, 56, None),
         ("stage 2, gelu_tanh", 160, 28, lambda: nn.GELU(approximate="tanh"))]  # fmt: skip
TOLERANCE = 3e-2  # bf16 outputs and gradients against fp32


class BnAct(nn.Module):
    def __init__(self, channels: int, act):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = act() if act is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bn_act(x, self.bn, self.act)


def run_case(label: str, channels: int, size: int, act, batch: int) -> dict:
    torch.manual_seed(0)
    module = BnAct(channels, act).cuda()
    with torch.no_grad():
        module.bn.weight.normal_(1.0, 0.2)
        module.bn.bias.normal_()
    x = (torch.randn(batch, channels, size, size, device="cuda") * 2 + 0.5).bfloat16()
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    dout = torch.randn_like(x) * 1e-2
    row = dict(case=label, batch=batch, channels=channels, size=size)
    return compare_backends(row, module, x, dout, TOLERANCE, lambda: reference_fwd_bwd(copy.deepcopy(module), x, dout))


if __name__ == "__main__":
    main(__doc__, "batch_norm_act", CASES, run_case, memory_format="channels_last")
