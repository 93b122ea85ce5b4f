"""Experimental tiled backward kernel of the selective scan (`SFMAMBA_SCAN_BWD=tiled`; the default is chunk.py's).

Design (why): chunk.py's backward walks each chunk one step at a time, and every step reduces dB and dC over the
channels (a cross-thread reduction per step) on top of its latency-bound per-step loads. Here one program owns the
same work (one image x BLOCK_D channels of one group x one backward chunk of CHUNK steps) but handles it in blocks of
BLOCK_L steps, loading [BLOCK_L, BLOCK_D] tiles (coalesced along whichever axis is contiguous) and forming every
per-step quantity as a [BLOCK_L, BLOCK_N, BLOCK_D] tensor:
  - states: forward `tl.associative_scan` of h[t] = a[t] h[t-1] + b[t] from the block's entering state (the forward's
    checkpoint for the chunk's first block; with several blocks per chunk a first forward sweep keeps each block's
    entering state in registers);
  - state gradient: reverse associative scan of dh[t] = g[t] + a[t+1] dh[t+1], g[t] = C[t] dy[t] (+ dlast at a
    segment end), a = 0 at a segment start, continued from the dh carried from the block after;
  - dB, dC: ONE reduction over the channel axis per block ([BLOCK_L, BLOCK_N]) instead of one per step.
Chunks and partial buffers are chunk.py's (summary pass + `chunk_combine_kernel` for the state gradient across
chunks; dB/dC partials per channel block, dA/dD/dbias partials per chunk, summed on the host: deterministic), so the
launcher runs either kernel with the same arguments and grid.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...utils._config import triton_interpret
from .._launch import autotune as _autotune
from .._launch import linear_recurrence as _linear_recurrence
from .._launch import softplus as _softplus
from .chunk import LOG2E, _A_tile, _channel_block, _segments
from .tiled import _bc_tile, _seq_tile, _step_row

__all__ = ["selective_scan_bwd_tiled_kernel"]

# The backward keeps about twice the forward's live [BLOCK_L, BLOCK_N, BLOCK_D] fp32 tensors (a, b, h, the reverse
# scan's pair, dh), so its per-thread budget for one such tensor is half the tiled forward's; below the minimum a
# thread has too little work per block to pay for the block's reductions.
MIN_TILE_ELEMENTS_PER_THREAD, MAX_TILE_ELEMENTS_PER_THREAD = 8, 16
# blocks of fewer than CHUNK / this steps re-scan too much in the entering-state sweep (and only lengthen autotuning)
MAX_BLOCKS_PER_CHUNK = 4


@triton.jit
def _block_states(u_ptr, delta_ptr, B_ptr, h0_ptr, seg_ids_ptr, cu_ptr, h_in, offs_t, valid, ch, mask_d, offs_n,
                  mask_n, state_offs, A2, bias, L, seq_len, pid_b, STATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                  RESET: tl.constexpr):  # fmt: skip
    """One block's forward quantities from the state entering it: states h [BL, BN, BD]; u, raw step, step dt
    [BL, BD] (dt = 0 off the tile, so those rows pass the state through); B [BL, BN]; the decay exp(dt A)
    [BL, BN, BD]; segment index, start and end [BL]."""
    mask = valid[:, None] & mask_d[None, :]
    mask_tn = valid[:, None] & mask_n[None, :]
    x = _seq_tile(u_ptr, offs_t, ch, mask, su_l, su_d)
    raw = _seq_tile(delta_ptr, offs_t, ch, mask, sdt_l, sdt_d)
    if HAS_BIAS:
        raw += bias[None, :]
    dt = _softplus(raw) if SOFTPLUS else raw
    dt = tl.where(mask, dt, 0.0)
    Bt = _bc_tile(B_ptr, offs_t, offs_n, mask_tn, sB_l, sB_n)
    decay = tl.exp2(dt[:, None, :] * A2[None, :, :])  # [BL, BN, BD]
    b = (dt * x)[:, None, :] * Bt[:, :, None]
    seg, start, end = _segments(offs_t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
    start = start & valid
    end = end & valid
    start3 = start[:, None, None]
    if HAS_H0:  # the state before a segment enters through its first step
        mask_h0 = start3 & (mask_n[:, None] & mask_d[None, :])[None, :, :]
        h0 = tl.load(h0_ptr + seg[:, None, None] * STATE + state_offs[None, :, :], mask=mask_h0, other=0.0)
        b += decay * h0
    a = tl.where(start3, 0.0, decay)  # a segment start forgets the carried state
    a_cum, h_local = tl.associative_scan((a, b), 0, _linear_recurrence)
    h = h_local + a_cum * h_in[None, :, :]
    return h, x, raw, dt, Bt, decay, seg, start, end


@triton.jit
def _block_dh_terms(delta_ptr, C_ptr, dout_ptr, z_ptr, dlast_ptr, seg_ids_ptr, cu_ptr, offs_t, valid, seg, end, ch,
                    mask_d, offs_n, mask_n, state_offs, A2, bias, L, seq_len, pid_b, STATE, sdt_l, sdt_d, sC_l, sC_n,
                    sdo_l, sdo_d, sz_l, sz_d, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    HAS_DLAST: tl.constexpr, RESET: tl.constexpr):  # fmt: skip
    """The reverse recurrence's terms of one block, dh[t] = g[t] + alpha[t] dh[t+1]: alpha = the next step's decay
    (0 where the next step starts a segment or is past L; 1 off the tile, so those rows pass dh through) and g
    [BL, BN, BD]; also dout, z, dy [BL, BD] and C [BL, BN]."""
    mask = valid[:, None] & mask_d[None, :]
    mask_tn = valid[:, None] & mask_n[None, :]
    dout = _seq_tile(dout_ptr, offs_t, ch, mask, sdo_l, sdo_d)
    zt = dout
    dy = dout
    if HAS_Z:
        zt = _seq_tile(z_ptr, offs_t, ch, mask, sz_l, sz_d)
        dy = dout * zt * tl.sigmoid(zt)
    Ct = _bc_tile(C_ptr, offs_t, offs_n, mask_tn, sC_l, sC_n)
    g = dy[:, None, :] * Ct[:, :, None]
    mask_dn = mask_n[:, None] & mask_d[None, :]
    if HAS_DLAST:
        mask_end = end[:, None, None] & mask_dn[None, :, :]
        g += tl.load(dlast_ptr + seg[:, None, None] * STATE + state_offs[None, :, :], mask=mask_end, other=0.0)
    t_next = offs_t + 1
    inside_next = valid & (t_next < L)
    raw_next = _seq_tile(delta_ptr, t_next, ch, inside_next[:, None] & mask_d[None, :], sdt_l, sdt_d)
    if HAS_BIAS:
        raw_next += bias[None, :]
    dt_next = _softplus(raw_next) if SOFTPLUS else raw_next
    _, start_next, _ = _segments(t_next, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
    alpha = tl.exp2(dt_next[:, None, :] * A2[None, :, :])
    alpha = tl.where((start_next | (t_next >= L))[:, None, None], 0.0, alpha)
    alpha = tl.where(valid[:, None, None], alpha, 1.0)
    return alpha, g, dout, zt, dy, Ct


def _bwd_configs() -> list[triton.Config]:
    if triton_interpret():
        return [triton.Config({"BLOCK_L": 4, "BLOCK_D": 16}, num_warps=1)]
    return [
        triton.Config({"BLOCK_L": bl, "BLOCK_D": bd}, num_warps=w)
        for bl in (4, 8, 16, 32, 64)
        for bd in (32, 64)
        for w in (1, 2, 4, 8)
    ]


def _fits_registers(config: triton.Config, nstate: int, chunk: int) -> bool:
    """Whether a block lies inside one backward chunk (at most MAX_BLOCKS_PER_CHUNK of them) and one [BLOCK_L,
    BLOCK_N, BLOCK_D] fp32 tensor gives every thread MIN..MAX_TILE_ELEMENTS_PER_THREAD elements."""
    block_l = config.kwargs["BLOCK_L"]
    if block_l > chunk or block_l * MAX_BLOCKS_PER_CHUNK < chunk:
        return False
    elements = block_l * triton.next_power_of_2(nstate) * config.kwargs["BLOCK_D"]
    threads = 32 * config.num_warps
    return MIN_TILE_ELEMENTS_PER_THREAD * threads <= elements <= MAX_TILE_ELEMENTS_PER_THREAD * threads


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    chunk = kwargs["CHUNK"]
    fitting = [c for c in configs if _fits_registers(c, named_args["NSTATE"], chunk)]
    if fitting:
        return fitting
    # nothing fits (very large N): the smallest tile within a chunk, with the most warps, spills least
    inside = [c for c in configs if c.kwargs["BLOCK_L"] <= chunk]
    return [min(inside, key=lambda c: (c.kwargs["BLOCK_L"] * c.kwargs["BLOCK_D"], -c.num_warps))]


@_autotune(
    configs=_bwd_configs(),
    key=["Dg", "NSTATE", "CHUNK", "SUMMARY", "su_l"],  # su_l: 1 in BDL, D in BLD (the tile's coalesced axis)
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.heuristics({"BLOCK_N": lambda args: triton.next_power_of_2(args["NSTATE"])})
@triton.jit(do_not_specialize=["L", "seq_len", "nchunks"])
def selective_scan_bwd_tiled_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seg_ids_ptr, cu_ptr,
    ckpt_ptr, dout_ptr, dlast_ptr, sum_X_ptr, sum_Q_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, Dg, NSTATE, seq_len, nchunks, batch, n_ckpt, span,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, sdo_b, sdo_l, sdo_d, sg_b, sg_l, sg_d,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, RESET: tl.constexpr, HAS_DLAST: tl.constexpr, SUMMARY: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Same arguments, grid and buffers as chunk.selective_scan_bwd_kernel (PREFETCH replaced by BLOCK_L, which
    # divides CHUNK: both are powers of two and the pruning keeps BLOCK_L <= CHUNK), always with spans of one chunk
    # (span == 1, nchunks == n_ckpt).
    # SUMMARY pass: each chunk's dh at its first step from a zero start (X) and the decay across it (Q).
    # Main pass: dh after the chunk from the combined summaries; states recomputed from the forward's checkpoint;
    # the chunk's blocks walked backwards, each producing its gradients as tiles.
    pid_d, pid_b, pid_g, c, D_total, offs_d, mask_d, ch, offs_n, mask_n, mask_dn, state_offs = _channel_block(
        Dg, NSTATE, nchunks, BLOCK_D, BLOCK_N
    )
    n_groups = tl.num_programs(1) // nchunks
    STATE = D_total * NSTATE
    A = _A_tile(A_ptr, offs_n, ch, NSTATE, mask_dn)
    A2 = A * LOG2E
    Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0) if HAS_D else None
    bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0) if HAS_BIAS else None
    u_ptr += pid_b * su_b
    delta_ptr += pid_b * sdt_b
    z_ptr += pid_b * sz_b
    dout_ptr += pid_b * sdo_b
    du_ptr += pid_b * sg_b
    ddelta_ptr += pid_b * sg_b
    dz_ptr += pid_b * sg_b
    B_ptr += pid_b * sB_b + pid_g * sB_g
    C_ptr += pid_b * sC_b + pid_g * sC_g
    t0 = c * CHUNK
    steps = tl.minimum(CHUNK, L - t0)
    t_end = t0 + steps
    n_blocks = tl.cdiv(steps, BLOCK_L)
    rows = tl.arange(0, BLOCK_L)
    summary_offs = (pid_b * nchunks + c) * STATE + state_offs

    if SUMMARY:
        dh_carry = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        decay_carry = tl.full([BLOCK_N, BLOCK_D], 1.0, dtype=tl.float32)
        for i in range(n_blocks):
            offs_t = t0 + (n_blocks - 1 - i) * BLOCK_L + rows
            valid = offs_t < t_end
            seg, _, end = _segments(offs_t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
            alpha, g, _, _, _, _ = _block_dh_terms(
                delta_ptr, C_ptr, dout_ptr, z_ptr, dlast_ptr, seg_ids_ptr, cu_ptr, offs_t, valid, seg, end & valid,
                ch, mask_d, offs_n, mask_n, state_offs, A2, bias, L, seq_len, pid_b, STATE, sdt_l, sdt_d, sC_l, sC_n,
                sdo_l, sdo_d, sz_l, sz_d, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_DLAST, RESET,
            )  # fmt: skip
            alpha_cum, dh_local = tl.associative_scan((alpha, g), 0, _linear_recurrence, reverse=True)
            dh_carry = _step_row(dh_local + alpha_cum * dh_carry[None, :, :], 0, BLOCK_L)
            decay_carry *= _step_row(alpha_cum, 0, BLOCK_L)
        tl.store(sum_X_ptr + summary_offs, dh_carry, mask=mask_dn)
        tl.store(sum_Q_ptr + summary_offs, decay_carry, mask=mask_dn)
    else:
        # dL/dh at the first step after this chunk (chunk_combine_kernel folded the later chunks' summaries)
        dh_carry = tl.load(sum_X_ptr + summary_offs, mask=mask_dn & (c < nchunks - 1), other=0.0)
        h_in = tl.load(ckpt_ptr + (pid_b * nchunks + c - 1) * STATE + state_offs, mask=mask_dn & (c > 0), other=0.0)
        # with several blocks per chunk: a forward sweep keeps each block's entering state (the walk runs backwards)
        NB: tl.constexpr = CHUNK // BLOCK_L
        blocks = tl.arange(0, NB)
        entering = tl.zeros([NB, BLOCK_N, BLOCK_D], dtype=tl.float32)
        if NB > 1:
            for blk in range(n_blocks):
                entering = tl.where((blocks == blk)[:, None, None], h_in[None, :, :], entering)
                offs_t = t0 + blk * BLOCK_L + rows
                h, _, _, _, _, _, _, _, _ = _block_states(
                    u_ptr, delta_ptr, B_ptr, h0_ptr, seg_ids_ptr, cu_ptr, h_in, offs_t, offs_t < t_end, ch, mask_d,
                    offs_n, mask_n, state_offs, A2, bias, L, seq_len, pid_b, STATE, su_l, su_d, sdt_l, sdt_d, sB_l,
                    sB_n, HAS_BIAS, SOFTPLUS, HAS_H0, RESET,
                )  # fmt: skip
                h_in = _step_row(h, BLOCK_L - 1, BLOCK_L)
        else:
            entering = h_in[None, :, :]
        part_base = ((pid_d * batch + pid_b) * n_groups + pid_g) * L * NSTATE  # into the dB/dC partials
        dA_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(n_blocks):
            blk = n_blocks - 1 - i
            offs_t = t0 + blk * BLOCK_L + rows
            valid = offs_t < t_end
            mask = valid[:, None] & mask_d[None, :]  # [BL, BD]
            mask_tn = valid[:, None] & mask_n[None, :]  # [BL, BN]
            h_in = tl.sum(tl.where((blocks == blk)[:, None, None], entering, 0.0), axis=0)
            h, x, raw, dt, Bt, decay, seg, start, end = _block_states(
                u_ptr, delta_ptr, B_ptr, h0_ptr, seg_ids_ptr, cu_ptr, h_in, offs_t, valid, ch, mask_d, offs_n,
                mask_n, state_offs, A2, bias, L, seq_len, pid_b, STATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n,
                HAS_BIAS, SOFTPLUS, HAS_H0, RESET,
            )  # fmt: skip
            alpha, g, dout, zt, dy, Ct = _block_dh_terms(
                delta_ptr, C_ptr, dout_ptr, z_ptr, dlast_ptr, seg_ids_ptr, cu_ptr, offs_t, valid, seg, end, ch,
                mask_d, offs_n, mask_n, state_offs, A2, bias, L, seq_len, pid_b, STATE, sdt_l, sdt_d, sC_l, sC_n,
                sdo_l, sdo_d, sz_l, sz_d, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_DLAST, RESET,
            )  # fmt: skip
            alpha_cum, dh_local = tl.associative_scan((alpha, g), 0, _linear_recurrence, reverse=True)
            dh = dh_local + alpha_cum * dh_carry[None, :, :]  # [BL, BN, BD]
            dh_carry = _step_row(dh, 0, BLOCK_L)
            seq_offs = offs_t[:, None] * sg_l + ch[None, :] * sg_d
            part_offs = part_base + offs_t[:, None] * NSTATE + offs_n[None, :]
            # dC, dz: forward quantities only
            tl.store(dC_ptr + part_offs, tl.sum(h * dy[:, None, :], axis=2), mask=mask_tn)
            if HAS_Z:
                y = tl.sum(h * Ct[:, :, None], axis=1)
                if HAS_D:
                    y += x * Dv[None, :]
                sz = tl.sigmoid(zt)
                dz = dout * y * sz * (1.0 + zt * (1.0 - sz))
                tl.store(dz_ptr + seq_offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
            dtx = dt * x
            decayed = h - dtx[:, None, :] * Bt[:, :, None]  # = a_t h_{t-1}: the part of h_t that came through the decay
            dA_acc += tl.sum(dt[:, None, :] * dh * decayed, axis=0)
            ddt = tl.sum(dh * (Bt[:, :, None] * x[:, None, :] + A[None, :, :] * decayed), axis=1)  # [BL, BD]
            du = dt * tl.sum(dh * Bt[:, :, None], axis=1)
            if HAS_D:
                du += Dv[None, :] * dy
                dD_acc += tl.sum(dy * x, axis=0)
            if SOFTPLUS:
                ddt *= tl.sigmoid(raw)
            ddt = tl.where(mask, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=0)
            tl.store(du_ptr + seq_offs, du.to(du_ptr.dtype.element_ty), mask=mask)
            tl.store(ddelta_ptr + seq_offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
            tl.store(dB_ptr + part_offs, tl.sum(dh * dtx[:, None, :], axis=2), mask=mask_tn)
            if HAS_H0:
                mask_h0 = start[:, None, None] & mask_dn[None, :, :]
                tl.store(dh0_ptr + seg[:, None, None] * STATE + state_offs[None, :, :], decay * dh, mask=mask_h0)
        part = (pid_b * nchunks + c) * D_total
        tl.store(dA_ptr + part * NSTATE + state_offs, dA_acc, mask=mask_dn)
        if HAS_D:
            tl.store(dD_ptr + part + ch, dD_acc, mask=mask_d)
        if HAS_BIAS:
            tl.store(dbias_ptr + part + ch, dbias_acc, mask=mask_d)
