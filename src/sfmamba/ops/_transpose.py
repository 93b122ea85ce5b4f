"""A tiled Triton transpose of the last two dims, for the layout changes around the scan kernels.

mamba_ssm's (batch, D, L) layout keeps L contiguous; the step kernels need one step's channels adjacent. PyTorch's
`.transpose(-1, -2).contiguous()` copies such 300 MB tensors at ~0.6 TB/s on an H200 (3 ms of copies around a
0.66 ms scan, `benchmarks/results/s7_20261202/scan-bdl/`); a tile loaded along one axis and stored along the other
(Triton converts the layout through shared memory) moves them at close to copy bandwidth.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..utils._config import triton_interpret, use_triton
from ._launch import on_device

_MAX_GRID_Z = 65535


@triton.jit
def transpose_kernel(x_ptr, y_ptr, R, C, sxb, sxr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # x [Bt, R, C] (unit stride along C) -> y [Bt, C, R] contiguous; one program per (BLOCK_R, BLOCK_C) tile
    b = tl.program_id(2).to(tl.int64)
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)  # 64-bit: a slice may pass 2**31
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask = (r[:, None] < R) & (c[None, :] < C)
    tile = tl.load(x_ptr + b * sxb + r[:, None] * sxr + c[None, :], mask=mask)
    tl.store(y_ptr + b * R * C + c[None, :] * R + r[:, None], tile, mask=mask)


def transpose_copy(x: Tensor) -> Tensor:
    """x [Bt, R, C] -> a contiguous [Bt, C, R] tensor equal to x.transpose(-1, -2). The Triton tile transpose where
    ops run Triton and x has a unit stride along C; PyTorch's copy otherwise."""
    fits = x.dim() == 3 and x.stride(-1) == 1 and x.shape[0] <= _MAX_GRID_Z and x.numel() > 0
    if not (fits and use_triton(x.device)):
        return x.transpose(-1, -2).contiguous()
    batch, rows, cols = x.shape
    y = torch.empty((batch, cols, rows), device=x.device, dtype=x.dtype)
    block = 16 if triton_interpret() else 64
    grid = (triton.cdiv(rows, block), triton.cdiv(cols, block), batch)
    with on_device(x.device):
        transpose_kernel[grid](x, y, rows, cols, x.stride(0), x.stride(1), BLOCK_R=block, BLOCK_C=block, num_warps=4)
    return y
