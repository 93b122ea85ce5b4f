"""Residual add with stochastic depth in one pass.

timm's `DropPath` multiplies the branch by a per-sample mask (one pass over the branch, and one more backward) before
the residual add (another pass); `add_drop_path` draws the same mask from the same random stream and adds
`x + y * mask` in one pass forward and one backward: `ops.drop_path_add` (Triton) where the ops use Triton and the
fused training ops are on (`utils._config.train_kernels`: by default only under CUDA-graph capture), one `addcmul`
otherwise.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import Tensor, nn

from ..ops._checks import FLOAT_DTYPES
from ..ops._launch import in_functorch_transform
from ..ops.drop_path import drop_path_add
from ..utils._config import train_kernels
from ..utils.hooks import has_hooks

__all__ = ["add_drop_path", "check_probability", "drop_path_rates"]


def check_probability(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value}")


def drop_path_rates(drop_path_rate: float, depths: list[int] | tuple[int, ...]) -> list[list[float]]:
    """Stochastic depth per block, linear from 0 to `drop_path_rate` over all blocks, split per stage."""
    check_probability("drop_path_rate", drop_path_rate)
    return [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]


def add_drop_path(x: Tensor, y: Tensor, drop_path: nn.Module) -> Tensor:
    """`x + drop_path(y)`; for an active timm `DropPath` (training, drop_prob > 0, no hooks) as one pass with the mask
    DropPath would draw (same shape, dtype and random numbers)."""
    active = type(drop_path) is DropPath and drop_path.training and drop_path.drop_prob > 0.0
    if not active or has_hooks(drop_path):
        return x + drop_path(y)
    keep = 1.0 - drop_path.drop_prob
    mask = y.new_empty((y.shape[0],) + (1,) * (y.ndim - 1)).bernoulli_(keep)
    if keep > 0.0 and drop_path.scale_by_keep:
        mask.div_(keep)
    float_types = x.dtype in FLOAT_DTYPES and y.dtype in FLOAT_DTYPES
    if x.shape != y.shape or not float_types or in_functorch_transform() or not train_kernels():
        return torch.addcmul(x, y, mask)  # broadcasting residuals, fp64, torch.func transforms, eager steps
    return drop_path_add(x, y, mask.view(-1))
