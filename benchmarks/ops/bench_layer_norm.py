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

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from train_op_bench import compare_backends, main, reference_fwd_bwd  # noqa: E402

from sfmamba.layers import LayerNorm  # noqa: E402

# (label, tokens per image, channels): sf_mamba_tiny's stage 3 and 4 token rows (windows of 7x7 + 2 aux tokens)
CASES = [("stage 3, 320 ch", 196, 320), ("stage 3 + aux, 320 ch", 198, 320), ("stage 4, 640 ch", 49, 640),
         ("stage 4 + aux, 640 ch", 51, 640)]  # fmt: skip
TOLERANCE = 2e-2  # bf16 outputs and gradients against fp32


def run_case(label: str, tokens: int, channels: int, batch: int) -> dict:
    torch.manual_seed(0)
    norm = LayerNorm(channels).cuda()
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_()
    x = (torch.randn(batch, tokens, channels, device="cuda") * 2 + 0.5).bfloat16().requires_grad_()
    dout = torch.randn(batch, tokens, channels, device="cuda").bfloat16()
    row = dict(case=label, batch=batch, tokens=tokens, channels=channels)
    return compare_backends(row, norm, x, dout, TOLERANCE, lambda: reference_fwd_bwd(norm, x, dout))


if __name__ == "__main__":
    main(__doc__, "layer_norm", CASES, run_case)
