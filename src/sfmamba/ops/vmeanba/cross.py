"""VMeanba for a VMamba (SS2D) block without the cross-scan copies: inference fast path.

In SS2D the 4 direction sequences are the same map x [B, H, W, D] read in 4 orders, and the cross-merge sums the 4
outputs back per position. With VMeanba every direction k reduces to ONE channel:
    y_k[t, c] = g_k[t] + D_kc * x[pos_k(t), c],   g_k = the scan of the channel means of direction k,
so the merged output is
    y[p, c] = sum_k g_k[t_k(p)] + x[p, c] * sum_k D_kc.
Everything per channel is position-local. After one x_proj GEMM in map order, three passes (a Triton kernel each on
a GPU, a torch reference elsewhere):
  1. `cross_mean_inputs`: per position and direction, the channel means of exp(dt*A) and dt*u (dt never written);
  2. `directional_scan`: one program per (image, direction) walks that direction's order over the map-order values
     (gathered by index), scans h = a h + dtu B block by block with a carried state, writes y_k = C.h per position;
  3. `merged_output`: out[p, c] = sum_k y_k[p] + x[p, c] * sum_k D_kc, in x's dtype (fp32 math).
The (B, L, 4, D) cross-scan copy, the (B, L, 4D) delta, the full-width scan output and the cross-merge never exist,
nor any reordered copy of the reduced values. Equal to `cross_merge(mean_selective_scan(cross_scan(x), ...))` up to
rounding. Note: sum_k y_k[p] is the same in every channel of a position, so a LayerNorm over the channels after this
(SS2D's out_norm) removes it exactly: there the block's output depends on x * sum_k D_k only.

No backward: VMeanba is a training-free compression; `SS2D` uses this path only when no gradient is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from ...utils._config import triton_interpret, use_triton
from .._launch import FAST_MATH, LN2, LOG2E
from .._launch import approx as _approx
from .._launch import fast_exp2 as _fast_exp2
from .._launch import linear_recurrence as _linear_recurrence
from .._launch import on_device as _on_device

__all__ = [
    "cross_mean_inputs",
    "cross_mean_inputs_naive",
    "directional_scan",
    "directional_scan_naive",
    "linear_recurrence",
    "merged_output",
    "merged_output_naive",
    "vmeanba_cross_merged",
]

DIRECTIONS = 4


def cross_mean_inputs_naive(x: Tensor, dts: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor):
    """Channel means per position and direction, fp32 reference.

    x [P, D] (positions in any order); dts [P, K, R]; dt_weight [K, D, R]; dt_bias [K, D]; A [K * D, N]
    -> (mean_c exp(dt * A) [P, K, N], mean_c dt * x [P, K]), dt = softplus(dts @ dt_weight^T + dt_bias).
    The rank projection uses dt_weight rounded to dts's dtype (products exact, sums in fp32), as SS2D's dt_proj
    under autocast does; the kernel computes it as one matrix product per tile in that dtype.
    """
    k, d, _ = dt_weight.shape
    weight = dt_weight.to(dts.dtype).float()
    dt = F.softplus(torch.einsum("pkr,kdr->pkd", dts.float(), weight) + dt_bias.float())  # [P, K, D]
    decay = torch.exp(dt.unsqueeze(-1) * A.float().view(k, d, -1)).mean(2)  # [P, K, N]
    dtu = (dt * x.float().unsqueeze(1)).mean(2)  # [P, K]
    return decay, dtu


@triton.jit
def _softplus_log2e(z):
    """softplus(z) * log2(e) from z * log2(e), with `ops._launch.softplus`'s thresholds (20 and -15); single-MUFU
    exp2/log2 on the GPU (`_launch.FAST_MATH`): libdevice's polynomial log was most of the channel-mean loop."""
    e = _fast_exp2(z)
    return tl.where(z > 20.0 * LOG2E, z, tl.where(z < -15.0 * LOG2E, e * LOG2E, _approx(1.0 + e, "lg2", FAST_MATH)))


@triton.jit
def cross_mean_inputs_kernel(
    x_ptr, dts_ptr, w_ptr, bias_ptr, A_ptr, decay_ptr, dtu_ptr,
    P, DIM, NSTATE, RANK, sx_p, sdts_p, sdts_k,
    K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    DOT_FP32: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_P positions x one direction k; loops over the channels in BLOCK_D blocks, dt built in
    # registers from the rank-R projection (never written), sums of exp(dt * A) [BLOCK_P, N] and dt * x [BLOCK_P].
    # Direction fastest in the flat grid: the K programs of one position block run side by side, so x [BLOCK_P, D]
    # comes from HBM once and from L2 K - 1 times. Everything is in base 2 (dt2 = dt * log2(e)): exp(dt * A) =
    # exp2(dt2 * A). The state index is a static loop of 2-D tiles (a 3-D [P, D, N] tile needed twice the registers).
    # The projection is one tl.dot per channel block, [BLOCK_P, BLOCK_R] x [BLOCK_R, BLOCK_D] (R zero-padded to
    # BLOCK_R >= 16), in the dtype of dts (bf16/fp16: tensor cores; fp32, and under the interpreter, whose bf16 dot
    # is wrong: exact fp32 FMA): a loop over the rank was 63
    # instructions per rank per thread, mostly loads and addresses (sm_90, Triton 3.6), for 8 FMAs.
    pid = tl.program_id(0)
    k, pid_p = pid % K, pid // K
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < RANK
    x_rows = x_ptr + offs_p.to(tl.int64)[:, None] * sx_p
    dts_offs = offs_p.to(tl.int64)[:, None] * sdts_p + k * sdts_k + offs_r[None, :]
    dts = tl.load(dts_ptr + dts_offs, mask=mask_p[:, None] & mask_r[None, :], other=0.0)  # [BP, BR], dts's dtype
    decay = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    dtu = tl.zeros([BLOCK_P], dtype=tl.float32)
    for d0 in range(0, DIM, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < DIM
        ch = k * DIM + offs_d
        w = tl.load(w_ptr + ch[None, :] * RANK + offs_r[:, None], mask=mask_r[:, None] & mask_d[None, :], other=0.0)
        if DOT_FP32:  # products of bf16/fp16 values are exact in fp32: the same sums, without tensor cores
            z = tl.dot(dts.to(tl.float32), w.to(tl.float32), input_precision="ieee")  # [BP, BD]
        else:
            z = tl.dot(dts, w, out_dtype=tl.float32)
        z += tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        dt2 = _softplus_log2e(z * LOG2E)  # [BLOCK_P, BLOCK_D]
        mask = mask_p[:, None] & mask_d[None, :]
        x = tl.load(x_rows + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        dtu += tl.sum(tl.where(mask, dt2 * x, 0.0), axis=1)
        for n in tl.static_range(BLOCK_N):
            A_n = tl.load(A_ptr + ch * NSTATE + n, mask=mask_d & (n < NSTATE), other=0.0)
            sum_n = tl.sum(tl.where(mask, _fast_exp2(dt2 * A_n[None, :]), 0.0), axis=1)  # [BLOCK_P]
            decay += tl.where(offs_n[None, :] == n, sum_n[:, None], 0.0)
    inv = 1.0 / DIM
    out_pk = offs_p * K + k
    tl.store(dtu_ptr + out_pk, dtu * (inv * LN2), mask=mask_p)
    mask_pn = mask_p[:, None] & (offs_n < NSTATE)[None, :]
    tl.store(decay_ptr + out_pk[:, None] * NSTATE + offs_n[None, :], decay * inv, mask=mask_pn)


def _channel_block(dim: int, cap: int) -> int:
    """A power-of-two channel block <= cap that divides `dim` when one >= 16 does (no masked lanes: 96 -> 32, not 64
    with the second block half empty; the masked lanes of the channel-mean kernel would still pay for their exps)."""
    divisor = min(cap, dim & -dim)  # the largest power of two dividing dim
    return divisor if divisor >= 16 else min(cap, triton.next_power_of_2(dim))


def _block_sizes(dim: int, nstate: int) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_D, BLOCK_N, num_warps): [32, 32] tiles, 8 values a thread (~100 registers on sm_90 for any
    N: the state loop reuses them), so 5 programs fit on an SM. Both at least 16: tl.dot's smallest tile."""
    block_n = triton.next_power_of_2(nstate)
    if triton_interpret():
        return 16, max(16, min(32, triton.next_power_of_2(dim))), block_n, 1
    return 32, max(16, _channel_block(dim, 32)), block_n, 4


def cross_mean_inputs_triton(x: Tensor, dts: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor):
    """Same as `cross_mean_inputs_naive`, one fused Triton pass over x (dt is never written)."""
    positions, dim = x.shape
    k, _, rank = dt_weight.shape
    nstate = A.shape[1]
    x = x if x.stride(1) == 1 else x.contiguous()
    dts = dts if dts.stride(2) == 1 else dts.contiguous()  # [P, K, R]: a strided view of x_proj's output is read as is
    # the weights in the inputs' dtype, as autocast's dt_proj uses them (rounded here: a [K, D, R] tensor)
    w, bias, A = dt_weight.to(dts.dtype).contiguous(), dt_bias.contiguous(), A.float().contiguous()
    decay = torch.empty(positions, k, nstate, device=x.device, dtype=torch.float32)
    dtu = torch.empty(positions, k, device=x.device, dtype=torch.float32)
    block_p, block_d, block_n, warps = _block_sizes(dim, nstate)
    grid = (k * triton.cdiv(positions, block_p),)
    with _on_device(x.device):
        cross_mean_inputs_kernel[grid](
            x, dts, w, bias, A, decay, dtu, positions, dim, nstate, rank, x.stride(0), dts.stride(0), dts.stride(1),
            K=k, BLOCK_P=block_p, BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_R=max(16, triton.next_power_of_2(rank)),
            DOT_FP32=dts.dtype == torch.float32 or triton_interpret(), num_warps=warps,
        )  # fmt: skip
    return decay, dtu


def cross_mean_inputs(x: Tensor, dts: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor):
    """Channel means per position and direction (see `cross_mean_inputs_naive`); Triton where ops use Triton."""
    if use_triton(x.device):
        return cross_mean_inputs_triton(x, dts, dt_weight, dt_bias, A)
    return cross_mean_inputs_naive(x, dts, dt_weight, dt_bias, A)


# ------------------------------------------------------------------------------------- the reduced scans


def linear_recurrence(a: Tensor, b: Tensor) -> Tensor:
    """h[t] = a[t] * h[t-1] + b[t] along dim 1 from h = 0, by recursive doubling: log2(L) rounds of elementwise
    ops over the whole tensor (parallel over L, unlike a step loop; the reference path on the CPU)."""
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


def _from_directions(t: Tensor, height: int, width: int) -> Tensor:
    """Inverse of `_to_directions` for [B, L, K] values: each direction's scan order back to map order [B, H, W, K]."""
    batch = t.shape[0]
    rows, cols = t[:, :, 0], t[:, :, 1]
    reversed_rows, reversed_cols = t[:, :, 2].flip(1), t[:, :, 3].flip(1)
    as_map = [r.reshape(batch, height, width) for r in (rows, reversed_rows)]
    as_map += [c.reshape(batch, width, height).transpose(1, 2) for c in (cols, reversed_cols)]
    return torch.stack((as_map[0], as_map[2], as_map[1], as_map[3]), dim=-1)


def _check_scan_inputs(decay: Tensor, dtu: Tensor, proj: Tensor, rank: int) -> None:
    """The four directions of `cross_scan` (their orders are built in), and shapes that agree."""
    if decay.dim() != 5 or decay.shape[3] != DIRECTIONS:
        raise ValueError(f"decay must be [B, H, W, {DIRECTIONS}, N], got shape {tuple(decay.shape)}")
    if dtu.shape != decay.shape[:4]:
        raise ValueError(f"dtu must be [B, H, W, {DIRECTIONS}] = {tuple(decay.shape[:4])}, got {tuple(dtu.shape)}")
    want = (*decay.shape[:4], rank + 2 * decay.shape[4])
    if proj.shape != want:
        raise ValueError(f"proj must be [B, H, W, K, R + 2N] = {want}, got {tuple(proj.shape)}")


def _state_views(proj: Tensor, rank: int, nstate: int) -> tuple[Tensor, Tensor]:
    """B and C [B, H, W, K, N] of the x_proj output [B, H, W, K, R + 2N] (dt | B | C per direction): strided views."""
    _, Bs, Cs = proj.split((rank, nstate, nstate), dim=-1)
    return Bs, Cs


def directional_scan_naive(decay: Tensor, dtu: Tensor, proj: Tensor, rank: int) -> Tensor:
    """The reduced scan of every direction, fp32 reference: y [B, H, W, K] in map order.

    decay [B, H, W, K, N] and dtu [B, H, W, K] (the channel means, map order); proj [B, H, W, K, R + 2N] (x_proj's
    dt | B | C per direction). Direction k scans its order (rows, columns, both reversed) of
    h[t] = decay[t] h[t-1] + dtu[t] B[t] from h = 0 and reads y[t] = sum_n C[t, n] h[t, n].
    """
    height, width, nstate = decay.shape[1], decay.shape[2], decay.shape[-1]
    Bs, Cs = _state_views(proj, rank, nstate)
    drive = dtu.float().unsqueeze(-1) * Bs.float()  # [B, H, W, K, N]
    states = linear_recurrence(_to_directions(decay.float()), _to_directions(drive))  # [B, L, K, N]
    y = (states * _to_directions(Cs.float())).sum(-1)  # [B, L, K]
    return _from_directions(y, height, width)


@triton.jit
def directional_scan_kernel(
    decay_ptr, dtu_ptr, proj_ptr, y_ptr, H, W, NSTATE, sproj_p, sproj_k, B_OFF, C_OFF,
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # One program: one image, one direction, the whole sequence in BLOCK_L steps with the state carried between
    # blocks. Step t of direction k is map position pos_k(t) (row-major p = h * W + w): t, the column-major
    # (t % H) * W + t // H, and both with t read from the end. decay/dtu/y are [P, K(, N)], proj [P, K, R + 2N].
    pid = tl.program_id(0)
    k, b = pid % K, pid // K
    length = H * W
    steps = tl.arange(0, BLOCK_L)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NSTATE
    image = b.to(tl.int64) * length
    h = tl.zeros([BLOCK_N], dtype=tl.float32)
    for t0 in range(0, length, BLOCK_L):
        t = t0 + steps
        mask_t = t < length
        s = tl.where(k >= 2, length - 1 - t, t)
        pos = tl.where(k % 2 == 1, (s % H) * W + s // H, s)
        pk = (image + pos) * K + k  # [BLOCK_L] flat (position, direction) index
        mask = mask_t[:, None] & mask_n[None, :]
        a = tl.load(decay_ptr + pk[:, None] * NSTATE + offs_n[None, :], mask=mask, other=1.0)  # past the end: identity
        u = tl.load(dtu_ptr + pk, mask=mask_t, other=0.0)
        bc = proj_ptr + (image + pos)[:, None] * sproj_p + k * sproj_k + offs_n[None, :]
        Bt = tl.load(bc + B_OFF, mask=mask, other=0.0).to(tl.float32)
        Ct = tl.load(bc + C_OFF, mask=mask, other=0.0).to(tl.float32)
        a_cum, h_local = tl.associative_scan((a, u[:, None] * Bt), 0, _linear_recurrence)
        states = h_local + a_cum * h[None, :]  # [BLOCK_L, BLOCK_N]
        tl.store(y_ptr + pk, tl.sum(states * Ct, axis=1), mask=mask_t)
        h = tl.sum(tl.where((steps == BLOCK_L - 1)[:, None], states, 0.0), axis=0)  # identities past the end


def directional_scan_triton(decay: Tensor, dtu: Tensor, proj: Tensor, rank: int) -> Tensor:
    """Same as `directional_scan_naive`: one Triton program per (image, direction) walks its scan order in place."""
    batch, height, width, k, nstate = decay.shape
    proj_flat = proj.reshape(batch * height * width, k, proj.shape[-1])  # a view of x_proj's output
    proj_flat = proj_flat if proj_flat.stride(-1) == 1 else proj_flat.contiguous()
    decay, dtu = decay.float().contiguous(), dtu.float().contiguous()
    y = torch.empty(batch, height, width, k, device=decay.device, dtype=torch.float32)
    length = height * width
    # one program per (image, direction) is few programs (512 at batch 128): long blocks with many warps give each
    # more steps in flight (stage 1: 4 blocks of 1024 instead of 13 of 256; 57 registers on sm_90)
    block_n = triton.next_power_of_2(nstate)
    block_l = min(16 if triton_interpret() else min(1024, 4096 // block_n), triton.next_power_of_2(length))
    warps = 1 if triton_interpret() else max(1, min(8, block_l * block_n // 128))
    with _on_device(decay.device):
        directional_scan_kernel[(batch * k,)](
            decay, dtu, proj_flat, y, height, width, nstate, proj_flat.stride(0), proj_flat.stride(1),
            rank, rank + nstate, K=k, BLOCK_L=block_l, BLOCK_N=block_n, num_warps=warps,
        )  # fmt: skip
    return y


def directional_scan(decay: Tensor, dtu: Tensor, proj: Tensor, rank: int) -> Tensor:
    """The reduced scans of all directions, y [B, H, W, K] fp32 (see `directional_scan_naive`)."""
    _check_scan_inputs(decay, dtu, proj, rank)
    if use_triton(decay.device):
        return directional_scan_triton(decay, dtu, proj, rank)
    return directional_scan_naive(decay, dtu, proj, rank)


# ------------------------------------------------------------------------------------- the merged output


def merged_output_naive(y: Tensor, x: Tensor, skip: Tensor) -> Tensor:
    """out[p, c] = sum_k y[p, k] + x[p, c] * skip[c] in fp32, in x's dtype: y [..., K], x [..., D], skip [D]."""
    return torch.addcmul(y.float().sum(-1, keepdim=True), x.float(), skip.float()).to(x.dtype)


@triton.jit
def merged_output_kernel(
    y_ptr, x_ptr, skip_ptr, out_ptr, P, DIM, sx_p,
    K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_p, pid_d = tl.program_id(0), tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    mask_p, mask_d = offs_p < P, offs_d < DIM
    mask_pk = mask_p[:, None] & (offs_k < K)[None, :]
    y = tl.sum(tl.load(y_ptr + offs_p[:, None] * K + offs_k[None, :], mask=mask_pk, other=0.0), axis=1)  # [BLOCK_P]
    mask = mask_p[:, None] & mask_d[None, :]
    rows = offs_p.to(tl.int64)[:, None]
    x = tl.load(x_ptr + rows * sx_p + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    skip = tl.load(skip_ptr + offs_d, mask=mask_d, other=0.0)
    out = y[:, None] + x * skip[None, :]
    tl.store(out_ptr + rows * DIM + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def merged_output_triton(y: Tensor, x: Tensor, skip: Tensor) -> Tensor:
    """Same as `merged_output_naive`, one Triton pass over x (the directions summed in registers)."""
    dim, k = x.shape[-1], y.shape[-1]
    x_flat = x.reshape(-1, dim)
    x_flat = x_flat if x_flat.stride(1) == 1 else x_flat.contiguous()
    y = y.float().reshape(-1, k).contiguous()
    skip = skip.float().contiguous()
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    positions = x_flat.shape[0]
    block_d = _channel_block(dim, 128)
    block_p = 16 if triton_interpret() else max(1, 2048 // block_d)  # 16 values a thread: 64 registers on sm_90
    grid = (triton.cdiv(positions, block_p), triton.cdiv(dim, block_d))
    with _on_device(x.device):
        merged_output_kernel[grid](
            y, x_flat, skip, out, positions, dim, x_flat.stride(0),
            K=k, BLOCK_K=triton.next_power_of_2(k), BLOCK_P=block_p, BLOCK_D=block_d,
            num_warps=1 if triton_interpret() else 4,
        )  # fmt: skip
    return out


def merged_output(y: Tensor, x: Tensor, skip: Tensor) -> Tensor:
    """The directions' reduced outputs summed plus the skip term (see `merged_output_naive`)."""
    if use_triton(x.device):
        return merged_output_triton(y, x, skip)
    return merged_output_naive(y, x, skip)


def vmeanba_cross_merged(
    x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor, A: Tensor, Ds: Tensor
) -> Tensor:
    """The cross-merged VMeanba scan output of an SS2D block, without the cross-scan: x [B, H, W, D] -> [B, H, W, D].

    x_proj_weight [K, R + 2N, D] (dt | B | C rows per direction), dt_projs_weight [K, D, R], dt_projs_bias [K, D],
    A [K * D, N] (negative), Ds [K * D]. Equals
    `cross_merge(mean_selective_scan(cross_scan(x), delta, A, B, C, Ds, None, bias, True))` for SS2D's projections.
    Three steps after the x_proj GEMM: the channel means per position and direction (map order), the reduced scans
    (each direction walks its own order), the merged output (directions summed, skip added: one pass over x).
    """
    batch, height, width, dim = x.shape
    k, rank, nstate = DIRECTIONS, dt_projs_weight.shape[2], A.shape[1]
    proj = F.linear(x, x_proj_weight.reshape(k * (rank + 2 * nstate), dim).to(x.dtype))  # [B, H, W, K*(R+2N)]
    proj = proj.view(batch, height, width, k, rank + 2 * nstate)
    decay, dtu = cross_mean_inputs(
        x.reshape(-1, dim), proj[..., :rank].reshape(-1, k, rank), dt_projs_weight, dt_projs_bias, A
    )  # [B*H*W, K, N], [B*H*W, K]
    y = directional_scan(decay.view(batch, height, width, k, nstate), dtu.view(batch, height, width, k), proj, rank)
    skip = Ds.float().view(k, dim).sum(0)  # sum_k D_kc
    return merged_output(y, x, skip)
