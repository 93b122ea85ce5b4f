"""Public residual add + LayerNorm: checks and dispatch between the fused Triton forward and the PyTorch reference.

Inference only on the Triton side (no backward): callers use it where no gradient is needed; with autograd, under
torch.compile (inductor fuses the reference itself) or where ops use the reference, the reference runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import ArgumentError
from .._launch import runs_fused
from .naive import add_layer_norm_naive


def _check(x: Tensor, y: Tensor, gamma: Tensor | None, weight: Tensor | None, bias: Tensor | None) -> None:
    if y.shape != x.shape:
        raise ArgumentError(f"add_layer_norm: y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    channels = x.shape[-1]
    for name, t in (("gamma", gamma), ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise ArgumentError(f"add_layer_norm: {name} must have shape ({channels},), got {tuple(t.shape)}")
        if t is not None and t.device != x.device:
            raise ArgumentError(f"add_layer_norm: {name} must be on {x.device}, got {t.device}")
    if y.device != x.device:
        raise ArgumentError(f"add_layer_norm: y must be on {x.device}, got {y.device}")


def fused_add_layer_norm(
    x: Tensor, y: Tensor, gamma: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float,
    norm_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The fused Triton forward of `add_layer_norm`, unchecked: for callers that already know `runs_fused`."""
    from .chunk import add_layer_norm_fwd

    residual_dtype = torch.result_type(x, y)
    if gamma is not None:
        residual_dtype = torch.promote_types(residual_dtype, gamma.dtype)
    return add_layer_norm_fwd(x, y, gamma, weight, bias, eps, residual_dtype, norm_dtype or residual_dtype)


def add_layer_norm(
    x: Tensor,
    y: Tensor,
    gamma: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float = 1e-5,
    norm_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """(x + gamma * y, LayerNorm(x + gamma * y)) over the last dim, the residual in PyTorch's promoted dtype of
    (x, y, gamma) and the norm in `norm_dtype` (default: the residual's). Fused Triton forward where ops use Triton
    and no gradient is needed; the reference otherwise."""
    _check(x, y, gamma, weight, bias)
    if not runs_fused(x, y, gamma, weight, bias):
        return add_layer_norm_naive(x, y, gamma, weight, bias, eps, norm_dtype)
    return fused_add_layer_norm(x, y, gamma, weight, bias, eps, norm_dtype)
