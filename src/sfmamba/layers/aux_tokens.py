"""SF-Mamba's auxiliary tokens: two tokens per window sequence, [head, x1..xT, tail], swapped in place after a block.

The swap is O(1) in the sequence length: it writes only rows 0 and L-1 of the block's output, in place
(`swap_aux_tokens_`); the T patch rows are never read or copied. Attaching writes the window partition and the two
tokens into one freshly allocated [windows, T + 2, C] buffer, so adding the tokens costs no copy beyond the one
the window partition makes anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

__all__ = ["AUX_INITS", "AuxTokens", "swap_aux_tokens_"]

AUX_INITS = ("learnable", "mean")


def swap_aux_tokens_(x: Tensor) -> Tensor:
    """Swap rows 0 and L-1 of x [B, L, C] in place (head <-> tail) and return x. Reads and writes 2 rows per
    sequence, whatever L is. x must not be a leaf that requires grad (a block's output never is)."""
    if x.dim() != 3 or x.shape[1] < 2:
        raise ValueError(f"swap_aux_tokens_: x must be [B, L >= 2, C], got {tuple(x.shape)}")
    ends = x[:, :: x.shape[1] - 1]  # a view of rows 0 and L-1: [B, 2, C]
    ends.copy_(ends.flip(1))  # flip copies the two rows first, so the in-place write cannot alias
    return x


class AuxTokens(nn.Module):
    """The two auxiliary tokens of a hybrid stage and the window partition that places them.

    Args:
        dim: channels.
        init: "learnable" (two trained tokens shared by every window, the paper's) or "mean" (both tokens start as the
            mean of their window's patch tokens; no parameters).
    """

    def __init__(self, dim: int, init: str = "learnable"):
        super().__init__()
        if init not in AUX_INITS:
            raise ValueError(f"aux_init must be one of {AUX_INITS}, got {init!r}")
        self.init = init
        self.tokens = nn.Parameter(torch.zeros(2, dim)) if init == "learnable" else None
        if self.tokens is not None:
            trunc_normal_(self.tokens, std=0.02)
            self.tokens._no_weight_decay = True

    def attach(self, x: Tensor, window_size: int) -> Tensor:
        """[B, C, H, W] (H, W multiples of the window) -> [B * nH * nW, ws * ws + 2, C]: windows row-major, each
        sequence [head, tokens row-major, tail]."""
        b, c, h, w = x.shape
        ws = window_size
        nh, nw = h // ws, w // ws
        seq = x.new_empty(b * nh * nw, ws * ws + 2, c)
        body = seq[:, 1:-1].view(b, nh, nw, ws, ws, c)
        body.copy_(x.view(b, c, nh, ws, nw, ws).permute(0, 2, 4, 3, 5, 1))  # the partition copy, written in place
        if self.tokens is not None:
            seq[:, 0] = self.tokens[0].to(seq.dtype)
            seq[:, -1] = self.tokens[1].to(seq.dtype)
        else:
            mean = F.avg_pool2d(x, ws).permute(0, 2, 3, 1).reshape(-1, c)  # [B * nH * nW, C]
            seq[:, 0] = mean
            seq[:, -1] = mean
        return seq

    def extra_repr(self) -> str:
        return f"init={self.init!r}"
