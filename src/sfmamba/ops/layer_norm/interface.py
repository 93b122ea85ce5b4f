"""Public LayerNorm: checks and dispatch between the Triton kernels (forward and backward) and the reference."""

from __future__ import annotations

import torch
from torch import Tensor

from ...utils._config import use_triton
from .._checks import FLOAT_DTYPES, ArgumentError
from .._launch import in_functorch_transform, needs_grad
from .naive import layer_norm_naive


def _check(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> None:
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] == 0:
        raise ArgumentError(f"layer_norm: x must be a tensor with a non-empty last dim, got {getattr(x, 'shape', x)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ArgumentError(f"layer_norm: x must be float32, float16 or bfloat16, got {x.dtype}")
    channels = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (tuple(t.shape) != (channels,) or t.device != x.device):
            raise ArgumentError(
                f"layer_norm: {name} must have shape ({channels},) on {x.device}, got {tuple(t.shape)} on {t.device}"
            )
    if not isinstance(eps, float) or not eps > 0:
        raise ArgumentError(f"layer_norm: eps must be a positive float, got {eps!r}")


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim with fp32 statistics, the result in x's dtype (weight and bias of any float dtype,
    applied in fp32). Triton forward and backward where ops use Triton (the weight and bias gradients reduced inside
    the backward kernel), outside torch.compile; the reference (`layer_norm_naive`) otherwise."""
    _check(x, weight, bias, eps)
    if torch.compiler.is_compiling() or not use_triton(x.device) or x.numel() == 0:
        return layer_norm_naive(x, weight, bias, eps)
    from .chunk import LayerNormFunction, layer_norm_fwd

    if not needs_grad(x, weight, bias):  # no autograd node to build (its apply costs host time per call)
        return layer_norm_fwd(x, weight, bias, eps)[0]
    return LayerNormFunction.apply(x, weight, bias, eps)


def layer_norm_residual(
    x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """(x, layer_norm(x, weight, bias, eps)) for a pre-norm residual block that uses x as its skip too. In training
    with the Triton kernels, x comes back as a view whose gradient the LayerNorm backward kernel adds to the norm's
    input gradient (one pass over x's gradient fewer than autograd's sum of the two); otherwise x itself."""
    _check(x, weight, bias, eps)
    kernels = not torch.compiler.is_compiling() and use_triton(x.device) and x.numel() > 0
    if not kernels or not needs_grad(x, weight, bias) or in_functorch_transform():
        return x, layer_norm(x, weight, bias, eps)
    from .chunk import LayerNormResidualFunction

    return LayerNormResidualFunction.apply(x, weight, bias, eps)
