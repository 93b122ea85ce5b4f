"""The pointwise activations the fused ops apply: one name table, the PyTorch reference and the Triton forward and
derivative (the formulas of PyTorch's kernels, in fp32)."""

from __future__ import annotations

import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ._launch import LOG2E

__all__ = ["ACTIVATIONS", "ACTIVATION_CODES", "act_fwd", "act_grad", "activate"]

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh")
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
SQRT_HALF = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
KAPPA = tl.constexpr(0.044715)


def activate(v: Tensor, activation: str) -> Tensor:
    """The reference: `F.relu` / `F.gelu` (exact or tanh) / identity."""
    if activation == "relu":
        return F.relu(v)
    if activation == "gelu":
        return F.gelu(v)
    if activation == "gelu_tanh":
        return F.gelu(v, approximate="tanh")
    return v


@triton.jit
def act_fwd(v, ACT: tl.constexpr):
    """activation(v) for fp32 v; ACT is an `ACTIVATION_CODES` value."""
    if ACT == 1:
        v = tl.maximum(v, 0.0)
    elif ACT == 2:
        v = 0.5 * v * (1.0 + tl.math.erf(v * SQRT_HALF))
    elif ACT == 3:  # 0.5 * (1 + tanh(z)) == sigmoid(2 z)
        z = v * (SQRT_2_OVER_PI + SQRT_2_OVER_PI * KAPPA * v * v)
        v = v / (1.0 + tl.exp2(tl.minimum(z * (-2.0 * LOG2E), 126.0)))  # capped: v / 2**126 is 0 to fp32 anyway
    return v


@triton.jit
def act_grad(v, ACT: tl.constexpr):
    """d activation(v) / dv for fp32 v (ReLU: 1 where v > 0, as PyTorch's threshold backward)."""
    if ACT == 1:
        d = tl.where(v > 0.0, 1.0, 0.0)
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.math.erf(v * SQRT_HALF))
        d = cdf + v * tl.exp(-0.5 * v * v) * INV_SQRT_2PI
    elif ACT == 3:
        inner = SQRT_2_OVER_PI * (v + KAPPA * v * v * v)
        inner = tl.minimum(tl.maximum(inner, -15.0), 15.0)  # tanh is +-1 in fp32 beyond; keeps exp finite
        t = 1.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0)  # tanh(inner)
        d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * KAPPA * v * v)
    else:
        d = tl.full(v.shape, 1.0, tl.float32)
    return d
