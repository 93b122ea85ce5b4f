"""Public training-mode BatchNorm + activation: checks and dispatch between the Triton kernels and the reference."""

from __future__ import annotations

import torch
from torch import Tensor

from ...utils._config import use_triton
from .._checks import FLOAT_DTYPES, ArgumentError
from .naive import ACTIVATIONS, batch_norm_act_naive


def _check(x: Tensor, params: dict[str, Tensor | None], momentum: float, eps: float, activation: str) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.dtype not in FLOAT_DTYPES:
        raise ArgumentError(
            f"batch_norm_act: x must be a float32/float16/bfloat16 tensor [B, C, ...], got {getattr(x, 'shape', x)}"
        )
    channels = x.shape[1]
    for name, t in params.items():
        if t is not None and (tuple(t.shape) != (channels,) or t.device != x.device):
            raise ArgumentError(
                f"batch_norm_act: {name} must have shape ({channels},) on {x.device}, "
                f"got {tuple(t.shape)} on {t.device}"
            )
    if (params["running_mean"] is None) != (params["running_var"] is None):
        raise ArgumentError("batch_norm_act: running_mean and running_var must be given together")
    if 0 < x.numel() // max(channels, 1) < 2:  # as F.batch_norm in training; an empty batch passes
        raise ArgumentError(f"batch_norm_act: x must have more than 1 value per channel, got shape {tuple(x.shape)}")
    if not isinstance(momentum, float) or not 0.0 <= momentum <= 1.0:
        raise ArgumentError(f"batch_norm_act: momentum must be a float in [0, 1], got {momentum!r}")
    if not isinstance(eps, float) or not eps > 0:
        raise ArgumentError(f"batch_norm_act: eps must be a positive float, got {eps!r}")
    if activation not in ACTIVATIONS:
        raise ArgumentError(f"batch_norm_act: activation must be one of {ACTIVATIONS}, got {activation!r}")


def batch_norm_act(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str = "none",
    shift: Tensor | None = None,
) -> Tensor:
    """activation(BatchNorm(x + shift)) in training mode for x [B, C, ...]: batch statistics in fp32, the running
    statistics (if given) updated in place with `momentum` and the unbiased variance, the result in x's dtype and
    layout.
    `shift` [C] (a conv's bias left out of the conv) cancels in the normalisation: it only moves the running mean, and
    its gradient is exactly zero.

    With channels innermost in memory (channels-last) and Triton usable (outside torch.compile) it runs the Triton
    forward (statistics, finalize, one normalise+activation pass) and backward (one reduction, one dx pass, the
    activation's gradient recomputed from x); otherwise the reference `batch_norm_act_naive`."""
    params = dict(weight=weight, bias=bias, running_mean=running_mean, running_var=running_var, shift=shift)
    _check(x, params, momentum, eps, activation)
    fast = x.numel() > 0 and x.movedim(1, -1).is_contiguous()
    if torch.compiler.is_compiling() or not fast or not use_triton(x.device):
        return batch_norm_act_naive(x, weight, bias, running_mean, running_var, momentum, eps, activation, shift)
    from .chunk import BatchNormActFunction

    return BatchNormActFunction.apply(x, weight, bias, running_mean, running_var, momentum, eps, activation, shift)
