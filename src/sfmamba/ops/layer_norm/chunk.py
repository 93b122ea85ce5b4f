"""Triton LayerNorm forward and backward (training), with the weight and bias gradients reduced inside the backward.

Why: PyTorch's CUDA LayerNorm backward computes dweight/dbias in a separate kernel (`GammaBetaBackward`) that took
1.63 ms for 16 calls of sf_mamba_tiny's bf16 training step on an H200 (bs 128, `benchmarks/results/s7_20261202/
models-s7/profile_train.log`), ~100 us each for ~20 us of memory traffic. Here every backward program walks a strided
set of row blocks, keeps its dweight/dbias partial sums in fp32 registers and writes one row of partials; the few
hundred partial rows are summed afterwards (deterministic). The forward keeps whole rows in registers and saves the
per-row mean and 1/std for the backward.
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
from .._launch import sm_count as _sm_count


@triton.jit
def normalize_rows(x, mask, cols, mask_c, w_ptr, b_ptr, C, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """LayerNorm of fp32 rows x [BLOCK_M, BLOCK_C] (masked columns zero): (out, mean, rstd), the affine map in fp32."""
    mean = tl.sum(x, axis=1) / C
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / C + eps)
    out = centred * rstd[:, None]
    if HAS_W:
        out *= tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        out += tl.load(b_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    return out, mean, rstd


@triton.jit
def layer_norm_fwd_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, mean_ptr, rstd_ptr, M, C, eps, sx, so,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_M rows of C channels, each row whole in registers.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < C
    mask_m = rows < M
    mask = mask_m[:, None] & mask_c[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    out, mean, rstd = normalize_rows(x, mask, cols, mask_c, w_ptr, b_ptr, C, eps, HAS_W, HAS_B)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * so + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=mask_m)
    tl.store(rstd_ptr + rows, rstd, mask=mask_m)


@triton.jit
def layer_norm_bwd_kernel(
    x_ptr, w_ptr, dout_ptr, mean_ptr, rstd_ptr, dres_ptr, dx_ptr, dw_part_ptr, db_part_ptr, M, C, sx, sdo, sdr, sdx,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # One program: row blocks pid, pid + P, pid + 2P, ... (P programs); per row
    #   xhat = (x - mean) * rstd,  g = dout * w,  dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)) (+ dres),
    # and the program's partial sums over its rows: dw += dout * xhat, db += dout. dres (HAS_RES): the gradient that
    # x also receives from the residual path, added here instead of by autograd in a separate pass.
    pid, programs = tl.program_id(0), tl.num_programs(0)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < C
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32) if HAS_W else None
    # elementwise partial sums, reduced across rows once at the end: a cross-warp reduction in every iteration made
    # the loop latency-bound (as it did BatchNorm's, benchmarks/results/s9_20261203/call2)
    dw = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for start in range(pid * BLOCK_M, M, programs * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask_m = rows < M
        mask = mask_m[:, None] & mask_c[None, :]
        r64 = rows[:, None].to(tl.int64)
        x = tl.load(x_ptr + r64 * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + r64 * sdo + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=mask_m, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=mask_m, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dout * w[None, :] if HAS_W else dout
        c1 = tl.sum(g * xhat, axis=1) / C
        c2 = tl.sum(g, axis=1) / C
        dx = (g - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
        if HAS_RES:
            dx += tl.load(dres_ptr + r64 * sdr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + r64 * sdx + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dout * xhat
        db += dout
    if HAS_W:
        tl.store(dw_part_ptr + pid * C + cols, tl.sum(dw, axis=0), mask=mask_c)
    if HAS_B:
        tl.store(db_part_ptr + pid * C + cols, tl.sum(db, axis=0), mask=mask_c)


def _blocks(channels: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, num_warps): whole rows, ~16 fp32 values per thread and tensor."""
    block_c = triton.next_power_of_2(channels)
    if triton_interpret():
        return 4, block_c, 1
    num_warps = 4 if block_c <= 1024 else 8
    return max(1, min(16, (num_warps * 32 * 16) // block_c)), block_c, num_warps


def layer_norm_fwd(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """x [..., C] -> (out in x's dtype and shape, mean [rows], rstd [rows]) (fp32 statistics)."""
    x2 = last_dim_rows(x)
    rows, channels = x2.shape
    out = torch.empty_like(x2)
    mean = torch.empty(rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_m, block_c, num_warps = _blocks(channels)
    with _on_device(x.device):
        _launch_kernel(
            layer_norm_fwd_kernel, (triton.cdiv(rows, block_m),),
            x2, weight if weight is not None else x2, bias if bias is not None else x2, out, mean, rstd,
            rows, channels, eps, x2.stride(0), out.stride(0),
            HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps,
        )  # fmt: skip
    return out.view(x.shape), mean, rstd


def layer_norm_bwd(
    dout: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    dres: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(dx in x's dtype, dweight and dbias in their parameters' dtypes, None where absent); `dres` (x's shape), when
    given, is added to dx."""
    x2, dout2 = last_dim_rows(x), last_dim_rows(dout)
    dres2 = last_dim_rows(dres) if dres is not None else x2
    rows, channels = x2.shape
    dx = torch.empty_like(x2)
    block_m, block_c, num_warps = _blocks(channels)
    # enough programs to fill the GPU with loads in flight (4 per SM left each walking 12 row blocks at sf_mamba_tiny's
    # 25k x 320 rows: 51 us on an H200 for ~12 us of memory traffic); each writes one row of partial sums
    programs = min(triton.cdiv(rows, block_m), 16 * _sm_count(x.device) if x.device.type == "cuda" else 4)
    parts = torch.empty(2 if bias is not None else 1, programs, channels, device=x.device, dtype=torch.float32)
    with _on_device(x.device):
        _launch_kernel(
            layer_norm_bwd_kernel, (programs,),
            x2, weight if weight is not None else x2, dout2, mean, rstd, dres2, dx, parts[0], parts[-1],
            rows, channels, x2.stride(0), dout2.stride(0), dres2.stride(0), dx.stride(0),
            HAS_W=weight is not None, HAS_B=bias is not None, HAS_RES=dres is not None,
            BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps,
        )  # fmt: skip
    sums = parts.sum(1)
    dweight = sums[0].to(weight.dtype) if weight is not None else None
    dbias = sums[-1].to(bias.dtype) if bias is not None else None
    return dx.view(x.shape), dweight, dbias


class LayerNormFunction(torch.autograd.Function):
    """Autograd of the Triton LayerNorm (eager; torch.compile takes the reference, which inductor fuses)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        out, mean, rstd = layer_norm_fwd(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return out

    @staticmethod
    @once_differentiable  # the backward kernels build no graph: a double backward must fail loudly
    def backward(ctx, dout: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = layer_norm_bwd(dout, x, weight, bias, mean, rstd)
        return dx, dweight, dbias, None


class LayerNormResidualFunction(torch.autograd.Function):
    """(x, LayerNorm(x)) for a pre-norm residual block, which uses x twice (the norm's input and the skip): the
    backward adds the skip's gradient inside the LayerNorm backward kernel, where autograd would sum the two
    gradients in a separate pass (24 passes of 16 MB per sf_mamba_tiny training step,
    `benchmarks/results/s10_20261203/call2/census.txt`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
        out, mean, rstd = layer_norm_fwd(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.set_materialize_grads(False)
        return x.view_as(x), out

    @staticmethod
    @once_differentiable
    def backward(ctx, dres: Tensor | None, dout: Tensor | None):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if dout is None:  # only the skip was used
            return dres, None, None, None
        dx, dweight, dbias = layer_norm_bwd(dout, x, weight, bias, mean, rstd, dres)
        return dx, dweight, dbias, None
