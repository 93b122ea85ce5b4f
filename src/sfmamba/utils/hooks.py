"""Whether modules have forward hooks: the fused inference paths call kernels instead of some modules' `forward`, so
they step aside when a hook (activation capture, `weight_norm`, pruning reparametrisations) expects those calls."""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as _module

__all__ = ["has_forward_hooks", "has_hooks"]


def has_forward_hooks(*modules: nn.Module) -> bool:
    """True when any of `modules` (or any module, through the global registries) has a forward or forward-pre hook."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def has_hooks(*modules: nn.Module) -> bool:
    """`has_forward_hooks`, or a backward hook (full or pre) on any of `modules` or through the global registries:
    for training paths that call kernels instead of the modules (their backward hooks would not fire)."""
    if has_forward_hooks(*modules) or _module._global_backward_hooks or _module._global_backward_pre_hooks:
        return True
    return any(m._backward_hooks or m._backward_pre_hooks for m in modules)
