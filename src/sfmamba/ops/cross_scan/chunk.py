"""Triton cross-scan and cross-merge: the two kernels, launchers, and the torch.library ops with their autograd.

Both kernels give every program one [BLOCK_P, BLOCK_C] tile of one image: BLOCK_P spatial positions p (row-major,
p = h * W + w) by BLOCK_C channels. Cross-scan loads the tile once and stores it at the four scan positions of p
(p, w * H + h, and both reversed); cross-merge loads those four tiles, sums them in fp32 and stores one tile.
Everything is addressed through explicit strides, so channels-last or channels-first maps and (B, L, 4, C) or
(B, 4, C, L) sequences need no copy, and with channels fastest on both sides every access is coalesced.
The ops are linear and each is the other's adjoint, so each one's backward is the other's forward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...utils._config import triton_interpret
from .._launch import autotune as _autotune
from .._launch import launch as _launch_kernel
from .._launch import on_device as _on_device
from .naive import DIRECTIONS

MAX_TILE = 8192  # elements of one [BLOCK_P, BLOCK_C] tile


def _configs() -> list[triton.Config]:
    if triton_interpret():  # the interpreter runs every config: keep CI to one
        return [triton.Config({"BLOCK_P": 32, "BLOCK_C": 32}, num_warps=4)]
    # a pure copy: a few tile shapes are enough (every config is timed once per channel count at the first call)
    return [
        triton.Config({"BLOCK_P": bp, "BLOCK_C": bc}, num_warps=4)
        for bp in (32, 64)
        for bc in (32, 64, 128)
        if bp * bc <= MAX_TILE
    ]


@triton.jit
def _scan_positions(p, H, W):
    """Scan position of spatial position p in directions 0..3 (row-major, column-major, both reversed)."""
    L = H * W
    h = p // W
    w = p - h * W
    col = w * H + h
    return h, w, p, col, L - 1 - p, L - 1 - col


@_autotune(configs=_configs(), key=["C", "CHANNELS_FAST"])
@triton.jit(do_not_specialize=["H", "W"])
def cross_scan_kernel(
    x_ptr, out_ptr, H, W, C,
    sx_b, sx_h, sx_w, sx_c, so_b, so_l, so_k, so_c,
    CHANNELS_FAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # x: (batch, H, W, C) strides; out: (batch, L, 4, C) strides
    pid_p, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (p < H * W)[:, None] & (ch < C)[None, :]
    h, w, l0, l1, l2, l3 = _scan_positions(p, H, W)
    x_ptr += pid_b.to(tl.int64) * sx_b
    out_ptr += pid_b.to(tl.int64) * so_b + ch[None, :].to(tl.int64) * so_c
    x = tl.load(x_ptr + h[:, None].to(tl.int64) * sx_h + w[:, None] * sx_w + ch[None, :] * sx_c, mask=mask)
    tl.store(out_ptr + l0[:, None].to(tl.int64) * so_l, x, mask=mask)
    tl.store(out_ptr + l1[:, None].to(tl.int64) * so_l + so_k, x, mask=mask)
    tl.store(out_ptr + l2[:, None].to(tl.int64) * so_l + 2 * so_k, x, mask=mask)
    tl.store(out_ptr + l3[:, None].to(tl.int64) * so_l + 3 * so_k, x, mask=mask)


@_autotune(configs=_configs(), key=["C", "CHANNELS_FAST"])
@triton.jit(do_not_specialize=["H", "W"])
def cross_merge_kernel(
    y_ptr, out_ptr, H, W, C,
    sy_b, sy_l, sy_k, sy_c, so_b, so_h, so_w, so_c,
    CHANNELS_FAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # y: (batch, L, 4, C) strides; out: (batch, H, W, C) strides
    pid_p, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (p < H * W)[:, None] & (ch < C)[None, :]
    h, w, l0, l1, l2, l3 = _scan_positions(p, H, W)
    y_ptr += pid_b.to(tl.int64) * sy_b + ch[None, :].to(tl.int64) * sy_c
    acc = tl.load(y_ptr + l0[:, None].to(tl.int64) * sy_l, mask=mask).to(tl.float32)
    acc += tl.load(y_ptr + l1[:, None].to(tl.int64) * sy_l + sy_k, mask=mask).to(tl.float32)
    acc += tl.load(y_ptr + l2[:, None].to(tl.int64) * sy_l + 2 * sy_k, mask=mask).to(tl.float32)
    acc += tl.load(y_ptr + l3[:, None].to(tl.int64) * sy_l + 3 * sy_k, mask=mask).to(tl.float32)
    out_ptr += pid_b.to(tl.int64) * so_b
    offs = h[:, None].to(tl.int64) * so_h + w[:, None] * so_w + ch[None, :] * so_c
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def map_shape(x: Tensor, layout: str) -> tuple[int, int, int, int]:
    """(batch, H, W, C) of a [B, C, H, W] or [B, H, W, C] map."""
    b, s1, s2, s3 = x.shape
    return (b, s2, s3, s1) if layout == "BCHW" else (b, s1, s2, s3)


def _map_strides(x: Tensor, layout: str) -> tuple[int, int, int, int]:
    """(batch, H, W, C) strides of a map."""
    s = x.stride()
    return (s[0], s[2], s[3], s[1]) if layout == "BCHW" else s


def _seq_strides(y: Tensor, scan_layout: str) -> tuple[int, int, int, int]:
    """(batch, L, 4, C) strides of a [B, L, 4, C] ("BLD") or [B, 4, C, L] ("BDL") sequence tensor."""
    s = y.stride()
    return (s[0], s[3], s[1], s[2]) if scan_layout == "BDL" else s


def seq_shape(batch: int, length: int, channels: int, scan_layout: str) -> tuple[int, int, int, int]:
    return (batch, DIRECTIONS, channels, length) if scan_layout == "BDL" else (batch, length, DIRECTIONS, channels)


def _grid(batch: int, length: int, channels: int):
    return lambda meta: (triton.cdiv(length, meta["BLOCK_P"]), triton.cdiv(channels, meta["BLOCK_C"]), batch)


def cross_scan_fwd(x: Tensor, layout: str, scan_layout: str) -> Tensor:
    """Launch the cross-scan kernel; returns the four sequences, contiguous in `scan_layout`, in x's dtype."""
    batch, height, width, channels = map_shape(x, layout)
    out = torch.empty(seq_shape(batch, height * width, channels, scan_layout), device=x.device, dtype=x.dtype)
    xs, os_ = _map_strides(x, layout), _seq_strides(out, scan_layout)
    with _on_device(x.device):
        _launch_kernel(
            cross_scan_kernel, _grid(batch, height * width, channels),
            x, out, height, width, channels, *xs, *os_, CHANNELS_FAST=xs[3] == 1 and os_[3] == 1
        )  # fmt: skip
    return out


def cross_merge_fwd(y: Tensor, height: int, width: int, scan_layout: str, layout: str) -> Tensor:
    """Launch the cross-merge kernel; returns the summed map, contiguous in `layout`, in y's dtype."""
    batch = y.shape[0]
    channels = y.shape[2] if scan_layout == "BDL" else y.shape[3]
    shape = (batch, channels, height, width) if layout == "BCHW" else (batch, height, width, channels)
    out = torch.empty(shape, device=y.device, dtype=y.dtype)
    ys, os_ = _seq_strides(y, scan_layout), _map_strides(out, layout)
    with _on_device(y.device):
        _launch_kernel(
            cross_merge_kernel, _grid(batch, height * width, channels),
            y, out, height, width, channels, *ys, *os_, CHANNELS_FAST=ys[3] == 1 and os_[3] == 1
        )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------- torch.library ops


@torch.library.custom_op(
    "sfmamba::cross_scan", mutates_args=(), schema="(Tensor x, str layout, str scan_layout) -> Tensor"
)
def _scan_op(x: Tensor, layout: str, scan_layout: str) -> Tensor:
    return cross_scan_fwd(x, layout, scan_layout)


@_scan_op.register_fake
def _(x, layout, scan_layout):
    batch, height, width, channels = map_shape(x, layout)
    return x.new_empty(seq_shape(batch, height * width, channels, scan_layout))


_MERGE_SCHEMA = "(Tensor y, int height, int width, str scan_layout, str layout) -> Tensor"


@torch.library.custom_op("sfmamba::cross_merge", mutates_args=(), schema=_MERGE_SCHEMA)
def _merge_op(y: Tensor, height: int, width: int, scan_layout: str, layout: str) -> Tensor:
    return cross_merge_fwd(y, height, width, scan_layout, layout)


@_merge_op.register_fake
def _(y, height, width, scan_layout, layout):
    channels = y.shape[2] if scan_layout == "BDL" else y.shape[3]
    shape = (y.shape[0], channels, height, width) if layout == "BCHW" else (y.shape[0], height, width, channels)
    return y.new_empty(shape)


def _scan_setup(ctx, inputs, output) -> None:
    x, layout, scan_layout = inputs
    _, ctx.height, ctx.width, _ = map_shape(x, layout)
    ctx.layouts = (layout, scan_layout)


def _scan_backward(ctx, dout: Tensor):
    layout, scan_layout = ctx.layouts
    return torch.ops.sfmamba.cross_merge(dout, ctx.height, ctx.width, scan_layout, layout), None, None


def _merge_setup(ctx, inputs, output) -> None:
    _, _, _, scan_layout, layout = inputs
    ctx.layouts = (layout, scan_layout)


def _merge_backward(ctx, dout: Tensor):
    layout, scan_layout = ctx.layouts
    return torch.ops.sfmamba.cross_scan(dout, layout, scan_layout), None, None, None, None


_scan_op.register_autograd(_scan_backward, setup_context=_scan_setup)
_merge_op.register_autograd(_merge_backward, setup_context=_merge_setup)


class CrossScanFunction(torch.autograd.Function):
    """The `sfmamba::cross_scan` op for eager mode, without the torch.library dispatch cost per call."""

    @staticmethod
    def forward(ctx, x: Tensor, layout: str, scan_layout: str) -> Tensor:
        _scan_setup(ctx, (x, layout, scan_layout), None)
        return cross_scan_fwd(x, layout, scan_layout)

    @staticmethod
    def backward(ctx, dout: Tensor):
        layout, scan_layout = ctx.layouts
        return CrossMergeFunction.apply(dout, ctx.height, ctx.width, scan_layout, layout), None, None


class CrossMergeFunction(torch.autograd.Function):
    """The `sfmamba::cross_merge` op for eager mode."""

    @staticmethod
    def forward(ctx, y: Tensor, height: int, width: int, scan_layout: str, layout: str) -> Tensor:
        _merge_setup(ctx, (y, height, width, scan_layout, layout), None)
        return cross_merge_fwd(y, height, width, scan_layout, layout)

    @staticmethod
    def backward(ctx, dout: Tensor):
        layout, scan_layout = ctx.layouts
        return CrossScanFunction.apply(dout, layout, scan_layout), None, None, None, None


def cross_scan_triton(x: Tensor, layout: str, scan_layout: str) -> Tensor:
    """The Triton path of `sfmamba.ops.cross_scan` (inputs already checked)."""
    if torch.compiler.is_compiling():
        return torch.ops.sfmamba.cross_scan(x, layout, scan_layout)
    return CrossScanFunction.apply(x, layout, scan_layout)


def cross_merge_triton(y: Tensor, height: int, width: int, scan_layout: str, layout: str) -> Tensor:
    """The Triton path of `sfmamba.ops.cross_merge` (inputs already checked)."""
    if torch.compiler.is_compiling():
        return torch.ops.sfmamba.cross_merge(y, height, width, scan_layout, layout)
    return CrossMergeFunction.apply(y, height, width, scan_layout, layout)
