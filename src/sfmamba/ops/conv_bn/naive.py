"""Plain-PyTorch inference epilogue of a conv followed by BatchNorm: the definition of truth for the Triton kernels.

In eval mode BatchNorm is an affine map per output channel, so it folds into the conv: `fold_batch_norm` returns
the conv's weight scaled per output channel and the bias that replaces the conv bias, the BN shift and an optional
layer scale; `bias_act` then adds that bias, applies the activation and the residual in one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._activations import ACTIVATIONS, activate

__all__ = ["ACTIVATIONS", "bias_act_naive", "fold_batch_norm_naive"]


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """[C] -> [1, C, 1, ...] broadcasting over a [B, C, ...] tensor of `ndim` dims."""
    return v.view(1, -1, *([1] * (ndim - 2)))


def fold_batch_norm_naive(
    weight: Tensor,
    bias: Tensor | None,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    scale: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """(weight', bias') with conv(x, weight') + bias' == scale * BN(conv(x, weight) + bias) for BN in eval mode.

    weight [O, ...] (any conv weight), the rest [O]; weight' in `out_dtype` (default weight's) with weight's memory
    format, bias' in fp32. All arithmetic in fp32."""
    s = bn_weight.float() * torch.rsqrt(running_var.float() + eps)
    shift = (bias.float() if bias is not None else torch.zeros_like(s)) - running_mean.float()
    b = shift * s + bn_bias.float()
    if scale is not None:
        s, b = s * scale.float(), b * scale.float()
    w = weight.float() * s.view(-1, *([1] * (weight.dim() - 1)))
    return w.to(out_dtype or weight.dtype, memory_format=torch.preserve_format), b


def bias_act_naive(
    y: Tensor,
    bias: Tensor,
    activation: str = "none",
    residual: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """activation(y + bias) (+ residual) for y [B, C, ...], bias [C]: the sum and activation in fp32, rounded to
    y's dtype (as the unfused bias add and activation leave it), then the residual added; the result in `out_dtype`
    (default: PyTorch's promoted dtype of y and residual)."""
    out = activate(y.float() + _per_channel(bias.float(), y.dim()), activation).to(y.dtype)
    if residual is not None:
        out = residual.float() + out.float() if out_dtype is not None else residual + out
    return out.to(out_dtype) if out_dtype is not None else out
