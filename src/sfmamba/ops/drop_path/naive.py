"""Plain-PyTorch residual add with a per-sample scale (stochastic depth): the definition of truth for the kernels."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["drop_path_add_naive"]


def drop_path_add_naive(x: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    """x + y * scale[b] for x, y [B, ...] and scale [B] (0 for a dropped sample, 1 / keep_prob for a kept one, as
    timm's DropPath draws it), computed as `torch.addcmul` does: the product and sum in the result dtype."""
    return torch.addcmul(x, y, scale.view(-1, *([1] * (y.dim() - 1))))
