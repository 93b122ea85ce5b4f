"""Plain-PyTorch cross-scan and cross-merge (VMamba's four scan directions): the definition of truth, and the CPU path.

The four directions over an H x W map with L = H * W positions, for scan position l:
    k = 0: row-major,      (h, w) = (l // W, l % W)
    k = 1: column-major,   (h, w) = (l % H, l // H)
    k = 2: k = 0 reversed, position L - 1 - l of direction 0
    k = 3: k = 1 reversed, position L - 1 - l of direction 1
Cross-scan copies the map into the four sequences; cross-merge sums the four sequences back onto the map, so each
is the other's adjoint (and gradient). Everything is differentiable by autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

DIRECTIONS = 4


def to_bhwc(x: Tensor, layout: str) -> Tensor:
    """[B, C, H, W] ("BCHW") or [B, H, W, C] ("BHWC") -> a [B, H, W, C] view."""
    return x.permute(0, 2, 3, 1) if layout == "BCHW" else x


def cross_scan_naive(x: Tensor, *, layout: str = "BHWC", scan_layout: str = "BLD") -> Tensor:
    """Reference cross-scan; same arguments and result as `sfmamba.ops.cross_scan` (inputs unchecked)."""
    xs = to_bhwc(x, layout)
    batch, height, width, channels = xs.shape
    rows = xs.reshape(batch, height * width, channels)
    cols = xs.transpose(1, 2).reshape(batch, height * width, channels)
    out = torch.stack((rows, cols, rows.flip(1), cols.flip(1)), dim=2)  # [B, L, 4, C]
    return out.permute(0, 2, 3, 1).contiguous() if scan_layout == "BDL" else out


def cross_merge_naive(y: Tensor, height: int, width: int, *, scan_layout: str = "BLD", layout: str = "BHWC") -> Tensor:
    """Reference cross-merge; same arguments and result as `sfmamba.ops.cross_merge` (inputs unchecked)."""
    ys = (y.permute(0, 3, 1, 2) if scan_layout == "BDL" else y).float()  # [B, L, 4, C]
    batch, channels = ys.shape[0], ys.shape[3]
    rows = ys[:, :, 0] + ys[:, :, 2].flip(1)  # [B, L, C] in row-major order
    cols = ys[:, :, 1] + ys[:, :, 3].flip(1)  # column-major order
    out = rows.view(batch, height, width, channels) + cols.view(batch, width, height, channels).transpose(1, 2)
    out = out.permute(0, 3, 1, 2) if layout == "BCHW" else out
    return out.contiguous().to(y.dtype)
