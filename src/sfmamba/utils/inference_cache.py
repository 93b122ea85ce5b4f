"""Values derived from parameters (a weight cast to the autocast dtype, BN folded into a conv, A = -exp(A_log)) kept
between eager inference calls instead of recomputed every forward.

Why: an eager step of sf_mamba_tiny at batch 128 on an H200 is host-bound (~13 ms of host time for a ~5.7 ms GPU
step); autocast alone re-casts ~120 weights per step (~26 us of host time each) because its cache lives only as long
as one `torch.autocast` region. Each entry is keyed on the sources' version counters, storage addresses and the
extra key, so an in-place update through autograd's view of a tensor (an optimizer step, `load_state_dict`) recomputes
it. Writes that bypass the version counter (`p.data.add_()`, optimizers writing through raw pointers,
`dist.broadcast` of parameters) are not seen by the key: the models drop every cached value on `train()`, `eval()`
and device/dtype moves (`InferenceCacheMixin`), which every training loop calls between updating and evaluating.
Nothing is cached while autograd is on, for inference-mode parameters, under torch.compile (it fuses these itself)
or during CUDA-graph capture (a graph then records the recomputation and sees later weight updates).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CastCachedLinear", "InferenceCacheMixin", "cache_linear_casts", "cached", "caches_now", "clear_inference_caches",
    "reused",
]  # fmt: skip

T = TypeVar("T")
_SLOTS: set[str] = set()  # every attribute name `cached` has written, for `clear_inference_caches`


def caches_now(*sources: Tensor | None) -> bool:
    """Whether values derived from `sources` may be reused: autograd off (a value made then is never saved for a
    backward), sources that keep a version counter (not inference tensors), eager, not capturing."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    if any(s is not None and s.is_inference() for s in sources):
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
    _SLOTS.add(slot)
    return value


def reused(
    owner: object, slot: str, sources: tuple[Tensor | None, ...], make: Callable[[], T], extra: Hashable = None
) -> T:
    """`cached` where `caches_now(*sources)` allows it, a fresh `make()` otherwise."""
    return cached(owner, slot, sources, make, extra) if caches_now(*sources) else make()


def clear_inference_caches(module: nn.Module) -> None:
    """Drop every value `cached` keeps on `module` and its submodules."""
    for m in module.modules():
        for slot in _SLOTS.intersection(m.__dict__):
            del m.__dict__[slot]


class InferenceCacheMixin:
    """For models: drop the inference caches on `train()`/`eval()` and on `.to()`/`.cuda()`/`.half()` (`_apply`), so
    writes the version counters miss and moved copies never leave a stale or orphaned value behind."""

    def train(self, mode: bool = True):
        clear_inference_caches(self)
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        clear_inference_caches(self)
        return super()._apply(fn, *args, **kwargs)


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
