"""Plain-PyTorch concatenation and split along the last dim: the definition of truth for the kernel."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["concat_last_naive", "split_last_naive"]


def concat_last_naive(a: Tensor, b: Tensor) -> Tensor:
    """[..., Ca] and [..., Cb] -> [..., Ca + Cb]."""
    return torch.cat((a, b), dim=-1)


def split_last_naive(x: Tensor, first: int) -> tuple[Tensor, Tensor]:
    """[..., C] -> views [..., first] and [..., C - first]."""
    return x[..., :first], x[..., first:]
