"""Triton residual add with a per-sample scale: out = x + y * scale[b] forward, dy = dout * scale[b] backward.

Why: timm's DropPath multiplies the branch by a [B, 1, ..., 1] mask, and even fused into one `addcmul` PyTorch runs
that broadcast through its non-vectorised elementwise kernel: 24.7 us per call for 3 x 16 MB at sf_mamba_tiny's
stage 3 on an H200 (27 calls, 0.67 ms of a 25 ms training step, `benchmarks/results/s9_20261203/call2/
hp_train_sf_mamba_tiny.txt`), ~2.5x its memory time. Here every program handles one contiguous block of one sample
with the sample's scale loaded once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...utils._config import triton_interpret
from .._launch import launch as _launch_kernel
from .._launch import on_device as _on_device


@triton.jit
def scaled_add_kernel(x_ptr, y_ptr, scale_ptr, out_ptr, per_sample, HAS_X: tl.constexpr, BLOCK: tl.constexpr):
    # Program (sample b, block): out[b, i] = (x[b, i] +) y[b, i] * scale[b] over BLOCK elements of sample b (samples
    # on grid axis 0: batch x windows can pass the 65535 programs of axis 1).
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < per_sample
    base = b.to(tl.int64) * per_sample
    s = tl.load(scale_ptr + b).to(tl.float32)
    y = tl.load(y_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    out = y * s
    if HAS_X:
        out += tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def scaled_add(x: Tensor | None, y: Tensor, scale: Tensor, out_dtype: torch.dtype) -> Tensor:
    """(x +) y * scale[b] in `out_dtype`, for x, y [B, ...] of one shape and one per-sample dense layout (the result
    has it too: the kernel walks memory, not indices)."""
    out = torch.empty_strided(y.shape, y.stride(), dtype=out_dtype, device=y.device)
    per_sample = y[0].numel() if y.shape[0] else 0
    block = 64 if triton_interpret() else 2048
    with _on_device(y.device):
        _launch_kernel(
            scaled_add_kernel, (y.shape[0], triton.cdiv(per_sample, block)),
            x if x is not None else y, y, scale, out, per_sample, HAS_X=x is not None, BLOCK=block, num_warps=8
        )  # fmt: skip
    return out


class DropPathAddFunction(torch.autograd.Function):
    """out = x + y * scale[b]; dx = dout (in x's dtype), dy = dout * scale[b] (in y's dtype)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        ctx.x_dtype, ctx.y_dtype, ctx.strides = x.dtype, y.dtype, y.stride()
        return scaled_add(x, y, scale, torch.result_type(x, y))

    @staticmethod
    @once_differentiable  # the kernel builds no graph: a double backward must fail loudly
    def backward(ctx, dout: Tensor):
        (scale,) = ctx.saved_tensors
        if dout.stride() != ctx.strides:  # the kernel needs the forward's layout
            dout = torch.empty_strided(dout.shape, ctx.strides, dtype=dout.dtype, device=dout.device).copy_(dout)
        dx = dout.to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        dy = scaled_add(None, dout, scale, ctx.y_dtype) if ctx.needs_input_grad[1] else None
        return dx, dy, None
