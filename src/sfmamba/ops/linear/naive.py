"""Plain-PyTorch Linear + activation and its bias/activation gradient: the definition of truth for the kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._activations import ACTIVATIONS, activate

__all__ = ["ACTIVATIONS", "bias_act_grad_naive", "linear_act_naive"]


def linear_act_naive(x: Tensor, weight: Tensor, bias: Tensor | None = None, act: str = "none") -> Tensor:
    """act(x @ weight.T + bias), as `F.linear` and `F.gelu` compute it (autocast included)."""
    return activate(F.linear(x, weight, bias), act)


def bias_act_grad_naive(dout: Tensor, pre: Tensor, act: str, has_bias: bool = True) -> tuple[Tensor, Tensor | None]:
    """The backward of out = act(pre) with pre = x @ W.T + bias, up to the GEMMs: (dpre in dout's dtype, dbias as the
    fp32 column sums of dpre [C], or None)."""
    pre32 = pre.float().detach().requires_grad_()
    (dpre,) = torch.autograd.grad(activate(pre32, act), pre32, dout.float())
    dbias = dpre.reshape(-1, dpre.shape[-1]).sum(0) if has_bias else None
    return dpre.to(dout.dtype), dbias
