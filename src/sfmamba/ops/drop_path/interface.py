"""Public residual add with a per-sample scale: checks and dispatch between the Triton kernel and the reference."""

from __future__ import annotations

import torch
from torch import Tensor

from ...utils._config import use_triton
from .._checks import FLOAT_DTYPES, ArgumentError
from .naive import drop_path_add_naive


def _check(x: Tensor, y: Tensor, scale: Tensor) -> None:
    for name, t in (("x", x), ("y", y), ("scale", scale)):
        if not isinstance(t, Tensor) or t.dtype not in FLOAT_DTYPES:
            raise ArgumentError(
                f"drop_path_add: {name} must be a float32/float16/bfloat16 tensor, got {getattr(t, 'dtype', t)}"
            )
    if y.dim() < 1 or x.shape != y.shape:
        raise ArgumentError(
            f"drop_path_add: x and y must have one shape [B, ...], got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if tuple(scale.shape) != (y.shape[0],):
        raise ArgumentError(f"drop_path_add: scale must have shape ({y.shape[0]},), got {tuple(scale.shape)}")
    if not x.device == y.device == scale.device:
        raise ArgumentError(
            f"drop_path_add: x, y and scale must be on one device, got {x.device}, {y.device}, {scale.device}"
        )


def sample_dense(t: Tensor) -> bool:
    """Whether t [B, ...] is contiguous or channels-last (2-D or 3-D maps): then each sample fills one dense block of
    memory right after the previous one, which is all the kernel needs (x, y and the result share the strides)."""
    if t.is_contiguous():
        return True
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    return t.dim() in formats and t.is_contiguous(memory_format=formats[t.dim()])


def drop_path_add(x: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    """x + y * scale[b] for x, y [B, ...] and a per-sample scale [B] (stochastic depth's mask over keep_prob), in
    `torch.result_type(x, y)`, laid out like y. With x and y in one per-sample dense layout (contiguous, or
    channels-last feature maps) and Triton usable (outside torch.compile) one Triton pass each way; otherwise
    `drop_path_add_naive` (`torch.addcmul`)."""
    _check(x, y, scale)
    fast = sample_dense(y) and x.stride() == y.stride() and y.numel() > 0 and scale.dtype == y.dtype
    if torch.compiler.is_compiling() or not fast or not use_triton(y.device):
        return drop_path_add_naive(x, y, scale)
    from .chunk import DropPathAddFunction

    return DropPathAddFunction.apply(x, y, scale.contiguous())
