"""Triton residual add + LayerNorm (forward): one pass reads x, y (and gamma), writes the residual and its norm.

Unfused, a pre-norm block's `x + gamma * y` then `LayerNorm` costs three kernels and five full-tensor passes (the
product, the sum, the norm's read, plus the writes); here each row of C channels is loaded once, summed in fp32,
rounded to the residual's dtype (as the unfused sum is), normalised from registers, and both results are written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._launch import last_dim_rows
from .._launch import launch as _launch_kernel
from .._launch import on_device as _on_device
from ..layer_norm.chunk import _blocks, normalize_rows


@triton.jit
def add_layer_norm_fwd_kernel(
    x_ptr, y_ptr, gamma_ptr, w_ptr, b_ptr, res_ptr, out_ptr, M, C, eps, sx, sy, sr, so,
    HAS_GAMMA: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_M rows, each a whole row of C channels in registers.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < C
    mask = (rows < M)[:, None] & mask_c[None, :]
    x = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + rows[:, None] * sy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_GAMMA:
        y *= tl.load(gamma_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    residual = (x + y).to(res_ptr.dtype.element_ty)
    tl.store(res_ptr + rows[:, None] * sr + cols[None, :], residual, mask=mask)
    out, _, _ = normalize_rows(residual.to(tl.float32), mask, cols, mask_c, w_ptr, b_ptr, C, eps, HAS_W, HAS_B)
    tl.store(out_ptr + rows[:, None] * so + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def add_layer_norm_fwd(
    x: Tensor, y: Tensor, gamma: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float,
    residual_dtype: torch.dtype, norm_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """x, y [..., C] (any leading shape; rows with unit channel stride) -> (residual, normed), same shape."""
    shape, channels = x.shape, x.shape[-1]
    x2, y2 = last_dim_rows(x), last_dim_rows(y)
    rows = x2.shape[0]
    residual = torch.empty(rows, channels, device=x.device, dtype=residual_dtype)
    normed = torch.empty(rows, channels, device=x.device, dtype=norm_dtype)
    block_m, block_c, num_warps = _blocks(channels)
    dummy = x2  # never read: the matching HAS_* flag is off
    with _on_device(x.device):
        _launch_kernel(
            add_layer_norm_fwd_kernel, (triton.cdiv(rows, block_m),),
            x2, y2, gamma if gamma is not None else dummy, weight if weight is not None else dummy,
            bias if bias is not None else dummy, residual, normed, rows, channels, eps,
            x2.stride(0), y2.stride(0), residual.stride(0), normed.stride(0),
            HAS_GAMMA=gamma is not None, HAS_W=weight is not None, HAS_B=bias is not None,
            BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps,
        )  # fmt: skip
    return residual.view(shape), normed.view(shape)
