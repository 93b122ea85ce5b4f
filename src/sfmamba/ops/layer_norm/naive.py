"""Plain-PyTorch LayerNorm: the definition of truth for the Triton kernels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def layer_norm_naive(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim: statistics and affine map in fp32, the result in x's dtype."""
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps).to(x.dtype)
