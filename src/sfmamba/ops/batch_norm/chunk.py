"""Triton training-mode BatchNorm + activation over channels-last maps: forward and backward.

Why: in sf_mamba_tiny's bf16 training step on an H200 (bs 128, channels-last) PyTorch's BatchNorm kernels took
2.8 ms per step for ~1.2 ms of memory traffic (the statistics pass alone ran at ~1/6 of the bandwidth:
`benchmarks/results/s8_20261203/call7/hp_train_kernels.txt`), and the GELU/ReLU after each BN cost two more passes
forward and three backward. Here, for x [B, C, H, W] with channels innermost, seen as rows [B*H*W, C]:
  forward:  stats (per-program shifted sums -> count, mean, M2) -> finalize (one kernel: batch mean and 1/std,
            running-statistics update) -> apply (normalise, affine, activation; one pass);
  backward: reduce (dz = dy * act'(z) recomputed from x, partial sums of dz and dz * xhat) -> dx (one pass).
Memory: x, the per-channel mean and 1/std are saved (PyTorch saves x too, and the activation saves its input).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...utils._config import triton_interpret
from .._activations import ACTIVATION_CODES, act_fwd, act_grad
from .._launch import launch as _launch_kernel
from .._launch import on_device as _on_device
from .._launch import sm_count as _sm_count


@triton.jit
def bn_stats_kernel(
    x_ptr, mean_part_ptr, m2_part_ptr, count_part_ptr, M, C, sx, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr
):  # fmt: skip
    # Program (pid_m, pid_c): row blocks pid_m, pid_m + P, ... of columns [pid_c * BLOCK_C, +BLOCK_C). Sums of x - K
    # and (x - K)^2 with K the program's first row (a sample of the data: no cancellation of a large mean against a
    # small spread), kept elementwise in [BLOCK_M, BLOCK_C] registers and reduced once; written as the program's
    # count, mean and M2 (combined across programs by bn_finalize_kernel).
    pid_m, pid_c, programs = tl.program_id(0), tl.program_id(1), tl.num_programs(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = cols < C
    shift = tl.load(x_ptr + (pid_m * BLOCK_M).to(tl.int64) * sx + cols, mask=mask_c, other=0.0).to(tl.float32)
    s1 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    n = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(pid_m * BLOCK_M, M, programs * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask_m = rows < M
        mask = mask_m[:, None] & mask_c[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[None, :], 0.0)
        s1 += d
        s2 += d * d
        n += mask_m.to(tl.float32)
    count = tl.sum(n, axis=0)
    sum1 = tl.sum(s1, axis=0)
    tl.store(mean_part_ptr + pid_m * C + cols, shift + sum1 / count, mask=mask_c)
    tl.store(m2_part_ptr + pid_m * C + cols, tl.maximum(tl.sum(s2, axis=0) - sum1 * sum1 / count, 0.0), mask=mask_c)
    if pid_c == 0:
        tl.store(count_part_ptr + pid_m, count)


@triton.jit
def bn_finalize_kernel(
    mean_part_ptr, m2_part_ptr, count_part_ptr, rm_ptr, rv_ptr, shift_ptr, mean_ptr, rstd_ptr, P, M, C, momentum,
    eps, UPDATE_RUNNING: tl.constexpr, HAS_SHIFT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # One program per column block: the batch mean and M2 from the P partial rows (Chan's combination, two passes over
    # them with elementwise accumulators), 1/std of the biased variance, and the running statistics (unbiased
    # variance) as nn.BatchNorm updates them.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = cols < C
    weighted = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        parts = p0 + tl.arange(0, BLOCK_P)
        mask = (parts < P)[:, None] & mask_c[None, :]
        n = tl.load(count_part_ptr + parts, mask=parts < P, other=0.0)
        weighted += tl.load(mean_part_ptr + parts[:, None] * C + cols[None, :], mask=mask, other=0.0) * n[:, None]
    mean = tl.sum(weighted, axis=0) / M
    m2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        parts = p0 + tl.arange(0, BLOCK_P)
        mask = (parts < P)[:, None] & mask_c[None, :]
        n = tl.load(count_part_ptr + parts, mask=parts < P, other=0.0)
        d = tl.load(mean_part_ptr + parts[:, None] * C + cols[None, :], mask=mask, other=0.0) - mean[None, :]
        q = tl.load(m2_part_ptr + parts[:, None] * C + cols[None, :], mask=mask, other=0.0)
        m2 += q + tl.where(mask, n[:, None] * d * d, 0.0)
    m2_sum = tl.sum(m2, axis=0)
    tl.store(mean_ptr + cols, mean, mask=mask_c)
    tl.store(rstd_ptr + cols, 1.0 / tl.sqrt(m2_sum / M + eps), mask=mask_c)
    if UPDATE_RUNNING:
        rm = tl.load(rm_ptr + cols, mask=mask_c, other=0.0)
        rv = tl.load(rv_ptr + cols, mask=mask_c, other=0.0)
        if HAS_SHIFT:  # the statistics of x + shift: the same variance, the mean moved by shift
            mean += tl.load(shift_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
        new_rm = (1.0 - momentum) * rm.to(tl.float32) + momentum * mean
        new_rv = (1.0 - momentum) * rv.to(tl.float32) + momentum * (m2_sum / (M - 1))
        tl.store(rm_ptr + cols, new_rm.to(rm.dtype), mask=mask_c)
        tl.store(rv_ptr + cols, new_rv.to(rv.dtype), mask=mask_c)


@triton.jit
def _tile(rows, cols, M, C, mean_ptr, rstd_ptr, w_ptr, b_ptr):
    """Masks, int64 row offsets and the per-channel mean, 1/std, weight and bias of one [BLOCK_M, BLOCK_C] tile."""
    mask_c = cols < C
    mask = (rows < M)[:, None] & mask_c[None, :]
    mean = tl.load(mean_ptr + cols, mask=mask_c, other=0.0)
    rstd = tl.load(rstd_ptr + cols, mask=mask_c, other=0.0)
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    return mask, rows[:, None].to(tl.int64), mean, rstd, w, b


@triton.jit
def bn_act_fwd_kernel(
    x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, M, C, sx, sy, ACT: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask, r64, mean, rstd, w, b = _tile(rows, cols, M, C, mean_ptr, rstd_ptr, w_ptr, b_ptr)
    x = tl.load(x_ptr + r64 * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    z = (x - mean[None, :]) * (rstd * w)[None, :] + b[None, :]
    tl.store(y_ptr + r64 * sy + cols[None, :], act_fwd(z, ACT).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bn_act_bwd_reduce_kernel(
    dy_ptr, x_ptr, part_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, M, C, sdy, sx, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # Partial sums of dz and dz * xhat (dz = dy * act'(z), z = xhat * w + b recomputed from x) over the program's
    # row blocks pid_m, pid_m + P, ...; rows [0, P) and [P, 2P) of `part`.
    pid_m, pid_c, programs = tl.program_id(0), tl.program_id(1), tl.num_programs(0)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    sum_dz = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)  # elementwise sums; one cross-thread reduction at the end
    sum_dzx = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for start in range(pid_m * BLOCK_M, M, programs * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask, r64, mean, rstd, w, b = _tile(rows, cols, M, C, mean_ptr, rstd_ptr, w_ptr, b_ptr)
        x = tl.load(x_ptr + r64 * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + r64 * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean[None, :]) * rstd[None, :], 0.0)
        dz = dy * act_grad(xhat * w[None, :] + b[None, :], ACT)
        sum_dz += dz
        sum_dzx += dz * xhat
    tl.store(part_ptr + pid_m * C + cols, tl.sum(sum_dz, axis=0), mask=cols < C)
    tl.store(part_ptr + (programs + pid_m) * C + cols, tl.sum(sum_dzx, axis=0), mask=cols < C)


@triton.jit
def bn_act_bwd_dx_kernel(
    dy_ptr, x_ptr, dx_ptr, sums_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, M, C, sdy, sx, sdx, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # dx = w * rstd * (dz - mean(dz) - xhat * mean(dz * xhat)), the means over all M rows (sums_ptr: [2, C]).
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask, r64, mean, rstd, w, b = _tile(rows, cols, M, C, mean_ptr, rstd_ptr, w_ptr, b_ptr)
    mean_dz = tl.load(sums_ptr + cols, mask=cols < C, other=0.0) / M
    mean_dzx = tl.load(sums_ptr + C + cols, mask=cols < C, other=0.0) / M
    x = tl.load(x_ptr + r64 * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + r64 * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    xhat = (x - mean[None, :]) * rstd[None, :]
    dz = dy * act_grad(xhat * w[None, :] + b[None, :], ACT)
    dx = (dz - mean_dz[None, :] - xhat * mean_dzx[None, :]) * (w * rstd)[None, :]
    tl.store(dx_ptr + r64 * sdx + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


def channel_rows(t: Tensor) -> Tensor:
    """[B, C, *spatial] with channels innermost in memory (channels-last) as a [B * spatial, C] view; a
    channels-last copy first when t is not laid out so."""
    rows = t.movedim(1, -1)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    return rows.view(-1, t.shape[1])


def _blocks(channels: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_C): tiles of ~4096 elements (32 per thread at 4 warps)."""
    if triton_interpret():
        return 4, 16
    block_c = min(128, triton.next_power_of_2(channels))
    return 4096 // block_c, block_c


def _row_programs(rows: int, block_m: int, col_blocks: int, device: torch.device) -> int:
    """Programs along rows for the reducing kernels: ~8 per SM in all, each walking several row blocks."""
    per_device = 8 * _sm_count(device) if device.type == "cuda" else 3
    return max(1, min(triton.cdiv(rows, block_m), per_device // col_blocks))


def _like_channels_last(x: Tensor) -> tuple[Tensor, Tensor]:
    """An empty tensor shaped and laid out like x (channels innermost) and its [rows, C] view."""
    out = torch.empty_like(x.movedim(1, -1), memory_format=torch.contiguous_format).movedim(-1, 1)
    return out, out.movedim(1, -1).view(-1, x.shape[1])


def batch_norm_act_fwd(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
    act: str,
    shift: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y like x in layout and dtype, fp32 batch mean [C], fp32 1/std [C]) of BN(x + shift) = BN(x): `shift` (a conv
    bias left out of the conv) only moves the running mean, updated in place with the running variance."""
    x2 = channel_rows(x)
    rows, channels = x2.shape
    block_m, block_c = _blocks(channels)
    col_blocks = triton.cdiv(channels, block_c)
    programs = _row_programs(rows, block_m, col_blocks, x.device)
    f32 = dict(device=x.device, dtype=torch.float32)
    parts = torch.empty(2 * programs * channels + programs, **f32)
    mean_part, m2_part, count_part = (
        parts[: programs * channels],
        parts[programs * channels : -programs],
        parts[-programs:],
    )
    stats = torch.empty(2, channels, **f32)
    y, y2 = _like_channels_last(x)
    update = running_mean is not None
    with _on_device(x.device):
        _launch_kernel(
            bn_stats_kernel, (programs, col_blocks),
            x2, mean_part, m2_part, count_part, rows, channels, x2.stride(0), BLOCK_M=block_m, BLOCK_C=block_c
        )  # fmt: skip
        # narrow column blocks and tall partial tiles: more programs, few dependent loop trips (3-10 programs of 32
        # columns each walked ~1000 partial rows in 64-row steps: 18 us per call on an H200, s10_20261203/call1)
        fin_c, fin_p = (16, 4) if triton_interpret() else (8, 256)
        _launch_kernel(
            bn_finalize_kernel, (triton.cdiv(channels, fin_c),),
            mean_part, m2_part, count_part, running_mean if update else stats, running_var if update else stats,
            shift if shift is not None else stats,
            stats[0], stats[1], programs, rows, channels, momentum, eps,
            UPDATE_RUNNING=update, HAS_SHIFT=shift is not None, BLOCK_P=fin_p, BLOCK_C=fin_c,
        )  # fmt: skip
        _launch_kernel(
            bn_act_fwd_kernel, (triton.cdiv(rows, block_m), col_blocks),
            x2, y2, stats[0], stats[1], weight, bias, rows, channels, x2.stride(0), y2.stride(0),
            ACT=ACTIVATION_CODES[act], BLOCK_M=block_m, BLOCK_C=block_c,
        )  # fmt: skip
    return y, stats[0], stats[1]


def batch_norm_act_bwd(
    dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor, act: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx like x, dweight and dbias in the parameters' dtypes)."""
    x2, dy2 = channel_rows(x), channel_rows(dy)
    rows, channels = x2.shape
    block_m, block_c = _blocks(channels)
    col_blocks = triton.cdiv(channels, block_c)
    programs = _row_programs(rows, block_m, col_blocks, x.device)
    parts = torch.empty(2 * programs, channels, device=x.device, dtype=torch.float32)
    dx, dx2 = _like_channels_last(x)
    code = ACTIVATION_CODES[act]
    with _on_device(x.device):
        _launch_kernel(
            bn_act_bwd_reduce_kernel, (programs, col_blocks),
            dy2, x2, parts, mean, rstd, weight, bias, rows, channels, dy2.stride(0), x2.stride(0),
            ACT=code, BLOCK_M=block_m, BLOCK_C=block_c,
        )  # fmt: skip
        sums = parts.view(2, programs, channels).sum(1)  # [dbias, dweight]
        _launch_kernel(
            bn_act_bwd_dx_kernel, (triton.cdiv(rows, block_m), col_blocks),
            dy2, x2, dx2, sums, mean, rstd, weight, bias, rows, channels, dy2.stride(0), x2.stride(0), dx2.stride(0),
            ACT=code, BLOCK_M=block_m, BLOCK_C=block_c,
        )  # fmt: skip
    return dx, sums[1].to(weight.dtype), sums[0].to(bias.dtype)


class BatchNormActFunction(torch.autograd.Function):
    """Autograd of the Triton training BatchNorm + activation of x + shift (eager; torch.compile takes the
    reference). BN's batch mean cancels a per-channel shift exactly, so its gradient is exactly zero."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, act: str, shift=None):
        y, mean, rstd = batch_norm_act_fwd(x, weight, bias, running_mean, running_var, momentum, eps, act, shift)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.act = act
        ctx.shift_like = (shift.shape, shift.dtype) if shift is not None else None
        return y

    @staticmethod
    @once_differentiable  # the backward kernels build no graph: a double backward must fail loudly
    def backward(ctx, dy: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = batch_norm_act_bwd(dy, x, weight, bias, mean, rstd, ctx.act)
        dshift = None
        if ctx.shift_like is not None and ctx.needs_input_grad[8]:
            dshift = torch.zeros(ctx.shift_like[0], dtype=ctx.shift_like[1], device=x.device)
        return dx, dweight, dbias, None, None, None, None, None, dshift
