"""Linear layers whose training backward runs `sfmamba.ops.linear_act`: the activation's gradient and the fp32 bias
gradient in one kernel, the weight gradient straight out of the GEMM in fp32.

The modules keep timm's / torch's parameters and state-dict keys; without a gradient, under torch.compile (inductor
fuses the same pieces itself), on the CPU, with forward hooks on a bypassed module or with the fused training ops off
(`utils._config.train_kernels`: by default they are on only under CUDA-graph capture) they run their plain forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp as TimmMlp
from torch import Tensor, nn

from ..ops._activations import activate
from ..ops._checks import FLOAT_DTYPES
from ..ops._launch import in_functorch_transform, needs_grad
from ..ops.linear import linear_act
from ..utils._config import train_kernels, use_triton
from ..utils.hooks import has_hooks
from ..utils.inference_cache import CastCachedLinear

__all__ = ["GroupedLinear", "Mlp", "activation_name", "fused_linear", "grouped_linear", "takes_linear_kernels"]


def activation_name(module: nn.Module) -> str | None:
    """The `ops.linear_act` name of an activation module ('none', 'relu', 'gelu', 'gelu_tanh'), None if it has none."""
    if type(module) is nn.Identity:
        return "none"
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}[module.approximate]
    return None


PLAIN_LINEARS = (nn.Linear, CastCachedLinear)  # subclasses with their own forward (LoRA, QAT) keep it


def takes_linear_kernels(linear: nn.Module, x: Tensor) -> bool:
    """Whether `fused_linear(linear, x)` runs the Triton backward: a plain `nn.Linear` with a gradient to compute,
    outside torch.compile and torch.func transforms, Triton usable for x's device, no forward or backward hooks
    (pruning and other reparametrisations use forward pre-hooks), and the fused training ops on (`train_kernels`)."""
    if type(linear) not in PLAIN_LINEARS or not needs_grad(x, linear.weight, linear.bias) or not train_kernels():
        return False
    if torch.compiler.is_compiling() or x.dtype not in FLOAT_DTYPES or has_hooks(linear):
        return False
    return not in_functorch_transform() and use_triton(x.device)


def fused_linear(linear: nn.Module, x: Tensor, act: str = "none") -> Tensor:
    """`act(linear(x))`, through `ops.linear_act` where `takes_linear_kernels`."""
    if takes_linear_kernels(linear, x):
        return linear_act(x, linear.weight, linear.bias, act)
    return activate(linear(x), act)


class Mlp(TimmMlp):
    """timm's `Mlp` (same arguments, parameters and keys) whose fc1 + GELU and fc2 train through `fused_linear`."""

    def forward(self, x: Tensor) -> Tensor:
        act = activation_name(self.act)
        if act is None or has_hooks(self.act) or not takes_linear_kernels(self.fc1, x):
            return super().forward(x)
        x = self.drop1(linear_act(x, self.fc1.weight, self.fc1.bias, act))  # fc1 checked just above
        return self.drop2(fused_linear(self.fc2, self.norm(x)))


class GroupedLinear(nn.Linear):
    """Block-diagonal linear map: `groups` independent Linear layers on consecutive slices of the features.

    The weight is [out_features, in_features / groups] (grouped-conv convention), so `groups=1` is exactly an
    `nn.Linear` with the same parameter names and shapes (and the same init by `isinstance(m, nn.Linear)`).
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1, bias: bool = True, **factory):
        if in_features % groups or out_features % groups:
            raise ValueError(f"groups={groups} must divide in_features={in_features} and out_features={out_features}")
        super().__init__(in_features // groups, out_features, bias=bias, **factory)
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return grouped_linear(x, self.weight, self.groups, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"


def grouped_linear(x: Tensor, weight: Tensor, groups: int, bias: Tensor | None = None) -> Tensor:
    """`GroupedLinear`'s map: x [.., groups * in] with weight [out, in] (`groups` blocks of out / groups rows)."""
    if groups == 1:
        return F.linear(x, weight, bias)
    w = weight.view(groups, weight.shape[0] // groups, weight.shape[1])
    y = torch.einsum("...gi,goi->...go", x.unflatten(-1, (groups, weight.shape[1])), w).flatten(-2)
    return y if bias is None else y + bias.to(y.dtype)  # autocast: y is in the low dtype
