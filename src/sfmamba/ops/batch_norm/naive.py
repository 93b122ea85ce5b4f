"""Plain-PyTorch training-mode BatchNorm + activation: the definition of truth for the Triton kernels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .._activations import ACTIVATIONS, activate

__all__ = ["ACTIVATIONS", "batch_norm_act_naive"]


def batch_norm_act_naive(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
    activation: str = "none",
    shift: Tensor | None = None,
) -> Tensor:
    """activation(F.batch_norm(x + shift, ..., training=True)) for x [B, C, ...] and an optional per-channel shift
    [C]: batch statistics (the running ones updated in place as nn.BatchNorm does, unbiased variance), normalisation
    and activation in fp32, the result in x's dtype."""
    x32 = x.float() if shift is None else x.float() + shift.float().view(1, -1, *([1] * (x.dim() - 2)))
    out = F.batch_norm(x32, running_mean, running_var, weight.float(), bias.float(), True, momentum, eps)
    return activate(out, activation).to(x.dtype)
