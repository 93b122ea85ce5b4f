"""Plain-PyTorch residual add + LayerNorm: the definition of truth for the fused kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def add_layer_norm_naive(
    x: Tensor,
    y: Tensor,
    gamma: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    norm_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """residual = x + gamma * y (x + y without gamma), in PyTorch's promoted dtype; normed = LayerNorm(residual) over
    the last dim, statistics in fp32 on the rounded residual, returned in `norm_dtype` (default: the residual's)."""
    residual = x + (y if gamma is None else gamma * y)
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    normed = F.layer_norm(residual.float(), residual.shape[-1:], w, b, eps)
    return residual, normed.to(norm_dtype or residual.dtype)
