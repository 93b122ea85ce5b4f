"""Triton depthwise conv1d: forward and backward kernels, launchers, and the autograd registration.

The forward gives every program one [BLOCK_L, BLOCK_D] output tile of one row and loads the K taps as K shifted,
masked tiles of the input (explicit strides, so (batch, L, D) and (batch, D, L) need no copy). A tap is masked when
its source position lies outside the output position's segment (periodic `seq_len`, packed `cu_seqlens`), which is
exactly zero padding at every segment boundary. The backward gives every program a block of channels and a span of
rows; it writes dx for its rows (recomputing the pre-activation of the K output positions each input feeds when
SiLU is fused) and per-program partial sums of dweight and dbias, summed on the host so the result is deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...utils._config import triton_interpret
from .._launch import autotune as _autotune
from .._launch import launch as _launch_kernel
from .._launch import needs_grad as _needs_grad
from .._launch import on_device as _on_device
from .._launch import x_strides as _x_strides
from .naive import pad_left

RESET_NONE, RESET_PERIODIC, RESET_VARLEN = 0, 1, 2
MAX_TILE = 8192  # elements of one [BLOCK_L, BLOCK_D] tile; more spills registers


def _fwd_configs() -> list[triton.Config]:
    if triton_interpret():  # the interpreter runs every config: keep CI to one
        return [triton.Config({"BLOCK_L": 64, "BLOCK_D": 64}, num_warps=4)]
    return [
        triton.Config({"BLOCK_L": bl, "BLOCK_D": bd}, num_warps=w)
        for bl in (16, 32, 64, 128)
        for bd in (32, 64, 128)
        for w in (4, 8)
        if bl * bd <= MAX_TILE
    ]


def _bwd_configs() -> list[triton.Config]:
    if triton_interpret():
        return [triton.Config({"BLOCK_L": 64, "BLOCK_D": 64}, num_warps=4)]
    return [
        triton.Config({"BLOCK_L": bl, "BLOCK_D": bd}, num_warps=w)
        for bl in (32, 64, 128)
        for bd in (32, 64, 128)
        for w in (4, 8)
        if bl * bd <= MAX_TILE
    ]


def split_rows(length: int) -> int:
    """Rows per backward program: at most ~8 programs per (row, channel block), a multiple of every BLOCK_L."""
    return max(128, triton.next_power_of_2(triton.cdiv(length, 8)))


@triton.jit
def _bounds(t, L, seq_len, seg_ids_ptr, cu_ptr, RESET: tl.constexpr):
    """First position and one past the last of the segment of every position in `t` (t >= L gives junk)."""
    if RESET == 0:
        lo = t * 0
        hi = lo + L
    elif RESET == 1:
        lo = (t // seq_len) * seq_len
        hi = lo + seq_len
    else:
        seg = tl.load(seg_ids_ptr + t, mask=t < L, other=0)
        lo = tl.load(cu_ptr + seg)
        hi = tl.load(cu_ptr + seg + 1)
    return lo, hi


@_autotune(configs=_fwd_configs(), key=["D", "K", "LAYOUT_BLD"])
@triton.jit(do_not_specialize=["L", "seq_len"])
def depthwise_conv1d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, seg_ids_ptr, cu_ptr, out_ptr,
    L, D, seq_len,
    sx_b, sx_l, sx_d, so_b, so_l, so_d,
    K: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, RESET: tl.constexpr,
    LAYOUT_BLD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # weight: contiguous [D, K]; x and out: any strides, addressed as (batch, L, D)
    pid_l, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    ch = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_t = t < L
    mask_d = ch < D
    x_ptr += pid_b.to(tl.int64) * sx_b
    out_ptr += pid_b.to(tl.int64) * so_b
    lo, hi = _bounds(t, L, seq_len, seg_ids_ptr, cu_ptr, RESET)
    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        src = t + (k - PAD)
        ok = (src >= lo) & (src < hi) & mask_t
        xk = tl.load(x_ptr + src[:, None] * sx_l + ch[None, :] * sx_d, mask=ok[:, None] & mask_d[None, :], other=0.0)
        wk = tl.load(w_ptr + ch * K + k, mask=mask_d, other=0.0).to(tl.float32)
        acc += xk.to(tl.float32) * wk[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    mask = mask_t[:, None] & mask_d[None, :]
    tl.store(out_ptr + t[:, None] * so_l + ch[None, :] * so_d, acc.to(out_ptr.dtype.element_ty), mask=mask)


@_autotune(configs=_bwd_configs(), key=["D", "K", "LAYOUT_BLD"])
@triton.jit(do_not_specialize=["L", "seq_len", "span"])
def depthwise_conv1d_bwd_kernel(
    x_ptr, w_ptr, b_ptr, seg_ids_ptr, cu_ptr, dout_ptr,
    dx_ptr, dw_ptr, db_ptr,
    L, D, seq_len, span,
    sx_b, sx_l, sx_d, sdo_b, sdo_l, sdo_d, sdx_b, sdx_l, sdx_d,
    K: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, RESET: tl.constexpr,
    LAYOUT_BLD: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # dw partials: [batch * n_split, D, K], db partials: [batch * n_split, D], fp32, one slot per program
    pid_d, pid_s, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    part = pid_b * tl.num_programs(1) + pid_s
    ch = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = ch < D
    taps = tl.arange(0, BLOCK_K)
    x_ptr += pid_b.to(tl.int64) * sx_b
    dout_ptr += pid_b.to(tl.int64) * sdo_b
    dx_ptr += pid_b.to(tl.int64) * sdx_b
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias += tl.load(b_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_D, BLOCK_K], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = pid_s * span
    stop = tl.minimum(start + span, L)
    for t0 in range(start, stop, BLOCK_L):
        s = t0 + tl.arange(0, BLOCK_L)  # the input rows this program owns
        mask_s = s < stop
        lo, hi = _bounds(s, L, seq_len, seg_ids_ptr, cu_ptr, RESET)
        dx = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(K):
            # x[s] feeds output t = s + PAD - j through tap j; t shares s's segment, hence its bounds
            t = s + (PAD - j)
            t_ok = (t >= lo) & (t < hi) & mask_s
            mask_t = t_ok[:, None] & mask_d[None, :]
            g = tl.load(dout_ptr + t[:, None] * sdo_l + ch[None, :] * sdo_d, mask=mask_t, other=0.0).to(tl.float32)
            if SILU:  # recompute the pre-activation at t
                pre = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32) + bias[None, :]
                for k in tl.static_range(K):
                    src = t + (k - PAD)
                    ok = (src >= lo) & (src < hi) & t_ok
                    xk = tl.load(
                        x_ptr + src[:, None] * sx_l + ch[None, :] * sx_d, mask=ok[:, None] & mask_d[None, :], other=0.0
                    )
                    wk = tl.load(w_ptr + ch * K + k, mask=mask_d, other=0.0).to(tl.float32)
                    pre += xk.to(tl.float32) * wk[None, :]
                sig = tl.sigmoid(pre)
                g = g * sig * (1.0 + pre * (1.0 - sig))
            wj = tl.load(w_ptr + ch * K + j, mask=mask_d, other=0.0).to(tl.float32)
            dx += g * wj[None, :]
            if j == PAD:  # t == s: this tile's own outputs give the weight and bias gradients
                db_acc += tl.sum(g, axis=0)
                for k in tl.static_range(K):
                    src = s + (k - PAD)
                    ok = (src >= lo) & (src < hi) & mask_s
                    xk = tl.load(
                        x_ptr + src[:, None] * sx_l + ch[None, :] * sx_d, mask=ok[:, None] & mask_d[None, :], other=0.0
                    )
                    dwk = tl.sum(g * xk.to(tl.float32), axis=0)
                    dw_acc += tl.where((taps == k)[None, :], dwk[:, None], 0.0)
        mask = mask_s[:, None] & mask_d[None, :]
        tl.store(dx_ptr + s[:, None] * sdx_l + ch[None, :] * sdx_d, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    dw_mask = mask_d[:, None] & (taps < K)[None, :]
    tl.store(dw_ptr + (part * D + ch[:, None]) * K + taps[None, :], dw_acc, mask=dw_mask)
    if HAS_BIAS:
        tl.store(db_ptr + part * D + ch, db_acc, mask=mask_d)


def _shape(x: Tensor, layout: str) -> tuple[int, int, int]:
    """(batch, D, L)."""
    return (x.shape[0], x.shape[1], x.shape[2]) if layout == "BDL" else (x.shape[0], x.shape[2], x.shape[1])


def _reset_args(length: int, seq_len: int | None, cu_seqlens: Tensor | None, device: torch.device) -> tuple:
    if cu_seqlens is not None:
        cu = cu_seqlens.to(torch.int32)
        positions = torch.arange(length, device=device, dtype=torch.int32)
        seg_ids = torch.searchsorted(cu[1:].contiguous(), positions, right=True).to(torch.int32)
        return RESET_VARLEN, 1, seg_ids, cu
    if seq_len is not None and seq_len != length:
        return RESET_PERIODIC, seq_len, None, None
    return RESET_NONE, length, None, None


def depthwise_conv1d_fwd(
    x: Tensor, weight: Tensor, bias: Tensor | None, cu_seqlens: Tensor | None, seq_len: int | None, pad: int,
    silu: bool, layout: str,
) -> Tensor:  # fmt: skip
    """Launch the forward kernel; returns the output, contiguous in x's layout and dtype (`seq_len` 0 or None: no
    periodic reset)."""
    seq_len = seq_len or None
    batch, dim, length = _shape(x, layout)
    reset, period, seg_ids, cu = _reset_args(length, seq_len, cu_seqlens, x.device)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    anything = x  # stands in for absent optional tensors; never read
    with _on_device(x.device):
        _launch_kernel(
            depthwise_conv1d_fwd_kernel,
            lambda meta: (triton.cdiv(length, meta["BLOCK_L"]), triton.cdiv(dim, meta["BLOCK_D"]), batch),
            x, weight.contiguous(), anything if bias is None else bias,
            anything if seg_ids is None else seg_ids, anything if cu is None else cu, out,
            length, dim, period,
            *_x_strides(x, layout), *_x_strides(out, layout),
            K=weight.shape[1], PAD=pad, HAS_BIAS=bias is not None, SILU=silu, RESET=reset,
            LAYOUT_BLD=layout == "BLD",
        )  # fmt: skip
    return out


def depthwise_conv1d_bwd(
    dout: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, cu_seqlens: Tensor | None, seq_len: int | None,
    pad: int, silu: bool, layout: str,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Launch the backward kernel; returns (dx, dweight, dbias or empty), each in its input's dtype."""
    seq_len = seq_len or None
    batch, dim, length = _shape(x, layout)
    kernel_size = weight.shape[1]
    reset, period, seg_ids, cu = _reset_args(length, seq_len, cu_seqlens, x.device)
    span = split_rows(length)
    n_split = triton.cdiv(length, span)
    dev = x.device
    dx = torch.empty(x.shape, device=dev, dtype=x.dtype)
    dw_part = torch.empty(batch * n_split, dim, kernel_size, device=dev, dtype=torch.float32)
    db_part = torch.empty(batch * n_split, dim, device=dev, dtype=torch.float32) if bias is not None else dw_part
    anything = x
    with _on_device(dev):
        _launch_kernel(
            depthwise_conv1d_bwd_kernel, lambda meta: (triton.cdiv(dim, meta["BLOCK_D"]), n_split, batch),
            x, weight.contiguous(), anything if bias is None else bias,
            anything if seg_ids is None else seg_ids, anything if cu is None else cu, dout,
            dx, dw_part, db_part,
            length, dim, period, span,
            *_x_strides(x, layout), *_x_strides(dout, layout), *_x_strides(dx, layout),
            K=kernel_size, PAD=pad, HAS_BIAS=bias is not None, SILU=silu, RESET=reset,
            LAYOUT_BLD=layout == "BLD", BLOCK_K=triton.next_power_of_2(kernel_size),
        )  # fmt: skip
    dweight = dw_part.sum(0).to(weight.dtype)
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else torch.zeros(0, device=dev, dtype=x.dtype)
    return dx, dweight, dbias


_FWD_SCHEMA = (
    "(Tensor x, Tensor weight, Tensor? bias, Tensor? cu_seqlens, int seq_len, int pad, bool silu, str layout) -> Tensor"
)
_BWD_SCHEMA = (
    "(Tensor dout, Tensor x, Tensor weight, Tensor? bias, Tensor? cu_seqlens, int seq_len, int pad, bool silu, "
    "str layout) -> (Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("sfmamba::depthwise_conv1d_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _fwd_op(x, weight, bias, cu_seqlens, seq_len, pad, silu, layout):
    return depthwise_conv1d_fwd(x, weight, bias, cu_seqlens, seq_len or None, pad, silu, layout)


@_fwd_op.register_fake
def _(x, weight, bias, cu_seqlens, seq_len, pad, silu, layout):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("sfmamba::depthwise_conv1d_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _bwd_op(dout, x, weight, bias, cu_seqlens, seq_len, pad, silu, layout):
    return depthwise_conv1d_bwd(dout, x, weight, bias, cu_seqlens, seq_len or None, pad, silu, layout)


@_bwd_op.register_fake
def _(dout, x, weight, bias, cu_seqlens, seq_len, pad, silu, layout):
    dbias = x.new_empty((0,)) if bias is None else torch.empty_like(bias, memory_format=torch.contiguous_format)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        dbias,
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, cu_seqlens, seq_len, pad, silu, layout = inputs
    ctx.save_for_backward(x, weight, bias, cu_seqlens)
    ctx.flags = (seq_len, pad, silu, layout)


def _backward(ctx, dout, bwd=None):
    """Gradients of x, weight and bias; `bwd` is the traceable op unless the eager autograd.Function passes the
    launcher."""
    x, weight, bias, cu_seqlens = ctx.saved_tensors
    seq_len, pad, silu, layout = ctx.flags
    bwd = bwd or torch.ops.sfmamba.depthwise_conv1d_bwd
    dx, dweight, dbias = bwd(dout, x, weight, bias, cu_seqlens, seq_len, pad, silu, layout)
    return dx, dweight, dbias if bias is not None else None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class DepthwiseConv1dFunction(torch.autograd.Function):
    """The `sfmamba::depthwise_conv1d_fwd` op's forward and backward for eager mode, without the torch.library
    dispatch (~100 us of host time per call on an H200 host, `benchmarks/ops/experiments/host_overhead.py`)."""

    @staticmethod
    def forward(ctx, *inputs):
        x, weight, bias, cu_seqlens, seq_len, pad, silu, layout = inputs
        out = depthwise_conv1d_fwd(x, weight, bias, cu_seqlens, seq_len, pad, silu, layout)
        _setup_context(ctx, inputs, out)
        return out

    @staticmethod
    @once_differentiable  # the backward kernels build no graph: a double backward must fail loudly
    def backward(ctx, dout):
        return _backward(ctx, dout, bwd=depthwise_conv1d_bwd)


def depthwise_conv1d_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None, padding: str, activation: str | None, seq_len: int | None,
    cu_seqlens: Tensor | None, layout: str,
) -> Tensor:  # fmt: skip
    """The Triton path of `sfmamba.ops.depthwise_conv1d` (inputs already checked)."""
    pad, silu = pad_left(weight.shape[1], padding), activation == "silu"
    if torch.compiler.is_compiling():
        return torch.ops.sfmamba.depthwise_conv1d_fwd(x, weight, bias, cu_seqlens, seq_len or 0, pad, silu, layout)
    if _needs_grad(x, weight, bias):
        return DepthwiseConv1dFunction.apply(x, weight, bias, cu_seqlens, seq_len or 0, pad, silu, layout)
    return depthwise_conv1d_fwd(x, weight, bias, cu_seqlens, seq_len, pad, silu, layout)
