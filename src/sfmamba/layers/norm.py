"""LayerNorm that stays in the autocast dtype.

Autocast runs `layer_norm` in fp32: a bf16 activation is cast up (a copy), normalised, and the fp32 result is cast
back down by the next Linear (another copy). The CUDA kernel accumulates its statistics in fp32 for bf16/fp16 inputs
anyway, so normalising in the autocast dtype keeps the statistics exact and removes both copies and half the norm's
memory traffic (H100, MambaVision-T, bs 128, bf16: 24 fp32 LayerNorms took 1.0 ms of an 11.7 ms forward, plus casts).
The output differs from autocast's only by where the affine parameters are rounded, which the next Linear's input
cast does anyway.

Where the ops use Triton (GPU, eager) the norm runs `sfmamba.ops.layer_norm`: the same statistics, the affine map in
fp32, and a backward that reduces the weight and bias gradients inside its kernel (PyTorch's separate kernel for them
cost ~100 us per call in sf_mamba_tiny's training step on an H200). With a gradient to compute it does so only where
the fused training ops are on (`utils._config.train_kernels`: by default under CUDA-graph capture); without one
(inference) always.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops._launch import needs_grad
from ..ops.layer_norm import layer_norm, layer_norm_residual
from ..utils._config import train_kernels, use_triton
from ..utils.hooks import has_hooks

__all__ = ["LayerNorm", "norm_with_residual"]


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters and state-dict keys) that, under autocast, normalises in the autocast dtype."""

    def forward(self, x: Tensor) -> Tensor:
        if self._takes_kernels(x):
            if torch.is_autocast_enabled(x.device.type):
                x = x.to(torch.get_autocast_dtype(x.device.type))
            return layer_norm(x, self.weight, self.bias, self.eps)
        return self._forward_plain(x)

    def _takes_kernels(self, x: Tensor) -> bool:
        one_dim = len(self.normalized_shape) == 1 and x.shape[-1:] == self.normalized_shape
        if not one_dim or not use_triton(x.device) or torch.compiler.is_compiling() or x.dtype == torch.float64:
            return False
        return train_kernels() or not needs_grad(x, self.weight, self.bias)  # a backward: the fused training ops

    def _forward_plain(self, x: Tensor) -> Tensor:
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device_type)
        weight = self.weight.to(dtype) if self.weight is not None else None
        bias = self.bias.to(dtype) if self.bias is not None else None
        with torch.autocast(device_type, enabled=False):
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)


def norm_with_residual(norm: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(x, norm(x)) for a pre-norm residual block, which adds x back after its branch. In training with the Triton
    kernels and our `LayerNorm` (no hooks, x already in the compute dtype), the returned x is a view whose gradient
    the LayerNorm backward adds in its own kernel (`ops.layer_norm.layer_norm_residual`): one pass over the gradient
    of x per norm fewer than autograd's sum of the skip's and the norm's gradients."""
    if type(norm) is not LayerNorm or not needs_grad(x, norm.weight, norm.bias) or not norm._takes_kernels(x):
        return x, norm(x)
    device_type = x.device.type
    same_dtype = not torch.is_autocast_enabled(device_type) or x.dtype == torch.get_autocast_dtype(device_type)
    if not same_dtype or has_hooks(norm):  # a cast between the skip and the norm, or hooks expecting forward calls
        return x, norm(x)
    return layer_norm_residual(x, norm.weight, norm.bias, norm.eps)
