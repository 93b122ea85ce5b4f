"""Plain-PyTorch depthwise 1-D convolution with segment boundaries: the definition of truth, and the CPU path.

Computes in fp32 and returns the input dtype. Works on (batch, L, D); each of the K taps is one shifted copy of the
input, zeroed where the source position falls outside the sequence or in another segment, so nothing leaks across a
segment boundary. Everything is differentiable by autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_left(kernel_size: int, padding: str) -> int:
    """Zeros before the first position: PyTorch's `padding='same'` puts (K-1)//2 there, causal puts K-1."""
    return kernel_size - 1 if padding == "causal" else (kernel_size - 1) // 2


def segment_ids(length: int, seq_len: int | None, cu_seqlens: Tensor | None, device: torch.device) -> Tensor:
    """[L] int64 index of the segment every position belongs to."""
    positions = torch.arange(length, device=device)
    if cu_seqlens is not None:
        return torch.searchsorted(cu_seqlens[1:].to(device=device, dtype=torch.int64), positions, right=True)
    return positions // (seq_len or length)


def depthwise_conv1d_naive(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    padding: str = "same",
    activation: str | None = None,
    seq_len: int | None = None,
    cu_seqlens: Tensor | None = None,
    layout: str = "BLD",
) -> Tensor:
    """Reference depthwise conv1d; same arguments and result as `sfmamba.ops.depthwise_conv1d` (inputs unchecked)."""
    xs = (x.transpose(1, 2) if layout == "BDL" else x).float()  # [b, L, D]
    length, kernel_size = xs.shape[1], weight.shape[1]
    w = weight.float()
    left = pad_left(kernel_size, padding)
    seg = segment_ids(length, seq_len, cu_seqlens, x.device)
    positions = torch.arange(length, device=x.device)
    out = xs.new_zeros(xs.shape) if bias is None else bias.float().expand(xs.shape)
    for k in range(kernel_size):
        src = positions + (k - left)
        inside = (src >= 0) & (src < length)
        src = src.clamp(0, length - 1)
        valid = inside & (seg[src] == seg)  # the source lies in the same segment as the output position
        shifted = xs.index_select(1, src) * valid.to(xs.dtype)[None, :, None]
        out = out + shifted * w[:, k]
    if activation == "silu":
        out = F.silu(out)
    out = out.transpose(1, 2) if layout == "BDL" else out
    return out.contiguous().to(x.dtype)
