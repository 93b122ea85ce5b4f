"""Public conv + BatchNorm inference epilogue: checks and dispatch between the Triton kernels and the reference.

Inference only on the Triton side (no backward), like `ops.add_norm`: callers take the fused path where
`runs_fused` says so and keep their plain modules otherwise (training, autograd, torch.compile, CPU), so those
results stay bit-identical to the unfused modules.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import ArgumentError
from .._launch import runs_fused
from .naive import ACTIVATIONS, bias_act_naive, fold_batch_norm_naive

_INT32_LIMIT = 2**31 - 1


def _check_vector(name: str, t: Tensor | None, channels: int, device: torch.device) -> None:
    if t is None:
        return
    if tuple(t.shape) != (channels,):
        raise ArgumentError(f"{name} must have shape ({channels},), got {tuple(t.shape)}")
    if t.device != device:
        raise ArgumentError(f"{name} must be on {device}, got {t.device}")


def _rows_contiguous(weight: Tensor) -> bool:
    """Each output channel's block is contiguous and the tensor dense (contiguous or channels-last)."""
    formats = [torch.contiguous_format] + ([torch.channels_last] if weight.dim() == 4 else [])
    return any(weight.is_contiguous(memory_format=f) for f in formats)


def fold_batch_norm(
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
    """(weight', bias') such that conv(x, weight') + bias' == scale * BN(conv(x, weight) + bias), BN in eval mode.

    weight: the conv's [O, ...]; bias, bn_*, running_*, scale: [O] (bias and scale optional). weight' comes in
    `out_dtype` (default weight's; pass the autocast dtype to skip the conv's own cast), bias' in fp32."""
    channels = weight.shape[0]
    for name, t in (("bias", bias), ("bn_weight", bn_weight), ("bn_bias", bn_bias), ("running_mean", running_mean),
                    ("running_var", running_var), ("scale", scale)):  # fmt: skip
        _check_vector(f"fold_batch_norm: {name}", t, channels, weight.device)
    if not (eps >= 0):
        raise ArgumentError(f"fold_batch_norm: eps must be >= 0, got {eps}")
    out_dtype = out_dtype or weight.dtype
    if not runs_fused(weight, bias, bn_weight, bn_bias, scale) or not _rows_contiguous(weight):
        return fold_batch_norm_naive(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, scale, out_dtype)
    from .chunk import fold_batch_norm_fwd

    return fold_batch_norm_fwd(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, scale, out_dtype)


def _channel_inner(y: Tensor) -> int | None:
    """`inner` of the kernel's channel index (i // inner) % C for y's dense layout, None for other layouts."""
    if y.is_contiguous():
        return y[0, 0].numel()
    if y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last):
        return 1
    return None


def bias_act(
    y: Tensor,
    bias: Tensor,
    activation: str = "none",
    residual: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """activation(y + bias) (+ residual) for y [B, C, ...] (e.g. a conv's output), bias [C] broadcast over the
    channel dim; activation one of 'none', 'relu', 'gelu', 'gelu_tanh'. The activation is rounded to y's dtype (as
    an unfused one is), the result comes in `out_dtype`, by default y's dtype without a residual and the promoted
    dtype of (y, residual) with one; one Triton pass where `runs_fused`."""
    if activation not in ACTIVATIONS:
        raise ArgumentError(f"bias_act: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if y.dim() < 2:
        raise ArgumentError(f"bias_act: y must be [batch, channels, ...], got shape {tuple(y.shape)}")
    _check_vector("bias_act: bias", bias, y.shape[1], y.device)
    if residual is not None and (residual.shape != y.shape or residual.device != y.device):
        raise ArgumentError(
            f"bias_act: residual must have y's shape {tuple(y.shape)} on {y.device}, "
            f"got {tuple(residual.shape)} on {residual.device}"
        )
    inner = _channel_inner(y) if y.numel() else None
    same_layout = residual is None or residual.stride() == y.stride()
    if not runs_fused(y, bias, residual) or inner is None or not same_layout or y.numel() > _INT32_LIMIT:
        return bias_act_naive(y, bias, activation, residual, out_dtype)
    from .chunk import bias_act_fwd

    default_dtype = y.dtype if residual is None else torch.result_type(y, residual)
    return bias_act_fwd(y, bias, activation, residual, inner, out_dtype or default_dtype)
