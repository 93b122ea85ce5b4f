"""Experimental tiled forward kernel of the selective scan (`SFMAMBA_SCAN_FWD=tiled`; the default is chunk.py's).

Design (why): chunk.py's forward walks time one step at a time with one channel per thread, so each step waits on
its own loads (latency-bound), and in the BDL layout those per-step channel loads are strided by L. Here one program
owns one image x BLOCK_D channels (of one group) x one chunk of L, and walks the chunk in blocks of BLOCK_L steps:
per block it loads [BLOCK_L, BLOCK_D] tiles of u, delta, z and [BLOCK_L, BLOCK_N] tiles of B, C -- the pointer tiles
are built from the strides, so Triton coalesces them along whichever axis is contiguous (D in BLD, L in BDL) --
forms the decays a = exp(dt A) and inputs b = dt u B as [BLOCK_L, BLOCK_N, BLOCK_D], and solves h[t] = a[t] h[t-1] +
b[t] over the block with `tl.associative_scan`, continued from the state carried in registers from the previous
block. Segment starts zero the decay (an initial state enters through the start's input), exactly as in chunk.py.
The launcher, chunk planning, summary pass + `chunk_combine_kernel`, last-state and backward-checkpoint buffers are
chunk.py's: this kernel takes the step kernel's arguments and writes the same buffers, so the backward runs after it
unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...utils._config import triton_interpret
from .._launch import autotune as _autotune
from .._launch import linear_recurrence as _linear_recurrence
from .._launch import softplus as _softplus
from .chunk import LOG2E, _A_tile, _channel_block, _segments, is_narrow

__all__ = ["selective_scan_fwd_tiled_kernel"]

# live [BLOCK_L, BLOCK_N, BLOCK_D] fp32 tensors (a, b, their scan, h) must stay in registers: at most this many
# elements of one such tensor per thread
MAX_TILE_ELEMENTS_PER_THREAD = 32
# the narrow family (long step blocks, optionally prefetched) at most this many: sm_90 builds with Triton 3.6 used
# 90-195 registers and no spills at 4-8 elements per thread, 255 registers and 48-656 bytes of spills at 16-32
NARROW_MAX_ELEMENTS_PER_THREAD = 8
NARROW_MIN_BLOCK_L = 64  # narrow configs walk blocks of 64-2048 steps; wide ones 8-32


@triton.jit
def _step_row(x, step, BLOCK_L: tl.constexpr):
    """Row `step` of a [BLOCK_L, BLOCK_N, BLOCK_D] tensor (registers cannot be indexed: a masked sum)."""
    rows = tl.arange(0, BLOCK_L)
    return tl.sum(tl.where((rows == step)[:, None, None], x, 0.0), axis=0)


@triton.jit
def _seq_tile(ptr, offs_t, ch, mask, s_l, s_d):
    """A [BLOCK_L, BLOCK_D] fp32 tile of a (batch, L, D) or (batch, D, L) tensor; 0 outside `mask`."""
    return tl.load(ptr + offs_t[:, None] * s_l + ch[None, :] * s_d, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _bc_tile(ptr, offs_t, offs_n, mask, s_l, s_n):
    """A [BLOCK_L, BLOCK_N] fp32 tile of B or C; 0 outside `mask`."""
    return tl.load(ptr + offs_t[:, None] * s_l + offs_n[None, :] * s_n, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _block_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, offs_t, t_end, ch, mask_d, offs_n, mask_n, su_l, su_d, sdt_l,
                  sdt_d, sB_l, sB_n, sC_l, sC_n, sz_l, sz_d, HAS_Z: tl.constexpr, SUMMARY: tl.constexpr):  # fmt: skip
    """One block's loads, fp32, 0 at steps >= t_end: u, raw delta [BL, BD]; B, C [BL, BN]; z [BL, BD] (C and z only
    when the pass uses them; stand-ins otherwise)."""
    valid = offs_t < t_end
    mask = valid[:, None] & mask_d[None, :]
    mask_tn = valid[:, None] & mask_n[None, :]
    x = _seq_tile(u_ptr, offs_t, ch, mask, su_l, su_d)
    dt = _seq_tile(delta_ptr, offs_t, ch, mask, sdt_l, sdt_d)
    Bt = _bc_tile(B_ptr, offs_t, offs_n, mask_tn, sB_l, sB_n)
    Ct = Bt
    zt = x
    if not SUMMARY:
        Ct = _bc_tile(C_ptr, offs_t, offs_n, mask_tn, sC_l, sC_n)
        if HAS_Z:
            zt = _seq_tile(z_ptr, offs_t, ch, mask, sz_l, sz_d)
    return x, dt, Bt, Ct, zt


def _fwd_configs() -> list[triton.Config]:
    """Wide tiles (BLOCK_D >= 32 channels, short step blocks) for ordinary widths, and narrow ones (BLOCK_D = the
    group's width rounded up to a power of two, long step blocks) for a few channels per group: VMeanba's reduced
    scans have one channel per group (L = 3136 at VMamba-T stage 1), where a 32-wide tile would idle 31 of 32 lanes
    and the step kernel walks thousands of dependent steps; there the parallel axis is L."""
    if triton_interpret():
        return [triton.Config({"BLOCK_L": 8, "BLOCK_D": 16, "PREFETCH": 0}, num_warps=1)] + [
            triton.Config({"BLOCK_L": 16, "BLOCK_D": bd, "PREFETCH": 1}, num_warps=1) for bd in (1, 2, 4, 8)
        ]
    wide = [
        triton.Config({"BLOCK_L": bl, "BLOCK_D": bd, "PREFETCH": 0}, num_warps=w)
        for bl in (8, 16, 32)
        for bd in (32, 64, 128)
        for w in (2, 4, 8)
    ]
    narrow = [
        triton.Config({"BLOCK_L": bl, "BLOCK_D": bd, "PREFETCH": p}, num_warps=w)
        for bl in (NARROW_MIN_BLOCK_L, 128, 256, 512, 1024, 2048)
        for bd in (1, 2, 4, 8, 16, 32)  # 32: groups of 17-31 channels
        for w in (1, 2, 4, 8)
        for p in (0, 1)
    ]
    return wide + narrow


def block_d_for(dim_per_group: int) -> int | None:
    """The channel block a group of `dim_per_group` channels takes: its width rounded up to a power of two when
    narrow, None (autotuned among the wide blocks) otherwise."""
    return triton.next_power_of_2(dim_per_group) if is_narrow(dim_per_group) else None


def _fits_registers(config: triton.Config, nstate: int) -> bool:
    """Whether one [BLOCK_L, BLOCK_N, BLOCK_D] fp32 tensor fits the per-thread budget of its family
    (MAX_TILE_ELEMENTS_PER_THREAD, NARROW_MAX_ELEMENTS_PER_THREAD) and keeps every thread busy."""
    elements = config.kwargs["BLOCK_L"] * triton.next_power_of_2(nstate) * config.kwargs["BLOCK_D"]
    threads = 32 * config.num_warps
    narrow = config.kwargs["BLOCK_L"] >= NARROW_MIN_BLOCK_L
    budget = NARROW_MAX_ELEMENTS_PER_THREAD if narrow else MAX_TILE_ELEMENTS_PER_THREAD
    return threads <= elements <= budget * threads


def _matches_width(config: triton.Config, dim_per_group: int, chunk_len: int) -> bool:
    """Wide tiles for wide groups; for a narrow group, its own channel block and step blocks no longer than the
    chunk needs (the interpreter keeps its one wide tile for groups of 16 channels or more)."""
    block_d, block_l = config.kwargs["BLOCK_D"], config.kwargs["BLOCK_L"]
    narrow = block_d_for(dim_per_group)
    if triton_interpret():
        narrow = narrow if narrow is not None and narrow < 16 else None
        return block_d == (narrow or 16)
    long_blocks = block_l >= NARROW_MIN_BLOCK_L  # the narrow family
    if narrow is None:
        return not long_blocks
    return long_blocks and block_d == narrow and block_l <= max(128, triton.next_power_of_2(chunk_len))


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    dim_per_group, nstate = named_args["Dg"], named_args["NSTATE"]
    chunk_len = named_args.get("chunk_len", 1 << 30)
    shaped = [c for c in configs if _matches_width(c, dim_per_group, chunk_len)] or configs
    fitting = [c for c in shaped if _fits_registers(c, nstate)]
    if fitting:
        return fitting
    # nothing fits (very large N): the smallest tile with the most warps spills least
    return [min(shaped, key=lambda c: (c.kwargs["BLOCK_L"] * c.kwargs["BLOCK_D"], -c.num_warps))]


@_autotune(
    configs=_fwd_configs(),
    key=["Dg", "NSTATE", "chunk_len", "SUMMARY", "su_l"],  # su_l: 1 in BDL, D in BLD (the tile's coalesced axis)
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.heuristics({"BLOCK_N": lambda args: triton.next_power_of_2(args["NSTATE"])})
@triton.jit(do_not_specialize=["L", "seq_len", "nchunks", "ckpt_len"])
def selective_scan_fwd_tiled_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seg_ids_ptr, cu_ptr,
    out_ptr, last_ptr, ckpt_ptr, chunk_P_ptr, chunk_S_ptr,
    L, Dg, NSTATE, seq_len, chunk_len, nchunks, ckpt_len,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, so_b, so_l, so_d,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, RESET: tl.constexpr, STORE_LAST: tl.constexpr, STORE_CKPT: tl.constexpr,
    SUMMARY: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    PREFETCH: tl.constexpr,
):  # fmt: skip
    # Same arguments, grid and buffers as chunk.selective_scan_fwd_kernel (BLOCK_L, and PREFETCH as blocks).
    # SUMMARY pass: the chunk's decay product P and end state S from a zero start; main pass: start from the
    # incoming state (chunk_combine_kernel's), scan the chunk block by block, write y.
    pid_d, pid_b, pid_g, c, D_total, offs_d, mask_d, ch, offs_n, mask_n, mask_dn, state_offs = _channel_block(
        Dg, NSTATE, nchunks, BLOCK_D, BLOCK_N
    )
    STATE = D_total * NSTATE  # one (N, D) state, D contiguous
    A2 = _A_tile(A_ptr, offs_n, ch, NSTATE, mask_dn) * LOG2E
    Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0) if HAS_D else None
    bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0) if HAS_BIAS else None
    u_ptr += pid_b * su_b
    delta_ptr += pid_b * sdt_b
    z_ptr += pid_b * sz_b
    out_ptr += pid_b * so_b
    B_ptr += pid_b * sB_b + pid_g * sB_g
    C_ptr += pid_b * sC_b + pid_g * sC_g
    chunk_base = pid_b * nchunks * STATE
    rows = tl.arange(0, BLOCK_L)
    h_carry = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    decay_carry = tl.full([BLOCK_N, BLOCK_D], 1.0, dtype=tl.float32)
    if not SUMMARY:
        h_carry = tl.load(chunk_S_ptr + chunk_base + c * STATE + state_offs, mask=mask_dn & (c > 0), other=0.0)
    t_start = c * chunk_len
    t_end = tl.minimum(t_start + chunk_len, L)
    # PREFETCH: the next block's loads are issued before this block's scan (narrow groups walk few, long blocks, each
    # otherwise waiting on its own loads)
    if PREFETCH:
        ahead = _block_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, t_start + rows, t_end, ch, mask_d, offs_n, mask_n,
                              su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sz_l, sz_d, HAS_Z, SUMMARY)  # fmt: skip
    for t0 in range(t_start, t_end, BLOCK_L):
        offs_t = t0 + rows
        valid = offs_t < t_end
        mask = valid[:, None] & mask_d[None, :]  # [BL, BD]
        if PREFETCH:
            x, dt, Bt, Ct, zt = ahead
            ahead = _block_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, offs_t + BLOCK_L, t_end, ch, mask_d, offs_n,
                                  mask_n, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sz_l, sz_d, HAS_Z,
                                  SUMMARY)  # fmt: skip
        else:
            x, dt, Bt, Ct, zt = _block_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, offs_t, t_end, ch, mask_d, offs_n,
                                              mask_n, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sz_l, sz_d,
                                              HAS_Z, SUMMARY)  # fmt: skip
        if HAS_BIAS:
            dt += bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask, dt, 0.0)  # steps past the chunk: a = 1, b = 0 (identities), so the last row is the end
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])  # [BL, BN, BD]
        b = (dt * x)[:, None, :] * Bt[:, :, None]
        seg, start, end = _segments(offs_t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
        start = start & valid
        start3 = start[:, None, None]
        if HAS_H0:  # the state before a segment enters through its first step
            mask_h0 = start3 & mask_dn[None, :, :]
            h0 = tl.load(h0_ptr + seg[:, None, None] * STATE + state_offs[None, :, :], mask=mask_h0, other=0.0)
            b += dA * h0
        a = tl.where(start3, 0.0, dA)  # a segment start forgets the carried state
        a_cum, h_local = tl.associative_scan((a, b), 0, _linear_recurrence)
        h = h_local + a_cum * h_carry[None, :, :]  # [BL, BN, BD]: the state after every step of the block
        h_carry = _step_row(h, BLOCK_L - 1, BLOCK_L)
        if SUMMARY:
            decay_carry *= _step_row(a_cum, BLOCK_L - 1, BLOCK_L)
        else:
            y = tl.sum(h * Ct[:, :, None], axis=1)  # [BL, BD]
            if HAS_D:
                y += x * Dv[None, :]
            if HAS_Z:
                y *= zt * tl.sigmoid(zt)
            tl.store(out_ptr + offs_t[:, None] * so_l + ch[None, :] * so_d, y.to(out_ptr.dtype.element_ty), mask=mask)
            if STORE_LAST:
                last_offs = seg[:, None, None] * STATE + state_offs[None, :, :]
                tl.store(last_ptr + last_offs, h, mask=(end & valid)[:, None, None] & mask_dn[None, :, :])
            if STORE_CKPT:  # the state after every ckpt_len steps, for the backward
                is_ckpt = (((offs_t + 1) % ckpt_len == 0) | (offs_t == L - 1)) & valid
                ckpt_row = pid_b * tl.cdiv(L, ckpt_len) + offs_t // ckpt_len
                ckpt_offs = ckpt_row[:, None, None] * STATE + state_offs[None, :, :]
                tl.store(ckpt_ptr + ckpt_offs, h, mask=is_ckpt[:, None, None] & mask_dn[None, :, :])
    if SUMMARY:
        offs = chunk_base + c * STATE + state_offs
        tl.store(chunk_P_ptr + offs, decay_carry, mask=mask_dn)
        tl.store(chunk_S_ptr + offs, h_carry, mask=mask_dn)
