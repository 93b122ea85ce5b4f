"""Conv + BatchNorm (+ activation, + residual): BN folded into the conv for inference, BN + activation fused for
training.

In eval mode a BatchNorm after a conv is a per-channel affine map; `conv_bn_act` folds it (and a layer scale) into
the conv's weight and bias (`ops.conv_bn`) and applies bias, activation and residual in one Triton pass
(`fuses_conv_bn` says when). In training, `bn_act` runs a BatchNorm with batch statistics and the activation after it
as `ops.batch_norm_act` on channels-last maps (`takes_bn_kernels` says when; by default only under CUDA-graph capture,
`utils._config.train_kernels`). torch.compile and the CPU keep the plain modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops._checks import FLOAT_DTYPES
from ..ops._launch import in_functorch_transform
from ..ops.batch_norm import batch_norm_act
from ..ops.conv_bn import bias_act, fold_batch_norm, runs_fused
from ..utils._config import train_kernels, use_triton
from ..utils.hooks import has_forward_hooks, has_hooks
from ..utils.inference_cache import reused
from .linear import activation_name

__all__ = ["bn_act", "conv_bn_act", "conv_bn_act_train", "conv_compute_dtype", "fuses_conv_bn", "takes_bn_kernels"]


def fuses_conv_bn(x: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, *others: Tensor | None) -> bool:
    """Whether `conv_bn_act` applies: BN in eval mode with running statistics and affine parameters, a zero-padded
    conv without forward hooks (they would not run), no gradient needed and the Triton kernels usable for x's
    device."""
    uses_running_stats = not bn.training and bn.running_mean is not None and bn.running_var is not None
    return (
        uses_running_stats
        and bn.affine
        and conv.padding_mode == "zeros"
        and not has_forward_hooks(conv, bn)
        and runs_fused(x, conv.weight, conv.bias, bn.weight, bn.bias, *others)
    )


def conv_compute_dtype(x: Tensor, conv: nn.Conv2d) -> torch.dtype:
    """The dtype the conv computes in: autocast's for floating weights below fp64 (autocast leaves fp64 alone), else
    the weight's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and conv.weight.dtype != torch.float64:
        return torch.get_autocast_dtype(device_type)
    return conv.weight.dtype


def conv_bn_act(
    x: Tensor,
    conv: nn.Conv2d,
    bn: nn.BatchNorm2d,
    activation: str = "none",
    residual: Tensor | None = None,
    scale: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """activation(scale * bn(conv(x))) + residual with BN folded into the conv; for callers that checked
        `fuses_conv_bn`. The folded weight is written in the autocast dtype when autocast is on, so the conv casts
        nothing; the result comes in `out_dtype` (default: `ops.conv_bn.bias_act`'s). In eager inference the folded
    weights are kept on the conv between calls (`utils.inference_cache`)."""
    dtype = conv_compute_dtype(x, conv)

    def fold() -> tuple[Tensor, Tensor]:
        return fold_batch_norm(
            conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, scale, dtype
        )

    # num_batches_tracked: every training forward bumps its version; the running statistics' in-place kernel writes
    # (ATen's and ours) do not, so a BN-only recalibration would otherwise leave a stale fold
    stats = (bn.running_mean, bn.running_var, bn.num_batches_tracked)
    sources = (conv.weight, conv.bias, bn.weight, bn.bias, *stats, scale)
    weight, bias = reused(conv, "_bn_fold_cache", sources, fold, (dtype, bn.eps))
    y = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return bias_act(y, bias, activation, residual, out_dtype)


def takes_bn_kernels(x: Tensor, bn: nn.Module, act: nn.Module | None = None) -> bool:
    """Whether `bn_act(x, bn, act)` runs `ops.batch_norm_act`: a plain `nn.BatchNorm2d` in training mode with affine
    parameters and a fixed momentum, an activation it knows, no forward or backward hooks on either, a non-empty
    channels-last float map, outside torch.compile and torch.func transforms, Triton usable for x's device, the fused
    training ops on (`train_kernels`)."""
    if type(bn) is not nn.BatchNorm2d or not bn.training or not bn.affine or bn.momentum is None or not train_kernels():
        return False
    if _act_name(act) is None or has_hooks(bn, *([act] if act is not None else [])):
        return False
    if torch.compiler.is_compiling() or x.dim() != 4 or x.dtype not in FLOAT_DTYPES or x.numel() == 0:
        return False
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return channels_last and not in_functorch_transform() and use_triton(x.device)


def _act_name(act: nn.Module | None) -> str | None:
    return "none" if act is None else activation_name(act)


def bn_act(x: Tensor, bn: nn.BatchNorm2d, act: nn.Module | None = None, shift: Tensor | None = None) -> Tensor:
    """`act(bn(x + shift))` (act None: no activation; shift [C] optional), through `ops.batch_norm_act` where
    `takes_bn_kernels`: the statistics, the normalisation and the activation in two passes forward and two backward,
    instead of BN's four and the activation's two."""
    if not takes_bn_kernels(x, bn, act):
        return _bn_act_plain(x, bn, act, shift)
    return _bn_act_kernels(x, bn, act, shift)


def _bn_act_plain(x: Tensor, bn: nn.BatchNorm2d, act: nn.Module | None, shift: Tensor | None) -> Tensor:
    x = x if shift is None else x + shift.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))  # as a conv bias
    return bn(x) if act is None else act(bn(x))


def _bn_act_kernels(x: Tensor, bn: nn.BatchNorm2d, act: nn.Module | None, shift: Tensor | None) -> Tensor:
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)  # as nn.BatchNorm's forward counts
    running = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    return batch_norm_act(
        x, bn.weight, bn.bias, *running, float(bn.momentum), float(bn.eps), _act_name(act), shift
    )  # fmt: skip


def conv_bn_act_train(x: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module | None = None) -> Tensor:
    """`act(bn(conv(x)))` for training. Where `takes_bn_kernels`, a conv bias is left out of the conv and passed to
    the BN as its shift: BN's batch mean cancels it exactly (its gradient is exactly zero), so the bias-add pass of
    the forward and the bias-gradient reduction of the backward go, and it only moves the running mean."""
    plain_conv = type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not has_hooks(conv)
    if conv.bias is None or not plain_conv or not takes_bn_kernels(x, bn, act):
        return bn_act(conv(x), bn, act)
    y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    # the rest of takes_bn_kernels holds for y as for x; only the layout can differ (a one-channel x counts as
    # channels-last, its conv output need not)
    if not y.is_contiguous(memory_format=torch.channels_last):
        return _bn_act_plain(y, bn, act, conv.bias)
    return _bn_act_kernels(y, bn, act, conv.bias)
