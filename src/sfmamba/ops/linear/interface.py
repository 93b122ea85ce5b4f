"""Public Linear + activation: checks and dispatch between the Triton backward and the plain PyTorch path."""

from __future__ import annotations

import torch
from torch import Tensor

from ...utils._config import use_triton
from .._checks import FLOAT_DTYPES, ArgumentError
from .._launch import needs_grad
from .naive import ACTIVATIONS, linear_act_naive


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, act: str) -> None:
    if act not in ACTIVATIONS:
        raise ArgumentError(f"linear_act: act must be one of {ACTIVATIONS}, got {act!r}")
    if not isinstance(x, Tensor) or x.dim() < 1 or x.dtype not in FLOAT_DTYPES:
        raise ArgumentError(f"linear_act: x must be a float32/float16/bfloat16 tensor, got {getattr(x, 'dtype', x)}")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ArgumentError(
            f"linear_act: weight must have shape (out_features, {x.shape[-1]}), got {getattr(weight, 'shape', weight)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ArgumentError(f"linear_act: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ArgumentError(f"linear_act: {name} must be on {x.device} like x, got {t.device}")


def _compute_dtype(x: Tensor, weight: Tensor, bias: Tensor | None) -> torch.dtype | None:
    """The dtype F.linear would compute in: the autocast dtype, else x's (None: F.linear itself must decide or fail,
    e.g. an fp64 weight, which autocast leaves alone)."""
    if torch.is_autocast_enabled(x.device.type):
        castable = weight.dtype in FLOAT_DTYPES and (bias is None or bias.dtype in FLOAT_DTYPES)
        return torch.get_autocast_dtype(x.device.type) if castable else None
    same = weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)
    return x.dtype if same else None


def linear_act(x: Tensor, weight: Tensor, bias: Tensor | None = None, act: str = "none") -> Tensor:
    """act(F.linear(x, weight, bias)), act one of `ACTIVATIONS` ('none', 'relu', 'gelu', 'gelu_tanh'), autocast as for
    F.linear. When a gradient is needed and the ops use Triton (outside torch.compile), the backward computes the
    activation's gradient and the fp32 bias gradient in one kernel and the weight gradient straight in the weight's
    dtype; otherwise this is exactly `linear_act_naive` (F.linear and F.gelu)."""
    _check(x, weight, bias, act)
    dtype = _compute_dtype(x, weight, bias)
    fast = dtype is not None and x.numel() > 0 and weight.numel() > 0 and needs_grad(x, weight, bias)
    if not fast or torch.compiler.is_compiling() or not use_triton(x.device):
        return linear_act_naive(x, weight, bias, act)
    from .chunk import LinearActFunction

    return LinearActFunction.apply(x, weight, bias, act, dtype)
