"""The scan backward's partial sums, finished in one launch: the step and tiled backward kernels write
deterministic partials (dB/dC per channel block, dA/dD/dbias per span; dB/dC by atomics into one block instead where
`chunk.atomic_bc_sums` says so: fp32 inputs by default); summing them with
torch took five reductions and two to three copies per backward (transposes and casts into the inputs' forms): ~27 us
of a (128, 160, 196, 8) bf16 fwd+bwd on an H200, against 9.8 + 4.1 us for the two kernels these were until session 26
(torch.profiler, benchmarks/results/s14_20261203/call1 and call4), and six fewer host launches per backward in eager
training. Session 26 made it one kernel (one launch and one launch gap fewer per backward) whose programs load all
their rows at once (the two kernels walked parts or rows one load after another: 8.7 and 7.3 us under ncu at
(128, 160, 196, 8) bf16, 22 % and 10 % issue use, session 24's `scan-ncu-split`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...utils._config import triton_interpret
from .._launch import bc_strides as _bc_strides
from .._launch import launch as _launch_kernel

# values one program loads at once (16 per thread of NUM_WARPS): H100, the launch alone under CUDA graphs
# (benchmarks/results/s35_20261207/call1/partials-time, `partials_time.py`), 2048 values and 4 warps against session
# 26's 4096: (128, 160, 196, 8) bf16 (10 blocks) 8.08 vs 8.84 us, fp32 (1 block) 2.65 vs 2.83; (128, 320, 49, 8) bf16
# (20 blocks) 5.29 vs 6.38, fp32 2.53 vs 2.61; 1024 values or 8 warps lost to it everywhere but fp32 at L = 196 (4096
# values with 8 warps: 2.57)
TILE_ELEMENTS = 2048
MAX_PARTS_AT_ONCE = 16  # channel blocks the dB/dC sum loads together (more are walked BLOCK_P at a time)
NUM_WARPS = 4


@triton.jit
def _sum_bc(part_ptr, dB_ptr, dC_ptr, which, block, n_parts, which_stride, part_stride, rows, L, G,
            NSTATE: tl.constexpr, sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, BLOCK_P: tl.constexpr,
            BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    # part: [2 (dB, dC; `which_stride` apart), n_parts (`part_stride` apart), rows, NSTATE] fp32 with row
    # r = (b * G + g) * L + l. Sums rows `block` x BLOCK_R.. over the parts and writes dB (which 0) or dC (1)
    # through their own (batch, G, N, L) strides, in their own dtype; BLOCK_P parts loaded at once
    offs_r = block * BLOCK_R + tl.arange(0, BLOCK_R)  # int32 (the launcher checks rows < 2**31): the row's (batch,
    # group, step) divisions below would otherwise be 64-bit, emulated in software on the GPU
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
def _sum_columns(part_ptr, out_ptr, block, rows, width, D, NSTATE, TRANSPOSE: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_W: tl.constexpr):  # fmt: skip
    # column sums of part [rows, width] fp32 over columns `block` x BLOCK_W..; TRANSPOSE: column n * D + d of dA's
    # [rows, N * D] goes to A's (d, n)
    offs_w = block * BLOCK_W + tl.arange(0, BLOCK_W)
    mask_w = offs_w < width
    total = tl.zeros([BLOCK_W], dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (offs_r < rows)[:, None] & mask_w[None, :]
        total += tl.sum(tl.load(part_ptr + offs_r[:, None] * width + offs_w[None, :], mask=mask, other=0.0), axis=0)
    if TRANSPOSE:
        tl.store(out_ptr + (offs_w % D) * NSTATE + offs_w // D, total, mask=mask_w)
    else:
        tl.store(out_ptr + offs_w, total, mask=mask_w)


@triton.jit
def partials_kernel(part_ptr, dB_ptr, dC_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, dA_ptr, dD_ptr, dbias_ptr,
                    n_parts, which_stride, part_stride, rows, L, G, NSTATE: tl.constexpr, sB_b, sB_g, sB_n, sB_l,
                    sC_b, sC_g, sC_n, sC_l, param_rows, D, bc_blocks, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, PARAM_ROWS: tl.constexpr,
                    BLOCK_W: tl.constexpr):  # fmt: skip
    # NSTATE is a constant so that a row's N partials (contiguous) load as vectors (sm_90, N = 8: 16 LDG.128 per
    # program instead of 128 scalar loads). Programs 0 .. 2 x bc_blocks - 1: dB and dC by turns (row blocks of
    # `_sum_bc`); then dA [param_rows, N * D], dD and dbias [param_rows, D] by turns (column blocks of `_sum_columns`;
    # dD's and dbias' run out first)
    pid = tl.program_id(0)
    if pid < 2 * bc_blocks:
        which, block = pid % 2, pid // 2
    else:
        which, block = 2 + (pid - 2 * bc_blocks) % 3, (pid - 2 * bc_blocks) // 3
    if which < 2:
        if block * BLOCK_R < rows:
            _sum_bc(part_ptr, dB_ptr, dC_ptr, which, block, n_parts, which_stride, part_stride, rows, L, G, NSTATE,
                    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, BLOCK_P, BLOCK_R, BLOCK_N)  # fmt: skip
    elif which == 2:
        if block * BLOCK_W < NSTATE * D:
            _sum_columns(dA_part_ptr, dA_ptr, block, param_rows, NSTATE * D, D, NSTATE, True, PARAM_ROWS, BLOCK_W)
    elif which == 3:
        if HAS_D and block * BLOCK_W < D:
            _sum_columns(dD_part_ptr, dD_ptr, block, param_rows, D, D, NSTATE, False, PARAM_ROWS, BLOCK_W)
    elif HAS_BIAS and block * BLOCK_W < D:
        _sum_columns(dbias_part_ptr, dbias_ptr, block, param_rows, D, D, NSTATE, False, PARAM_ROWS, BLOCK_W)


def sum_partials(
    part: Tensor, n_parts: int, B: Tensor, C: Tensor, length: int, groups: int, layout: str, dA_part: Tensor,
    dD_part: Tensor | None, dbias_part: Tensor | None,
) -> tuple[Tensor, ...]:  # fmt: skip
    """(dB, dC, dA, dD, dbias) from the backward's partials, in one launch:
    - `part` [2, blocks, batch, groups, length, N] fp32 (dB then dC per channel block, contiguous; the first `n_parts`
      blocks written): dB and dC summed over those blocks, shaped and typed like B and C (contiguous);
    - dA_part [batch, spans, N, D], dD_part / dbias_part [batch, spans, D] (None where absent): dA (D, N), dD and
      dbias (D,) summed over batch and spans (empty where absent), fp32."""
    batch, nstate = part.shape[2], part.shape[-1]
    dB = torch.empty_like(B, memory_format=torch.contiguous_format)
    dC = torch.empty_like(C, memory_format=torch.contiguous_format)
    rows = batch * groups * length
    if rows >= 2**31:
        raise ValueError(f"selective_scan backward: batch * groups * length must be below 2**31, got {rows}")
    pbatch, spans, _, dim = dA_part.shape
    dev, f32 = dA_part.device, torch.float32
    dA = torch.empty((dim, nstate), device=dev, dtype=f32)
    dD = torch.empty((dim if dD_part is not None else 0,), device=dev, dtype=f32)
    dbias = torch.empty((dim if dbias_part is not None else 0,), device=dev, dtype=f32)
    block_n = triton.next_power_of_2(nstate)
    block_p = min(triton.next_power_of_2(n_parts), MAX_PARTS_AT_ONCE)
    interpreted = triton_interpret()
    block_r = 16 if interpreted else max(16, TILE_ELEMENTS // (block_p * block_n))
    param_rows, block_w = (16, 32) if interpreted else (TILE_ELEMENTS // 32, 32)  # rows of a column block at once
    bc_blocks = triton.cdiv(rows, block_r)
    grid = (2 * bc_blocks + 3 * triton.cdiv(nstate * dim, block_w),)
    _launch_kernel(
        partials_kernel, grid, part, dB, dC, dA_part, dA_part if dD_part is None else dD_part,
        dA_part if dbias_part is None else dbias_part, dA, dA if dD_part is None else dD,
        dA if dbias_part is None else dbias, n_parts, part.stride(0), part.stride(1), rows, length, groups, nstate,
        *_bc_strides(dB, layout), *_bc_strides(dC, layout), pbatch * spans, dim, bc_blocks,
        HAS_D=dD_part is not None, HAS_BIAS=dbias_part is not None, BLOCK_P=block_p, BLOCK_R=block_r,
        BLOCK_N=block_n, PARAM_ROWS=param_rows, BLOCK_W=block_w, num_warps=NUM_WARPS,
    )  # fmt: skip
    return dB, dC, dA, dD, dbias
