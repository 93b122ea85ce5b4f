"""Values derived from parameters (a weight cast to the autocast dtype, BN folded into a conv, A = -exp(A_log)) kept
between eager inference calls instead of recomputed every forward.

Why: an eager step of sf_mamba_tiny at batch 128 on an H200 is host-bound (~13 ms of host time for a ~5.7 ms GPU
step); autocast alone re-casts ~120 weights per step (~26 us of host time each) because its cache lives only as long
as one `torch.autocast` region. Each entry is keyed on the sources' version counters, storage addresses and the
extra key, so an in-place update (an optimizer step, `load_state_dict`, `.to()`) recomputes it. Nothing is cached
while a gradient is needed, under torch.compile (it fuses these itself) or during CUDA-graph capture (a graph then
records the recomputation and sees later weight updates).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CastCachedLinear", "cache_linear_casts", "cached", "caches_now"]

T = TypeVar("T")


def caches_now(*sources: Tensor | None) -> bool:
    """Whether values derived from `sources` may be reused: no gradient through them, eager, not capturing."""
    if torch.is_grad_enabled() and any(s is not None and s.requires_grad for s in sources):
        return False
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def cached(
    owner: object, slot: str, sources: tuple[Tensor | None, ...], make: Callable[[], T], extra: Hashable = None
) -> T:
    """`make()`, reused from `owner`'s `slot` while `sources` are unchanged (call only when `caches_now`)."""
    key = (extra, *((s._version, s.data_ptr()) if s is not None else None for s in sources))
    hit = owner.__dict__.get(slot)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = make()
    owner.__dict__[slot] = (key, value)  # a plain attribute: not a buffer, not in the state dict
    return value


class CastCachedLinear(nn.Linear):
    """`nn.Linear` that, in eager inference under autocast, keeps its weight and bias cast to the autocast dtype
    between calls (the output is the same: autocast would cast them to that dtype anyway)."""

    def forward(self, x: Tensor) -> Tensor:
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type) or self.weight.dtype == torch.float64:
            return super().forward(x)
        if self._forward_hooks or self._forward_pre_hooks or not caches_now(self.weight, self.bias):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device_type)
        weight, bias = cached(self, "_cast_cache", (self.weight, self.bias), lambda: _cast(self, dtype), dtype)
        return F.linear(x, weight, bias)


def _cast(linear: nn.Linear, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    bias = linear.bias.detach().to(dtype) if linear.bias is not None else None
    return linear.weight.detach().to(dtype), bias


def cache_linear_casts(model: nn.Module) -> nn.Module:
    """Turn every plain `nn.Linear` in `model` into a `CastCachedLinear` (same parameters, same state dict)."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = CastCachedLinear
    return model
