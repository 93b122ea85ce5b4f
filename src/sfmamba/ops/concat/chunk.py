"""Triton concatenation of two tensors along the last dim, for the Mamba mixer's `cat(y, z)` and the backward of
its `split` of the conv output.

Why: PyTorch's `cat` of a contiguous and a strided [B, L, C/2] half (the z view of the conv output, or its gradient
view) runs `CatArrayBatchedCopy` at 25-79 us for a 13 MB result in sf_mamba_tiny's H200 training step (6 of each
per step, `benchmarks/results/s10_20261203/call1/hp_train_sf_mamba_tiny.txt`), 3-10x its memory time. Here every
program copies a [rows, columns] tile of the result from whichever input holds those columns, each read with its own
row stride.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...utils._config import triton_interpret
from .._launch import last_dim_rows
from .._launch import launch as _launch_kernel
from .._launch import on_device as _on_device


@triton.jit
def concat_last_kernel(
    a_ptr, b_ptr, out_ptr, M, CA, CB, sa, sb, so, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # Program (row block, column block): out[r, c] = a[r, c] for c < CA, b[r, c - CA] otherwise.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r64 = rows[:, None].to(tl.int64)
    in_rows = (rows < M)[:, None]
    from_a = in_rows & (cols < CA)[None, :]
    from_b = in_rows & ((cols >= CA) & (cols < CA + CB))[None, :]
    a = tl.load(a_ptr + r64 * sa + cols[None, :], mask=from_a, other=0.0)
    b = tl.load(b_ptr + r64 * sb + (cols - CA)[None, :], mask=from_b, other=0.0)
    tl.store(out_ptr + r64 * so + cols[None, :], tl.where(from_a, a, b), mask=from_a | from_b)


def concat_rows(a: Tensor, b: Tensor) -> Tensor:
    """[..., Ca] and [..., Cb] (one dtype and leading shape) -> a new contiguous [..., Ca + Cb]."""
    a2, b2 = last_dim_rows(a), last_dim_rows(b)
    rows, ca, cb = a2.shape[0], a2.shape[1], b2.shape[1]
    out = torch.empty(rows, ca + cb, device=a.device, dtype=a.dtype)
    block_c = 32 if triton_interpret() else min(256, triton.next_power_of_2(ca + cb))
    block_m = 4 if triton_interpret() else max(1, 4096 // block_c)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(ca + cb, block_c))
    with _on_device(a.device):
        _launch_kernel(
            concat_last_kernel, grid,
            a2, b2, out, rows, ca, cb, a2.stride(0), b2.stride(0), out.stride(0), BLOCK_M=block_m, BLOCK_C=block_c,
            num_warps=4,
        )  # fmt: skip
    return out.view(*a.shape[:-1], ca + cb)


class ConcatLastFunction(torch.autograd.Function):
    """cat((a, b), -1) by the kernel; the gradients are views of the result's gradient (as for `torch.cat`)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        ctx.split = a.shape[-1]
        return concat_rows(a, b)

    @staticmethod
    @once_differentiable  # views need no graph, but keep double backward as loud as the other kernels'
    def backward(ctx, dout: Tensor):
        return dout[..., : ctx.split], dout[..., ctx.split :]


class SplitLastFunction(torch.autograd.Function):
    """x[..., :first], x[..., first:] as views; the backward concatenates the two gradients with the kernel (where
    autograd's `SplitBackward` would run `torch.cat`)."""

    @staticmethod
    def forward(ctx, x: Tensor, first: int) -> tuple[Tensor, Tensor]:
        ctx.first, ctx.rest = first, x.shape[-1] - first
        ctx.set_materialize_grads(False)
        return x[..., :first], x[..., first:]

    @staticmethod
    @once_differentiable
    def backward(ctx, da: Tensor | None, db: Tensor | None):
        if da is None and db is None:
            return None, None
        lead = (da if da is not None else db).shape[:-1]
        a = da if da is not None else db.new_zeros((*lead, ctx.first))
        b = db if db is not None else da.new_zeros((*lead, ctx.rest))
        return concat_rows(a, b), None
