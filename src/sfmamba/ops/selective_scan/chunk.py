"""Triton selective scan: forward and backward kernels, launchers, and the torch.library op with its autograd.

Design (why): a vision scan is short (L = 49..3136) and its state small (N = 1..16), so each program keeps the
whole state of BLOCK_D channels in registers -- in the forward a tuple of N [BLOCK_D] rows, so the state index lives
inside a thread and a step costs N exp2 + 3N FMA/FMUL and no shuffles -- and walks time sequentially. Short sequences alone leave the GPU idle, so L is
split into chunks processed in parallel in two passes: a summary pass computes each chunk's decay product and end
state from a zero start, the main pass folds the earlier chunks into its incoming state and scans its chunk.
Segment starts (periodic `seq_len` for folded images, packed `cu_seqlens`) zero the decay, which resets the state
exactly, so folded images never mix. With autograd the forward also checkpoints the state every
`bwd_chunk_for(N, dtype)` steps; the backward runs the same two-pass scheme in reverse over those chunks,
recomputing each chunk's states into a [chunk, N, BLOCK_D] register tile so that the reverse walk can read them.
"""

from __future__ import annotations

import copy
from collections.abc import Collection

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...utils._config import scan_bc_sum, scan_bwd_kernel, scan_fwd_kernel, triton_interpret
from .._launch import FAST_MATH, LOG2E
from .._launch import autotune as _autotune
from .._launch import bc_strides as _bc_strides
from .._launch import fast_exp2 as _exp2
from .._launch import launch as _launch_kernel
from .._launch import needs_grad as _needs_grad
from .._launch import on_device as _on_device
from .._launch import prefetch_l1 as _prefetch_l1
from .._launch import prefetch_l2 as _prefetch_l2
from .._launch import scan_shape as _shape
from .._launch import sm_count as _sm_count
from .._launch import softplus as _softplus
from .._launch import x_strides as _x_strides
from .._transpose import transpose_copy
from .partials import sum_partials

RESET_NONE, RESET_PERIODIC, RESET_VARLEN = 0, 1, 2
# the interpreter runs no inline PTX: the kernels' PTX pieces (lane ids, shuffles, vector loads) take Triton ops there
_INTERPRETED = tl.constexpr(triton_interpret())  # read at import, as Triton reads TRITON_INTERPRET
NAN_WORD = tl.constexpr(0x7FC07FC0)  # a NaN as one fp32 or as two bf16 (fp16: 0x7FC0 is NaN too)


# checkpoint lengths (bwd_chunk_for) whose training forward walks whole checkpoint blocks (the step kernel's
# CKPT_BLOCKS): H100, (128, 160, 196, 8), the best of the ring, SPLIT2 and BD32 P4 U4 42.2 -> 38.1 us bf16, 58.2 ->
# 44.6 fp32 (benchmarks/results/s24_20261205). 16 steps (N = 1-4): H100, VMamba's (128, 384, 3136, 1, G = 4) bf16,
# the 8-step ring 539.9 -> 509.2 us (benchmarks/results/s31_20261206/call2; sm_90 fp32 N = 1: 119 -> 55 stall cycles
# per step). N = 16 (4 steps) keeps per-step stores: blocks helped the rings deeper than 2 steps there (fp32 BD32 P4
# U4 172.5 -> 101.2 us at (128, 160, 196, 16), bf16 SPLIT2 88.6 -> 106.8), which `prune_fwd_configs` drops at N = 16
# (`CKPT_BLOCK_MAX_NSTATE`). 4 steps (fp32 at N = 5-8): as timed in session 36 (`bwd_chunk_for`)
CKPT_BLOCK_LENS = (4, 8, 16)
CKPT_BLOCK_MAX_NSTATE = 8


def walks_ckpt_blocks(nstate: int, ckpt_len: int) -> bool:
    """Whether a training forward at state size `nstate` checkpointing every `ckpt_len` steps walks whole blocks."""
    return ckpt_len in CKPT_BLOCK_LENS and nstate <= CKPT_BLOCK_MAX_NSTATE


forced_bwd_chunk: int | None = None  # steps per checkpoint chunk, for sweeps (None: bwd_chunk_for's own)


def bwd_chunk_for(nstate: int, dtype: torch.dtype) -> int:
    """Steps per backward program for inputs of `dtype`. The forward checkpoints the state every this many steps; the
    backward keeps one chunk's states in registers ([chunk, N, BLOCK_D]), so the chunk shrinks as N grows, and unrolls
    the chunk (`MAX_UNROLL`), so it is at most 16 steps: N = 1 and 2 had 64 and 32, whose dynamic loops paid a select
    per stored state per step (sm_90 build, N = 1: 684 instructions per step for 32 channels, mostly ISETP/FSEL; 228
    now). fp32 inputs at N = 5-8 take 4 steps, not 8: H100 session 36 (benchmarks/results/s36_20261207, fwd+bwd, CUDA
    graphs, the SPLIT 2 backward, each checked against the fp32 reference), (128, 160, 196, 8) 225.1 -> 191.9 us,
    (128, 320, 49, 8) 117.1 -> 99.4 (with KEEP_DT, `keeps_dt`), for twice the checkpoints (16.4 -> 32.8 MB at L = 196):
    the 8-step chunk spilled (sm_90, cap 168, per 8 steps: 2148 -> 1884 instructions, 4874 -> 3966 stall cycles,
    140 spilled bytes -> none). bf16 lost there (171.5 -> 183.5 us, 87.8 -> 90.8): 16-bit inputs keep 8 steps.
    `forced_bwd_chunk` overrides it."""
    if forced_bwd_chunk is not None:
        return forced_bwd_chunk
    if dtype == torch.float32 and 4 < nstate <= 8:
        return 4
    return max(4, min(16, 64 // triton.next_power_of_2(nstate)))


@triton.jit
def _segments(t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET: tl.constexpr):
    """Segment index, is-first-step and is-last-step of every position in `t` (positions >= L are masked)."""
    inside = t < L
    if RESET == 0:
        seg = t * 0 + pid_b
        start = t == 0
        end = t == L - 1
    elif RESET == 1:
        per_row = L // seq_len
        seg = pid_b * per_row + t // seq_len
        start = (t % seq_len) == 0
        end = (t % seq_len) == seq_len - 1
    else:
        seg = tl.load(seg_ids_ptr + t, mask=inside, other=0)
        start = t == tl.load(cu_ptr + seg, mask=inside, other=-1)
        end = (t + 1) == tl.load(cu_ptr + seg + 1, mask=inside, other=-1)
    return seg, start & inside, end & inside


@triton.jit
def _channel_block(Dg, NSTATE, nchunks, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's place in the scan grid (channel blocks, groups x chunks, images) and its index vectors:
    pid_b, pid_g, chunk c, D_total, channels offs_d/mask_d/ch [BD], states offs_n/mask_n [BN], mask_dn and
    state_offs [BN, BD] (offsets within one (N, D) state: D contiguous)."""
    pid_d, pid_gc, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pid_g, c = pid_gc // nchunks, pid_gc % nchunks
    D_total = Dg * (tl.num_programs(1) // nchunks)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dg
    ch = pid_g * Dg + offs_d
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NSTATE
    mask_dn = mask_n[:, None] & mask_d[None, :]
    state_offs = offs_n[:, None] * D_total + ch[None, :]
    return pid_d, pid_b, pid_g, c, D_total, offs_d, mask_d, ch, offs_n, mask_n, mask_dn, state_offs


@triton.jit
def _load_step(u_ptr, delta_ptr, t, ch, mask_d, su_l, su_d, sdt_l, sdt_d, bias,
               HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):  # fmt: skip
    """u, raw step (after bias) and effective step of one time step, [BLOCK_D] fp32 each."""
    x = tl.load(u_ptr + t * su_l + ch * su_d, mask=mask_d, other=0.0).to(tl.float32)
    raw = tl.load(delta_ptr + t * sdt_l + ch * sdt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias
    dt = _softplus(raw) if SOFTPLUS else raw
    return x, raw, dt


@triton.jit
def _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t, valid, ch, mask_d, offs_n, NSTATE, su_l, su_d,
                sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d, HAS_Z: tl.constexpr,
                NEED_B: tl.constexpr):  # fmt: skip
    """The backward's loads for step t (masked off unless `valid`), fp32: u, raw delta, dout, z [BD]; B, C [BN]."""
    mask_d = mask_d & valid
    mask_n = (offs_n < NSTATE) & valid
    x = tl.load(u_ptr + t * su_l + ch * su_d, mask=mask_d, other=0.0).to(tl.float32)
    raw = tl.load(delta_ptr + t * sdt_l + ch * sdt_d, mask=mask_d, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + t * sC_l + offs_n * sC_n, mask=mask_n, other=0.0).to(tl.float32)
    Bt = Ct
    if NEED_B:
        Bt = tl.load(B_ptr + t * sB_l + offs_n * sB_n, mask=mask_n, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + t * sdo_l + ch * sdo_d, mask=mask_d, other=0.0).to(tl.float32)
    zt = dout
    if HAS_Z:
        zt = tl.load(z_ptr + t * sz_l + ch * sz_d, mask=mask_d, other=0.0).to(tl.float32)
    return x, raw, Bt, Ct, dout, zt


@triton.jit
def _prefetch_bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t, valid, ch, mask_d, su_l, su_d, sdt_l,
                         sdt_d, sB_l, sC_l, sdo_l, sdo_d, sz_l, sz_d, HAS_Z: tl.constexpr):  # fmt: skip
    """Start pulling step t's backward inputs into L1 (where `valid`): the lines `_bwd_inputs` will load."""
    mask_d = mask_d & valid
    _prefetch_l1(u_ptr + t * su_l + ch * su_d, mask_d)
    _prefetch_l1(delta_ptr + t * sdt_l + ch * sdt_d, mask_d)
    _prefetch_l1(dout_ptr + t * sdo_l + ch * sdo_d, mask_d)
    if HAS_Z:
        _prefetch_l1(z_ptr + t * sz_l + ch * sz_d, mask_d)
    _prefetch_l1(B_ptr + t * sB_l, valid)  # a step's N values are adjacent (one line)
    _prefetch_l1(C_ptr + t * sC_l, valid)


@triton.jit
def _prefetch_chunk_before(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0, more, ch, mask_d, su_l, su_d, sdt_l,
                           sdt_d, sB_l, sC_l, sdo_l, sdo_d, sz_l, sz_d, HAS_Z: tl.constexpr, CHUNK: tl.constexpr,
                           BLOCK_D: tl.constexpr, NEXT_TO_L1: tl.constexpr):  # fmt: skip
    """Start pulling the backward inputs of the CHUNK steps before t0 into L1 (if `more`). NEXT_TO_L1 1: one hint per
    tensor and step, every lane at its own channel of that step (32 lanes, one or two lines); 2: one hint per tensor
    for the whole chunk, lane l at step t0 - CHUNK + l % CHUNK (the lanes of a step are every CHUNK-th channel of the
    block, which with 32 lanes and chunks of 4-16 steps reach every line of a block's row unless a line holds fewer
    than CHUNK of its channels). sm_90, Triton 3.6, the ROWS backward per 8-step chunk: 3529 -> 3402 instructions,
    7259 -> 6627 stall cycles (SPLIT2: 2233 -> 2103, 4756 -> 4351)."""
    if NEXT_TO_L1 == 2:
        tl.static_assert(BLOCK_D >= CHUNK, "NEXT_TO_L1 2: a lane per step of the chunk")
        steps = t0 - CHUNK + tl.arange(0, BLOCK_D) % CHUNK
        _prefetch_bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, steps, more, ch, mask_d, su_l, su_d,
                             sdt_l, sdt_d, sB_l, sC_l, sdo_l, sdo_d, sz_l, sz_d, HAS_Z)  # fmt: skip
    else:
        for k in tl.static_range(CHUNK):
            _prefetch_bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0 - CHUNK + k, more, ch, mask_d,
                                 su_l, su_d, sdt_l, sdt_d, sB_l, sC_l, sdo_l, sdo_d, sz_l, sz_d, HAS_Z)  # fmt: skip


@triton.jit
def _bwd_step(raw, dout, zt, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr):
    """Raw step after bias, effective step, and the gradient reaching y (dout * silu(z) with a gate), [BD] each."""
    if HAS_BIAS:
        raw += bias
    dt = _softplus(raw) if SOFTPLUS else raw
    dy = dout * zt * tl.sigmoid(zt) if HAS_Z else dout
    return raw, dt, dy


@triton.jit
def _load_words(ptr, valid, WORDS: tl.constexpr):
    """WORDS (1, 2 or 4) 32-bit words at the WORDS x 4-byte aligned `ptr` by one read-only (vector) load, as a tuple of
    int32s; where not `valid` nothing is read (the words are then undefined). The interpreter, which runs no inline
    PTX, reads the same words one by one and gives NaN words where not `valid` (both bf16 halves and the fp32 word
    NaN): a kernel that computes with them fails its CPU tests, as it can on the GPU (session 24's masked training
    forward: 0 x an undefined B_t gave NaN in bf16 on an H100 while the interpreter's zeros passed)."""
    tl.static_assert(WORDS == 1 or WORDS == 2 or WORDS == 4, "loads of B/C words take 4, 8 or 16 bytes")
    if _INTERPRETED:
        word_ptr = ptr.to(tl.pointer_type(tl.int32), bitcast=True)
        words = ()
        for j in tl.static_range(WORDS):
            words = words + (tl.load(word_ptr + j, mask=valid, other=NAN_WORD),)
    elif WORDS == 4:
        words = tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $5, 0; @p ld.global.nc.v4.b32 {$0, $1, $2, $3}, [$4]; }",
            "=r,=r,=r,=r,l,r", [ptr, valid.to(tl.int32)], dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True,
            pack=1)  # fmt: skip
    elif WORDS == 2:
        words = tl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $3, 0; @p ld.global.nc.v2.b32 {$0, $1}, [$2]; }",
                                          "=r,=r,l,r", [ptr, valid.to(tl.int32)], dtype=(tl.int32, tl.int32),
                                          is_pure=True, pack=1)  # fmt: skip
    else:
        words = (tl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $2, 0; @p ld.global.nc.b32 $0, [$1]; }",
                                           "=r,l,r", [ptr, valid.to(tl.int32)], dtype=tl.int32, is_pure=True,
                                           pack=1),)  # fmt: skip
    return words


@triton.jit
def _state_vector(ptr, valid, COUNT: tl.constexpr):
    """COUNT contiguous values at `ptr` (a step's B or C, or a lane's share of it) as a tuple of fp32 values, read by
    vector loads (`VECTOR_BC`: 1 load and 8 shifts for N = 8 in bf16, instead of 8 loads, conversions and addresses):
    16-byte loads, or one 8- or 4-byte load for a share of 8 or 4 bytes; `ptr` aligned to the loads' width."""
    WIDE: tl.constexpr = ptr.dtype.element_ty == tl.float32
    WORDS: tl.constexpr = COUNT if WIDE else COUNT // 2  # 32-bit words in all
    PER_LOAD: tl.constexpr = 4 if WORDS >= 4 else WORDS
    tl.static_assert(WORDS >= 1 and WORDS % PER_LOAD == 0, "B/C vector loads: 4 or 8 bytes, or whole 16-byte words")
    values = ()
    for i in tl.static_range(WORDS // PER_LOAD):
        words = _load_words(ptr + i * (PER_LOAD if WIDE else 2 * PER_LOAD), valid, PER_LOAD)
        for j in tl.static_range(PER_LOAD):
            if WIDE:
                values = values + (words[j].to(tl.float32, bitcast=True),)
            elif ptr.dtype.element_ty == tl.bfloat16:  # a bf16 is the top half of its fp32
                values = values + ((words[j] << 16).to(tl.float32, bitcast=True),
                                   (words[j] & -65536).to(tl.float32, bitcast=True))  # fmt: skip
            else:
                low = words[j].to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
                values = values + (low, (words[j] >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32))
    return values


@triton.jit
def _fwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, t, valid, ch, mask_d, NSTATE, su_l, su_d, sdt_l, sdt_d, sB_l,
                sB_n, sC_l, sC_n, sz_l, sz_d, HAS_Z: tl.constexpr, SUMMARY: tl.constexpr, BLOCK_N: tl.constexpr,
                VECTOR_BC: tl.constexpr):  # fmt: skip
    """The forward's loads for step t (all masked off unless `valid`): `_fwd_loads` at step t's addresses."""
    return _fwd_loads(u_ptr + t * su_l + ch * su_d, delta_ptr + t * sdt_l + ch * sdt_d, B_ptr + t * sB_l,
                      C_ptr + t * sC_l, z_ptr + t * sz_l + ch * sz_d, mask_d, valid, NSTATE, sB_n, sC_n, HAS_Z,
                      SUMMARY, BLOCK_N, VECTOR_BC)  # fmt: skip


@triton.jit
def _fwd_loads(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, mask_d, valid, NSTATE, sB_n, sC_n, HAS_Z: tl.constexpr,
               SUMMARY: tl.constexpr, BLOCK_N: tl.constexpr, VECTOR_BC: tl.constexpr,
               STREAM: tl.constexpr = 0):  # fmt: skip
    """One step's forward inputs from pointers at that step (u, delta, z: [BD] channel pointers; B, C: at the step's
    first state), fp32: u, raw delta, z [BD] (z only when used; masked channels read 0); B_t and C_t (C_t only when
    used) as tuples of BLOCK_N values: one load each at the same address in every thread (masked off unless `valid`),
    or by vector loads (VECTOR_BC; predicated off unless `valid`). u, delta and z as `_stream_load` reads them."""
    x = _stream_load(u_ptr, mask_d & valid, STREAM).to(tl.float32)
    dt = _stream_load(delta_ptr, mask_d & valid, STREAM).to(tl.float32)
    if VECTOR_BC:
        Bs = _state_vector(B_ptr, valid, BLOCK_N)
        Cs = ()
        if not SUMMARY:
            Cs = _state_vector(C_ptr, valid, BLOCK_N)
    else:
        Bs = ()
        Cs = ()
        for n in tl.static_range(BLOCK_N):
            mask_n = valid & (n < NSTATE)
            Bs = Bs + (tl.load(B_ptr + n * sB_n, mask=mask_n, other=0.0).to(tl.float32),)
            if not SUMMARY:
                Cs = Cs + (tl.load(C_ptr + n * sC_n, mask=mask_n, other=0.0).to(tl.float32),)
    zt = x
    if HAS_Z and not SUMMARY:
        zt = _stream_load(z_ptr, mask_d & valid, STREAM).to(tl.float32)
    return x, dt, Bs, Cs, zt


@triton.jit
def _stream_load(ptr, mask, STREAM: tl.constexpr):
    """A load of a tensor each of whose values one lane reads once (u, delta, z), masked values 0. STREAM: 0 plain;
    1 marked first to evict (L1 and L2; a GPU config for fp32 inputs, `streams`); 2 cached in L2 only (.cg), so that
    B_t/C_t, which every channel of a warp reads, keep L1 to themselves (tied plain on the H100, session 32)."""
    return tl.load(ptr, mask=mask, other=0.0, cache_modifier=".cg" if STREAM == 2 else "",
                   eviction_policy="evict_first" if STREAM == 1 else "")  # fmt: skip


@triton.jit
def _stream_store(ptr, value, mask, STREAM: tl.constexpr):
    """A store of values nothing in the kernel reads again (y): STREAM 1 marked first to evict, 2 streaming (.cs)."""
    tl.store(ptr, value, mask=mask, cache_modifier=".cs" if STREAM == 2 else "",
             eviction_policy="evict_first" if STREAM == 1 else "")  # fmt: skip


@triton.jit
def _prefetch_row(ptr, valid, first, Dg, BLOCK_D: tl.constexpr):
    """Hint L1 to pull the adjacent values of channels first .. first + BLOCK_D - 1 (< Dg) from `ptr` on (one step's
    channels; where `valid`): one hint per 128-byte line, the same in every thread (one per element costs an
    instruction per element)."""
    PER_LINE: tl.constexpr = 128 // (4 if ptr.dtype.element_ty == tl.float32 else 2)
    for k in tl.static_range((BLOCK_D + PER_LINE - 1) // PER_LINE):
        _prefetch_l1(ptr + k * PER_LINE, valid & (first + k * PER_LINE < Dg))


@triton.jit
def _prefetch_block_l2(ptrs, lanes, sizes, strides, t, t_end, HAS_Z: tl.constexpr, BLOCK_D: tl.constexpr,
                       SPLIT: tl.constexpr, STEPS: tl.constexpr):  # fmt: skip
    """Hint L2 to pull the u, delta (and z) rows of steps t .. t + STEPS - 1 (< t_end) for this program's channels,
    one 128-byte line per lane (the forward kernel's `ptrs`, `lanes`, `sizes`, `strides` tuples)."""
    u_ptr, delta_ptr, z_ptr, _, _, _, _, _ = ptrs
    _, _, _, _, _, ch_first, _, _, _, _ = lanes
    _, Dg, _, _, pid_d, _, _ = sizes
    su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, _, _, _, _, _, _ = strides
    PER_LINE: tl.constexpr = 128 // (4 if u_ptr.dtype.element_ty == tl.float32 else 2)
    LINES: tl.constexpr = (BLOCK_D + PER_LINE - 1) // PER_LINE  # lines per step of one tensor
    tl.static_assert(STEPS * LINES <= BLOCK_D * SPLIT, "L2_AHEAD: a lane per line of a block's rows")
    lane = tl.arange(0, BLOCK_D * SPLIT)
    step = t + lane // LINES
    channel = lane % LINES * PER_LINE
    mask = (lane < STEPS * LINES) & (step < t_end) & (pid_d * BLOCK_D + channel < Dg)
    _prefetch_l2(u_ptr + step * su_l + (ch_first + channel) * su_d, mask)
    _prefetch_l2(delta_ptr + step * sdt_l + (ch_first + channel) * sdt_d, mask)
    if HAS_Z:
        _prefetch_l2(z_ptr + step * sz_l + (ch_first + channel) * sz_d, mask)


@triton.jit
def _split_channels(pid_d, pid_g, Dg, D_total, NSTATE, BLOCK_D: tl.constexpr, ROWS: tl.constexpr,
                    SPLIT: tl.constexpr):  # fmt: skip
    """The lanes when SPLIT (2 or 4) adjacent lanes of one warp share each of its BLOCK_D channels, lane k of a
    channel holding its states n0 = k x ROWS .. (k + 1) x ROWS - 1: per lane [BD x SPLIT] its channel, channel mask,
    n0, its first state row's offset in an (N, D) state, the states left from n0 on, and whether it is the lane that
    stores the channel's own values (n0 = 0)."""
    tl.static_assert((SPLIT == 2 or SPLIT == 4) and BLOCK_D * SPLIT == 32,
                     "SPLIT: 2 or 4 lanes per channel, one warp of 32 lanes")  # fmt: skip
    tl.static_assert(ROWS >= 1, "SPLIT: needs N >= SPLIT (a share of the states per lane)")
    lane = _lane_id(BLOCK_D * SPLIT)  # from the hardware: the shuffle pairs lanes, whatever the tensor's layout
    offs_d = pid_d * BLOCK_D + lane // SPLIT
    mask_d = offs_d < Dg
    ch = pid_g * Dg + offs_d
    n0 = (lane % SPLIT) * ROWS
    return ch, mask_d, n0, ch + n0 * D_total, NSTATE - n0, mask_d & (n0 == 0)


@triton.jit
def _split_sum(x, SPLIT: tl.constexpr):
    """The sum of x over the SPLIT lanes sharing a channel (butterfly shuffles: every lane gets the same sum)."""
    x += _lane_shuffle(x, 1)
    if SPLIT > 2:
        x += _lane_shuffle(x, 2)
    return x


@triton.jit
def _state_rows(ptr, base, D_total, ch, mask, NSTATE, BLOCK_N: tl.constexpr):
    """One (N, D) fp32 state at `base` as a tuple of BLOCK_N [BD] rows (masked-off rows and channels are 0)."""
    rows = ()
    for n in tl.static_range(BLOCK_N):
        rows = rows + (tl.load(ptr + base + n * D_total + ch, mask=mask & (n < NSTATE), other=0.0),)
    return rows


@triton.jit
def _store_state_rows(ptr, base, D_total, ch, mask, NSTATE, rows, BLOCK_N: tl.constexpr):
    for n in tl.static_range(BLOCK_N):
        tl.store(ptr + base + n * D_total + ch, rows[n], mask=mask & (n < NSTATE))


@triton.jit
def _select_rows(cond, rows_if, rows_else, BLOCK_N: tl.constexpr):
    """Row-wise `where(cond, rows_if, rows_else)` of two state tuples."""
    out = ()
    for n in tl.static_range(BLOCK_N):
        out = out + (tl.where(cond, rows_if[n], rows_else[n]),)
    return out


@triton.jit
def _A_tile(A_ptr, offs_n, ch, NSTATE, mask_dn):
    """The [BN, BD] tile of A at states offs_n and channels ch; A stays in its own (D, N) form (no transposed copy
    per call)."""
    return tl.load(A_ptr + offs_n[:, None] + ch[None, :] * NSTATE, mask=mask_dn, other=0.0)


@triton.jit
def _A_rows(A_ptr, ch, n0, mask, nleft, NSTATE, ROWS: tl.constexpr):
    """A's states n0 .. n0 + ROWS - 1 of channels ch as a tuple of [BD] rows (`_state_rows` over A's (D, N) form)."""
    return _state_rows(A_ptr, 0, 1, ch * NSTATE + n0, mask, nleft, ROWS)


@triton.jit
def _zero_rows_where(cond, rows, BLOCK_N: tl.constexpr):
    """Row-wise `where(cond, 0, rows)` of a state tuple (a segment start forgets the carried state)."""
    out = ()
    for n in tl.static_range(BLOCK_N):
        out = out + (tl.where(cond, 0.0, rows[n]),)
    return out


def _fwd_configs() -> list[triton.Config]:
    """One-warp programs of 32 or 64 channels with loads 2-4 steps ahead (PREFETCH) and the step loop unrolled 1 or 4
    times (UNROLL); BLOCK_D 128 (one or two warps) with one-step loads, for long rows split into many chunks.
    H200, 2026-12-04 (benchmarks/results/s17_20261204/call2-4, B_t/C_t by 16-byte loads): (128, 160, 196, 8) bf16
    33.9 us at BLOCK_D 64 / PREFETCH 4 / UNROLL 4; fp32 48.5 at BLOCK_D 32 / PREFETCH 2 / UNROLL 4 with L1 hints 16
    steps ahead (AHEAD; 65.1 without, 53.9 for the bf16 pick; the hints cost bf16 2-4 us); (128, 320, 49, 8) bf16 14.7
    at BLOCK_D 32 / PREFETCH 2 / UNROLL 4, fp32 13.6 with AHEAD 16 (14.1 without). A ring 8 steps deep (PREFETCH 8,
    UNROLL 8, BLOCK_D 32: 216-220 registers, no spills, once the tuple state freed them; session 12's tile state
    spilled) is the best at L = 196 (H200, session 20, benchmarks/results/s20_20261205/): fp32 41.7 us against the
    autotuner's former pick 49.0, bf16 33.0 against 34.0 (L2 flushed 40.5 against 52.7); at L = 49 bf16 14.6 against
    14.9 (fp32 keeps AHEAD 16: 13.8 against 16.9). Two lanes per channel (SPLIT 2, BLOCK_D 16, 8-step ring: 1280
    one-warp programs at L = 196 instead of 640, 156-162 registers) wins fp32 at L = 196 (H100, session 23,
    benchmarks/results/s23_20261205/: 39.2 us against the ring's 47.3; bf16 32.6 against 32.4, L2 flushed 36.2
    against 42.4; L = 49 ties). Its L2 hints 32 steps ahead (L2_AHEAD) take fp32 at L = 196 from 37.2 to 33.6 us
    (H100, session 27, benchmarks/results/s27_20261206/; bf16 31.6 against 30.9, L = 49 15.3 against 14.8: the
    autotuner picks per shape). Capped at 168 registers (3 one-warp programs per scheduler: L = 196's 1280 in one
    wave), with the step strides bound, fp32 at L = 196 takes 31.7 us against 33.8 unbound uncapped (H100, session 29,
    benchmarks/results/s29_20261206/; bound uncapped: 181-185 registers, 57.5-62.0 us), L = 49 13.5 against 15.4.
    The hints' depth (H100, session 30, benchmarks/results/s30_20261206/call1, fp32, cap 168): 16 / 32 / 48 / 64 steps
    ahead 31.3 / 31.8 / 33.0 / 34.4 us at L = 196, 13.6 / 14.5 / 14.8 / 14.9 at L = 49 (cap 160: 0.3-0.8 us slower).
    The same ring with u/delta/z loads and y's store marked first to evict (STREAM 1): fp32 at L = 196 28.6 us against
    31.5 (H100, session 32, benchmarks/results/s32_20261206/call1; L2 flushed 33.7 against 33.4; L = 49 14.3 against
    13.4; bf16 29.8 against 27.9 at L = 196): timed for fp32 inputs only, the autotuner picking per shape.
    `prune_fwd_configs` keeps rings deeper than 2 steps to N <= 8."""
    if triton_interpret():
        return [triton.Config({"BLOCK_D": 16, "PREFETCH": 1, "UNROLL": 1}, num_warps=1)]
    ring = [
        triton.Config({"BLOCK_D": bd, "PREFETCH": p, "UNROLL": u}, num_warps=1)
        for bd in (32, 64)
        for p in (2, 4)
        for u in (1, 4)
    ]
    hinted = [  # L1 hints AHEAD steps ahead: more loads in flight where DRAM latency bounds (fp32 at L = 196)
        triton.Config({"BLOCK_D": 32, "PREFETCH": 2, "UNROLL": 4, "AHEAD": 16}, num_warps=1),
        triton.Config({"BLOCK_D": 64, "PREFETCH": 4, "UNROLL": 4, "AHEAD": 8}, num_warps=1),
    ]
    split = {"BLOCK_D": 16, "PREFETCH": 8, "UNROLL": 8, "SPLIT": 2}
    deep = [
        triton.Config({"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}, num_warps=1),
        triton.Config(split, num_warps=1, maxnreg=168),
        triton.Config({**split, "L2_AHEAD": 16}, num_warps=1, maxnreg=168),
        triton.Config({**split, "L2_AHEAD": 16, "STREAM": 1}, num_warps=1, maxnreg=168),
    ]
    wide = [triton.Config({"BLOCK_D": 128, "PREFETCH": 1, "UNROLL": 1}, num_warps=w) for w in (1, 2)]
    return ring + hinted + deep + wide


def prune_fwd_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Above N = 8, drop the rings more than 2 steps deep: each thread holds PREFETCH steps of B_t and C_t (N values
    each) besides its N state values, so at N = 16 BLOCK_D 64 / PREFETCH 4 / UNROLL 4 spills 320 bytes, and the
    unrolled deep rings take minutes to build (sm_90, Triton 3.8, 2 CPU cores, training flags: N = 16 PREFETCH 2 /
    UNROLL 4 25 s, 197 registers; PREFETCH 4 at BLOCK_D 64 36 s; on an H200's host, N = 16 with UNROLL 4 did not
    finish 6 configs in 370 s, session 20). SPLIT configs (lanes sharing a channel's states) need a state row per
    lane and one warp; a list of only SPLIT configs that do not fit runs them unsplit. STREAM configs run with fp32
    inputs only (`streams`). Every other case keeps every config."""
    args = {**named_args, **kwargs}
    nstate = args.get("NSTATE", 0)
    configs = _fitting_splits(configs, nstate)
    configs = [c for c in configs if _ring_fits(c, nstate)] or configs
    return [c for c in configs if streams(args) or not c.kwargs.get("STREAM")] or configs


def streams(args: dict) -> bool:
    """Whether a forward launch with these arguments times the STREAM configs (u, delta, z and y marked first to
    evict): with fp32 inputs (`u_ptr`), where they won on the H100 at L = 196; 16-bit inputs lost (session 32)."""
    return _input_dtype(args) == torch.float32


def _input_dtype(args: dict) -> torch.dtype | None:
    """The dtype of a launch's inputs (its `u_ptr` tensor; None where the arguments have none, as in tests)."""
    return getattr(args.get("u_ptr"), "dtype", None)


def fwd_config_kept(config: triton.Config, nstate: int) -> bool:
    """Whether `prune_fwd_configs` keeps the forward `config` at state size `nstate` among other configs that fit
    (the autotuner prunes only lists of two or more configs: a config forced alone is built as it is)."""
    return split_fits(config, nstate) and _ring_fits(config, nstate)


def _ring_fits(config: triton.Config, nstate: int) -> bool:
    """A ring more than 2 steps deep only up to N = 8, SPLIT or not. A SPLIT lane holds N / 2 states and as many
    values of each step's B_t and C_t, so its registers would fit at N = 16 (sm_90 build of the training forward,
    fp16: Triton 3.6 23.4 s, as long as the N = 8 ring's 22.6 s), but at N = 16 it is untimed and passed only one of
    `check_scan_fwd_configs.py`'s two cases on the GPU (fp32 with cu_seqlens; the fp16 one never finished, for any
    config: session 23 cut it at 150 s and 400 s)."""
    return nstate <= 8 or config.kwargs["PREFETCH"] <= 2


def split_fits(config: triton.Config, nstate: int) -> bool:
    """A SPLIT config (SPLIT lanes sharing a channel's states) needs a state row per lane (next_power_of_2(N) >=
    SPLIT) and one warp."""
    split = config.kwargs.get("SPLIT", 1)
    return split == 1 or (triton.next_power_of_2(nstate) >= split and config.num_warps == 1)


def _fitting_splits(configs: list[triton.Config], nstate: int) -> list[triton.Config]:
    """The configs whose SPLIT fits `nstate` (forward and backward alike), or, where none does, all of them unsplit."""
    return [c for c in configs if split_fits(c, nstate)] or [_unsplit(c) for c in configs]


def _unsplit(config: triton.Config) -> triton.Config:
    """`config` with one channel per lane on the same lanes."""
    return _with_kwargs(config, BLOCK_D=config.kwargs["BLOCK_D"] * config.kwargs.get("SPLIT", 1), SPLIT=1)


def _with_kwargs(config: triton.Config, **changes) -> triton.Config:
    """A copy of `config` with these meta-parameters changed (the autotuner's list keeps the original)."""
    changed = copy.copy(config)
    changed.kwargs = {**config.kwargs, **changes}
    return changed


def sweep_fwd_configs(
    prefetch: tuple[int, ...], unroll: tuple[int, ...], blocks: tuple[int, ...], warps: tuple[int, ...]
) -> list[triton.Config]:
    """Every forward config of the given settings (for experiments: `benchmarks/ops/experiments/scan_configs.py`)."""
    return [
        triton.Config({"BLOCK_D": bd, "PREFETCH": p, "UNROLL": u}, num_warps=w)
        for bd in blocks
        for w in warps
        for p in prefetch
        for u in unroll
        if bd >= 32 * w or w == 1
    ]


@_autotune(
    configs=_fwd_configs(),
    key=["Dg", "NSTATE", "chunk_len", "SUMMARY", "STORE_CKPT"],
    warm_l2=True,
    prune_configs_by={"early_config_prune": prune_fwd_configs},
)
@triton.heuristics({"BLOCK_N": lambda args: triton.next_power_of_2(args["NSTATE"])})
@triton.jit(do_not_specialize=["L", "seq_len", "nchunks"])
def selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seg_ids_ptr, cu_ptr,
    out_ptr, last_ptr, ckpt_ptr, chunk_P_ptr, chunk_S_ptr,
    L, Dg, NSTATE, seq_len, chunk_len, nchunks, ckpt_len: tl.constexpr,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, so_b, so_l, so_d,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, RESET: tl.constexpr, STORE_LAST: tl.constexpr, STORE_CKPT: tl.constexpr,
    SUMMARY: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr,
    UNROLL: tl.constexpr = 1, VECTOR_BC: tl.constexpr = 0, AHEAD: tl.constexpr = 0, SPLIT: tl.constexpr = 1,
    CKPT_BLOCKS: tl.constexpr = 0, L2_AHEAD: tl.constexpr = 0, L_STRIDE: tl.constexpr = 0,
    BC_L_STRIDE: tl.constexpr = 0, Z_L_STRIDE: tl.constexpr = 0, STREAM: tl.constexpr = 0,
):  # fmt: skip
    # One program: one image, BLOCK_D channels of one group, one chunk of `chunk_len` steps, walked sequentially
    # with the whole state in registers as a tuple of N [BLOCK_D] rows: every tensor is 1-D over the channels, so no
    # step needs a shuffle or a layout conversion, and y's sum over N is a chain of FMAs inside each thread (a
    # [N, BLOCK_D] tile was laid out with N across lanes at BLOCK_D 64: 16 shuffles and 17 layout conversions per
    # step on sm_90; H200: 43.7 -> 38.5 us at (128, 160, 196, 8) bf16, benchmarks/results/s17_20261204/call1).
    # SUMMARY pass: the chunk's decay product P and end state S from a zero start; scan pass: fold the earlier
    # chunks' (P, S) into the incoming state, then scan the chunk and write y.
    # SPLIT 2 (4): two (four) adjacent lanes share a channel, each holding a half (quarter) of its N states (twice
    # (four times) the warps per scheduler, at that share of the state work each; y's shares meet by 1 (2) shuffles)
    # L_STRIDE (u, delta, out), Z_L_STRIDE, BC_L_STRIDE: `step_strides` (sm_90 bf16 per 8 steps, stall cycles: ring
    # 1193 -> 1104, SPLIT 2 787 -> 749, the training ring 1656 -> 1245)
    if L_STRIDE:
        su_l, sdt_l, so_l = L_STRIDE, L_STRIDE, L_STRIDE
    if Z_L_STRIDE:
        sz_l = Z_L_STRIDE
    if BC_L_STRIDE:
        sB_l, sC_l = BC_L_STRIDE, BC_L_STRIDE
    pid_d, pid_b, pid_g, c, D_total, _, mask_d, ch, _, _, _, _ = _channel_block(Dg, NSTATE, nchunks, BLOCK_D, BLOCK_N)
    ROWS: tl.constexpr = BLOCK_N // SPLIT  # state rows per thread
    state_ch, nleft, y_mask, n0 = ch, NSTATE, mask_d, 0  # a thread's first state row (offsets in an (N, D) state)
    if SPLIT > 1:
        ch, mask_d, n0, state_ch, nleft, y_mask = _split_channels(pid_d, pid_g, Dg, D_total, NSTATE, BLOCK_D, ROWS,
                                                                  SPLIT)  # fmt: skip
        B_ptr += n0 * sB_n  # each lane's share of B_t and C_t
        C_ptr += n0 * sC_n
    ch_first = pid_g * Dg + pid_d * BLOCK_D
    Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0) if HAS_D else None
    bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0) if HAS_BIAS else None
    u_ptr += pid_b * su_b
    delta_ptr += pid_b * sdt_b
    z_ptr += pid_b * sz_b
    out_ptr += pid_b * so_b
    B_ptr += pid_b * sB_b + pid_g * sB_g
    C_ptr += pid_b * sC_b + pid_g * sC_g
    STATE = D_total * NSTATE
    A = _A_rows(A_ptr, ch, n0, mask_d, nleft, NSTATE, ROWS)
    chunk_base = pid_b * nchunks * STATE
    zero = tl.zeros([BLOCK_D * SPLIT], dtype=tl.float32)
    # the state entering this chunk (chunk_combine_kernel turned the summaries into incoming states); 0 for the first
    h = _state_rows(chunk_S_ptr, chunk_base + c * STATE, D_total, state_ch, mask_d & (c > 0) & (not SUMMARY), nleft,
                    ROWS)  # fmt: skip
    A2 = ()
    decay = ()
    for n in tl.static_range(ROWS):
        A2 = A2 + (A[n] * LOG2E,)
        decay = decay + (zero + 1.0,)
    t_start = c * chunk_len
    t_end = tl.minimum(t_start + chunk_len, L)
    # PREFETCH = k: step t + k's loads are issued before step t's math, from a ring of the next k steps' loads (the
    # loop waits on load latency: one step of math at the few warps per scheduler these grids leave covers a fraction
    # of an L2 round trip, let alone a DRAM one)
    # CKPT_BLOCKS (the launcher's flag: every chunk starts at a multiple of ckpt_len): the training forward walks its
    # chunk in whole checkpoint blocks, then the steps left
    BLOCKS: tl.constexpr = STORE_CKPT and CKPT_BLOCKS and not SUMMARY
    ring = ()
    for i in tl.static_range(PREFETCH):
        ring = ring + (_fwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, t_start + i, t_start + i < t_end, ch, mask_d,
                                   nleft, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sz_l, sz_d, HAS_Z,
                                   SUMMARY, ROWS, VECTOR_BC),)  # fmt: skip
    # The loads walk their row pointers one step at a time: ptxas then advances each channel pointer by one IMAD.WIDE
    # per step instead of t x stride, its sign extension and scaling (IMAD + LEA + LEA.HI.X) per load; sm_90, the
    # 8-step ring: 815 -> 688 instructions per 8 steps. (Walked pointers of channels lose their layout: BLOCK_D 64
    # then converts layouts; a loop that stops PREFETCH steps early plus a loop that drains the ring costs register
    # moves for every drained step: +5 % over a whole 49-step row.) Past the chunk's end the pointers run on
    # unread: those loads are masked, and B_t/C_t's vector loads predicated.
    rows = (u_ptr + (t_start + PREFETCH) * su_l, delta_ptr + (t_start + PREFETCH) * sdt_l,
            z_ptr + (t_start + PREFETCH) * sz_l, B_ptr + (t_start + PREFETCH) * sB_l,
            C_ptr + (t_start + PREFETCH) * sC_l, out_ptr + t_start * so_l)  # fmt: skip
    # what every step reads besides its own loads (tuples: one argument list for both loops below)
    ptrs = (u_ptr, delta_ptr, z_ptr, h0_ptr, seg_ids_ptr, cu_ptr, last_ptr, ckpt_ptr)
    lanes = (A2, Dv, bias, zero, ch, ch_first, mask_d, y_mask, state_ch, nleft)
    sizes = (L, Dg, seq_len, pid_b, pid_d, D_total, STATE)
    strides = (su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, so_l, so_d, sB_l, sB_n, sC_l, sC_n)
    # L2_AHEAD (steps, a multiple of the block): walk in blocks, each of which first hints L2 to pull the u, delta
    # (and z) rows L2_AHEAD steps on, one 128-byte line per lane: one instruction per tensor and block, where the
    # per-step L1 hints (AHEAD) take one per tensor and step. The ring then waits on L2, not on DRAM (ncu, H100,
    # session 24: the 8-step ring's top stalls were fixed-latency waits and long_scoreboard, 0.80 and 0.75 per issue)
    L2_BLOCK: tl.constexpr = 8  # steps per block of the L2_AHEAD walk (one L2 hint per tensor and block)
    WALK: tl.constexpr = ckpt_len if BLOCKS else L2_BLOCK if L2_AHEAD else 0  # steps per unrolled block
    tl.static_assert(L2_AHEAD % L2_BLOCK == 0, "L2_AHEAD: a multiple of L2_BLOCK steps")
    t_blocks = t_start  # the end of the steps walked in whole blocks
    if WALK:
        # each block of WALK steps (a compile-time power of two) unrolled whole; BLOCKS: each of ckpt_len steps, its
        # checkpoint stored after it. (The per-step branch of the loop below, where ptxas predicates every step's
        # checkpoint stores and their addresses: sm_90, the 8-step ring, 1053 against 688 instructions per 8 steps
        # without checkpoints; H100, (128, 160, 196, 8), 77.1 us against 32.8, benchmarks/results/s24_20261205.)
        t_blocks = t_start + (t_end - t_start) // WALK * WALK
        for k in tl.static_range(L2_AHEAD // L2_BLOCK):  # the first L2_AHEAD steps' rows, before the walk
            _prefetch_block_l2(ptrs, lanes, sizes, strides, t_start + k * L2_BLOCK, t_end, HAS_Z and not SUMMARY,
                               BLOCK_D, SPLIT, L2_BLOCK)  # fmt: skip
        for t0 in tl.range(t_start, t_blocks, WALK):
            if L2_AHEAD:
                _prefetch_block_l2(ptrs, lanes, sizes, strides, t0 + L2_AHEAD, t_end, HAS_Z and not SUMMARY, BLOCK_D,
                                   SPLIT, WALK)  # fmt: skip
            for i in tl.static_range(WALK):  # (checkpoints per step where the blocks are not checkpoint blocks)
                h, decay, ring, rows = _fwd_step(t0 + i, t_end, h, decay, ring, rows, ptrs, lanes, sizes, strides,
                                                 ckpt_len, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, RESET,
                                                 STORE_LAST, STORE_CKPT and not SUMMARY and not BLOCKS, SUMMARY,
                                                 BLOCK_D, ROWS, PREFETCH, VECTOR_BC, AHEAD, SPLIT,
                                                 STREAM)  # fmt: skip
            if BLOCKS:
                _store_state_rows(ckpt_ptr, (pid_b * tl.cdiv(L, ckpt_len) + t0 // ckpt_len) * STATE, D_total,
                                  state_ch, mask_d, nleft, h, ROWS)  # fmt: skip
    # UNROLL > 1: ptxas interleaves consecutive steps' math (only h carries over a step); one warp per scheduler then
    # issues back to back instead of waiting out one step's chain of exp2/softplus latencies. After whole blocks
    # (WALK): the row's last steps (fewer than a block: one step per iteration), their checkpoint stored at L - 1
    LOOP_UNROLL: tl.constexpr = 1 if WALK else UNROLL
    for t in tl.range(t_blocks, t_end, loop_unroll_factor=LOOP_UNROLL):
        h, decay, ring, rows = _fwd_step(t, t_end, h, decay, ring, rows, ptrs, lanes, sizes, strides, ckpt_len, HAS_D,
                                         HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, RESET, STORE_LAST,
                                         STORE_CKPT and not SUMMARY, SUMMARY, BLOCK_D, ROWS, PREFETCH, VECTOR_BC, AHEAD,
                                         SPLIT, STREAM)  # fmt: skip
    if SUMMARY:
        _store_state_rows(chunk_P_ptr, chunk_base + c * STATE, D_total, state_ch, mask_d, nleft, decay, ROWS)
        _store_state_rows(chunk_S_ptr, chunk_base + c * STATE, D_total, state_ch, mask_d, nleft, h, ROWS)


@triton.jit
def _fwd_step(t, t_end, h, decay, ring, rows, ptrs, lanes, sizes, strides, ckpt_len: tl.constexpr,
              HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              HAS_H0: tl.constexpr, RESET: tl.constexpr, STORE_LAST: tl.constexpr, STORE_CKPT: tl.constexpr,
              SUMMARY: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, PREFETCH: tl.constexpr,
              VECTOR_BC: tl.constexpr, AHEAD: tl.constexpr, SPLIT: tl.constexpr,
              STREAM: tl.constexpr = 0):  # fmt: skip
    """One step of the forward: step t + PREFETCH's loads issued, step t's state update, y stored (or the chunk's
    decay product, SUMMARY), and with STORE_CKPT the state where a checkpoint block ends. `rows`: the (u, delta, z,
    B, C) pointers at step t + PREFETCH and out's at step t; `ring`: the steps loaded ahead; `ptrs`, `lanes`,
    `sizes`, `strides`: as the kernel packs them."""
    u_ptr, delta_ptr, z_ptr, h0_ptr, seg_ids_ptr, cu_ptr, last_ptr, ckpt_ptr = ptrs
    A2, Dv, bias, zero, ch, ch_first, mask_d, y_mask, state_ch, nleft = lanes
    L, Dg, seq_len, pid_b, pid_d, D_total, STATE = sizes
    su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, so_l, so_d, sB_l, sB_n, sC_l, sC_n = strides
    u_row, delta_row, z_row, B_row, C_row, out_row = rows
    if AHEAD:  # hints that pull step t + AHEAD's rows towards L1 without holding registers
        ahead = t + AHEAD < t_end
        row = t + AHEAD
        _prefetch_row(u_ptr + row * su_l + ch_first * su_d, ahead, pid_d * BLOCK_D, Dg, BLOCK_D)
        _prefetch_row(delta_ptr + row * sdt_l + ch_first * sdt_d, ahead, pid_d * BLOCK_D, Dg, BLOCK_D)
        if HAS_Z and not SUMMARY:
            _prefetch_row(z_ptr + row * sz_l + ch_first * sz_d, ahead, pid_d * BLOCK_D, Dg, BLOCK_D)
    fresh = _fwd_loads(u_row + ch * su_d, delta_row + ch * sdt_d, B_row, C_row, z_row + ch * sz_d, mask_d,
                       t + PREFETCH < t_end, nleft, sB_n, sC_n, HAS_Z, SUMMARY, ROWS, VECTOR_BC, STREAM)  # fmt: skip
    rows = (u_row + su_l, delta_row + sdt_l, z_row + sz_l, B_row + sB_l, C_row + sC_l, out_row + so_l)
    if PREFETCH:
        x, dt, Bs, Cs, zt = ring[0]
        ring = ring[1:] + (fresh,)
    else:
        x, dt, Bs, Cs, zt = fresh
    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        dt = _softplus(dt)
    seg, start, end = _segments(t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
    if HAS_H0:  # the state before a segment enters through its first step
        h0 = _state_rows(h0_ptr, seg * STATE, D_total, state_ch, mask_d & start, nleft, ROWS)
        h = _select_rows(start, h0, h, ROWS)
    elif RESET != 0:  # without resets only t = 0 starts a segment, where h is still the zero it began as
        h = _zero_rows_where(start, h, ROWS)
    dtx = dt * x
    y = x * Dv if HAS_D and SPLIT == 1 else zero
    new_h = ()
    new_decay = ()
    for n in tl.static_range(ROWS):
        dA = _exp2(dt * A2[n])
        h_n = dA * h[n] + dtx * Bs[n]
        new_h = new_h + (h_n,)
        if SUMMARY:
            decay_n = decay[n] * dA
            if RESET != 0:
                decay_n = tl.where(start, 0.0, decay_n)
            new_decay = new_decay + (decay_n,)
        else:
            y += h_n * Cs[n]
    h = new_h
    if SUMMARY:
        decay = new_decay
    else:
        if SPLIT > 1:  # the other shares' sums, from the partner lanes
            y = _split_sum(y, SPLIT)
            if HAS_D:
                y += x * Dv
        if HAS_Z:
            y *= zt * tl.sigmoid(zt)
        _stream_store(out_row + ch * so_d, y.to(out_row.dtype.element_ty), y_mask, STREAM)
        if STORE_LAST:
            _store_state_rows(last_ptr, seg * STATE, D_total, state_ch, mask_d & end, nleft, h, ROWS)
        if STORE_CKPT:  # noqa: SIM102 (a compile-time branch around a run-time one)
            # the state after every ckpt_len steps, for the backward (ptxas predicates these stores in every step:
            # the kernel's BLOCKS walk avoids that); no division (ckpt_len: a compile-time power of two)
            if ((t + 1) % ckpt_len == 0) | (t == L - 1):
                base = (pid_b * tl.cdiv(L, ckpt_len) + t // ckpt_len) * STATE
                _store_state_rows(ckpt_ptr, base, D_total, state_ch, mask_d, nleft, h, ROWS)
    return h, decay, ring, rows


@triton.jit
def chunk_combine_kernel(decay_ptr, value_ptr, nchunks, width, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    # Per-chunk summaries [batch, nchunks, width] -> what enters each chunk, in place of `value`:
    #   entering_c = decay_{c'} * entering_{c'} + value_{c'} for the chunk c' walked just before c, zero for the first.
    # Forward: chunks in order (decay P, zero-start end state S). Backward (REVERSE): from the last chunk (decay Q,
    # zero-start state gradient X). One sequential pass: O(nchunks) instead of every chunk re-folding its
    # predecessors. The next chunk's loads go out before this chunk's store (they cannot move above a store to the
    # same buffer by themselves), so the pass waits on one load latency in total, not one per chunk.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < width
    base = tl.program_id(1).to(tl.int64) * nchunks * width
    entering = tl.zeros([BLOCK], dtype=tl.float32)
    ptrs = base + (nchunks - 1 if REVERSE else 0) * width + offs
    decay = tl.load(decay_ptr + ptrs, mask=mask, other=0.0)
    value = tl.load(value_ptr + ptrs, mask=mask, other=0.0)
    for i in range(nchunks):
        c_next = nchunks - 2 - i if REVERSE else i + 1
        next_ptrs = base + c_next * width + offs
        more = mask & (i + 1 < nchunks)
        decay_next = tl.load(decay_ptr + next_ptrs, mask=more, other=0.0)
        value_next = tl.load(value_ptr + next_ptrs, mask=more, other=0.0)
        tl.store(value_ptr + ptrs, entering, mask=mask)
        entering = decay * entering + value
        ptrs, decay, value = next_ptrs, decay_next, value_next


def combine_chunks(decay: Tensor, value: Tensor, reverse: bool) -> None:
    """In place: `value` [batch, nchunks, ...] becomes what enters each chunk (see `chunk_combine_kernel`)."""
    batch, nchunks = value.shape[:2]
    width = value[0, 0].numel()
    block = 64 if triton_interpret() else 256
    _launch_kernel(
        chunk_combine_kernel, (triton.cdiv(width, block), batch), decay, value, nchunks, width, REVERSE=reverse,
        BLOCK=block,
    )  # fmt: skip


def _bwd_configs() -> list[triton.Config]:
    if triton_interpret():
        return [
            triton.Config({"BLOCK_D": 16, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": 0, "TILES": 1}, num_warps=1)
        ]
    # One warp, loads prefetched a step ahead: on an H200 (fwd+bwd at (128, 160, 196, 8), CUDA graphs,
    # benchmarks/results/bwd_configs_20261202T172028.json) every PREFETCH 0 config lost 10-20 % to its PREFETCH 1
    # twin and two warps lost 25 %, yet the autotuner, timing the kernel alone, picked such configs (516 us instead
    # of 348 us in bf16). Each pulls the next chunk into L1 ahead (NEXT_TO_L1; H200, session 13 call 3,
    # (128, 160, 196, 8) bf16 whole rows: 353.3 -> 343.9 us at BLOCK_D 32). Session 14 call 1 (same shape): BLOCK_D 64
    # 434.1 us (spills), BRANCHLESS (steps past the row's end masked, not branched) 443.1 us against 335.1. TILES:
    # the chunk's states as a tuple of [BN, BD] tiles in the layout of the step's math, instead of a [CHUNK, BN, BD]
    # tensor converted through shared memory every step (sm_90 build: 3880 instead of 4496 instructions per 8-step
    # chunk, no spills); session 14 call 2, same shape: bf16 330.0 -> 307.7 us, fp32 310.6 -> 285.7 (BLOCK_D 64 with
    # TILES: 369.3, spills). In the interpreter the L1 hint is a no-op. ROWS: every state a tuple of N [BD] rows and
    # the channel sums by butterfly shuffles; H200 session 19 (benchmarks/results/s19_20261205/, CUDA graphs,
    # fwd+bwd, each checked against the fp32 reference): bf16 (128, 160, 196, 8) 248.9 vs TILES 276.7 us, (128, 320,
    # 49, 8) 116.7 vs 130.7; fp32 259.0 vs 258.6 and 125.7 vs 124.4 (the autotuner keeps TILES there).
    # `prune_bwd_configs` keeps ROWS to N <= 8 and out of initial-state launches. H100 session 26
    # (benchmarks/results/s26_20261206/call2, fwd+bwd at (128, 160, 196, 8), CUDA graphs, each checked): the next
    # chunk's L1 hints as one instruction per tensor (NEXT_TO_L1 2) bf16 ROWS 248.6 -> 230.1 us, fp32 TILES 259.6 ->
    # 243.1; ROWS with 2 lanes per channel (SPLIT 2, BLOCK_D 16) capped at 168 registers (no spills in bf16; 12 warps
    # per SM hold L = 196's 1280 programs in one wave, 2.4 per scheduler) bf16 183.0, fp32 234.4 (uncapped: 274.2 /
    # 306.0, the programs in two waves; 200 registers: 271.8 / 300.7). SPLIT 4 lost (session 24). KEEP_DT (the forward
    # sweep keeps each step's dt; H100 session 30, benchmarks/results/s30_20261206/, fwd+bwd per config at (128, 160,
    # 196, 8) / (128, 320, 49, 8)): bf16 178.6 -> 174.3 / 93.7 -> 90.8 us, fp32 225.6 -> 242.0 / 118.6 -> 125.4 (it
    # spills more there): `prune_bwd_configs` keeps it to 16-bit inputs without a gate (and, since session 36, fp32's
    # 4-step chunks). CKPT_AHEAD (each chunk's checkpoint loaded by the chunk after it; H100 session 36,
    # benchmarks/results/s36_20261207/call9, fwd+bwd at (128, 160, 196, 8)): bf16 171.2 -> 168.4 us (L2 flushed 174.0
    # -> 168.9), fp32 192.8 -> 193.1; sm_90 bf16 163 -> 168 registers, no spills, 2051 -> 2065 instructions per chunk.
    # INPUT_RING 2 (each step's inputs loaded two steps ahead): kept to fp32's 4-step chunks (`rings_two_steps`).
    tiles = [
        triton.Config({"BLOCK_D": 32, "PREFETCH": 1, "NEXT_TO_L1": 2, "BRANCHLESS": 0, "TILES": tiles}, num_warps=1)
        for tiles in (1, 0)
    ]
    rows = triton.Config({"BLOCK_D": 32, "PREFETCH": 1, "NEXT_TO_L1": 2, "BRANCHLESS": 0, "ROWS": 1}, num_warps=1)
    split = triton.Config({"BLOCK_D": 16, "PREFETCH": 1, "NEXT_TO_L1": 2, "BRANCHLESS": 0, "ROWS": 1, "SPLIT": 2,
                           "KEEP_DT": 1, "CKPT_AHEAD": 1, "INPUT_RING": 2}, num_warps=1, maxnreg=168)  # fmt: skip
    return [rows, split, *tiles]


def prune_bwd_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The backward's configs worth building for a launch (each rule drops nothing where it would leave none):
    - up to N = 8, not the [CHUNK, N, BD] state tensor (TILES 0): its chunk is unrolled there as TILES 1's is, and the
      tuple of tiles won or tied wherever both were timed (sm_90: 3880 instead of 4496 instructions per 8-step chunk;
      H200 fwd+bwd: (128, 160, 196, 8) bf16 307.7 vs 330.0 us, session 14; (128, 384, 3136, 1, G = 4) bf16 2917.5 vs
      2903.2 us, fp32 3701.7 vs 3697.4, session 21's `scan-tiles-n1`): one config fewer to build on first use;
    - not ROWS where an initial state is given: its masked steps with the initial state's row selects take ~10
      minutes to build for sm_90 (Triton 3.8, 2 CPU cores; TILES 50 s), for a case the models never hit
      (`benchmarks/ops/experiments/scan_compile_times.py`); nor above N = 8, where its unrolled chunk of N rows per
      state would not fit the registers (the chunk is unrolled whatever UNROLL says);
    - SPLIT (ROWS with 2 or 4 lanes per channel) only where each lane gets a row of the states (a list of only SPLIT
      configs runs them unsplit, as the forward's pruning does);
    - at N = 5-8 (the models' N = 8) only the SPLIT ROWS configs, where they are left: they were the pick of every H100
      timing through the op since session 26 (both MambaVision-T shapes and dtypes), and the one time the autotuner,
      timing the kernel alone, picked TILES instead it cost 27 % (session 34, (128, 320, 49, 8) bf16 fwd+bwd 117.0 us
      against session 31's 91.9); a single config also skips the autotuner's timing runs on first use;
    - KEEP_DT and INPUT_RING 2 only where they won (`keeps_dt`, `rings_two_steps`); elsewhere their configs run
      without them (KEEP_DT 0, INPUT_RING 1)."""
    args = {**named_args, **kwargs}
    nstate = args.get("NSTATE", 0)
    configs = _fitting_splits(configs, nstate)
    for flag, kept, off in (("KEEP_DT", keeps_dt(args), 0), ("INPUT_RING", rings_two_steps(args), 1)):
        if not kept:
            configs = [_with_kwargs(c, **{flag: off}) if c.kwargs.get(flag, off) != off else c for c in configs]
    small = nstate <= 8
    if args.get("HAS_H0") or not small:
        configs = [c for c in configs if not c.kwargs.get("ROWS")] or configs
    if small:
        configs = [c for c in configs if c.kwargs.get("ROWS") or c.kwargs.get("TILES", 0)] or configs
    if 4 < nstate <= 8:
        configs = [c for c in configs if c.kwargs.get("ROWS") and c.kwargs.get("SPLIT", 1) > 1] or configs
    return configs


def keeps_dt(args: dict) -> bool:
    """Whether a backward launch with these arguments keeps each step's dt (KEEP_DT): with 16-bit inputs (`u_ptr`) or
    4-step chunks (`CHUNK`; fp32 at N = 5-8), and no gate. H100 session 30, fwd+bwd in 8-step chunks: bf16 gains 3-4
    us, fp32 loses 7-16 (spills); session 36, fp32 in 4-step chunks (no spills): (128, 160, 196, 8) 194.7 -> 191.9 us,
    (128, 320, 49, 8) 101.3 -> 99.4. With a gate the sm_90 build spills more (bf16 56 -> 88 bytes, session 29's static
    counts) and the models' scans pass none."""
    narrow = _input_dtype(args) in (torch.float16, torch.bfloat16)
    return (narrow or args.get("CHUNK") == 4) and not args.get("HAS_Z")


def rings_two_steps(args: dict) -> bool:
    """Whether a backward launch with these arguments loads each step's inputs two steps ahead (INPUT_RING 2): fp32
    inputs (`u_ptr`) in 4-step chunks (`CHUNK`: N = 5-8), no gate. H100 session 37 (benchmarks/results/s37_20261207,
    fwd+bwd through the op, CUDA graphs, the default SPLIT config, each checked): fp32 (128, 160, 196, 8) 192.8 ->
    185.9 us, (128, 320, 49, 8) 101.0 -> 98.2 (sm_90, cap 168: 164 registers, no spills); bf16 lost in 8-step chunks
    (167.1 -> 185.1, 18 bytes spilled) and in 4-step ones (182.1 -> 187.3). With a gate it is untimed."""
    return _input_dtype(args) == torch.float32 and args.get("CHUNK") == 4 and not args.get("HAS_Z")


MAX_UNROLL = 16  # the backward's main pass unrolls chunks up to this many steps (bwd_chunk_for's largest); a longer
# chunk would stay a loop: its unrolled code would outgrow the instruction cache. N > 8 stays a loop too: at N = 16 the
# kernel spills either way (sm_90, 32 channels per warp: 144 bytes as a loop, 376 unrolled)


@_autotune(
    configs=_bwd_configs(),
    key=["Dg", "NSTATE", "CHUNK", "SUMMARY", "span", "HAS_H0", "ATOMIC_BC", "HAS_Z"],  # (HAS_Z: KEEP_DT's pruning)
    prune_configs_by={"early_config_prune": prune_bwd_configs},
    # the timing runs of a new key add into ATOMIC_BC's sums too: zeroed before each and after the last (the launch
    # then starts from zeros); on a disk-cache hit nothing is timed or zeroed. (Without ATOMIC_BC each timing run
    # then includes zeroing the partials too, the same for every config.)
    reset_to_zero=["dB_ptr", "dC_ptr"],
)
@triton.heuristics({
    "BLOCK_N": lambda args: triton.next_power_of_2(args["NSTATE"]),
    "UNROLL": lambda args: args["CHUNK"] if args["CHUNK"] <= MAX_UNROLL and args["NSTATE"] <= 8 else 1,
    # with an initial state, always masked steps: Triton 3.8 (not 3.6) fails to build the branched ones when an
    # initial state, a gate and a last-state gradient meet (remove-layout-conversions leaves mismatched layouts
    # across a step's scf.if); initial states are rare (folding resets states instead)
    "BRANCHLESS": lambda args: int(args["BRANCHLESS"] or args["HAS_H0"]),
})  # fmt: skip
@triton.jit(do_not_specialize=["L", "seq_len", "nchunks", "n_ckpt", "span"])
def selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seg_ids_ptr, cu_ptr,
    ckpt_ptr, dout_ptr, dlast_ptr, sum_X_ptr, sum_Q_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, Dg, NSTATE, seq_len, nchunks, batch, n_ckpt, span,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, sdo_b, sdo_l, sdo_d, sg_b, sg_l, sg_d,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, RESET: tl.constexpr, HAS_DLAST: tl.constexpr, SUMMARY: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr,
    UNROLL: tl.constexpr, NEXT_TO_L1: tl.constexpr = 0, BRANCHLESS: tl.constexpr = 0, TILES: tl.constexpr = 0,
    ROWS: tl.constexpr = 0, VECTOR_BC: tl.constexpr = 0, SPLIT: tl.constexpr = 1, ATOMIC_BC: tl.constexpr = 0,
    L_STRIDE: tl.constexpr = 0, BC_L_STRIDE: tl.constexpr = 0, Z_L_STRIDE: tl.constexpr = 0,
    DOUT_L_STRIDE: tl.constexpr = 0, KEEP_DT: tl.constexpr = 0, CKPT_AHEAD: tl.constexpr = 0,
    INPUT_RING: tl.constexpr = 1, BC_TOGETHER: tl.constexpr = 0,
):  # fmt: skip
    # One program: one image, BLOCK_D channels, one span of `span` chunks of CHUNK steps (the forward checkpointed
    # the state at every chunk end; `n_ckpt` chunks per row, `nchunks` spans). The state gradient runs backwards:
    #   dh_t = g_t + a_{t+1} dh_{t+1},  g_t = dy_t C_t (+ dlast at a segment end),  a_t = 0 at a segment start.
    # SUMMARY pass: each span's dh at its first step from a zero start (X) and the decay across it (Q).
    # Main pass: fold the later spans' (X, Q) into dh after the span; then, chunk by chunk from the span's last,
    # recompute the chunk's states forwards from the forward's checkpoint, keeping them in registers, and walk the
    # chunk backwards producing the gradients, carrying dh into the chunk before.
    # Partials (dB/dC per channel block, dA/dD/dbias per span) are summed by `partials.sum_partials`: deterministic.
    # ATOMIC_BC (`atomic_bc_sums`: SFMAMBA_SCAN_BC_SUM=atomic, or auto with fp32 inputs; never under
    # torch.use_deterministic_algorithms): the channel blocks add their dB/dC sums into one zeroed block of the
    # partials by fp32 atomics instead, so `sum_partials` reads one block, not Dg / BLOCK_D (10 at (128, 160, 196, 8)
    # with SPLIT 2: 16 MB written and read back, 13 us of a 183 us fwd+bwd, session 27)
    # SPLIT 2 or 4 (ROWS main pass only; the SUMMARY pass keeps one lane per channel): SPLIT adjacent lanes share a
    # channel, each holding a share of its N states, as in the forward: SPLIT times the programs, a share of the
    # state work per lane; the per-channel sums over N (y, ddt, du) meet by log2(SPLIT) shuffles each, and the lane
    # holding the first share stores them.
    # L_STRIDE (u, delta, and du, ddelta, dz), Z_L_STRIDE, DOUT_L_STRIDE, BC_L_STRIDE: `step_strides` (sm_90, SPLIT 2
    # at 168 registers, bf16: 2680 -> 2472 instructions and 5267 -> 4808 stall cycles per 8-step chunk; the backward
    # issues ~2/3 of its time)
    if L_STRIDE:
        su_l, sdt_l, sg_l = L_STRIDE, L_STRIDE, L_STRIDE
    if Z_L_STRIDE:
        sz_l = Z_L_STRIDE
    if DOUT_L_STRIDE:
        sdo_l = DOUT_L_STRIDE
    if BC_L_STRIDE:
        sB_l, sC_l = BC_L_STRIDE, BC_L_STRIDE
    pid_d, pid_b, pid_g, c, D_total, offs_d, mask_d, ch, offs_n, mask_n, mask_dn, state_offs = _channel_block(
        Dg, NSTATE, nchunks, BLOCK_D, BLOCK_N
    )
    R: tl.constexpr = BLOCK_N // SPLIT  # ROWS: state rows per lane
    state_ch, nleft, lead, n0 = ch, NSTATE, mask_d, 0  # a lane's first state row (offsets in an (N, D) state)
    tl.static_assert(ROWS != 0 or not BC_TOGETHER, "BC_TOGETHER: ROWS backward only")
    if SPLIT > 1:
        tl.static_assert(ROWS != 0, "SPLIT: ROWS backward only")
        if not SUMMARY:
            ch, mask_d, n0, state_ch, nleft, lead = _split_channels(pid_d, pid_g, Dg, D_total, NSTATE, BLOCK_D, R,
                                                                    SPLIT)  # fmt: skip
            B_ptr += n0 * sB_n  # each lane's share of B_t and C_t
            C_ptr += n0 * sC_n
    n_groups = tl.num_programs(1) // nchunks
    A = _A_tile(A_ptr, offs_n, pid_g * Dg + offs_d, NSTATE, mask_dn)  # the block's channels (before any SPLIT)
    A2 = A * LOG2E
    Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0) if HAS_D else None
    bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0) if HAS_BIAS else None
    u_ptr += pid_b * su_b
    delta_ptr += pid_b * sdt_b
    z_ptr += pid_b * sz_b
    dout_ptr += pid_b * sdo_b
    B_ptr += pid_b * sB_b + pid_g * sB_g
    C_ptr += pid_b * sC_b + pid_g * sC_g
    STATE = D_total * NSTATE
    t0 = c * span * CHUNK
    steps = tl.minimum(span * CHUNK, L - t0)
    # decay into the first step after the span (0 past the end or at a segment start)
    t_next = t0 + steps
    x_next, raw_next, dt_next = _load_step(u_ptr, delta_ptr, t_next, ch, mask_d & (t_next < L), su_l, su_d, sdt_l,
                                           sdt_d, bias, HAS_BIAS, SOFTPLUS)  # fmt: skip
    seg_next, start_next, end_next = _segments(t_next, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
    a_next = dt_next  # a SPLIT main pass (ROWS) decays its own rows; the tile is for one lane per channel
    if SPLIT == 1 or SUMMARY:
        a_next = tl.where(start_next | (t_next >= L), 0.0, _exp2(dt_next[None, :] * A2))
    summary_offs = (pid_b * nchunks + c) * STATE + state_offs

    if SUMMARY:
        dh = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        decay = tl.full([BLOCK_N, BLOCK_D], 1.0, dtype=tl.float32)
        ahead = _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0 + steps - 1, steps > 0, ch, mask_d,
                            offs_n, NSTATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d,
                            HAS_Z, False)  # fmt: skip
        for i in range(steps):
            t = t0 + steps - 1 - i
            if PREFETCH:  # loads of the next step (t - 1) go out before this step's math
                x, raw, Bt, Ct, dout, zt = ahead
                ahead = _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t - 1, i + 1 < steps, ch,
                                    mask_d, offs_n, NSTATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l,
                                    sdo_d, sz_l, sz_d, HAS_Z, False)  # fmt: skip
            else:
                x, raw, Bt, Ct, dout, zt = _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t, True, ch,
                                                       mask_d, offs_n, NSTATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n,
                                                       sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d, HAS_Z, False)  # fmt: skip
            raw, dt, dy = _bwd_step(raw, dout, zt, bias, HAS_BIAS, SOFTPLUS, HAS_Z)
            seg, start, end = _segments(t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
            g = dy[None, :] * Ct[:, None]
            if HAS_DLAST:
                g += tl.load(dlast_ptr + seg * STATE + state_offs, mask=mask_dn & end, other=0.0)
            dh = g + a_next * dh
            decay *= a_next
            a_next = _exp2(dt[None, :] * A2)
            if RESET != 0:  # without resets the decay into t = 0 is never used
                a_next = tl.where(start, 0.0, a_next)
        tl.store(sum_X_ptr + summary_offs, dh, mask=mask_dn)
        tl.store(sum_Q_ptr + summary_offs, decay, mask=mask_dn)
    else:
        # dL/dh at the first step after this span (chunk_combine_kernel folded the later spans' summaries)
        dh = tl.load(sum_X_ptr + summary_offs, mask=mask_dn & (c < nchunks - 1), other=0.0)
        bc_block = 0 if ATOMIC_BC else pid_d  # the block of the dB/dC partials this program writes into
        part_base = ((bc_block * batch + pid_b) * n_groups + pid_g) * L * NSTATE
        rows = tl.arange(0, CHUNK)
        dA_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dD_acc = tl.zeros([BLOCK_D * SPLIT], dtype=tl.float32)
        dbias_acc = tl.zeros([BLOCK_D * SPLIT], dtype=tl.float32)
        span_chunks = tl.cdiv(steps, CHUNK)
        part = (pid_b * nchunks + c) * D_total
        if ROWS:
            dh_rows = _state_rows(sum_X_ptr, (pid_b * nchunks + c) * STATE, D_total, state_ch,
                                  mask_d & (c < nchunks - 1), nleft, R)  # fmt: skip
            A_rows = _A_rows(A_ptr, ch, n0, mask_d, nleft, NSTATE, R)
            A2_rows = ()
            a_rows = ()
            acc_rows = ()
            for n in tl.static_range(R):
                A2_rows = A2_rows + (A_rows[n] * LOG2E,)
                a_rows = a_rows + (tl.where(start_next | (t_next >= L), 0.0, _exp2(dt_next * A2_rows[n])),)
                acc_rows = acc_rows + (dD_acc * 0.0,)
            if CKPT_AHEAD:  # the span's last chunk starts from this checkpoint; each chunk loads the next one's
                last_cc = c * span + span_chunks - 1
                ckpt_rows = _state_rows(ckpt_ptr, (pid_b * n_ckpt + last_cc - 1) * STATE, D_total, state_ch,
                                        mask_d & (last_cc > 0), nleft, R)  # fmt: skip
            else:
                ckpt_rows = acc_rows  # (unused, carried as it came)
            for j in range(span_chunks):
                cc = c * span + span_chunks - 1 - j
                dh_rows, a_rows, acc_rows, dD_acc, dbias_acc, ckpt_rows = _bwd_chunk_rows(
                    u_ptr, delta_ptr, A_rows, A2_rows, B_ptr, C_ptr, Dv, z_ptr, bias, h0_ptr, seg_ids_ptr, cu_ptr,
                    ckpt_ptr, dout_ptr, dlast_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dh0_ptr, dh_rows, a_rows,
                    acc_rows, dD_acc, dbias_acc, ckpt_rows, cc, cc * CHUNK, tl.minimum(CHUNK, L - cc * CHUNK), L,
                    seq_len, pid_b, n_ckpt, D_total, part_base, ch, mask_d, state_ch, nleft, lead, n0, NSTATE, su_l,
                    su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d, sg_b, sg_l, sg_d, sB_l, sB_n, sC_l, sC_n,
                    j + 1 < span_chunks,
                    HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, RESET, HAS_DLAST, CHUNK, BLOCK_D * SPLIT, R, NEXT_TO_L1,
                    BRANCHLESS, VECTOR_BC, (FAST_MATH or EMULATE_LANE_SHUFFLES) and BLOCK_D * SPLIT == 32 and R <= 32,
                    SPLIT, ATOMIC_BC, KEEP_DT, CKPT_AHEAD, INPUT_RING, BC_TOGETHER,
                )  # fmt: skip
            _store_state_rows(dA_ptr, part * NSTATE, D_total, state_ch, mask_d, nleft, acc_rows, R)
        else:
            for j in range(span_chunks):  # the span's chunks, last first; dh and a_next carry into the chunk before
                cc = c * span + span_chunks - 1 - j
                dh, a_next, dA_acc, dD_acc, dbias_acc = _bwd_chunk(
                    u_ptr, delta_ptr, A, A2, B_ptr, C_ptr, Dv, z_ptr, bias, h0_ptr, seg_ids_ptr, cu_ptr, ckpt_ptr,
                    dout_ptr, dlast_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dh0_ptr,
                    dh, a_next, dA_acc, dD_acc, dbias_acc, cc, cc * CHUNK, tl.minimum(CHUNK, L - cc * CHUNK), L,
                    seq_len, pid_b, n_ckpt, STATE, part_base, rows, ch, mask_d, offs_n, mask_n, mask_dn, state_offs,
                    NSTATE, su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d, sg_b, sg_l, sg_d, sB_l, sB_n, sC_l,
                    sC_n, j + 1 < span_chunks, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, RESET, HAS_DLAST, CHUNK,
                    BLOCK_D, BLOCK_N, PREFETCH, UNROLL, NEXT_TO_L1, BRANCHLESS, TILES, ATOMIC_BC,
                )  # fmt: skip
            tl.store(dA_ptr + part * NSTATE + state_offs, dA_acc, mask=mask_dn)
        if HAS_D:
            tl.store(dD_ptr + part + ch, dD_acc, mask=lead)
        if HAS_BIAS:
            tl.store(dbias_ptr + part + ch, dbias_acc, mask=lead)


@triton.jit
def _bwd_chunk(u_ptr, delta_ptr, A, A2, B_ptr, C_ptr, Dv, z_ptr, bias, h0_ptr, seg_ids_ptr, cu_ptr, ckpt_ptr, dout_ptr,
               dlast_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dh0_ptr, dh, a_next, dA_acc, dD_acc, dbias_acc,
               c, t0, steps, L, seq_len, pid_b, n_ckpt, STATE, part_base, rows, ch, mask_d, offs_n, mask_n, mask_dn,
               state_offs, NSTATE, su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d, sg_b, sg_l, sg_d, sB_l, sB_n,
               sC_l, sC_n, more, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
               SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, RESET: tl.constexpr, HAS_DLAST: tl.constexpr,
               CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr,
               UNROLL: tl.constexpr, NEXT_TO_L1: tl.constexpr, BRANCHLESS: tl.constexpr,
               TILES: tl.constexpr, ATOMIC: tl.constexpr):  # fmt: skip
    """The backward's main pass over chunk `c` (steps t0 .. t0 + steps - 1, steps <= CHUNK), given dh and the decay
    a_next at the step after it; returns them at the chunk's first step, and the updated dA/dD/dbias accumulators.
    NEXT_TO_L1: first start pulling the chunk walked next (the CHUNK steps before, if `more`) into L1, so that its
    loads, issued only a step ahead, hit L1 instead of each waiting out an L2 or DRAM round trip."""
    if NEXT_TO_L1:
        _prefetch_chunk_before(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0, more, ch, mask_d, su_l, su_d,
                               sdt_l, sdt_d, sB_l, sC_l, sdo_l, sdo_d, sz_l, sz_d, HAS_Z, CHUNK, BLOCK_D,
                               NEXT_TO_L1)  # fmt: skip
    # forward sweep: recompute and keep the chunk's states; dz and dC need only forward quantities
    h = tl.load(ckpt_ptr + (pid_b * n_ckpt + c - 1) * STATE + state_offs, mask=mask_dn & (c > 0), other=0.0)
    ahead = _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0, steps > 0, ch, mask_d, offs_n, NSTATE,
                        su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d, HAS_Z,
                        True)  # fmt: skip
    # The chunk's states: TILES keeps one [BN, BD] tile per step in a tuple (the chunk unrolled in the source), so each
    # tile keeps the layout its math has; else one [CHUNK, BN, BD] tensor, fully unrolled for short chunks
    # (UNROLL == CHUNK: `rows == k` is then static and states[k] costs no selects), in a layout of its own.
    # BRANCHLESS: the steps past the row's end (its last chunk only) run on masked-off loads with masked stores
    # instead of behind a branch per step, so that ptxas may interleave consecutive steps of the unrolled chunk
    if TILES:
        tiles = ()
        for _ in tl.static_range(CHUNK):
            tiles = tiles + (h,)
        for k in tl.static_range(CHUNK):
            run = True if BRANCHLESS else k < steps  # compile-time True, or a branch per step
            if run:
                h, ahead = _recompute_step(
                    u_ptr, delta_ptr, B_ptr, C_ptr, Dv, z_ptr, bias, h0_ptr, seg_ids_ptr, cu_ptr, dout_ptr, dz_ptr,
                    dC_ptr, A2, h, ahead, k, t0, steps, L, seq_len, pid_b, STATE, part_base, ch, mask_d, offs_n,
                    mask_n, mask_dn, state_offs, NSTATE, su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d, sg_b,
                    sg_l, sg_d, sB_l, sB_n, sC_l, sC_n, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, RESET, PREFETCH,
                    ATOMIC,
                )  # fmt: skip
                tiles = tiles[:k] + (h,) + tiles[k + 1 :]
    else:
        states = tl.zeros([CHUNK, BLOCK_N, BLOCK_D], dtype=tl.float32)
        for k in tl.range(0, CHUNK, loop_unroll_factor=UNROLL):
            run = True if BRANCHLESS else k < steps
            if run:
                h, ahead = _recompute_step(
                    u_ptr, delta_ptr, B_ptr, C_ptr, Dv, z_ptr, bias, h0_ptr, seg_ids_ptr, cu_ptr, dout_ptr, dz_ptr,
                    dC_ptr, A2, h, ahead, k, t0, steps, L, seq_len, pid_b, STATE, part_base, ch, mask_d, offs_n,
                    mask_n, mask_dn, state_offs, NSTATE, su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d, sg_b,
                    sg_l, sg_d, sB_l, sB_n, sC_l, sC_n, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, RESET, PREFETCH,
                    ATOMIC,
                )  # fmt: skip
                states = tl.where((rows == k)[:, None, None], h[None, :, :], states)
    # backward sweep (BRANCHLESS walks the masked steps too, from the chunk's last slot)
    first = CHUNK - 1 if BRANCHLESS else steps - 1
    ahead = _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0 + first, (first >= 0) & (first < steps),
                        ch, mask_d, offs_n, NSTATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d,
                        sz_l, sz_d, HAS_Z, True)  # fmt: skip
    if TILES:
        for i in tl.static_range(CHUNK):
            k = CHUNK - 1 - i
            run = True if BRANCHLESS else k < steps
            if run:  # (the tuple index is spelled out: `k` stops being a compile-time value inside a run-time `if`)
                dh, a_next, dA_acc, dD_acc, dbias_acc, ahead = _gradient_step(
                    u_ptr, delta_ptr, A, A2, B_ptr, C_ptr, Dv, z_ptr, bias, seg_ids_ptr, cu_ptr, dout_ptr, dlast_ptr,
                    du_ptr, ddelta_ptr, dB_ptr, dh0_ptr, dh, a_next, dA_acc, dD_acc, dbias_acc, tiles[CHUNK - 1 - i],
                    ahead, k, t0, steps, L, seq_len, pid_b, STATE, part_base, ch, mask_d, offs_n, mask_n, mask_dn,
                    state_offs, NSTATE, su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d, sg_b, sg_l, sg_d, sB_l,
                    sB_n, sC_l, sC_n, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, RESET, HAS_DLAST, PREFETCH, BRANCHLESS,
                    ATOMIC,
                )  # fmt: skip
    else:
        for i in tl.range(0, CHUNK, loop_unroll_factor=UNROLL):
            k = CHUNK - 1 - i
            run = True if BRANCHLESS else k < steps
            if run:
                # -0.0 elsewhere: x + -0.0 == x exactly, so the unrolled sum folds away to states[k]
                h_k = tl.sum(tl.where((rows == k)[:, None, None], states, -0.0), axis=0)
                dh, a_next, dA_acc, dD_acc, dbias_acc, ahead = _gradient_step(
                    u_ptr, delta_ptr, A, A2, B_ptr, C_ptr, Dv, z_ptr, bias, seg_ids_ptr, cu_ptr, dout_ptr, dlast_ptr,
                    du_ptr, ddelta_ptr, dB_ptr, dh0_ptr, dh, a_next, dA_acc, dD_acc, dbias_acc, h_k, ahead, k, t0,
                    steps, L, seq_len, pid_b, STATE, part_base, ch, mask_d, offs_n, mask_n, mask_dn, state_offs,
                    NSTATE, su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d, sg_b, sg_l, sg_d, sB_l, sB_n, sC_l,
                    sC_n, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, RESET, HAS_DLAST, PREFETCH, BRANCHLESS, ATOMIC,
                )  # fmt: skip
    return dh, a_next, dA_acc, dD_acc, dbias_acc


@triton.jit
def _recompute_step(u_ptr, delta_ptr, B_ptr, C_ptr, Dv, z_ptr, bias, h0_ptr, seg_ids_ptr, cu_ptr, dout_ptr, dz_ptr,
                    dC_ptr, A2, h, ahead, k, t0, steps, L, seq_len, pid_b, STATE, part_base, ch, mask_d,
                    offs_n, mask_n, mask_dn, state_offs, NSTATE, su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d,
                    sg_b, sg_l, sg_d, sB_l, sB_n, sC_l, sC_n, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, RESET: tl.constexpr,
                    PREFETCH: tl.constexpr, ATOMIC: tl.constexpr):  # fmt: skip
    """Step k of the backward's forward sweep: the state h_t, dz and the dC partial (stored only where k < steps).
    Returns (h_t, the loads of step k + 1)."""
    t = t0 + k
    valid = k < steps
    if PREFETCH:
        x, raw, Bt, Ct, dout, zt = ahead
        ahead = _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t + 1, k + 1 < steps, ch, mask_d, offs_n,
                            NSTATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d, HAS_Z,
                            True)  # fmt: skip
    else:
        x, raw, Bt, Ct, dout, zt = _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t, valid, ch, mask_d,
                                               offs_n, NSTATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l,
                                               sdo_d, sz_l, sz_d, HAS_Z, True)  # fmt: skip
    raw, dt, dy = _bwd_step(raw, dout, zt, bias, HAS_BIAS, SOFTPLUS, HAS_Z)
    seg, start, end = _segments(t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
    if HAS_H0:
        h = tl.where(start, tl.load(h0_ptr + seg * STATE + state_offs, mask=mask_dn & start, other=0.0), h)
    elif RESET != 0:  # without resets only t = 0 starts a segment, and chunk 0 starts from zeros
        h = tl.where(start, 0.0, h)
    h = _exp2(dt[None, :] * A2) * h + (dt * x)[None, :] * Bt[:, None]
    if HAS_Z:
        y = tl.sum(h * Ct[:, None], axis=0)
        if HAS_D:
            y += x * Dv
        sz = tl.sigmoid(zt)
        dz = dout * y * sz * (1.0 + zt * (1.0 - sz))
        tl.store(dz_ptr + pid_b * sg_b + t * sg_l + ch * sg_d, dz.to(dz_ptr.dtype.element_ty), mask=mask_d & valid)
    dC = tl.sum(h * dy[None, :], axis=1)  # [BN]
    _put(dC_ptr + part_base + t * NSTATE + offs_n, dC, mask_n & valid, ATOMIC)
    return h, ahead


@triton.jit
def _channel_grads(du_ptr, ddelta_ptr, du, ddt, raw, x, dy, Dv, dD_acc, dbias_acc, grad_offs, mask_d, valid,
                   HAS_D: tl.constexpr, SOFTPLUS: tl.constexpr):  # fmt: skip
    """A backward step's per-channel epilogue, given du's and ddt's sums over the states [BD]: the D skip term,
    softplus' derivative, the dD/dbias accumulators (returned) and the du/ddelta stores."""
    if HAS_D:
        du += Dv * dy
        dD_acc += dy * x
    if SOFTPLUS:
        ddt *= tl.sigmoid(raw)
    ddt = tl.where(mask_d, ddt, 0.0)
    dbias_acc += ddt
    tl.store(du_ptr + grad_offs, du.to(du_ptr.dtype.element_ty), mask=mask_d & valid)
    tl.store(ddelta_ptr + grad_offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask_d & valid)
    return dD_acc, dbias_acc


@triton.jit
def _gradient_step(u_ptr, delta_ptr, A, A2, B_ptr, C_ptr, Dv, z_ptr, bias, seg_ids_ptr, cu_ptr, dout_ptr, dlast_ptr,
                   du_ptr, ddelta_ptr, dB_ptr, dh0_ptr, dh, a_next, dA_acc, dD_acc, dbias_acc, h, ahead, k, t0,
                   steps, L, seq_len, pid_b, STATE, part_base, ch, mask_d, offs_n, mask_n, mask_dn, state_offs,
                   NSTATE, su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d, sg_b, sg_l, sg_d, sB_l, sB_n, sC_l,
                   sC_n, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   HAS_H0: tl.constexpr, RESET: tl.constexpr, HAS_DLAST: tl.constexpr, PREFETCH: tl.constexpr,
                   BRANCHLESS: tl.constexpr, ATOMIC: tl.constexpr):  # fmt: skip
    """Step k of the backward sweep: dh_t from dh_{t+1}, the step's gradients (stored only where k < steps) and the
    dA/dD/dbias accumulators (h: the state h_t). Returns (dh, the decay into this step, the accumulators, the loads
    of step k - 1)."""
    t = t0 + k
    valid = k < steps
    if PREFETCH:
        x, raw, Bt, Ct, dout, zt = ahead
        ahead = _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t - 1, (k > 0) & (k - 1 < steps), ch,
                            mask_d, offs_n, NSTATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d,
                            sz_l, sz_d, HAS_Z, True)  # fmt: skip
    else:
        x, raw, Bt, Ct, dout, zt = _bwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t, valid, ch, mask_d,
                                               offs_n, NSTATE, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l,
                                               sdo_d, sz_l, sz_d, HAS_Z, True)  # fmt: skip
    raw, dt, dy = _bwd_step(raw, dout, zt, bias, HAS_BIAS, SOFTPLUS, HAS_Z)
    seg, start, end = _segments(t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
    g = dy[None, :] * Ct[:, None]
    if HAS_DLAST:
        g += tl.load(dlast_ptr + seg * STATE + state_offs, mask=mask_dn & end, other=0.0)
    dh = g + a_next * dh
    if BRANCHLESS:  # a step past the row's end (its last chunk, entered with dh = 0 and a_next = 0) keeps both at 0
        dh = tl.where(valid, dh, 0.0)
    dA_t = _exp2(dt[None, :] * A2)
    dtx = dt * x
    decayed = h - dtx[None, :] * Bt[:, None]  # = a_t h_{t-1}: the part of h_t that came through the decay
    dA_acc += dt[None, :] * dh * decayed
    ddt = tl.sum(dh * (Bt[:, None] * x[None, :] + A * decayed), axis=0)  # [BD]
    dD_acc, dbias_acc = _channel_grads(du_ptr, ddelta_ptr, dt * tl.sum(dh * Bt[:, None], axis=0), ddt, raw, x, dy, Dv,
                                       dD_acc, dbias_acc, pid_b * sg_b + t * sg_l + ch * sg_d, mask_d, valid, HAS_D,
                                       SOFTPLUS)  # fmt: skip
    dB = tl.sum(dh * dtx[None, :], axis=1)  # [BN]
    _put(dB_ptr + part_base + t * NSTATE + offs_n, dB, mask_n & valid, ATOMIC)
    if HAS_H0:
        tl.store(dh0_ptr + seg * STATE + state_offs, dA_t * dh, mask=mask_dn & start)
    a_next = dA_t if RESET == 0 else tl.where(start, 0.0, dA_t)  # (no reset: a_0 is never used)
    if BRANCHLESS:
        a_next = tl.where(valid, a_next, 0.0)
    return dh, a_next, dA_acc, dD_acc, dbias_acc, ahead


# Tests set this to run the ROWS backward's lane-shuffle channel sums (`_store_channel_sums`, LANE_SUMS) in the
# interpreter, where `_lane_id` and `_lane_shuffle` compute the lane id and each butterfly shuffle by Triton ops
EMULATE_LANE_SHUFFLES = tl.constexpr(False)


@triton.jit
def _lane_id(BLOCK_D: tl.constexpr):
    if _INTERPRETED:
        return tl.arange(0, BLOCK_D) % 32
    return tl.inline_asm_elementwise("mov.u32 $0, %laneid;", "=r,r", [tl.arange(0, BLOCK_D)], dtype=tl.int32,
                                     is_pure=True, pack=1)  # fmt: skip


@triton.jit
def _lane_shuffle(x, MASK: tl.constexpr):
    """x of the lane whose index differs from this one's in the bits of MASK (PTX shfl.sync.bfly, one warp)."""
    if _INTERPRETED:  # x is [32], one value per lane: out[i] = x[i ^ MASK]
        lanes = tl.arange(0, 32)
        return tl.sum(tl.where((lanes[:, None] ^ MASK) == lanes[None, :], x[None, :], 0.0), axis=1)
    if MASK == 16:
        asm: tl.constexpr = "shfl.sync.bfly.b32 $0, $1, 16, 31, -1;"
    elif MASK == 8:
        asm: tl.constexpr = "shfl.sync.bfly.b32 $0, $1, 8, 31, -1;"
    elif MASK == 4:
        asm: tl.constexpr = "shfl.sync.bfly.b32 $0, $1, 4, 31, -1;"
    elif MASK == 2:
        asm: tl.constexpr = "shfl.sync.bfly.b32 $0, $1, 2, 31, -1;"
    else:
        asm: tl.constexpr = "shfl.sync.bfly.b32 $0, $1, 1, 31, -1;"
    return tl.inline_asm_elementwise(asm, "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _put(ptr, value, mask, ATOMIC: tl.constexpr):
    """*ptr = value, or (ATOMIC) *ptr += value by an fp32 atomic add, where mask."""
    if ATOMIC:
        tl.atomic_add(ptr, value, mask=mask, sem="relaxed")
    else:
        tl.store(ptr, value, mask=mask)


@triton.jit
def _store_channel_sums(ptr, values, valid, NSTATE, n0, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                        LANE_SUMS: tl.constexpr, SPLIT: tl.constexpr = 1, ATOMIC: tl.constexpr = 0,
                        second_ptr=None):  # fmt: skip
    """ptr[n0 + n] = (ATOMIC: +=) the sum over the channels of values[n] (a tuple of BLOCK_N [BD] rows: each lane's
    share of the states from n0 on), n0 + n < NSTATE, where `valid`; with `second_ptr`, values holds 2 BLOCK_N rows
    and the second BLOCK_N go to second_ptr[n0 + n] (dB and dC in one reduction: fewer shuffles than two). SPLIT (2 or
    4): adjacent lanes share a channel, lane k of it holding states k BLOCK_N .. (k + 1) BLOCK_N - 1 (n0 = k BLOCK_N).
    LANE_SUMS (one warp of BLOCK_D = 32 lanes): a transposing reduction by butterfly shuffles over the lane bits that
    pick the channel -- each level halves the rows a lane keeps and sends the other half to its partner, so after
    log2(rows) levels each lane holds one row's partial and the last levels finish it: rows - 1 + 5 - log2(SPLIT) -
    log2(rows) shuffles (9 for N = 8; 5 per lane for SPLIT 2's 4 rows, 8 for its dB and dC together) instead of
    tl.sum's 5 per row (40 for N = 8); lane l then holds row n0 + (l >> (5 - log2 rows)), stored by the first lane of
    each row. GPU only (inline PTX): the interpreter takes tl.sum, unless a test sets EMULATE_LANE_SHUFFLES."""
    CHANNEL_BITS: tl.constexpr = 5 - (SPLIT // 2)  # lane bits 4 .. log2(SPLIT) pick the channel (SPLIT 1, 2, 4)
    ROW_COUNT: tl.constexpr = BLOCK_N if second_ptr is None else 2 * BLOCK_N
    if LANE_SUMS:
        tl.static_assert(ROW_COUNT <= (1 << CHANNEL_BITS), "LANE_SUMS: at most one row per channel lane")
        lane = _lane_id(BLOCK_D)
        rows = values
        n = lane * 0 + n0  # the row this lane keeps, n0 on
        for level in tl.static_range(CHANNEL_BITS):  # lane bit 4 - level
            if (ROW_COUNT >> (level + 1)) >= 1:  # keep one half of the rows, send the other
                upper = (lane & (16 >> level)) != 0
                kept = ()
                for j in tl.static_range(ROW_COUNT >> (level + 1)):
                    send = tl.where(upper, rows[j], rows[j + (ROW_COUNT >> (level + 1))])
                    keep = tl.where(upper, rows[j + (ROW_COUNT >> (level + 1))], rows[j])
                    kept = kept + (keep + _lane_shuffle(send, 16 >> level),)
                n += tl.where(upper, ROW_COUNT >> (level + 1), 0)
                rows = kept
            else:  # one row left: finish its sum over the lanes that share it
                rows = (rows[0] + _lane_shuffle(rows[0], 16 >> level),)
        first = (lane & ((32 // ROW_COUNT - 1) & (32 - SPLIT))) == 0
        if second_ptr is None:
            _put(ptr + n, rows[0], first & (n < NSTATE) & valid, ATOMIC)
        else:  # rows BLOCK_N on are second_ptr's
            row = n - n0
            n = n0 + row % BLOCK_N
            _put(tl.where(row < BLOCK_N, ptr + n, second_ptr + n), rows[0], first & (n < NSTATE) & valid, ATOMIC)
    else:
        share = _lane_id(BLOCK_D) % SPLIT  # which share of a channel's states each lane holds
        for k in tl.static_range(SPLIT):
            for n in tl.static_range(ROW_COUNT):
                part = values[n] if SPLIT == 1 else tl.where(share == k, values[n], 0.0)
                target = ptr if n < BLOCK_N else second_ptr
                state = k * BLOCK_N + n % BLOCK_N
                _put(target + state, tl.sum(part, axis=0), valid & (state < NSTATE), ATOMIC)


@triton.jit
def _step_inputs_rows(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t, valid, ch, mask_d, NSTATE, su_l, su_d,
                      sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d, HAS_Z: tl.constexpr,
                      BLOCK_N: tl.constexpr, VECTOR_BC: tl.constexpr):  # fmt: skip
    """The ROWS backward's loads for step t: u, raw delta [BD]; B_t, C_t tuples of BLOCK_N scalars; dout, z [BD]."""
    x, raw, Bs, Cs, zt = _fwd_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, z_ptr, t, valid, ch, mask_d, NSTATE, su_l, su_d,
                                     sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sz_l, sz_d, HAS_Z, False, BLOCK_N,
                                     VECTOR_BC)  # fmt: skip
    dout = tl.load(dout_ptr + t * sdo_l + ch * sdo_d, mask=mask_d & valid, other=0.0).to(tl.float32)
    return x, raw, Bs, Cs, dout, zt


@triton.jit
def _bwd_chunk_rows(u_ptr, delta_ptr, A, A2, B_ptr, C_ptr, Dv, z_ptr, bias, h0_ptr, seg_ids_ptr, cu_ptr, ckpt_ptr,
                    dout_ptr, dlast_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dh0_ptr, dh, a_next, dA_acc,
                    dD_acc, dbias_acc, ckpt_rows, c, t0, steps, L, seq_len, pid_b, n_ckpt, D_total, part_base, ch,
                    mask_d, state_ch, nleft, lead, n0, NSTATE, su_l, su_d, sdt_l, sdt_d, sz_l, sz_d, sdo_l, sdo_d, sg_b,
                    sg_l, sg_d, sB_l, sB_n, sC_l, sC_n, more, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, RESET: tl.constexpr,
                    HAS_DLAST: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    NEXT_TO_L1: tl.constexpr, BRANCHLESS: tl.constexpr, VECTOR_BC: tl.constexpr,
                    LANE_SUMS: tl.constexpr, SPLIT: tl.constexpr, ATOMIC: tl.constexpr,
                    KEEP_DT: tl.constexpr, CKPT_AHEAD: tl.constexpr, INPUT_RING: tl.constexpr,
                    BC_TOGETHER: tl.constexpr = 0):  # fmt: skip
    """`_bwd_chunk` with every state a tuple of BLOCK_N [BD] rows (ROWS): dh, a_next, dA_acc and the chunk's states
    (a tuple of CHUNK such tuples); each step's sums over N stay inside a thread and its sums over the channels (dB,
    dC) go through `_store_channel_sums`. Loads one step ahead (PREFETCH 1). BLOCK_D: lanes ([BD] tensors); SPLIT > 1:
    a lane holds the BLOCK_N states from n0 (of the NSTATE, `nleft` of them from n0 on; rows of (N, D) states at
    `state_ch`) of its channel `ch`, B_ptr/C_ptr point at its share, and the lane holding n0 = 0 (`lead`) stores
    the channel's values. KEEP_DT: the forward sweep keeps each step's dt (a [BD] row per step) for the backward
    sweep, which then computes no softplus (sm_90, SPLIT 2 at cap 168, no gate, bf16: 2090 -> 2036 instructions and
    4217 -> 3941 stall cycles per 8-step chunk, 159 -> 162 registers; fp32 148 -> 200 spilled bytes; with a gate
    the bf16 build spills 88 bytes instead of 56; timed and pruned: `keeps_dt`). Tried and dropped (H100 session 36,
    bf16 fwd+bwd, benchmarks/results/s36_20261207/call3): the checkpoint rows of the chunk before hinted into L1 a
    chunk ahead, and the dB/dC partials stored last to evict from L2, each within 1 % of the default (170.0 and 171.6
    us against 171.2 at (128, 160, 196, 8); 87.9 and 88.3 against 87.4 at (128, 320, 49, 8)). CKPT_AHEAD (in the
    default SPLIT config, `_bwd_configs`): the chunk starts from `ckpt_rows` (its checkpoint, loaded by the chunk
    after it, or before the span's loop) and loads the chunk before's as its backward sweep starts, returned last: ncu
    (session 36, (128, 160, 196, 8) bf16) put 6.7 % of the backward's warp samples on the chunk's first use of its
    checkpoint, loaded right before. Without it `ckpt_rows` is ignored and returned as it came. INPUT_RING 2 (the
    default SPLIT config's for fp32 4-step chunks, `rings_two_steps`): each step's inputs loaded two steps ahead
    instead of one (the same ncu run put ~12 % of the samples on bf16 unpacks waiting for their one-step-ahead loads).
    sm_90, cap 168, with KEEP_DT and CKPT_AHEAD: bf16 8-step chunks 168 registers and 72 spilled bytes, 2065 -> 2262
    instructions, 4033 -> 4303 stall cycles (H100: 167.1 -> 185.1 us fwd+bwd at (128, 160, 196, 8)); fp32 4-step
    chunks 165 -> 164 registers, no spills, 905 -> 955 instructions, 1950 -> 1921 stall cycles (192.8 -> 185.9 us).
    BC_TOGETHER (off by default): the backward sweep sums dC (h dy) with dB in one transposing reduction of twice the
    rows (SPLIT 2 at N = 8: 8 shuffles a step instead of 5 + 5) and the forward sweep sums none. sm_90, cap 168: bf16
    8-step chunks 2065 -> 1952 instructions and 4031 -> 3582 stall cycles, fp32 4-step chunks 955 -> 908 and 1919 ->
    1704, no spills; H100 (session 38, benchmarks/results/s38_20261207/call2, fwd+bwd at (128, 160, 196, 8) bf16):
    166.3 against 166.4 us (L2 flushed 167.4 against 169.3), a tie; fp32 and L = 49 untimed. Tried and dropped there:
    each sweep step storing the step before's sums (so that their shuffle chain shares the next step's block with its
    math; 2179 instructions, 3898 stall cycles): 175.9 us, 174.1 with BC_TOGETHER."""
    if NEXT_TO_L1:
        _prefetch_chunk_before(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0, more, ch, mask_d, su_l, su_d,
                               sdt_l, sdt_d, sB_l, sC_l, sdo_l, sdo_d, sz_l, sz_d, HAS_Z, CHUNK, BLOCK_D,
                               NEXT_TO_L1)  # fmt: skip
    STATE = D_total * NSTATE
    if CKPT_AHEAD:
        h = ckpt_rows
    else:
        h = _state_rows(ckpt_ptr, (pid_b * n_ckpt + c - 1) * STATE, D_total, state_ch, mask_d & (c > 0), nleft,
                        BLOCK_N)  # fmt: skip
    # the next INPUT_RING steps' inputs, the next step's first
    ring = (_step_inputs_rows(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0, steps > 0, ch, mask_d, nleft,
                              su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d, HAS_Z,
                              BLOCK_N, VECTOR_BC),)  # fmt: skip
    if INPUT_RING == 2:  # the step after it too
        ring = ring + (_step_inputs_rows(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0 + 1, steps > 1, ch,
                                         mask_d, nleft, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d,
                                         sz_l, sz_d, HAS_Z, BLOCK_N, VECTOR_BC),)  # fmt: skip
    # forward sweep: recompute and keep the chunk's states; dz and dC need only forward quantities
    tiles = ()
    dts = ()  # KEEP_DT: each step's dt
    for _ in tl.static_range(CHUNK):
        tiles = tiles + (h,)
        dts = dts + (ring[0][0] * 0.0,)
    for k in tl.static_range(CHUNK):
        run = True if BRANCHLESS else k < steps
        if run:
            t = t0 + k
            valid = k < steps
            x, raw, Bs, Cs, dout, zt = ring[0]
            ring = ring[1:] + (_step_inputs_rows(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t + INPUT_RING,
                                                 k + INPUT_RING < steps, ch, mask_d, nleft, su_l, su_d, sdt_l, sdt_d,
                                                 sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d, HAS_Z, BLOCK_N,
                                                 VECTOR_BC),)  # fmt: skip
            raw, dt, dy = _bwd_step(raw, dout, zt, bias, HAS_BIAS, SOFTPLUS, HAS_Z)
            if KEEP_DT:
                dts = dts[:k] + (dt,) + dts[k + 1 :]
            seg, start, end = _segments(t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
            if HAS_H0:
                h = _select_rows(start, _state_rows(h0_ptr, seg * STATE, D_total, state_ch, mask_d & start, nleft,
                                                    BLOCK_N), h, BLOCK_N)  # fmt: skip
            elif RESET != 0:  # without resets only t = 0 starts a segment, and chunk 0 starts from zeros
                h = _zero_rows_where(start, h, BLOCK_N)
            dtx = dt * x
            y = x * Dv if HAS_D and SPLIT == 1 else dtx * 0.0
            new_h = ()
            dC = ()
            for n in tl.static_range(BLOCK_N):
                h_n = _exp2(dt * A2[n]) * h[n] + dtx * Bs[n]
                new_h = new_h + (h_n,)
                y += h_n * Cs[n]
                dC = dC + (h_n * dy,)
            h = new_h
            if HAS_Z:
                if SPLIT > 1:  # the other shares' sums, from the partner lanes
                    y = _split_sum(y, SPLIT)
                    if HAS_D:
                        y += x * Dv
                sz = tl.sigmoid(zt)
                dz = dout * y * sz * (1.0 + zt * (1.0 - sz))
                tl.store(dz_ptr + pid_b * sg_b + t * sg_l + ch * sg_d, dz.to(dz_ptr.dtype.element_ty),
                         mask=lead & valid)  # fmt: skip
            if not BC_TOGETHER:  # (else the backward sweep sums dC with dB)
                _store_channel_sums(dC_ptr + part_base + t * NSTATE, dC, valid, NSTATE, n0, BLOCK_D, BLOCK_N,
                                    LANE_SUMS, SPLIT, ATOMIC)  # fmt: skip
            tiles = tiles[:k] + (h,) + tiles[k + 1 :]
    # backward sweep (BRANCHLESS walks the masked steps too, from the chunk's last slot)
    first = CHUNK - 1 if BRANCHLESS else steps - 1
    ring = (_step_inputs_rows(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0 + first,
                              (first >= 0) & (first < steps), ch, mask_d, nleft, su_l, su_d, sdt_l, sdt_d, sB_l, sB_n,
                              sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d, HAS_Z, BLOCK_N, VECTOR_BC),)  # fmt: skip
    if INPUT_RING == 2:
        ring = ring + (_step_inputs_rows(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t0 + first - 1,
                                         (first >= 1) & (first - 1 < steps), ch, mask_d, nleft, su_l, su_d, sdt_l,
                                         sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d, HAS_Z, BLOCK_N,
                                         VECTOR_BC),)  # fmt: skip
    if CKPT_AHEAD:  # the chunk before starts from checkpoint c - 2
        ckpt_rows = _state_rows(ckpt_ptr, (pid_b * n_ckpt + c - 2) * STATE, D_total, state_ch,
                                mask_d & more & (c > 1), nleft, BLOCK_N)  # fmt: skip
    for i in tl.static_range(CHUNK):
        k = CHUNK - 1 - i
        run = True if BRANCHLESS else k < steps
        if run:
            t = t0 + k
            valid = k < steps
            h = tiles[CHUNK - 1 - i]
            x, raw, Bs, Cs, dout, zt = ring[0]
            ring = ring[1:] + (_step_inputs_rows(u_ptr, delta_ptr, B_ptr, C_ptr, dout_ptr, z_ptr, t - INPUT_RING,
                                                 (k >= INPUT_RING) & (k - INPUT_RING < steps), ch, mask_d, nleft, su_l,
                                                 su_d, sdt_l, sdt_d, sB_l, sB_n, sC_l, sC_n, sdo_l, sdo_d, sz_l, sz_d,
                                                 HAS_Z, BLOCK_N, VECTOR_BC),)  # fmt: skip
            if KEEP_DT:
                raw, unused, dy = _bwd_step(raw, dout, zt, bias, HAS_BIAS, False, HAS_Z)  # no softplus: dt is kept
                dt = dts[CHUNK - 1 - i]
            else:
                raw, dt, dy = _bwd_step(raw, dout, zt, bias, HAS_BIAS, SOFTPLUS, HAS_Z)
            seg, start, end = _segments(t, L, seq_len, seg_ids_ptr, cu_ptr, pid_b, RESET)
            if HAS_DLAST:
                g_last = _state_rows(dlast_ptr, seg * STATE, D_total, state_ch, mask_d & end, nleft, BLOCK_N)
            dtx = dt * x
            ddt = dtx * 0.0
            du_sum = dtx * 0.0
            new_dh = ()
            new_a = ()
            new_acc = ()
            dB = ()
            dh0 = ()
            for n in tl.static_range(BLOCK_N):
                dh_n = dy * Cs[n] + a_next[n] * dh[n]
                if HAS_DLAST:
                    dh_n += g_last[n]
                if BRANCHLESS:  # a step past the row's end (entered with dh = 0 and a_next = 0) keeps both at 0
                    dh_n = tl.where(valid, dh_n, 0.0)
                dA_n = _exp2(dt * A2[n])
                decayed = h[n] - dtx * Bs[n]  # = a_t h_{t-1}: the part of h_t that came through the decay
                through = dh_n * decayed
                new_acc = new_acc + (dA_acc[n] + dt * through,)
                ddt += A[n] * through  # + x * sum_n dh_n B_n, added after the loop
                du_sum += dh_n * Bs[n]
                dB = dB + (dh_n * dtx,)
                if HAS_H0:
                    dh0 = dh0 + (dA_n * dh_n,)
                a_n = dA_n if RESET == 0 else tl.where(start, 0.0, dA_n)  # (no reset: a_0 is never used)
                if BRANCHLESS:
                    a_n = tl.where(valid, a_n, 0.0)
                new_dh = new_dh + (dh_n,)
                new_a = new_a + (a_n,)
            dh = new_dh
            a_next = new_a
            dA_acc = new_acc
            if SPLIT > 1:  # the other shares' sums over N, from the partner lanes
                ddt = _split_sum(ddt, SPLIT)
                du_sum = _split_sum(du_sum, SPLIT)
            dD_acc, dbias_acc = _channel_grads(du_ptr, ddelta_ptr, dt * du_sum, ddt + x * du_sum, raw, x, dy, Dv,
                                               dD_acc, dbias_acc, pid_b * sg_b + t * sg_l + ch * sg_d, lead, valid,
                                               HAS_D, SOFTPLUS)  # fmt: skip
            if BC_TOGETHER:  # dC's sums with dB's, in one reduction of twice the rows
                for n in tl.static_range(BLOCK_N):
                    dB = dB + (h[n] * dy,)
            _store_channel_sums(dB_ptr + part_base + t * NSTATE, dB, valid, NSTATE, n0, BLOCK_D, BLOCK_N, LANE_SUMS,
                                SPLIT, ATOMIC, dC_ptr + part_base + t * NSTATE if BC_TOGETHER else None)  # fmt: skip
            if HAS_H0:
                _store_state_rows(dh0_ptr, seg * STATE, D_total, state_ch, mask_d & start & valid, nleft, dh0,
                                  BLOCK_N)  # fmt: skip
    return dh, a_next, dA_acc, dD_acc, dbias_acc, ckpt_rows


def _reset_args(length: int, seq_len: int | None, cu_seqlens: Tensor | None, device: torch.device) -> tuple:
    if cu_seqlens is not None:
        cu = cu_seqlens.to(torch.int32).contiguous()
        positions = torch.arange(length, device=device, dtype=torch.int32)
        seg_ids = torch.searchsorted(cu[1:].contiguous(), positions, right=True).to(torch.int32)
        return RESET_VARLEN, 1, seg_ids, cu
    if seq_len is not None and seq_len != length:
        return RESET_PERIODIC, seq_len, None, None
    return RESET_NONE, length, None, None


def _num_segments(batch: int, length: int, seq_len: int | None, cu_seqlens: Tensor | None) -> int:
    if cu_seqlens is not None:
        return cu_seqlens.shape[0] - 1
    return batch * (length // (seq_len or length))


TARGET_PROGRAMS_PER_SM = 4  # rows are split into chunks only below this many programs per SM: a split costs a summary
# pass and a combine, and the load ring (PREFETCH) hides what fewer warps leave of the load latency. H200, 2026-12-03,
# bf16 (benchmarks/results/s12_20261203/call1-2): (128, 320, 49, 8) one chunk 18.9 us vs 30.3-32.3 for the two that
# 16 per SM gave; (128, 160, 196, 8) one chunk 43.8 us vs 52.4-54.2 for four (with L2 flushed before each call one
# chunk loses, 70.6 vs 56.7-60.7: fewer warps wait longer on DRAM; a model's scan reads what the layer before it wrote)
# WHOLE_ROWS_WIN: long rows are no longer split into chunks of at most 256 steps (a cap set on an H100 with 2026-11's
# kernels). H200, 2026-12-05, (128, 384, 3136, 1, G = 4), the 8-step ring, CUDA graphs: fp32 625 us whole vs 811 for
# 13 chunks of 242 steps and 840 for 4; bf16 534 vs 613 and 661 (benchmarks/results/s21_20261205/scan-vmamba-chunks).
MAX_CHUNK_LEN = 256  # the steps one backward program walks at most where rows are split into spans (`plan_bwd_spans`)
forced_chunk_len: int | None = None  # tests set this to exercise the two-pass path under the interpreter
BWD_PROGRAMS_PER_SM = 4  # the step backward splits a row into spans (summary pass + combine) only below this many
# programs per SM; a span is walked chunk by chunk, so a whole row costs no summary pass, no combine, and one read of
# the inputs instead of two
forced_bwd_span: int | None = None  # chunks per backward program, for tests and sweeps (None: plan_bwd_spans')


def plan_bwd_spans(
    batch: int, groups: int, dim_per_group: int, n_ckpt: int, chunk: int, device: torch.device
) -> tuple[int, int]:
    """(chunks per program, programs along L) for the step backward of a row of `n_ckpt` checkpoint chunks of `chunk`
    steps: whole rows unless that leaves fewer than BWD_PROGRAMS_PER_SM programs per SM; rows split into spans take at
    most MAX_CHUNK_LEN steps per program (on CPU: whole rows). Long rows that fill the GPU stay whole, as the forward's
    do (WHOLE_ROWS_WIN): H100, VMamba's (128, 384, 3136, 1, G = 4) fp32 fwd+bwd 3499.3 us whole against 3782.2 for
    13 spans of 256 steps and 3892.1 for 4 (benchmarks/results/s31_20261206/call2; bf16 untimed)."""
    if forced_bwd_span is not None:
        span = max(1, min(forced_bwd_span, n_ckpt))
    elif device.type != "cuda":
        span = n_ckpt
    else:
        programs = batch * groups * triton.cdiv(dim_per_group, 32)  # the smallest channel block gives the most
        nspans = max(1, min(triton.cdiv(BWD_PROGRAMS_PER_SM * _sm_count(device), programs), n_ckpt))
        span = n_ckpt if nspans == 1 else min(triton.cdiv(n_ckpt, nspans), max(1, MAX_CHUNK_LEN // chunk))
    return span, triton.cdiv(n_ckpt, span)


NARROW_DIM = 32  # channels per group below which the tiled forward takes a whole group per program (tiled.py)
TILED_PROGRAMS_PER_SM = 1  # a narrow tiled program is up to 8 warps with a block of loads in flight; H200, 2026-12-03:
# one 3136-step chunk per row 19.3 us vs 26.9 for two (summary pass + combine), 5.7 vs 14.3 us at 784 steps (bf16,
# 512 rows, benchmarks/results/s11_20261203/call1)
NARROW_MIN_LENGTH = 256  # `auto` runs the tiled forward on groups of AUTO_TILED_WIDTH channels from this many steps on
AUTO_TILED_WIDTH = 1  # the only narrow width timed so far (VMeanba's reduced scans)


def is_narrow(dim_per_group: int) -> bool:
    """Whether the tiled forward gives a group of this many channels one program (narrow tiles, long step blocks)."""
    return dim_per_group < NARROW_DIM


def plan_chunks(
    batch: int,
    groups: int,
    dim_per_group: int,
    length: int,
    device: torch.device,
    kernel: str = "step",
    align: int = 1,
) -> tuple[int, int]:
    """(chunk length, number of chunks) for the step/tiled forward: split L only as far as needed to fill the GPU
    (TARGET_PROGRAMS_PER_SM one-warp step programs per SM, or TILED_PROGRAMS_PER_SM for the tiled kernel on narrow
    groups), into chunks of at least 16 steps, a multiple of `align` steps. Long rows that fill it stay whole
    (WHOLE_ROWS_WIN)."""
    if forced_chunk_len is not None:
        return forced_chunk_len, triton.cdiv(length, forced_chunk_len)
    if device.type != "cuda":
        return length, 1
    narrow = kernel == "tiled" and is_narrow(dim_per_group)
    per_sm = TILED_PROGRAMS_PER_SM if narrow else TARGET_PROGRAMS_PER_SM
    programs = batch * groups * triton.cdiv(dim_per_group, 32)  # the smallest channel block either kernel gives a group
    nchunks = max(1, min(triton.cdiv(per_sm * _sm_count(device), programs), length // 16))
    chunk_len = triton.cdiv(triton.cdiv(length, nchunks), align) * align
    return chunk_len, triton.cdiv(length, chunk_len)


def fwd_kernel_choice(dim_per_group: int, length: int) -> str:
    """`SFMAMBA_SCAN_FWD`, with `auto` resolved: the tiled kernel for one channel per group over long sequences
    (VMeanba's reduced scans: thousands of steps; H200: 12.4 vs 235 us at (128, 4, 3136, N=1, G=4) bf16), the step
    kernel otherwise. Groups of 2 to NARROW_DIM - 1 channels also get the narrow tiles under `tiled`; `auto` leaves
    them to the step kernel until they are timed."""
    choice = scan_fwd_kernel()
    if choice != "auto":
        return choice
    return "tiled" if dim_per_group <= AUTO_TILED_WIDTH and length >= NARROW_MIN_LENGTH else "step"


def vector_bc(x: Tensor, nstate: int, layout: str) -> bool:
    """Whether the step forward reads each step's N values of B or C `x` with 16-byte loads (`_state_vector`): on the
    GPU (the interpreter has no inline PTX) and where `rows_fit_vectors`."""
    if triton_interpret() or x.device.type != "cuda":
        return False
    return rows_fit_vectors(_bc_strides(x, layout), x.element_size(), x.data_ptr(), nstate)


def rows_fit_vectors(strides: tuple[int, ...], element_size: int, address: int, nstate: int) -> bool:
    """Whether the N values of every step of a B/C tensor (element strides (batch, G, N, L), first element at
    `address`) lie adjacent in whole, 16-byte aligned 16-byte words: N a power of two of 16-byte multiples (N = 8 in
    bf16/fp16, 4 in fp32, and more), unit N stride, and every other stride and the address 16-byte aligned."""
    if nstate != triton.next_power_of_2(nstate) or (nstate * element_size) % 16:
        return False
    others = (stride for axis, stride in enumerate(strides) if axis != 2)
    return strides[2] == 1 and address % 16 == 0 and all(stride * element_size % 16 == 0 for stride in others)


def _fwd_kernel(choice: str):
    """The forward kernel for `choice` ('step' or 'tiled'; tiled.py imports this module, so it is imported here,
    when first chosen). The step and tiled kernels share arguments, grid and chunking."""
    if choice == "tiled":
        from .tiled import selective_scan_fwd_tiled_kernel

        return selective_scan_fwd_tiled_kernel
    return selective_scan_fwd_kernel


def _bwd_kernel():
    """The backward kernel `SFMAMBA_SCAN_BWD` picks; both take the same arguments (imported when first chosen)."""
    if scan_bwd_kernel() == "tiled":
        from .tiled_bwd import selective_scan_bwd_tiled_kernel

        return selective_scan_bwd_tiled_kernel
    return selective_scan_bwd_kernel


def _rows_adjacent(x: Tensor | None, layout: str) -> Tensor | None:
    """A BDL tensor -- a sequence (batch, D, L) or B/C ((batch, N, L), (batch, G, N, L)) -- whose L axis is contiguous,
    copied so that one step's channels (or states) are adjacent in memory (same shape; the strides of the BLD
    layout); anything else unchanged. Why: the step kernels load one time step of a block of channels per warp,
    coalesced only when those channels are adjacent (and one step's N values of B/C in one load instead of N strided
    ones). Measured on an H200 (2026-12-02, the step forward, `benchmarks/results/s6_20261202/
    scan_lanes_vs_step_h200.json`): (128, 384, 3136, N=1, G=4) bf16 15.2 ms with L contiguous vs 0.66 ms with channels
    adjacent, (128, 160, 196, 8) 147 vs 65 us; a transposing copy moves each tensor once at copy bandwidth (~0.1 ms for
    a 300 MB one), so mamba_ssm's layout pays a few copies instead of uncoalesced loads in every step."""
    if x is None or layout != "BDL" or x.stride(-2) == 1 or x.shape[-2] == 1:
        return x
    return transpose_copy(x).transpose(-1, -2) if x.dim() == 3 else x.transpose(-1, -2).contiguous().transpose(-1, -2)


def _contiguous(x: Tensor, layout: str) -> Tensor:
    """A result made by `_empty_adjacent`, returned contiguous (for BDL: one tiled transpose)."""
    if layout != "BDL" or x.is_contiguous():
        return x.contiguous()
    return transpose_copy(x.transpose(1, 2))


def _empty_adjacent(like: Tensor, layout: str, dtype: torch.dtype) -> Tensor:
    """An output shaped like `like` with its channels adjacent (for BDL: strides of BLD; `.contiguous()` before it is
    returned)."""
    if layout != "BDL":
        return torch.empty(like.shape, device=like.device, dtype=dtype)
    batch, dim, length = like.shape
    return torch.empty((batch, length, dim), device=like.device, dtype=dtype).transpose(1, 2)


def selective_scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, initial_state: Tensor | None, cu_seqlens: Tensor | None,
    delta_softplus: bool, seq_len: int | None, layout: str, return_last_state: bool, save_chunks: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Launch the forward kernel(s); returns (out, last_state or empty, checkpoint states or empty)."""
    seq_len = seq_len or None  # the op schema passes 0 for "no periodic reset"
    batch, dim, length, nstate, groups = _shape(u, A, B, layout)
    dim_per_group = dim // groups
    ckpt_len = bwd_chunk_for(nstate, u.dtype)
    reset, period, seg_ids, cu = _reset_args(length, seq_len, cu_seqlens, u.device)
    choice = fwd_kernel_choice(dim_per_group, length)
    adjacent = choice == "step"  # the tiled kernel loads [steps, channels] tiles, coalesced along either axis
    if adjacent:
        u, delta, z, B, C = (_rows_adjacent(t, layout) for t in (u, delta, z, B, C))
    out = _empty_adjacent(u, layout, u.dtype) if adjacent else torch.empty_like(u)  # returned contiguous
    nseg = _num_segments(batch, length, seq_len, cu_seqlens)
    # every state buffer is (..., N, D) inside the kernels: D contiguous, so the state tile needs no shuffles
    last = torch.empty((nseg, nstate, dim) if return_last_state else (0,), device=u.device, dtype=torch.float32)
    n_ckpt = triton.cdiv(length, ckpt_len)
    ckpt = torch.empty((batch, n_ckpt, nstate, dim) if save_chunks else (0,), device=u.device, dtype=torch.float32)
    kernel = _fwd_kernel(choice)
    # a training forward's chunks start where checkpoint blocks do (the step kernel's CKPT_BLOCKS)
    blocks = save_chunks and walks_ckpt_blocks(nstate, ckpt_len)
    align = ckpt_len if blocks else 1
    chunk_len, nchunks = plan_chunks(batch, groups, dim_per_group, length, u.device, choice, align)
    # chunks that each start a segment (resets every `period` steps, chunks a multiple of it, e.g. a folded batch
    # split at its images) take no incoming state: the reset at their first step replaces it, so no summary pass and
    # no combine. (H100, fold 2 at (128, 160, 196, 8) fp32, whose rows were split into chunks of one image each: 104.0
    # us with the summary pass and the combine against 38.9 unfolded, benchmarks/results/s25_20261206; untimed since)
    independent = nchunks > 1 and reset == 1 and chunk_len % period == 0
    chunk_P = torch.empty((batch, nchunks, nstate, dim) if nchunks > 1 else (0,), device=u.device, dtype=torch.float32)
    chunk_S = torch.zeros_like(chunk_P) if independent else torch.empty_like(chunk_P)
    A = A.contiguous()  # (D, N), read as it is
    anything = u  # stands in for absent optional tensors; never read
    args = (
        u, delta, A, B, C, anything if D is None else D.contiguous(), anything if z is None else z,
        anything if delta_bias is None else delta_bias.contiguous(),
        anything if initial_state is None else initial_state.transpose(1, 2).contiguous(),
        anything if seg_ids is None else seg_ids, anything if cu is None else cu,
        out, last, ckpt, chunk_P, chunk_S,
        length, dim_per_group, nstate, period, chunk_len, nchunks, ckpt_len,
        *_x_strides(u, layout), *_x_strides(delta, layout), *_x_strides(z if z is not None else u, layout),
        *_x_strides(out, layout), *_bc_strides(B, layout), *_bc_strides(C, layout),
    )  # fmt: skip
    flags = dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_H0=initial_state is not None, RESET=reset, STORE_LAST=return_last_state, STORE_CKPT=save_chunks,
    )  # fmt: skip
    if choice == "step":
        flags["VECTOR_BC"] = vector_bc(B, nstate, layout) and vector_bc(C, nstate, layout)
        flags["CKPT_BLOCKS"] = blocks and (nchunks == 1 or chunk_len % ckpt_len == 0)
        bound = FWD_BOUND_STRIDES.get(u.dtype, ())
        flags.update(step_strides((u, delta, out), B, C, layout, bound=bound, Z_L_STRIDE=z))

    def grid(meta: dict) -> tuple[int, int, int]:
        return triton.cdiv(dim_per_group, meta["BLOCK_D"]), groups * nchunks, batch

    with _on_device(u.device):
        if nchunks > 1 and not independent:
            _launch_kernel(kernel, grid, *args, **flags, SUMMARY=True)
            combine_chunks(chunk_P, chunk_S, reverse=False)
        _launch_kernel(kernel, grid, *args, **flags, SUMMARY=False)
    return _contiguous(out, layout), last.transpose(1, 2).contiguous() if return_last_state else last, ckpt


BIND_STEP_STRIDES = True  # the step kernels' L_STRIDE / BC_L_STRIDE (False: strides read at run time, for A/B timings)
STEP_STRIDES = ("L_STRIDE", "BC_L_STRIDE", "Z_L_STRIDE", "DOUT_L_STRIDE")
# Which of them the forward binds, per dtype of u (bf16 and fp32 measured, fp16 assumed like bf16). H100,
# (128, 160, 196, 8), SPLIT 2 ring, run-time vs bound: bf16 30.8 -> 27.6 us (session 28, scan-fwd-strides); fp32
# 37.2 -> 57.9 uncapped (181 registers instead of 162: two warps per scheduler instead of three), but with the SPLIT
# configs' cap of 168 registers 36.0 -> 35.2, with L2 hints 33.8 (unbound, uncapped) -> 31.7 (session 29,
# scan-fwd-fp32-cap; L and Z strides alone 32.1). The backward binds all of them in every dtype (fp32 230.2 vs
# 233.9 us).
FWD_BOUND_STRIDES = {torch.float16: STEP_STRIDES, torch.bfloat16: STEP_STRIDES, torch.float32: STEP_STRIDES}


def shared_value(*values: int) -> int:
    """The value every one of `values` has, if a positive int32 (a kernel constant), else 0."""
    return values[0] if len(set(values)) == 1 and 0 < values[0] < 2**31 else 0


def step_strides(
    sequences: tuple[Tensor, ...], B: Tensor, C: Tensor, layout: str, bound: Collection[str] = STEP_STRIDES,
    **own: Tensor | None,
) -> dict[str, int]:  # fmt: skip
    """The step kernels' step strides bound at compile time, so that each unrolled step's addresses are constant
    offsets from its block's: L_STRIDE (the one all of `sequences` share), BC_L_STRIDE (the one B and C share) and
    one per keyword of `own` (Z_L_STRIDE=z, DOUT_L_STRIDE=dout: often views of wider tensors); 0 where not shared or
    absent (read at run time), and 0 for every name not in `bound`. One build per distinct set: a model has a few
    (its stages' widths)."""
    if not (bound and BIND_STEP_STRIDES):  # (nothing to work out: runs with strides read at run time)
        return dict.fromkeys(("L_STRIDE", "BC_L_STRIDE", *own), 0)
    strides = {
        "L_STRIDE": shared_value(*(_x_strides(t, layout)[1] for t in sequences)),
        "BC_L_STRIDE": shared_value(_bc_strides(B, layout)[3], _bc_strides(C, layout)[3]),
        **{name: shared_value(_x_strides(t, layout)[1]) if t is not None else 0 for name, t in own.items()},
    }
    return {name: value if name in bound else 0 for name, value in strides.items()}


def atomic_bc_sums(choice: str, dtype: torch.dtype) -> bool:
    """Whether the step backward adds its dB/dC sums by atomics (`SFMAMBA_SCAN_BC_SUM`): `'auto'` does for fp32
    inputs only. H100, SPLIT 2 at (128, 160, 196, 8) / (128, 320, 49, 8), partials vs atomics: fp32 230.2 -> 225.3 /
    125.2 -> 118.9 us, bf16 180.8 -> 189.6 / 94.7 -> 93.3 (benchmarks/results/s28_20261206, scan-bwd-atomic)."""
    return choice == "atomic" or (choice == "auto" and dtype == torch.float32)


def selective_scan_bwd(
    dout: Tensor, dlast: Tensor | None, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, initial_state: Tensor | None,
    cu_seqlens: Tensor | None, ckpt: Tensor, delta_softplus: bool, seq_len: int | None, layout: str,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Launch the backward kernels; returns (du, ddelta, dA, dB, dC, dD, dz, dbias, dh0), empty where absent."""
    seq_len = seq_len or None
    batch, dim, length, nstate, groups = _shape(u, A, B, layout)
    dim_per_group = dim // groups
    chunk = bwd_chunk_for(nstate, u.dtype)
    n_ckpt = triton.cdiv(length, chunk)
    kernel = _bwd_kernel()
    step_kernel = kernel is selective_scan_bwd_kernel  # the tiled kernel takes one chunk per program
    # (the setting read first: a typo fails with either kernel)
    deterministic = torch.are_deterministic_algorithms_enabled()
    atomic_bc = atomic_bc_sums(scan_bc_sum(), u.dtype) and step_kernel and not deterministic
    span, nspans = plan_bwd_spans(batch, groups, dim_per_group, n_ckpt, chunk, u.device) if step_kernel else (1, n_ckpt)
    reset, period, seg_ids, cu = _reset_args(length, seq_len, cu_seqlens, u.device)
    dev, f32 = u.device, torch.float32

    def new(shape: tuple, dtype: torch.dtype = f32, present: bool = True) -> Tensor:
        return torch.empty(shape if present else (0,), device=dev, dtype=dtype)

    B_in, C_in = B, C
    u, delta, z, dout, B, C = (_rows_adjacent(t, layout) for t in (u, delta, z, dout, B, C))
    du, ddelta = _empty_adjacent(u, layout, u.dtype), _empty_adjacent(u, layout, delta.dtype)
    dz = _empty_adjacent(u, layout, z.dtype) if z is not None else new((0,))
    # dB, dC partials per channel block (the most any config launches), or one zeroed block every block adds into
    n_dblocks = 1 if atomic_bc else triton.cdiv(dim_per_group, min(c.kwargs["BLOCK_D"] for c in kernel.configs))
    bc_part = (torch.zeros if atomic_bc else torch.empty)((2, n_dblocks, batch, groups, length, nstate), device=dev,
                                                          dtype=f32)  # fmt: skip
    dB_part, dC_part = bc_part[0], bc_part[1]
    dA_part = new((batch, nspans, nstate, dim))
    dD_part = new((batch, nspans, dim), present=D is not None)
    dbias_part = new((batch, nspans, dim), present=delta_bias is not None)
    dh0 = new((initial_state.shape[0], nstate, dim)) if initial_state is not None else new((0,))
    sum_X, sum_Q = new((batch, nspans, nstate, dim)), new((batch, nspans, nstate, dim))
    anything = u
    args = (
        u, delta, A.contiguous(), B, C, anything if D is None else D.contiguous(), anything if z is None else z,
        anything if delta_bias is None else delta_bias.contiguous(),
        anything if initial_state is None else initial_state.transpose(1, 2).contiguous(),
        anything if seg_ids is None else seg_ids, anything if cu is None else cu,
        ckpt, dout, anything if dlast is None else dlast.transpose(1, 2).contiguous(), sum_X, sum_Q,
        du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part, dh0,
        length, dim_per_group, nstate, period, nspans, batch, n_ckpt, span,
        *_x_strides(u, layout), *_x_strides(delta, layout), *_x_strides(z if z is not None else u, layout),
        *_x_strides(dout, layout), *_x_strides(du, layout), *_bc_strides(B, layout), *_bc_strides(C, layout),
    )  # fmt: skip
    flags = dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_H0=initial_state is not None, RESET=reset, HAS_DLAST=dlast is not None, CHUNK=chunk,
    )  # fmt: skip
    if step_kernel:
        flags["VECTOR_BC"] = vector_bc(B, nstate, layout) and vector_bc(C, nstate, layout)
        # (ddelta and dz share du's strides; dout is often a view of a wider gradient, e.g. a concat's)
        flags.update(step_strides((u, delta, du), B, C, layout, Z_L_STRIDE=z, DOUT_L_STRIDE=dout))
    atomic_flag = {"ATOMIC_BC": atomic_bc} if step_kernel else {}  # (not the summary pass's: it writes no dB/dC)

    def grid(meta: dict) -> tuple[int, int, int]:
        return triton.cdiv(dim_per_group, meta["BLOCK_D"]), groups * nspans, batch

    with _on_device(dev):
        if nspans > 1:
            _launch_kernel(kernel, grid, *args, **flags, SUMMARY=True)
            combine_chunks(sum_Q, sum_X, reverse=True)
        meta = _launch_kernel(kernel, grid, *args, **flags, **atomic_flag, SUMMARY=False)
        used = 1 if atomic_bc else triton.cdiv(dim_per_group, meta["BLOCK_D"])
        dB, dC, dA, dD, dbias = sum_partials(bc_part, used, B_in, C_in, length, groups, layout, dA_part,
                                             dD_part if D is not None else None,
                                             dbias_part if delta_bias is not None else None)  # fmt: skip
    dh0 = dh0.transpose(1, 2).contiguous() if initial_state is not None else dh0
    du, ddelta, dz = _contiguous(du, layout), _contiguous(ddelta, layout), _contiguous(dz, layout)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0


_FWD_SCHEMA = (
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
    "Tensor? initial_state, Tensor? cu_seqlens, bool delta_softplus, int seq_len, str layout, "
    "bool return_last_state, bool save_chunks) -> (Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor dout, Tensor? dlast, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
    "Tensor? delta_bias, Tensor? initial_state, Tensor? cu_seqlens, Tensor chunks, bool delta_softplus, "
    "int seq_len, str layout) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("sfmamba::selective_scan_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _fwd_op(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, seq_len, layout,
            return_last_state, save_chunks):  # fmt: skip
    return selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
                              seq_len or None, layout, return_last_state, save_chunks)  # fmt: skip


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, seq_len, layout,
      return_last_state, save_chunks):  # fmt: skip
    batch, dim, length, nstate, _ = _shape(u, A, B, layout)
    nseg = _num_segments(batch, length, seq_len or None, cu_seqlens)
    nchunks = triton.cdiv(length, bwd_chunk_for(nstate, u.dtype))
    last = u.new_empty((nseg, dim, nstate) if return_last_state else (0,), dtype=torch.float32)
    chunks = u.new_empty((batch, nchunks, nstate, dim) if save_chunks else (0,), dtype=torch.float32)
    return torch.empty_like(u, memory_format=torch.contiguous_format), last, chunks


@torch.library.custom_op("sfmamba::selective_scan_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _bwd_op(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, chunks, delta_softplus,
            seq_len, layout):  # fmt: skip
    return selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, chunks,
                              delta_softplus, seq_len or None, layout)  # fmt: skip


@_bwd_op.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, chunks, delta_softplus,
      seq_len, layout):  # fmt: skip
    def fresh(x: Tensor | None, dtype: torch.dtype | None = None) -> Tensor:
        if x is None:
            return u.new_empty((0,))
        return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)

    return (fresh(u), fresh(delta), fresh(A), fresh(B), fresh(C), fresh(D, torch.float32), fresh(z),
            fresh(delta_bias, torch.float32), fresh(initial_state, torch.float32))  # fmt: skip


def _setup_context(ctx, inputs, output) -> None:
    (u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, seq_len, layout,
     return_last_state, _) = inputs  # fmt: skip
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, output[2])
    ctx.flags = (delta_softplus, seq_len, layout, return_last_state)
    # no zeros for the gradients of unused outputs: autograd would fill one for the checkpoints on every backward
    # ([batch, L / chunk, N, D] fp32: 16 MB at (128, 160, 196, 8), a 6.4 us memset under ncu, session 24)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dlast, _dchunks, bwd=None):
    """Gradients of the op's inputs; `bwd` is the traceable op unless the eager autograd.Function passes the launcher."""
    u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, chunks = ctx.saved_tensors
    delta_softplus, seq_len, layout, return_last_state = ctx.flags
    if chunks.numel() == 0:
        raise RuntimeError("selective_scan: backward called but the forward ran without grad enabled on its inputs")
    dlast = dlast if return_last_state else None
    if dout is None:  # only the last state was used
        dout = torch.zeros_like(u)
    bwd = bwd or torch.ops.sfmamba.selective_scan_bwd
    grads = bwd(
        dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, chunks,
        delta_softplus, seq_len, layout,
    )  # fmt: skip
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = (g if g.numel() else None for g in grads)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class SelectiveScanFunction(torch.autograd.Function):
    """The same forward/backward as the `sfmamba::selective_scan_fwd` op, for eager mode: it skips the
    torch.library dispatch, whose per-call host cost is as large as the kernel time at vision shapes."""

    @staticmethod
    def forward(ctx, *inputs):
        out, last, ckpt = selective_scan_fwd(*inputs)
        _setup_context(ctx, inputs, (out, last, ckpt))
        ctx.mark_non_differentiable(ckpt)
        return out, last, ckpt

    @staticmethod
    @once_differentiable  # the backward kernels build no graph: a double backward must fail loudly
    def backward(ctx, dout, dlast, dckpt):
        return _backward(ctx, dout, dlast, dckpt, bwd=selective_scan_bwd)


def selective_scan_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, return_last_state: bool, seq_len: int | None,
    cu_seqlens: Tensor | None, initial_state: Tensor | None, layout: str,
) -> Tensor | tuple[Tensor, Tensor]:  # fmt: skip
    """The Triton path of `sfmamba.ops.selective_scan` (inputs already checked)."""
    save = _needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if torch.compiler.is_compiling():
        scan = torch.ops.sfmamba.selective_scan_fwd
    else:  # eager: the autograd.Function only when a backward will run (its apply costs host time per call)
        scan = SelectiveScanFunction.apply if save else selective_scan_fwd
    out, last, _ = scan(
        u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, seq_len or 0, layout,
        return_last_state, save,
    )  # fmt: skip
    return (out, last) if return_last_state else out
