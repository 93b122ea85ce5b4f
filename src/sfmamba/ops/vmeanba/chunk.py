"""Triton VMeanba scan: one fused forward kernel and one fused backward kernel, launchers, and the torch.library op
with its autograd.

Design (why): after VMeanba's channel mean a group of D/G channels carries one N-state, so the recurrence itself is
cheap and the op is bound by reading u/delta and writing y. One program owns one (image, group) and walks L in
blocks of BLOCK_L steps; per block it
  1. loads [BLOCK_L, BLOCK_D] tiles of u and delta (all channel blocks of the group), discretises, and sums
     exp(dt*A) and dt*u over the channels -- the mean;
  2. scans the block's reduced recurrence h[t] = a[t] h[t-1] + B[t] s[t] with `tl.associative_scan` (parallel over
     the block's steps) from the state carried in registers from the previous block;
  3. reduces y_g = <C, h> and writes y = y_g + D*u (gated) for every channel of the group: the broadcast.
Every input element is read from HBM once (the second read of u in step 3 hits the cache) and y written once; no
(b, D, L) intermediate exists. When too few (image, group) programs would leave SMs idle (a narrow group such as the
scan on already-reduced inputs, or few images), L is also split into chunks processed in parallel in two passes
(`plan_chunks`): a summary pass computes each chunk's decay product and end state, the main pass folds the earlier
chunks into its incoming state -- at the price of reading u and delta twice. With autograd the forward also stores the reduced decay a and state h, (b, G, L, N)
fp32 -- 1/(D/G) of an input -- and the backward walks the blocks in reverse with the same tiling: the state gradient
by a reverse associative scan, then the per-channel gradients in one more sweep over the channel blocks.
Per-channel parameter gradients (A, D, delta_bias) are written as per-(image, block) partials and summed on the host:
deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...utils._config import triton_interpret
from .._launch import LOG2E
from .._launch import autotune as _autotune
from .._launch import bc_strides as _bc_strides
from .._launch import fast_exp2 as _fast_exp2
from .._launch import linear_recurrence as _linear_recurrence
from .._launch import needs_grad as _needs_grad
from .._launch import on_device as _on_device
from .._launch import scan_shape as _shape
from .._launch import sm_count as _sm_count
from .._launch import softplus as _softplus
from .._launch import x_strides as _x_strides


@triton.jit
def _step_tile(u_ptr, delta_ptr, bias_ptr, offs_t, ch, mask, su_l, su_d, sdt_l, sdt_d,
               HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):  # fmt: skip
    """u, raw step (after bias) and effective step of a [BLOCK_L, BLOCK_D] tile; 0 outside `mask`."""
    x = tl.load(u_ptr + offs_t[:, None] * su_l + ch[None, :] * su_d, mask=mask, other=0.0).to(tl.float32)
    raw = tl.load(delta_ptr + offs_t[:, None] * sdt_l + ch[None, :] * sdt_d, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + ch, mask=ch >= 0, other=0.0)[None, :]
    dt = _softplus(raw) if SOFTPLUS else raw
    return x, raw, tl.where(mask, dt, 0.0)


@triton.jit
def _starts(offs_t, seq_len, RESET: tl.constexpr):
    """Where a segment starts (the state is zeroed there)."""
    if RESET:
        return (offs_t % seq_len) == 0
    return offs_t == 0


@triton.jit
def _bn_tile(ptr, offs_t, offs_n, mask, s_l, s_n):
    """B or C as a [BLOCK_L, BLOCK_N] fp32 tile."""
    return tl.load(ptr + offs_t[:, None] * s_l + offs_n[None, :] * s_n, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _decay_sum(dt, A2, mask_dn):
    """sum over the tile's channels of exp(dt * A), [BLOCK_L, BLOCK_N] (A2 = A * log2(e), [BLOCK_D, BLOCK_N])."""
    decay = _fast_exp2(dt[:, :, None] * A2[None, :, :])  # [BL, BD, BN]
    return tl.sum(tl.where(mask_dn[None, :, :], decay, 0.0), axis=1)


@triton.jit
def _block_scan(sum_a, sum_s, h_carry, offs_t, mask_tn, B_ptr, sB_l, sB_n, offs_n, inv_dg, seq_len,
                RESET: tl.constexpr, BLOCK_L: tl.constexpr):  # fmt: skip
    """The reduced recurrence over one block of steps, continued from `h_carry`: (h, a, a_cum) [BLOCK_L, BLOCK_N].
    Steps past the chunk are identities (a = 1, nothing added), so the last row holds the end state."""
    start = _starts(offs_t, seq_len, RESET)
    a = tl.where(start[:, None], 0.0, tl.where(mask_tn, sum_a * inv_dg, 1.0))  # a segment start forgets the state
    Bt = _bn_tile(B_ptr, offs_t, offs_n, mask_tn, sB_l, sB_n)
    a_cum, h_local = tl.associative_scan((a, Bt * (sum_s * inv_dg)[:, None]), 0, _linear_recurrence)
    return h_local + a_cum * h_carry[None, :], a, a_cum


@triton.jit
def _last_row(x, BLOCK_L: tl.constexpr):
    rows = tl.arange(0, BLOCK_L)
    return tl.sum(tl.where((rows == BLOCK_L - 1)[:, None], x, 0.0), axis=0)


@triton.jit
def _output_tile(y_group, x, Dv, z_ptr, offs_t, ch, mask, sz_l, sz_d, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """y = y_group broadcast over the tile's channels, + D * u, gated by silu(z): [BLOCK_L, BLOCK_D] fp32."""
    y = tl.broadcast_to(y_group[:, None], x.shape)
    if HAS_D:
        y += x * Dv[None, :]
    if HAS_Z:
        zt = tl.load(z_ptr + offs_t[:, None] * sz_l + ch[None, :] * sz_d, mask=mask, other=0.0).to(tl.float32)
        y *= zt * tl.sigmoid(zt)
    return y


@triton.jit
def _raw_tiles(u_ptr, delta_ptr, offs_t, ch, mask, su_l, su_d, sdt_l, sdt_d):
    """u and delta tiles in their own dtype (no conversion: the prefetch keeps them narrow)."""
    x = tl.load(u_ptr + offs_t[:, None] * su_l + ch[None, :] * su_d, mask=mask, other=0.0)
    raw = tl.load(delta_ptr + offs_t[:, None] * sdt_l + ch[None, :] * sdt_d, mask=mask, other=0.0)
    return x, raw


@triton.heuristics({"BLOCK_N": lambda args: triton.next_power_of_2(args["NSTATE"])})
@triton.jit(do_not_specialize=["L", "seq_len", "chunk_len"])
def mean_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, a_save_ptr, h_save_ptr,
    chunk_P_ptr, chunk_S_ptr,
    L, Dg, NSTATE, seq_len, chunk_len,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, so_b, so_l, so_d,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    RESET: tl.constexpr, SAVE: tl.constexpr, SUMMARY: tl.constexpr, PREFETCH: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # One program: one image, one group, one chunk of `chunk_len` steps (the whole row unless L is split to fill
    # the GPU; a multiple of BLOCK_L otherwise). SUMMARY pass: the chunk's decay product P and end state S from a zero
    # start; main pass: fold the earlier chunks' (P, S) into the incoming state, then scan and write y.
    # PREFETCH (only when the group fits one channel block, Dg <= BLOCK_D): the u/delta tiles stay in registers from
    # the mean to the output, and the next block's tiles are loaded before this block is computed, so their memory
    # latency overlaps the compute (more bytes in flight per SM).
    pid_g, pid_b, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_groups, nchunks = tl.num_programs(0), tl.num_programs(2)
    u_ptr += pid_b * su_b
    delta_ptr += pid_b * sdt_b
    z_ptr += pid_b * sz_b
    out_ptr += pid_b * so_b
    B_ptr += pid_b * sB_b + pid_g * sB_g
    C_ptr += pid_b * sC_b + pid_g * sC_g
    save_base = (pid_b * n_groups + pid_g) * L * NSTATE  # (b, G, L, N) fp32 buffers
    chunk_base = (pid_b * n_groups + pid_g) * nchunks * NSTATE  # (b, G, nchunks, N) fp32 chunk summaries
    rows = tl.arange(0, BLOCK_L)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NSTATE
    inv_dg = 1.0 / Dg
    h_carry = tl.zeros([BLOCK_N], dtype=tl.float32)
    decay_carry = tl.full([BLOCK_N], 1.0, dtype=tl.float32)
    if not SUMMARY:
        for cc in range(c):  # the state entering this chunk
            h_carry = tl.load(chunk_P_ptr + chunk_base + cc * NSTATE + offs_n, mask=mask_n, other=0.0) * h_carry
            h_carry += tl.load(chunk_S_ptr + chunk_base + cc * NSTATE + offs_n, mask=mask_n, other=0.0)
    t_first = c * chunk_len
    t_end = tl.minimum(t_first + chunk_len, L)
    if PREFETCH:
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < Dg
        ch = tl.where(mask_d, pid_g * Dg + offs_d, -1)
        mask_dn = mask_d[:, None] & mask_n[None, :]
        A2 = tl.load(A_ptr + ch[:, None] * NSTATE + offs_n[None, :], mask=mask_dn, other=0.0) * LOG2E
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0) if HAS_D else None
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0) if HAS_BIAS else None
        mask_next = ((t_first + rows) < t_end)[:, None] & mask_d[None, :]
        x_next, raw_next = _raw_tiles(u_ptr, delta_ptr, t_first + rows, ch, mask_next, su_l, su_d, sdt_l, sdt_d)
        for t0 in range(t_first, t_end, BLOCK_L):
            offs_t = t0 + rows
            mask_t = offs_t < t_end
            mask = mask_t[:, None] & mask_d[None, :]
            x = x_next.to(tl.float32)
            raw = raw_next.to(tl.float32)
            mask_next = ((offs_t + BLOCK_L) < t_end)[:, None] & mask_d[None, :]
            x_next, raw_next = _raw_tiles(u_ptr, delta_ptr, offs_t + BLOCK_L, ch, mask_next, su_l, su_d, sdt_l, sdt_d)
            if HAS_BIAS:
                raw += bias[None, :]
            dt = tl.where(mask, _softplus(raw) if SOFTPLUS else raw, 0.0)
            mask_tn = mask_t[:, None] & mask_n[None, :]
            h, a, a_cum = _block_scan(_decay_sum(dt, A2, mask_dn), tl.sum(dt * x, axis=1), h_carry, offs_t, mask_tn,
                                      B_ptr, sB_l, sB_n, offs_n, inv_dg, seq_len, RESET, BLOCK_L)  # fmt: skip
            h_carry = _last_row(h, BLOCK_L)
            if SUMMARY:
                decay_carry *= _last_row(a_cum, BLOCK_L)
            else:
                if SAVE:
                    save_offs = save_base + offs_t[:, None] * NSTATE + offs_n[None, :]
                    tl.store(a_save_ptr + save_offs, a, mask=mask_tn)
                    tl.store(h_save_ptr + save_offs, h, mask=mask_tn)
                y_group = tl.sum(h * _bn_tile(C_ptr, offs_t, offs_n, mask_tn, sC_l, sC_n), axis=1)  # [BL]
                y = _output_tile(y_group, x, Dv, z_ptr, offs_t, ch, mask, sz_l, sz_d, HAS_D, HAS_Z)
                out_offs = offs_t[:, None] * so_l + ch[None, :] * so_d
                tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        for t0 in range(t_first, t_end, BLOCK_L):
            offs_t = t0 + rows
            mask_t = offs_t < t_end
            mask_tn = mask_t[:, None] & mask_n[None, :]
            # 1. the channel mean of the discretised inputs
            sum_a = tl.zeros([BLOCK_L, BLOCK_N], dtype=tl.float32)
            sum_s = tl.zeros([BLOCK_L], dtype=tl.float32)
            for d0 in range(0, Dg, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < Dg
                ch = tl.where(mask_d, pid_g * Dg + offs_d, -1)
                mask = mask_t[:, None] & mask_d[None, :]
                x, raw, dt = _step_tile(u_ptr, delta_ptr, bias_ptr, offs_t, ch, mask, su_l, su_d, sdt_l, sdt_d,
                                        HAS_BIAS, SOFTPLUS)  # fmt: skip
                sum_s += tl.sum(dt * x, axis=1)
                mask_dn = mask_d[:, None] & mask_n[None, :]
                A2 = tl.load(A_ptr + ch[:, None] * NSTATE + offs_n[None, :], mask=mask_dn, other=0.0) * LOG2E
                sum_a += _decay_sum(dt, A2, mask_dn)
            # 2. the reduced scan over the block, continued from the carried state
            h, a, a_cum = _block_scan(sum_a, sum_s, h_carry, offs_t, mask_tn, B_ptr, sB_l, sB_n, offs_n, inv_dg,
                                      seq_len, RESET, BLOCK_L)  # fmt: skip
            h_carry = _last_row(h, BLOCK_L)
            if SUMMARY:
                decay_carry *= _last_row(a_cum, BLOCK_L)
            else:
                if SAVE:
                    save_offs = save_base + offs_t[:, None] * NSTATE + offs_n[None, :]
                    tl.store(a_save_ptr + save_offs, a, mask=mask_tn)
                    tl.store(h_save_ptr + save_offs, h, mask=mask_tn)
                y_group = tl.sum(h * _bn_tile(C_ptr, offs_t, offs_n, mask_tn, sC_l, sC_n), axis=1)  # [BL]
                # 3. broadcast to every channel of the group, skip, gate (u re-read: from the cache)
                for d0 in range(0, Dg, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    mask_d = offs_d < Dg
                    ch = pid_g * Dg + offs_d
                    mask = mask_t[:, None] & mask_d[None, :]
                    x = tl.load(u_ptr + offs_t[:, None] * su_l + ch[None, :] * su_d, mask=mask, other=0.0)
                    Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0) if HAS_D else None
                    y = _output_tile(y_group, x.to(tl.float32), Dv, z_ptr, offs_t, ch, mask, sz_l, sz_d, HAS_D, HAS_Z)
                    out_offs = offs_t[:, None] * so_l + ch[None, :] * so_d
                    tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=mask)
    if SUMMARY:
        tl.store(chunk_P_ptr + chunk_base + c * NSTATE + offs_n, decay_carry, mask=mask_n)
        tl.store(chunk_S_ptr + chunk_base + c * NSTATE + offs_n, h_carry, mask=mask_n)


@triton.heuristics({"BLOCK_N": lambda args: triton.next_power_of_2(args["NSTATE"])})
@triton.jit(do_not_specialize=["L", "seq_len"])
def mean_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, a_save_ptr, h_save_ptr, dout_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr,
    L, Dg, NSTATE, seq_len, n_blocks,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, sdo_b, sdo_l, sdo_d, sg_b, sg_l, sg_d,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    RESET: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Per group, with a/s the channel means and h the reduced state (saved by the forward):
    #   dy_g[t] = sum_d dy[t, d],   dh[t] = dy_g[t] C[t] + a[t+1] dh[t+1]   (reverse scan; a = 0 at a start)
    #   dC = dy_g h,  dB = dh s,  ds = <dh, B>,  da[t] = dh[t] h[t-1]
    # then per channel: du = D dy + ds dt / Dg,  ddt = ds u / Dg + sum_n da exp(dt A) A / Dg,
    #   dA += sum_t da exp(dt A) dt / Dg.
    pid_g, pid_b = tl.program_id(0), tl.program_id(1)
    n_groups = tl.num_programs(0)
    D_total = Dg * n_groups
    u_ptr += pid_b * su_b
    delta_ptr += pid_b * sdt_b
    z_ptr += pid_b * sz_b
    dout_ptr += pid_b * sdo_b
    du_ptr += pid_b * sg_b
    ddelta_ptr += pid_b * sg_b
    dz_ptr += pid_b * sg_b
    B_ptr += pid_b * sB_b + pid_g * sB_g
    C_ptr += pid_b * sC_b + pid_g * sC_g
    save_base = (pid_b * n_groups + pid_g) * L * NSTATE  # (b, G, L, N) fp32: a, h, dB, dC
    rows = tl.arange(0, BLOCK_L)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NSTATE
    inv_dg = 1.0 / Dg
    dh_carry = tl.zeros([BLOCK_N], dtype=tl.float32)  # dL/dh at the first step after the block
    for i in range(n_blocks):
        blk = n_blocks - 1 - i
        t0 = blk * BLOCK_L
        offs_t = t0 + rows
        mask_t = offs_t < L
        mask_tn = mask_t[:, None] & mask_n[None, :]
        # sweep 1: gradient reaching the group's output, and the mean step input s
        dy_group = tl.zeros([BLOCK_L], dtype=tl.float32)
        sum_s = tl.zeros([BLOCK_L], dtype=tl.float32)
        for d0 in range(0, Dg, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < Dg
            ch = tl.where(mask_d, pid_g * Dg + offs_d, -1)
            mask = mask_t[:, None] & mask_d[None, :]
            x, raw, dt = _step_tile(u_ptr, delta_ptr, bias_ptr, offs_t, ch, mask, su_l, su_d, sdt_l, sdt_d,
                                    HAS_BIAS, SOFTPLUS)  # fmt: skip
            sum_s += tl.sum(dt * x, axis=1)
            dy = tl.load(dout_ptr + offs_t[:, None] * sdo_l + ch[None, :] * sdo_d, mask=mask, other=0.0)
            dy = dy.to(tl.float32)
            if HAS_Z:
                zt = tl.load(z_ptr + offs_t[:, None] * sz_l + ch[None, :] * sz_d, mask=mask, other=0.0)
                zt = zt.to(tl.float32)
                dy *= zt * tl.sigmoid(zt)
            dy_group += tl.sum(dy, axis=1)
        s = sum_s * inv_dg
        save_offs = save_base + offs_t[:, None] * NSTATE + offs_n[None, :]
        h = tl.load(h_save_ptr + save_offs, mask=mask_tn, other=0.0)
        Bt = _bn_tile(B_ptr, offs_t, offs_n, mask_tn, sB_l, sB_n)
        Ct = _bn_tile(C_ptr, offs_t, offs_n, mask_tn, sC_l, sC_n)
        # the reduced state's gradient: reverse scan from the carried dh of the next block
        next_mask = (offs_t + 1 < L)[:, None] & mask_n[None, :]
        a_next = tl.load(a_save_ptr + save_offs + NSTATE, mask=next_mask, other=0.0)
        a_cum, dh_local = tl.associative_scan((a_next, dy_group[:, None] * Ct), 0, _linear_recurrence, reverse=True)
        dh = dh_local + a_cum * dh_carry[None, :]
        dh_carry = tl.sum(tl.where((rows == 0)[:, None], dh, 0.0), axis=0)
        tl.store(dC_ptr + save_offs, dy_group[:, None] * h, mask=mask_tn)
        tl.store(dB_ptr + save_offs, dh * s[:, None], mask=mask_tn)
        ds = tl.sum(dh * Bt, axis=1) * inv_dg  # [BL], already divided by the channel count
        prev_mask = ((offs_t >= 1) & mask_t)[:, None] & mask_n[None, :]
        h_prev = tl.load(h_save_ptr + save_offs - NSTATE, mask=prev_mask, other=0.0)
        start = _starts(offs_t, seq_len, RESET)
        da = tl.where(start[:, None], 0.0, dh * h_prev) * inv_dg  # [BL, BN]
        y_group = tl.sum(h * Ct, axis=1)
        # sweep 2: per-channel gradients
        part = (pid_b * n_blocks + blk) * D_total
        for d0 in range(0, Dg, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < Dg
            ch = tl.where(mask_d, pid_g * Dg + offs_d, -1)
            mask = mask_t[:, None] & mask_d[None, :]
            x, raw, dt = _step_tile(u_ptr, delta_ptr, bias_ptr, offs_t, ch, mask, su_l, su_d, sdt_l, sdt_d,
                                    HAS_BIAS, SOFTPLUS)  # fmt: skip
            dout = tl.load(dout_ptr + offs_t[:, None] * sdo_l + ch[None, :] * sdo_d, mask=mask, other=0.0)
            dout = dout.to(tl.float32)
            dy = dout
            if HAS_Z:
                zt = tl.load(z_ptr + offs_t[:, None] * sz_l + ch[None, :] * sz_d, mask=mask, other=0.0)
                zt = zt.to(tl.float32)
                sig = tl.sigmoid(zt)
                dy = dout * zt * sig
            mask_dn = mask_d[:, None] & mask_n[None, :]
            A = tl.load(A_ptr + ch[:, None] * NSTATE + offs_n[None, :], mask=mask_dn, other=0.0)
            weighted = da[:, None, :] * _fast_exp2(dt[:, :, None] * (A * LOG2E)[None, :, :])  # [BL, BD, BN]
            du = ds[:, None] * dt
            ddt = ds[:, None] * x + tl.sum(weighted * A[None, :, :], axis=2)
            dA = tl.sum(weighted * dt[:, :, None], axis=0)  # [BD, BN]
            tl.store(dA_part_ptr + (part + ch[:, None]) * NSTATE + offs_n[None, :], dA, mask=mask_dn)
            y = tl.broadcast_to(y_group[:, None], [BLOCK_L, BLOCK_D])
            if HAS_D:
                Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0)
                du += dy * Dv[None, :]
                y += x * Dv[None, :]
                tl.store(dD_part_ptr + part + ch, tl.sum(dy * x, axis=0), mask=mask_d)
            if SOFTPLUS:
                ddt *= tl.sigmoid(raw)
            ddt = tl.where(mask, ddt, 0.0)
            if HAS_BIAS:
                tl.store(dbias_part_ptr + part + ch, tl.sum(ddt, axis=0), mask=mask_d)
            grad_offs = offs_t[:, None] * sg_l + ch[None, :] * sg_d
            tl.store(du_ptr + grad_offs, du.to(du_ptr.dtype.element_ty), mask=mask)
            tl.store(ddelta_ptr + grad_offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
            if HAS_Z:
                dz = dout * y * sig * (1.0 + zt * (1.0 - sig))
                tl.store(dz_ptr + grad_offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------------
# launchers

TILE_BUDGET = 8192  # elements of the [BLOCK_L, BLOCK_D, BLOCK_N] decay tile per program (registers)
TUNED_TILE_BUDGET = 16384  # the largest tile the forward's autotuner tries
forced_blocks: tuple[int, int] | None = None  # (BLOCK_L, BLOCK_D); tests set it to exercise partial blocks


def plan_blocks(dim_per_group: int, nstate: int) -> tuple[int, int, int]:
    """(BLOCK_L, BLOCK_D, num_warps) of the forward under the interpreter (on a GPU the forward is autotuned): long
    time blocks for N = 1, the channel block as wide as the group allows within the tile budget."""
    if forced_blocks is not None:
        return (*forced_blocks, 1)
    block_n = triton.next_power_of_2(nstate)
    block_l = 64 if block_n == 1 else 32 if block_n <= 2 else 16
    block_d = min(triton.next_power_of_2(dim_per_group), max(16, TILE_BUDGET // (block_l * block_n)))
    return block_l, block_d, 1


def plan_bwd_blocks(dim_per_group: int, nstate: int) -> tuple[int, int, int]:
    """(BLOCK_L, BLOCK_D, num_warps) of the backward. It keeps about a dozen [BLOCK_L, BLOCK_D] fp32 tiles live, so
    the tiles stay at <= 4-8 elements per thread: sm_90 compiles (ptxas -v) of (16, 64, 8 warps) at N = 1 and
    (8, 64, 8 warps) at N = 8 use 128 registers without spills, where (32, 128, 4 warps) spills ~1.5 KB."""
    if forced_blocks is not None:
        return (*forced_blocks, 1)
    block_n = triton.next_power_of_2(nstate)
    block_l = 16 if block_n <= 2 else 8
    block_d = min(triton.next_power_of_2(dim_per_group), 64 if block_n <= 8 else 32)
    return block_l, block_d, 1 if triton_interpret() else 8 if block_l * block_d * block_n >= 512 else 4


# Splitting L re-reads u and delta in a summary pass, so the forward splits only where too few (image, group)
# programs would leave SMs idle: aim at this many programs per SM for narrow groups (<= 8 channels: the reads are
# cheap, the sequential walk is what costs -- e.g. the scan on already-reduced inputs) and for wide ones.
NARROW_GROUP = 8
PROGRAMS_PER_SM = {"narrow": 32, "wide": 1}
CHUNK_MULTIPLE = 128  # split chunks are whole numbers of every BLOCK_L the forward may use
forced_chunk_len: int | None = None  # tests set it to exercise the split forward under the interpreter


def plan_chunks(batch: int, groups: int, dim_per_group: int, length: int, device: torch.device) -> tuple[int, int]:
    """(chunk length, number of chunks) of the forward."""
    if forced_chunk_len is not None:
        return forced_chunk_len, triton.cdiv(length, forced_chunk_len)
    if device.type != "cuda":
        return length, 1
    per_sm = PROGRAMS_PER_SM["narrow" if dim_per_group <= NARROW_GROUP else "wide"]
    wanted = per_sm * _sm_count(device)
    nchunks = max(1, min(triton.cdiv(wanted, batch * groups), triton.cdiv(length, CHUNK_MULTIPLE)))
    if nchunks == 1:
        return length, 1
    chunk_len = triton.cdiv(triton.cdiv(length, nchunks), CHUNK_MULTIPLE) * CHUNK_MULTIPLE
    return chunk_len, triton.cdiv(length, chunk_len)


def _fwd_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_L": bl, "BLOCK_D": bd, "PREFETCH": prefetch}, num_warps=w)
        for bl in (16, 32, 64, 128)
        for bd in (32, 64, 128)
        for w in (4, 8, 16)
        for prefetch in (False, True)
    ]


def prune_fwd_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The forward configs worth timing for this group width and state size: a channel block no wider than the
    group (rounded up to a power of 2), a decay tile within the budget, 4-16 elements of a [BLOCK_L, BLOCK_D] tile
    per thread. (sm_90 compiles, ptxas -v, N = 1: 16 per thread (32, 128, 8 warps) takes 184 registers without
    spills, 32 per thread (64, 128, 8 warps) spills ~170 B and (64, 128, 4 warps) ~1.6 KB.)"""
    widest = max(32, triton.next_power_of_2(named_args["Dg"]))
    block_n = triton.next_power_of_2(named_args["NSTATE"])

    def fits(c: triton.Config) -> bool:
        tile = c.kwargs["BLOCK_L"] * c.kwargs["BLOCK_D"]
        if c.kwargs["PREFETCH"] and c.kwargs["BLOCK_D"] < named_args["Dg"]:
            return False  # the prefetching path handles one channel block only
        return (
            c.kwargs["BLOCK_D"] <= widest
            and tile * block_n <= TUNED_TILE_BUDGET
            and 4 <= tile / (32 * c.num_warps) <= 16
        )

    fallback = triton.Config({"BLOCK_L": 16, "BLOCK_D": 32, "PREFETCH": False}, num_warps=4)
    return [c for c in configs if fits(c)] or [fallback]


mean_scan_fwd_tuned = _autotune(
    configs=_fwd_configs(),
    key=["Dg", "NSTATE", "L", "chunk_len", "SAVE", "SUMMARY"],
    prune_configs_by={"early_config_prune": prune_fwd_configs},
)(mean_scan_fwd_kernel)


def _bc_from_bgln(grad: Tensor, like: Tensor, layout: str) -> Tensor:
    """(batch, G, L, N) fp32 gradient -> the form and dtype of B or C."""
    if layout == "BLD":
        grad = grad.transpose(1, 2)  # (b, L, G, N)
        grad = grad.squeeze(2) if like.dim() == 3 else grad
    else:
        grad = grad.transpose(2, 3)  # (b, G, N, L)
        grad = grad.squeeze(1) if like.dim() == 3 else grad
    return grad.to(like.dtype).contiguous()


def mean_scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, seq_len: int | None, layout: str, save: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Launch the fused forward; returns (out, reduced decay a, reduced state h), the last two (b, G, L, N) fp32 when
    `save` (for the backward), else empty."""
    batch, dim, length, nstate, groups = _shape(u, A, B, layout)
    dim_per_group = dim // groups
    out = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    saved_shape = (batch, groups, length, nstate) if save else (0,)
    a_save = torch.empty(saved_shape, device=u.device, dtype=torch.float32)
    h_save = torch.empty(saved_shape, device=u.device, dtype=torch.float32)
    anything = u  # stands in for absent optional tensors; never read
    if forced_blocks is None and not triton_interpret():  # autotuned on a GPU
        kernel, blocks = mean_scan_fwd_tuned, {}
    else:
        block_l, block_d, warps = plan_blocks(dim_per_group, nstate)
        prefetch = dim_per_group <= block_d
        kernel, blocks = (
            mean_scan_fwd_kernel,
            dict(BLOCK_L=block_l, BLOCK_D=block_d, PREFETCH=prefetch, num_warps=warps),
        )
    chunk_len, nchunks = plan_chunks(batch, groups, dim_per_group, length, u.device)
    summary_shape = (batch, groups, nchunks, nstate) if nchunks > 1 else (0,)
    chunk_P = torch.empty(summary_shape, device=u.device, dtype=torch.float32)
    chunk_S = torch.empty(summary_shape, device=u.device, dtype=torch.float32)
    args = (
        u, delta, A.contiguous(), B, C, anything if D is None else D.contiguous(), anything if z is None else z,
        anything if delta_bias is None else delta_bias.contiguous(), out, a_save, h_save, chunk_P, chunk_S,
        length, dim_per_group, nstate, seq_len or length, chunk_len,
        *_x_strides(u, layout), *_x_strides(delta, layout), *_x_strides(z if z is not None else u, layout),
        *_x_strides(out, layout), *_bc_strides(B, layout), *_bc_strides(C, layout),
    )  # fmt: skip
    flags = dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        RESET=bool(seq_len) and seq_len != length, SAVE=save, **blocks,
    )  # fmt: skip
    with _on_device(u.device):
        if nchunks > 1:  # each chunk's decay product and end state, then the scan from the folded incoming state
            kernel[(groups, batch, nchunks)](*args, **flags, SUMMARY=True)
        kernel[(groups, batch, nchunks)](*args, **flags, SUMMARY=False)
    return out, a_save, h_save


def mean_scan_bwd(
    dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, a_save: Tensor, h_save: Tensor, delta_softplus: bool, seq_len: int | None, layout: str,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Launch the fused backward; returns (du, ddelta, dA, dB, dC, dD, dz, dbias), empty where absent."""
    batch, dim, length, nstate, groups = _shape(u, A, B, layout)
    dim_per_group = dim // groups
    block_l, block_d, warps = plan_bwd_blocks(dim_per_group, nstate)
    n_blocks = triton.cdiv(length, block_l)
    dev, f32 = u.device, torch.float32

    def new(shape: tuple, dtype: torch.dtype = f32, present: bool = True) -> Tensor:
        return torch.empty(shape if present else (0,), device=dev, dtype=dtype)

    du, ddelta = new(u.shape, u.dtype), new(u.shape, delta.dtype)
    dz = new(u.shape, z.dtype if z is not None else f32, present=z is not None)
    dB, dC = new((batch, groups, length, nstate)), new((batch, groups, length, nstate))
    dA_part = new((batch, n_blocks, dim, nstate))
    dD_part = new((batch, n_blocks, dim), present=D is not None)
    dbias_part = new((batch, n_blocks, dim), present=delta_bias is not None)
    dout = dout.contiguous()
    anything = u
    with _on_device(dev):
        mean_scan_bwd_kernel[(groups, batch)](
            u, delta, A.contiguous(), B, C, anything if D is None else D.contiguous(), anything if z is None else z,
            anything if delta_bias is None else delta_bias.contiguous(), a_save, h_save, dout,
            du, ddelta, dz, dB, dC, dA_part, dD_part, dbias_part,
            length, dim_per_group, nstate, seq_len or length, n_blocks,
            *_x_strides(u, layout), *_x_strides(delta, layout), *_x_strides(z if z is not None else u, layout),
            *_x_strides(dout, layout), *_x_strides(du, layout), *_bc_strides(B, layout), *_bc_strides(C, layout),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            RESET=bool(seq_len) and seq_len != length, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=warps,
        )  # fmt: skip
    dD = dD_part.sum((0, 1)) if D is not None else dD_part
    dbias = dbias_part.sum((0, 1)) if delta_bias is not None else dbias_part
    return (du, ddelta, dA_part.sum((0, 1)), _bc_from_bgln(dB, B, layout), _bc_from_bgln(dC, C, layout), dD, dz,
            dbias)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# torch.library ops and autograd

_FWD_SCHEMA = (
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
    "bool delta_softplus, int seq_len, str layout, bool save) -> (Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor dout, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
    "Tensor a_save, Tensor h_save, bool delta_softplus, int seq_len, str layout) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("sfmamba::mean_selective_scan_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _fwd_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_len, layout, save):
    return mean_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_len or None, layout, save)


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_len, layout, save):
    batch, _, length, nstate, groups = _shape(u, A, B, layout)
    saved = (batch, groups, length, nstate) if save else (0,)
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    return out, u.new_empty(saved, dtype=torch.float32), u.new_empty(saved, dtype=torch.float32)


@torch.library.custom_op("sfmamba::mean_selective_scan_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _bwd_op(dout, u, delta, A, B, C, D, z, delta_bias, a_save, h_save, delta_softplus, seq_len, layout):
    return mean_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, a_save, h_save, delta_softplus, seq_len or None,
                         layout)  # fmt: skip


@_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, a_save, h_save, delta_softplus, seq_len, layout):
    def fresh(x: Tensor | None, dtype: torch.dtype | None = None) -> Tensor:
        if x is None:
            return u.new_empty((0,))
        return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)

    return (fresh(u), fresh(delta), fresh(A), fresh(B), fresh(C), fresh(D, torch.float32), fresh(z),
            fresh(delta_bias, torch.float32))  # fmt: skip


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_len, layout, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1], output[2])
    ctx.flags = (delta_softplus, seq_len, layout)
    ctx.set_materialize_grads(False)  # no zero-filled gradients of the saved decays and states on every backward


def _backward(ctx, dout, _da, _dh, bwd=None):
    """Gradients of the op's inputs; `bwd` is the traceable op unless the eager autograd.Function passes the launcher."""
    u, delta, A, B, C, D, z, delta_bias, a_save, h_save = ctx.saved_tensors
    delta_softplus, seq_len, layout = ctx.flags
    if h_save.numel() == 0:
        raise RuntimeError("mean_selective_scan: backward called but the forward ran without grad on its inputs")
    if dout is None:  # only the saved tensors reached the loss (the op path leaves them differentiable)
        dout = torch.zeros_like(u)
    bwd = bwd or torch.ops.sfmamba.mean_selective_scan_bwd
    grads = bwd(dout, u, delta, A, B, C, D, z, delta_bias, a_save, h_save, delta_softplus, seq_len, layout)
    du, ddelta, dA, dB, dC, dD, dz, dbias = (g if g.numel() else None for g in grads)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class MeanSelectiveScanFunction(torch.autograd.Function):
    """The same forward/backward as the `sfmamba::mean_selective_scan_fwd` op, for eager mode (skips the
    torch.library dispatch, whose host cost is comparable to the kernel at vision shapes)."""

    @staticmethod
    def forward(ctx, *inputs):
        out, a_save, h_save = mean_scan_fwd(*inputs)
        _setup_context(ctx, inputs, (out, a_save, h_save))
        ctx.mark_non_differentiable(a_save, h_save)
        return out, a_save, h_save

    @staticmethod
    def backward(ctx, dout, da, dh):
        return _backward(ctx, dout, da, dh, bwd=mean_scan_bwd)


def mean_selective_scan_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, seq_len: int | None, layout: str,
) -> Tensor:  # fmt: skip
    """The Triton path of `sfmamba.ops.vmeanba.mean_selective_scan` (inputs already checked)."""
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    save = _needs_grad(*tensors)
    scan = (
        torch.ops.sfmamba.mean_selective_scan_fwd if torch.compiler.is_compiling() else MeanSelectiveScanFunction.apply
    )
    out, _, _ = scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_len or 0, layout, save)
    return out
