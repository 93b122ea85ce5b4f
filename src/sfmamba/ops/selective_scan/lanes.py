"""Forward kernel of the selective scan with several channels per thread over flattened (image, channel) lanes
(`SFMAMBA_SCAN_FWD=lanes`).

Design (why): chunk.py's step kernel gives every thread one channel, so each step's per-warp work -- loading and
converting the N values of B_t and C_t, their addresses, the segment test -- is paid per 32 channels; compiled for
sm_90 its loop is 194 instructions per step for 32 channels (BLD, unit strides specialised as at launch), of which
the scan's own arithmetic is under half, and the kernel is issue-bound (H100, (128, 160, 196, 8): 6 + 5.4 (summary)
warp-instructions per channel-step x 4 M channel-steps / 528 issue slots per clock ~ 45-50 us of the measured 61-75).
Here a thread (a "lane") owns CPT channels of one image, so B_t/C_t are loaded once for CPT channels, and programs
run over the flattened (image, lane) axis of one group -- a program's LANES threads may span two images -- so the
channel count need not be a multiple of the tile (D = 160 with 128 channels per warp leaves no idle lanes but the
last program's). Further cuts of per-step work: the chunk is walked
in runs between segment starts and checkpoints, so resets and checkpoint/last-state stores happen between runs
instead of as per-element selects and predicated stores every step; the summary pass's decay product is
exp2(A * sum(dt)) instead of a running product; exp2/log2 of the step and softplus are single MUFU instructions on
the GPU. Static count (benchmarks/ops/experiments/sass_loop_counts.py, N = 8, bf16): 3.15 instructions per
channel-step at CPT 4 (summary 2.27) against the step kernel's 5.12 (summary 4.66) with the same MUFU functions.

Tile shapes: state h [BLOCK_N, CPT, LANES]; per-step inputs x, dt, z [CPT, LANES]; B_t, C_t [BLOCK_N, LANES] (one
per image of each lane). The lane axis is last on purpose: Triton's default layouts spread the last axis over the
threads, which keeps the state index and a lane's channels inside one thread (no shuffles or shared-memory
conversions in the step loop; checked in the sm_90 build). The launcher, the two-pass chunking (summary pass +
`chunk_combine_kernel`; `chunk.plan_lane_chunks` sizes it to one wave of resident warps), last-state and
backward-checkpoint buffers are chunk.py's, so the backward runs after this kernel unchanged. Needs Dg % CPT == 0
(configs are pruned to the CPT values that divide the channels per group).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...utils._config import triton_interpret
from .._launch import LOG2E
from .._launch import autotune as _autotune
from .._launch import fast_exp2 as _exp2
from .._launch import softplus as _softplus
from .chunk import _segments

__all__ = ["CPT_CHOICES", "lanes_fwd_configs", "selective_scan_fwd_lanes_kernel"]

CPT_CHOICES = (1, 2, 4, 8)


@triton.jit
def _segment_end(t, L, seq_len, seg_ids_ptr, cu_ptr, RESET: tl.constexpr):
    """One past the last step of the segment holding step t (< L)."""
    if RESET == 0:
        return L
    elif RESET == 1:
        return (t // seq_len + 1) * seq_len
    else:
        return tl.load(cu_ptr + tl.load(seg_ids_ptr + t) + 1)


@triton.jit
def _lane_block(batch, Dg, NSTATE, nchunks, LANES: tl.constexpr, CPT: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's lanes: group pid_g, chunk c, D_total, image of each lane img [LANES] (int64), lane mask, channel
    index ch [CPT, LANES] (within D_total), states offs_n/mask_n [BN], 3-D mask [BN, 1, LANES] and state offsets
    [BN, CPT, LANES] within one (N, D_total) state."""
    pid_l, pid_gc = tl.program_id(0), tl.program_id(1)
    pid_g, c = pid_gc // nchunks, pid_gc % nchunks
    D_total = Dg * (tl.num_programs(1) // nchunks)
    # lane j of an image owns channels j, j + Q, ..., j + (CPT - 1) Q with Q = Dg / CPT lanes per image: for each of
    # its channels a warp's loads are consecutive addresses (coalesced), and the lane's channels share one image
    lanes_per_image = Dg // CPT
    lane = pid_l * LANES + tl.arange(0, LANES)
    img = lane // lanes_per_image
    mask_l = img < batch
    ch = pid_g * Dg + (lane % lanes_per_image)[None, :] + tl.arange(0, CPT)[:, None] * lanes_per_image
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NSTATE
    mask3 = mask_n[:, None, None] & mask_l[None, None, :]
    state_offs = offs_n[:, None, None] * D_total + ch[None, :, :]
    return pid_g, c, D_total, img.to(tl.int64), mask_l, ch, offs_n, mask_n, mask3, state_offs


@triton.jit
def _lane_inputs(u_rows, dt_rows, z_rows, B_rows, C_rows, t, valid, mask_x, mask_bc, su_l, sdt_l, sz_l, sB_l, sC_l,
                 HAS_Z: tl.constexpr, SUMMARY: tl.constexpr):  # fmt: skip
    """Step t's loads (masked off unless `valid`), in the inputs' dtype: x, dt, z [CPT, LANES]; B, C [BN, LANES]
    (C and z only when the pass uses them). Masked-off values are undefined (no `other`: a select per value per step):
    they only reach lanes, states and steps that are never stored."""
    mask_x = mask_x & valid
    mask_bc = mask_bc & valid
    x = tl.load(u_rows + t * su_l, mask=mask_x)
    dt = tl.load(dt_rows + t * sdt_l, mask=mask_x)
    Bt = tl.load(B_rows + t * sB_l, mask=mask_bc)
    Ct = Bt
    zt = x
    if not SUMMARY:
        Ct = tl.load(C_rows + t * sC_l, mask=mask_bc)
        if HAS_Z:
            zt = tl.load(z_rows + t * sz_l, mask=mask_x)
    return x, dt, Bt, Ct, zt


def lanes_fwd_configs() -> list[triton.Config]:
    if triton_interpret():
        return [triton.Config({"CPT": cpt, "LANES": 8, "PREFETCH": 1}, num_warps=1) for cpt in CPT_CHOICES]
    return [
        triton.Config({"CPT": cpt, "LANES": 32 * w, "PREFETCH": 1}, num_warps=w)
        for cpt in CPT_CHOICES
        for w in (1, 2, 4)
    ]


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Only CPT values that divide the channels per group (a thread's channels must belong to one image), and at
    N > 4 none of 8 (its [N, 8, lanes] state and decays spill on sm_90); the interpreter keeps the largest CPT."""
    kept = [c for c in configs if named_args["Dg"] % c.kwargs["CPT"] == 0]
    if named_args.get("NSTATE", 1) > 4 and not triton_interpret():
        kept = [c for c in kept if c.kwargs["CPT"] < 8] or kept
    if triton_interpret():
        return [max(kept, key=lambda c: c.kwargs["CPT"])]
    return kept


@_autotune(
    configs=lanes_fwd_configs(),
    key=["Dg", "NSTATE", "chunk_len", "SUMMARY", "su_l"],  # su_l: D in BLD, 1 in BDL (coalesced vs strided)
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.heuristics({"BLOCK_N": lambda args: triton.next_power_of_2(args["NSTATE"])})
# Dg is not specialised: a visible divisibility of the lanes' channel index would let Triton vectorise several lanes
# into one thread (the lane axis must map one lane to one thread)
@triton.jit(do_not_specialize=["L", "Dg", "seq_len", "nchunks", "ckpt_len"])
def selective_scan_fwd_lanes_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seg_ids_ptr, cu_ptr,
    out_ptr, last_ptr, ckpt_ptr, chunk_P_ptr, chunk_S_ptr,
    L, Dg, NSTATE, seq_len, chunk_len, nchunks, ckpt_len,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, so_b, so_l, so_d,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    batch,  # after the step kernel's arguments: the launcher passes it by name
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, RESET: tl.constexpr, STORE_LAST: tl.constexpr, STORE_CKPT: tl.constexpr,
    SUMMARY: tl.constexpr, CPT: tl.constexpr, LANES: tl.constexpr, BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    # One program: LANES x CPT flattened (image, channel) pairs of one group, one chunk of `chunk_len` steps, walked
    # sequentially with the [N, CPT, LANES] state in registers. SUMMARY pass: the chunk's decay product P and end
    # state S from a zero start; scan pass: fold the earlier chunks' (P, S) into the incoming state, scan, write y.
    pid_g, c, D_total, img, mask_l, ch, offs_n, mask_n, mask3, state_offs = _lane_block(
        batch, Dg, NSTATE, nchunks, LANES, CPT, BLOCK_N
    )
    STATE = D_total * NSTATE
    mask_x = mask_l[None, :]  # [1, LANES], broadcast over a lane's channels
    mask_bc = mask_n[:, None] & mask_l[None, :]  # [BN, LANES]
    A2 = tl.load(A_ptr + state_offs, mask=mask3, other=0.0) * LOG2E  # [BN, CPT, LANES]
    Dv = tl.load(D_ptr + ch, mask=mask_x, other=0.0) if HAS_D else None
    bias = tl.load(bias_ptr + ch, mask=mask_x, other=0.0) if HAS_BIAS else None
    u_rows = u_ptr + img[None, :] * su_b + ch * su_d
    dt_rows = delta_ptr + img[None, :] * sdt_b + ch * sdt_d
    z_rows = z_ptr + img[None, :] * sz_b + ch * sz_d
    out_rows = out_ptr + img[None, :] * so_b + ch * so_d
    B_rows = B_ptr + img[None, :] * sB_b + pid_g * sB_g + offs_n[:, None] * sB_n
    C_rows = C_ptr + img[None, :] * sC_b + pid_g * sC_g + offs_n[:, None] * sC_n
    chunk_offs = (img[None, None, :] * nchunks + c) * STATE + state_offs  # this chunk's summary slot
    h = tl.zeros([BLOCK_N, CPT, LANES], dtype=tl.float32)
    if not SUMMARY:  # the state entering this chunk (chunk_combine_kernel turned the summaries into incoming states)
        h = tl.load(chunk_S_ptr + chunk_offs, mask=mask3 & (c > 0), other=0.0)
    dt_sum = tl.zeros([CPT, LANES], dtype=tl.float32)  # SUMMARY: sum of dt since the chunk start or last reset
    reset_seen = c < 0  # SUMMARY: a segment starts inside the chunk (P = 0)
    t_start = c * chunk_len
    t_end = tl.minimum(t_start + chunk_len, L)
    ahead = _lane_inputs(u_rows, dt_rows, z_rows, B_rows, C_rows, t_start, t_start < t_end, mask_x, mask_bc, su_l,
                         sdt_l, sz_l, sB_l, sC_l, HAS_Z, SUMMARY)  # fmt: skip
    # The chunk is walked in runs that end at the next segment start or checkpoint, so resets and state stores happen
    # between runs, never as per-step selects or predicated stores inside the step loop.
    t0 = t_start
    while t0 < t_end:
        seg, start, _ = _segments(t0, L, seq_len, seg_ids_ptr, cu_ptr, img, RESET)
        seg = img * 0 + seg  # [LANES] (packed segments give one for all lanes)
        if start:  # a segment starts: forget the carried state
            if HAS_H0:  # the state before a segment enters through its first step
                h = tl.load(h0_ptr + seg[None, None, :] * STATE + state_offs, mask=mask3, other=0.0)
            else:
                h = tl.zeros([BLOCK_N, CPT, LANES], dtype=tl.float32)
            dt_sum = tl.zeros([CPT, LANES], dtype=tl.float32)
            reset_seen = t0 >= t_start
        seg_end = _segment_end(t0, L, seq_len, seg_ids_ptr, cu_ptr, RESET)
        t1 = tl.minimum(seg_end, t_end)
        if STORE_CKPT and not SUMMARY:
            t1 = tl.minimum(t1, (t0 // ckpt_len + 1) * ckpt_len)
        for t in range(t0, t1):
            if PREFETCH:  # issue step t+1's loads before step t's math
                x, dt, Bt, Ct, zt = ahead
                ahead = _lane_inputs(u_rows, dt_rows, z_rows, B_rows, C_rows, t + 1, t + 1 < t_end, mask_x, mask_bc,
                                     su_l, sdt_l, sz_l, sB_l, sC_l, HAS_Z, SUMMARY)  # fmt: skip
            else:
                x, dt, Bt, Ct, zt = _lane_inputs(u_rows, dt_rows, z_rows, B_rows, C_rows, t, True, mask_x, mask_bc,
                                                 su_l, sdt_l, sz_l, sB_l, sC_l, HAS_Z, SUMMARY)  # fmt: skip
            x = x.to(tl.float32)
            dt = dt.to(tl.float32)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dA = _exp2(dt[None, :, :] * A2)  # [BN, CPT, LANES]
            h = dA * h + (dt * x)[None, :, :] * Bt.to(tl.float32)[:, None, :]
            if SUMMARY:
                dt_sum += dt
            else:
                y = tl.sum(h * Ct.to(tl.float32)[:, None, :], axis=0)  # [CPT, LANES]
                if HAS_D:
                    y += x * Dv
                if HAS_Z:
                    zf = zt.to(tl.float32)
                    y *= zf * tl.sigmoid(zf)
                tl.store(out_rows + t * so_l, y.to(out_ptr.dtype.element_ty), mask=mask_x)
        if STORE_LAST and not SUMMARY:  # noqa: SIM102 (constexpr test outside, runtime test inside)
            if t1 == seg_end:
                tl.store(last_ptr + seg[None, None, :] * STATE + state_offs, h, mask=mask3)
        # the state after every ckpt_len steps and at the row end, for the backward
        if STORE_CKPT and not SUMMARY:  # noqa: SIM102
            if (t1 % ckpt_len == 0) | (t1 == L):
                ckpt_row = img[None, None, :] * tl.cdiv(L, ckpt_len) + (t1 - 1) // ckpt_len
                tl.store(ckpt_ptr + ckpt_row * STATE + state_offs, h, mask=mask3)
        t0 = t1
    if SUMMARY:
        decay = _exp2(A2 * dt_sum[None, :, :])  # the product of the chunk's decays since its last reset
        decay = tl.where(reset_seen, 0.0, decay)
        tl.store(chunk_P_ptr + chunk_offs, decay, mask=mask3)
        tl.store(chunk_S_ptr + chunk_offs, h, mask=mask3)
