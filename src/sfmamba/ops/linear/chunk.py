"""Triton backward of Linear + activation: the activation's gradient and the bias gradient in one pass.

Why: PyTorch's Linear backward sums the bias gradient in the autocast dtype with a separate strided reduction
(`reduce_kernel<BFloat16>`: 55 calls, 2.6 ms of sf_mamba_tiny's 27 ms bf16 training step on an H200,
`benchmarks/results/s8_20261203/call7/hp_train_kernels.txt`), after a separate GELU backward pass that wrote the
tensor it reads. Here one kernel reads dout (and the saved pre-activation), writes dpre = dout * act'(pre) and keeps
fp32 column partial sums per program; the few hundred partial rows are summed afterwards (deterministic). The weight
gradient comes out of the GEMM in the weight's dtype (`mm` with `out_dtype` on CUDA), without a cast pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...utils._config import triton_interpret
from .._activations import ACTIVATION_CODES, act_grad, activate
from .._launch import last_dim_rows
from .._launch import launch as _launch_kernel
from .._launch import on_device as _on_device
from .._launch import sm_count as _sm_count


@triton.jit
def bias_act_bwd_kernel(
    dout_ptr, pre_ptr, dpre_ptr, part_ptr, M, C, s_dout, s_pre, s_dpre,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # Program (pid_m, pid_c): columns [pid_c * BLOCK_C, +BLOCK_C) of the row blocks pid_m, pid_m + P, ... (P programs
    # along rows); dpre = dout * act'(pre) stored when ACT, and its column sums kept as one row of fp32 partials.
    pid_m, pid_c, programs = tl.program_id(0), tl.program_id(1), tl.num_programs(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = cols < C
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)  # elementwise sums; one cross-thread reduction at the end
    for start in range(pid_m * BLOCK_M, M, programs * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < M)[:, None] & mask_c[None, :]
        r64 = rows[:, None].to(tl.int64)
        g = tl.load(dout_ptr + r64 * s_dout + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if ACT != 0:  # ACTIVATION_CODES["none"]
            h = tl.load(pre_ptr + r64 * s_pre + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            g = g * act_grad(h, ACT)
            tl.store(dpre_ptr + r64 * s_dpre + cols[None, :], g.to(dpre_ptr.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            acc += g
    if HAS_BIAS:
        tl.store(part_ptr + pid_m * C + cols, tl.sum(acc, axis=0), mask=mask_c)


def _grid(rows: int, channels: int, device: torch.device) -> tuple[int, int, int, int]:
    """(programs along rows, column blocks, BLOCK_M, BLOCK_C): ~16 programs per SM, 32 x 128 tiles."""
    block_m, block_c = (4, 16) if triton_interpret() else (32, 128)
    col_blocks = triton.cdiv(channels, block_c)
    per_device = 16 * _sm_count(device) if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(rows, block_m), per_device // col_blocks)), col_blocks, block_m, block_c


def bias_act_bwd(dout: Tensor, pre: Tensor | None, act: str, has_bias: bool) -> tuple[Tensor, Tensor | None]:
    """(dpre [rows, C] in dout's dtype, fp32 dbias [C] or None) for dout and pre of shape [..., C]."""
    dout2 = last_dim_rows(dout)
    rows, channels = dout2.shape
    if act == "none" and not has_bias:
        return dout2, None
    pre2 = last_dim_rows(pre) if act != "none" else dout2
    dpre = torch.empty_like(dout2) if act != "none" else dout2
    programs, col_blocks, block_m, block_c = _grid(rows, channels, dout.device)
    parts = torch.empty(programs if has_bias else 1, channels, device=dout.device, dtype=torch.float32)
    with _on_device(dout.device):
        _launch_kernel(
            bias_act_bwd_kernel, (programs, col_blocks),
            dout2, pre2, dpre, parts, rows, channels, dout2.stride(0), pre2.stride(0), dpre.stride(0),
            ACT=ACTIVATION_CODES[act], HAS_BIAS=has_bias, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4,
        )  # fmt: skip
    return dpre, parts.sum(0) if has_bias else None


def _weight_grad(dpre: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
    """dpre.T @ x [out, in] in `dtype`: an fp32 result of 16-bit inputs straight out of the GEMM on CUDA (the only
    out_dtype cuBLAS takes besides the inputs'), a cast otherwise (fp32 accumulation either way)."""
    if dpre.device.type == "cuda" and dtype == torch.float32 and dpre.dtype in (torch.float16, torch.bfloat16):
        return torch.mm(dpre.t(), x, out_dtype=dtype)
    return torch.mm(dpre.t(), x).to(dtype)


class LinearActFunction(torch.autograd.Function):
    """act(x @ W.T + b) computed in `dtype` (the autocast dtype, or x's), x/W/b cast to it here; the backward
    returns gradients in the inputs' own dtypes (fp32 master weights get fp32 gradients)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, act: str, dtype: torch.dtype) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x2 = last_dim_rows(x.to(dtype))
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            pre = torch.addmm(b, x2, w.t()) if b is not None else torch.mm(x2, w.t())
            out = activate(pre, act)
        ctx.save_for_backward(x2, w, pre if act != "none" else None)
        ctx.act, ctx.x_shape, ctx.x_dtype, ctx.weight_dtype = act, x.shape, x.dtype, weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @once_differentiable  # the kernel builds no graph: a double backward must fail loudly
    def backward(ctx, dout: Tensor):
        x2, w, pre = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dpre, dbias = bias_act_bwd(dout.to(w.dtype), pre, ctx.act, ctx.bias_dtype is not None and need_b)
        dx = torch.mm(dpre, w).to(ctx.x_dtype).view(ctx.x_shape) if need_x else None
        dweight = _weight_grad(dpre, x2, ctx.weight_dtype) if need_w else None
        dbias = dbias.to(ctx.bias_dtype) if dbias is not None else None
        return dx, dweight, dbias, None, None
