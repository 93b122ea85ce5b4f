"""Triton inference epilogue of conv + BatchNorm (+ activation, + residual).

Unfused, an eval-mode `conv(bias) -> BatchNorm -> GELU -> ... + x` under autocast costs, besides the conv: a cast
of the weight, a broadcast bias add (cuDNN's conv leaves the bias to a separate, non-vectorised kernel), the BN
transform, the activation and the residual add -- four full passes over the activation. Here one tiny kernel folds
BN (and a layer scale) into the weight, writing it straight in the conv's compute dtype, and one pass adds the bias,
applies the activation and adds the residual.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...utils._config import triton_interpret
from .._activations import ACTIVATION_CODES, act_fwd
from .._launch import launch as _launch_kernel
from .._launch import on_device as _on_device


@triton.jit
def fold_batch_norm_kernel(
    w_ptr, b_ptr, g_ptr, beta_ptr, mean_ptr, var_ptr, scale_ptr, w_out_ptr, b_out_ptr, K, eps, sw, so,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # One program per output channel o: its K = in_channels * kernel elements are contiguous in storage (any dense
    # memory format of a conv weight keeps each output channel's block together).
    o = tl.program_id(0)
    s = tl.load(g_ptr + o).to(tl.float32) / tl.sqrt(tl.load(var_ptr + o).to(tl.float32) + eps)
    shift = -tl.load(mean_ptr + o).to(tl.float32)
    if HAS_BIAS:
        shift += tl.load(b_ptr + o).to(tl.float32)
    b = shift * s + tl.load(beta_ptr + o).to(tl.float32)
    if HAS_SCALE:
        layer_scale = tl.load(scale_ptr + o).to(tl.float32)
        s *= layer_scale
        b *= layer_scale
    tl.store(b_out_ptr + o, b)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + o * sw + k, mask=k < K, other=0.0).to(tl.float32)
        tl.store(w_out_ptr + o * so + k, (w * s).to(w_out_ptr.dtype.element_ty), mask=k < K)


@triton.jit
def bias_act_kernel(
    y_ptr, bias_ptr, res_ptr, out_ptr, n, C, inner, ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # y, residual and out share one dense memory format; element i's channel is (i // inner) % C (inner = 1 for
    # channels-last, H * W for NCHW).
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    channel = (offs // inner) % C
    v = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v += tl.load(bias_ptr + channel, mask=mask, other=0.0).to(tl.float32)
    v = act_fwd(v, ACTIVATION).to(y_ptr.dtype.element_ty)  # rounded where the unfused activation leaves it
    if HAS_RESIDUAL:
        v = v.to(tl.float32) + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


def fold_batch_norm_fwd(
    weight: Tensor, bias: Tensor | None, bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor,
    running_var: Tensor, eps: float, scale: Tensor | None, out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """weight [O, ...] dense with each output channel's block contiguous (stride(0) == numel / O)."""
    channels, k = weight.shape[0], weight[0].numel()
    w_out = torch.empty_like(weight, dtype=out_dtype)
    b_out = torch.empty(channels, device=weight.device, dtype=torch.float32)
    block_k = min(triton.next_power_of_2(k), 64 if triton_interpret() else 2048)
    dummy = running_mean  # never read: the matching HAS_* flag is off
    with _on_device(weight.device):
        _launch_kernel(
            fold_batch_norm_kernel, (channels,),
            weight, bias if bias is not None else dummy, bn_weight, bn_bias, running_mean, running_var,
            scale if scale is not None else dummy, w_out, b_out, k, eps, weight.stride(0), w_out.stride(0),
            HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, BLOCK_K=block_k, num_warps=4,
        )  # fmt: skip
    return w_out, b_out


def bias_act_fwd(
    y: Tensor, bias: Tensor, activation: str, residual: Tensor | None, inner: int, out_dtype: torch.dtype
) -> Tensor:
    """y [B, C, ...] dense, channel of flat element i = (i // inner) % C; residual (if any) with y's strides."""
    out = torch.empty_like(y, dtype=out_dtype)
    n = y.numel()
    block = 256 if triton_interpret() else 1024
    with _on_device(y.device):
        _launch_kernel(
            bias_act_kernel, (triton.cdiv(n, block),),
            y, bias, residual if residual is not None else y, out, n, y.shape[1], inner,
            ACTIVATION=ACTIVATION_CODES[activation], HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=4,
        )  # fmt: skip
    return out
