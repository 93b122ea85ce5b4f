"""VMeanba for a VMamba (SS2D) block without the cross-scan copies: inference fast path.

In SS2D the 4 direction sequences are the same map x [B, H, W, D] read in 4 orders, and the cross-merge sums the 4
outputs back per position. With VMeanba every direction k reduces to ONE channel:
    y_k[t, c] = g_k[t] + D_kc * x[pos_k(t), c],   g_k = the scan of the channel means of direction k,
so the merged output is
    y[p, c] = sum_k g_k[t_k(p)] + x[p, c] * sum_k D_kc.
Everything per channel is position-local: the channel means (of exp(dt*A) and dt*u, dt from direction k's
projections of x[p]) are computed once per position in map order, only the reduced [B, L, K, N] sequences are put
in the 4 orders, scanned, and merged back, and the broadcast is one fused multiply-add. The (B, L, 4, D) cross-scan
copy, the (B, L, 4D) delta, the full-width scan output and the cross-merge never exist. Equal to
`cross_merge(mean_selective_scan(cross_scan(x), ...))` up to rounding (this path keeps fp32 until the final cast).

No backward: VMeanba is a training-free compression; `SS2D` uses this path only when no gradient is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ...utils._config import triton_interpret, use_triton
from .._launch import on_device as _on_device
from .._launch import softplus as _softplus
from ..cross_scan import cross_merge

__all__ = ["cross_mean_inputs", "cross_mean_inputs_naive", "linear_recurrence", "vmeanba_cross_merged"]

DIRECTIONS = 4
LOG2E = tl.constexpr(1.4426950408889634)


def cross_mean_inputs_naive(x: Tensor, dts: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor):
    """Channel means per position and direction, fp32 reference.

    x [P, D] (positions in any order); dts [P, K, R]; dt_weight [K, D, R]; dt_bias [K, D]; A [K * D, N]
    -> (mean_c exp(dt * A) [P, K, N], mean_c dt * x [P, K]), dt = softplus(dts @ dt_weight^T + dt_bias).
    """
    k, d, _ = dt_weight.shape
    dt = F.softplus(torch.einsum("pkr,kdr->pkd", dts.float(), dt_weight.float()) + dt_bias.float())  # [P, K, D]
    decay = torch.exp(dt.unsqueeze(-1) * A.float().view(k, d, -1)).mean(2)  # [P, K, N]
    dtu = (dt * x.float().unsqueeze(1)).mean(2)  # [P, K]
    return decay, dtu


@triton.jit
def cross_mean_inputs_kernel(
    x_ptr, dts_ptr, w_ptr, bias_ptr, A_ptr, decay_ptr, dtu_ptr,
    P, DIM, RANK, NSTATE, sx_p, sdts_p,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_P positions x one direction k; loops over the channels in BLOCK_D blocks, dt built in
    # registers from the rank-R projection (never written), sums of exp(dt * A) [BLOCK_P, N] and dt * x [BLOCK_P].
    pid_p, k = tl.program_id(0), tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NSTATE
    decay = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    dtu = tl.zeros([BLOCK_P], dtype=tl.float32)
    for d0 in range(0, DIM, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < DIM
        ch = k * DIM + offs_d
        dt = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
        for r in range(RANK):
            dts_r = tl.load(dts_ptr + offs_p * sdts_p + k * RANK + r, mask=mask_p, other=0.0).to(tl.float32)
            w_r = tl.load(w_ptr + ch * RANK + r, mask=mask_d, other=0.0).to(tl.float32)
            dt += dts_r[:, None] * w_r[None, :]
        dt = _softplus(dt + tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)[None, :])
        mask = mask_p[:, None] & mask_d[None, :]
        x = tl.load(x_ptr + offs_p[:, None] * sx_p + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        dtu += tl.sum(tl.where(mask, dt * x, 0.0), axis=1)
        A2 = tl.load(A_ptr + ch[:, None] * NSTATE + offs_n[None, :], mask=mask_d[:, None] & mask_n[None, :], other=0.0)
        e = tl.exp2(dt[:, :, None] * (A2 * LOG2E)[None, :, :])  # [BLOCK_P, BLOCK_D, BLOCK_N]
        decay += tl.sum(tl.where(mask[:, :, None], e, 0.0), axis=1)
    inv = 1.0 / DIM
    out_pk = offs_p * tl.num_programs(1) + k
    tl.store(dtu_ptr + out_pk, dtu * inv, mask=mask_p)
    tl.store(
        decay_ptr + out_pk[:, None] * NSTATE + offs_n[None, :], decay * inv, mask=mask_p[:, None] & mask_n[None, :]
    )


def _block_sizes(dim: int, nstate: int) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_D, BLOCK_N, num_warps): a [P, D, N] exp tile of at most 4096 elements."""
    block_n = triton.next_power_of_2(nstate)
    if triton_interpret():
        return 16, min(32, triton.next_power_of_2(dim)), block_n, 1
    block_d = min(64, triton.next_power_of_2(dim))
    block_p = max(8, min(64, 4096 // (block_d * block_n)))
    return block_p, block_d, block_n, 4


def cross_mean_inputs_triton(x: Tensor, dts: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor):
    """Same as `cross_mean_inputs_naive`, one fused Triton pass over x (dt is never written)."""
    positions, dim = x.shape
    k, _, rank = dt_weight.shape
    nstate = A.shape[1]
    x = x if x.stride(1) == 1 else x.contiguous()
    dts = dts.reshape(positions, k * rank)
    dts = dts if dts.stride(1) == 1 else dts.contiguous()
    w, bias, A = dt_weight.contiguous(), dt_bias.contiguous(), A.float().contiguous()
    decay = torch.empty(positions, k, nstate, device=x.device, dtype=torch.float32)
    dtu = torch.empty(positions, k, device=x.device, dtype=torch.float32)
    block_p, block_d, block_n, warps = _block_sizes(dim, nstate)
    grid = (triton.cdiv(positions, block_p), k)
    with _on_device(x.device):
        cross_mean_inputs_kernel[grid](
            x, dts, w, bias, A, decay, dtu, positions, dim, rank, nstate, x.stride(0), dts.stride(0),
            BLOCK_P=block_p, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps,
        )  # fmt: skip
    return decay, dtu


def cross_mean_inputs(x: Tensor, dts: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor):
    """Channel means per position and direction (see `cross_mean_inputs_naive`); Triton where ops use Triton."""
    if use_triton(x.device):
        return cross_mean_inputs_triton(x, dts, dt_weight, dt_bias, A)
    return cross_mean_inputs_naive(x, dts, dt_weight, dt_bias, A)


def linear_recurrence(a: Tensor, b: Tensor) -> Tensor:
    """h[t] = a[t] * h[t-1] + b[t] along dim 1 from h = 0, by recursive doubling: log2(L) rounds of elementwise
    ops over the whole tensor (parallel over L, unlike a step loop; the reduced sequences are few and long)."""
    length, shift = a.shape[1], 1
    while shift < length:
        b = torch.cat((b[:, :shift], torch.addcmul(b[:, shift:], a[:, shift:], b[:, :-shift])), dim=1)
        a = torch.cat((a[:, :shift], a[:, shift:] * a[:, :-shift]), dim=1)
        shift *= 2
    return b


def _to_directions(t: Tensor) -> Tensor:
    """[B, H, W, K, ...] per-position values of each direction -> [B, L, K, ...] in each direction's scan order
    (rows, columns, reversed rows, reversed columns: the order of `cross_scan`)."""
    batch, height, width = t.shape[:3]
    rows = t.reshape(batch, height * width, *t.shape[3:])
    cols = t.transpose(1, 2).reshape(batch, height * width, *t.shape[3:])
    return torch.stack((rows[:, :, 0], cols[:, :, 1], rows[:, :, 2].flip(1), cols[:, :, 3].flip(1)), dim=2)


def vmeanba_cross_merged(
    x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor, A: Tensor, Ds: Tensor
) -> Tensor:
    """The cross-merged VMeanba scan output of an SS2D block, without the cross-scan: x [B, H, W, D] -> [B, H, W, D].

    x_proj_weight [K, R + 2N, D] (dt | B | C rows per direction), dt_projs_weight [K, D, R], dt_projs_bias [K, D],
    A [K * D, N] (negative), Ds [K * D]. Equals
    `cross_merge(mean_selective_scan(cross_scan(x), delta, A, B, C, Ds, None, bias, True))` for SS2D's projections.
    """
    batch, height, width, dim = x.shape
    k, rank, nstate = DIRECTIONS, dt_projs_weight.shape[2], A.shape[1]
    proj = F.linear(x, x_proj_weight.reshape(k * (rank + 2 * nstate), dim).to(x.dtype))  # [B, H, W, K*(R+2N)]
    proj = proj.view(batch, height, width, k, rank + 2 * nstate)
    dts, Bs, Cs = proj.split((rank, nstate, nstate), dim=-1)
    decay, dtu = cross_mean_inputs(
        x.reshape(-1, dim), dts.reshape(-1, k, rank), dt_projs_weight, dt_projs_bias, A
    )  # [B*H*W, K, N], [B*H*W, K]
    drive = dtu.unsqueeze(-1) * Bs.reshape(-1, k, nstate).float()  # dt * u * B, channel-averaged: [B*H*W, K, N]
    per_position = torch.stack((decay, drive, Cs.reshape(-1, k, nstate).float()), dim=-1)  # [B*H*W, K, N, 3]
    decay, drive, C = _to_directions(per_position.view(batch, height, width, k, nstate, 3)).unbind(-1)
    y_group = (linear_recurrence(decay, drive) * C).sum(-1, keepdim=True)  # [B, L, K, 1]
    merged = cross_merge(y_group, height, width)[..., 0]  # [B, H, W]: the directions summed back per position
    skip = Ds.float().view(k, dim).sum(0)  # sum_k D_kc
    return torch.addcmul(merged.unsqueeze(-1), x.float(), skip).to(x.dtype)
