"""Public last-dim concatenation and split: checks and dispatch between the Triton kernel and the reference."""

from __future__ import annotations

import torch
from torch import Tensor

from ...utils._config import use_triton
from .._checks import ArgumentError
from .._launch import in_functorch_transform
from .naive import concat_last_naive, split_last_naive


def _kernel_usable(x: Tensor) -> bool:
    return not torch.compiler.is_compiling() and not in_functorch_transform() and use_triton(x.device)


def concat_last(a: Tensor, b: Tensor) -> Tensor:
    """`torch.cat((a, b), dim=-1)` for a [..., Ca] and b [..., Cb] of one leading shape, dtype and device: the Triton
    kernel where ops use Triton (outside torch.compile and torch.func), a contiguous result; `torch.cat` otherwise."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise ArgumentError(f"concat_last: a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() < 1 or a.shape[:-1] != b.shape[:-1]:
        raise ArgumentError(
            f"concat_last: a and b must share all but the last dim, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dtype != b.dtype or a.device != b.device:
        raise ArgumentError(
            f"concat_last: a and b must share dtype and device, got {a.dtype}/{a.device} and {b.dtype}/{b.device}"
        )
    if a.numel() == 0 or b.numel() == 0 or not _kernel_usable(a):
        return concat_last_naive(a, b)
    from .chunk import ConcatLastFunction, concat_rows

    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return ConcatLastFunction.apply(a, b)
    return concat_rows(a, b)


def split_last(x: Tensor, first: int) -> tuple[Tensor, Tensor]:
    """Views x[..., :first] and x[..., first:] whose backward concatenates the two gradients with the Triton kernel
    (where autograd's `SplitBackward` runs `torch.cat`); plain slicing when the kernel is not used."""
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise ArgumentError(f"split_last: x must be a tensor [..., C], got {getattr(x, 'shape', x)!r}")
    if isinstance(first, bool) or not isinstance(first, int) or not 0 < first < x.shape[-1]:
        raise ArgumentError(f"split_last: first must be an int in (0, {x.shape[-1]}), got {first!r}")
    if x.numel() == 0 or not (torch.is_grad_enabled() and x.requires_grad) or not _kernel_usable(x):
        return split_last_naive(x, first)
    from .chunk import SplitLastFunction

    return SplitLastFunction.apply(x, first)
