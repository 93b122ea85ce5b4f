"""The scan backward's partial sums, finished in two launches: the step and tiled backward kernels write
deterministic partials (dB/dC per channel block, dA/dD/dbias per span) instead of racing atomics; summing them with
torch took five reductions and two to three copies per backward (transposes and casts into the inputs' forms): ~27 us
of a (128, 160, 196, 8) bf16 fwd+bwd on an H200, against 9.8 + 4.1 us for these two kernels (torch.profiler,
benchmarks/results/s14_20261203/call1 and call4), and six fewer host launches per backward in eager training."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...utils._config import triton_interpret
from .._launch import bc_strides as _bc_strides
from .._launch import launch as _launch_kernel

TILE_ELEMENTS = 4096  # values one 4-warp program loads at once (32 per thread)
MAX_PARTS_AT_ONCE = 16  # channel blocks the dB/dC sum loads together (more are walked BLOCK_P at a time)


@triton.jit
def bc_partials_kernel(part_ptr, dB_ptr, dC_ptr, n_parts, which_stride, part_stride, rows, L, G, NSTATE, sB_b, sB_g,
                       sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_N: tl.constexpr):  # fmt: skip
    # part: [2 (dB, dC; `which_stride` apart), n_parts (`part_stride` apart), rows, NSTATE] fp32 with row
    # r = (b * G + g) * L + l. Sums over the parts and writes dB (program_id(1) 0) or dC (1) through their own
    # (batch, G, N, L) strides, in their own dtype. BLOCK_P parts are loaded at once: one part per iteration left
    # each program waiting on its loads one after another (n_parts of them: 10 at (128, 320, 49, 8))
    which = tl.program_id(1)
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # int32 (the launcher checks rows < 2**31): the
    # row's (batch, group, step) divisions below would otherwise be 64-bit, emulated in software on the GPU
    offs_n = tl.arange(0, BLOCK_N)
    offs_p = tl.arange(0, BLOCK_P)
    mask = (offs_r < rows)[:, None] & (offs_n < NSTATE)[None, :]
    src = part_ptr + which.to(tl.int64) * which_stride + (offs_r.to(tl.int64)[:, None] * NSTATE + offs_n[None, :])
    total = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    for p0 in range(0, n_parts, BLOCK_P):
        parts = (p0 + offs_p).to(tl.int64)[:, None, None]
        tile = tl.load(src[None, :, :] + parts * part_stride, mask=mask[None, :, :] & (parts < n_parts), other=0.0)
        total += tl.sum(tile, axis=0)
    step, image = offs_r % L, offs_r // L
    batch, group = (image // G).to(tl.int64), image % G
    if which == 0:
        dst = (batch * sB_b + group * sB_g + step * sB_l)[:, None] + offs_n[None, :] * sB_n
        tl.store(dB_ptr + dst, total.to(dB_ptr.dtype.element_ty), mask=mask)
    else:
        dst = (batch * sC_b + group * sC_g + step * sC_l)[:, None] + offs_n[None, :] * sC_n
        tl.store(dC_ptr + dst, total.to(dC_ptr.dtype.element_ty), mask=mask)


@triton.jit
def param_partials_kernel(dA_part_ptr, dD_part_ptr, dbias_part_ptr, dA_ptr, dD_ptr, dbias_ptr, rows, D, NSTATE,
                          HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_W: tl.constexpr):  # fmt: skip
    # Column sums over `rows` (batch x spans) of dA [rows, N * D] (program_id(1) 0, written transposed: (D, N), A's
    # form), dD (1) and dbias (2) [rows, D], all fp32.
    which = tl.program_id(1)
    width = tl.where(which == 0, NSTATE * D, D)
    active = (which == 0) | ((which == 1) & HAS_D) | ((which == 2) & HAS_BIAS)
    offs_w = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    if active & (tl.program_id(0) * BLOCK_W < width):
        mask_w = offs_w < width
        total = tl.zeros([BLOCK_W], dtype=tl.float32)
        for r0 in range(0, rows, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
            offs = offs_r[:, None] * width + offs_w[None, :]
            mask = (offs_r < rows)[:, None] & mask_w[None, :]
            if which == 0:
                tile = tl.load(dA_part_ptr + offs, mask=mask, other=0.0)
            elif which == 1:
                tile = tl.load(dD_part_ptr + offs, mask=mask, other=0.0)
            else:
                tile = tl.load(dbias_part_ptr + offs, mask=mask, other=0.0)
            total += tl.sum(tile, axis=0)
        if which == 0:  # column n * D + d -> A's (d, n)
            tl.store(dA_ptr + (offs_w % D) * NSTATE + offs_w // D, total, mask=mask_w)
        elif which == 1:
            tl.store(dD_ptr + offs_w, total, mask=mask_w)
        else:
            tl.store(dbias_ptr + offs_w, total, mask=mask_w)


def sum_bc_partials(
    part: Tensor, n_parts: int, B: Tensor, C: Tensor, length: int, groups: int, layout: str
) -> tuple[Tensor, Tensor]:
    """`part` [2, blocks, batch, groups, length, N] fp32 (dB then dC per channel block, contiguous; the first
    `n_parts` blocks written) -> (dB, dC), each summed over those blocks, shaped and typed like B and C (contiguous)."""
    batch, nstate = part.shape[2], part.shape[-1]
    dB = torch.empty_like(B, memory_format=torch.contiguous_format)
    dC = torch.empty_like(C, memory_format=torch.contiguous_format)
    rows = batch * groups * length
    if rows >= 2**31:
        raise ValueError(f"selective_scan backward: batch * groups * length must be below 2**31, got {rows}")
    block_n = triton.next_power_of_2(nstate)
    block_p = min(triton.next_power_of_2(n_parts), MAX_PARTS_AT_ONCE)
    block_r = 16 if triton_interpret() else max(16, TILE_ELEMENTS // (block_p * block_n))
    _launch_kernel(
        bc_partials_kernel, (triton.cdiv(rows, block_r), 2), part, dB, dC, n_parts, part.stride(0), part.stride(1),
        rows, length, groups, nstate, *_bc_strides(dB, layout), *_bc_strides(dC, layout),
        BLOCK_P=block_p, BLOCK_R=block_r, BLOCK_N=block_n,
    )  # fmt: skip
    return dB, dC


def sum_param_partials(dA_part: Tensor, dD_part: Tensor | None, dbias_part: Tensor | None) -> tuple[Tensor, ...]:
    """dA_part [batch, spans, N, D], dD_part / dbias_part [batch, spans, D] (None where absent) -> dA (D, N) and dD,
    dbias (D,) summed over batch and spans (empty where absent), fp32."""
    batch, spans, nstate, dim = dA_part.shape
    dev, f32 = dA_part.device, torch.float32
    dA = torch.empty((dim, nstate), device=dev, dtype=f32)
    dD = torch.empty((dim if dD_part is not None else 0,), device=dev, dtype=f32)
    dbias = torch.empty((dim if dbias_part is not None else 0,), device=dev, dtype=f32)
    block_r, block_w = (16, 32) if triton_interpret() else (128, 32)  # the batch's rows at once, more programs
    _launch_kernel(
        param_partials_kernel, (triton.cdiv(nstate * dim, block_w), 3), dA_part,
        dA_part if dD_part is None else dD_part, dA_part if dbias_part is None else dbias_part, dA,
        dA if dD_part is None else dD, dA if dbias_part is None else dbias, batch * spans, dim, nstate,
        HAS_D=dD_part is not None, HAS_BIAS=dbias_part is not None, BLOCK_R=block_r, BLOCK_W=block_w,
    )  # fmt: skip
    return dA, dD, dbias
