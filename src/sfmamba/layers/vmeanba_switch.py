"""The VMeanba switch of our scan layers: any module with a boolean attribute `vmeanba` (`MambaVisionMixer`, the
SF-Mamba mixers, VMamba's `SS2D`) runs `sfmamba.ops.vmeanba.mean_selective_scan` instead of `selective_scan` when
it is True. Here: finding those modules and setting the switch (used by model loading and by `sfmamba.compress`)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["apply", "converted_blocks", "find_blocks"]


def find_blocks(model: nn.Module) -> list[str]:
    """Names (as in `model.named_modules()`) of the modules that can run VMeanba: those with a bool `vmeanba`."""
    return [name for name, module in model.named_modules() if isinstance(getattr(module, "vmeanba", None), bool)]


def converted_blocks(model: nn.Module) -> list[str]:
    """The blocks that currently run VMeanba."""
    modules = dict(model.named_modules())
    return [name for name in find_blocks(model) if modules[name].vmeanba]


def apply(model: nn.Module, blocks: Iterable[str]) -> nn.Module:
    """Convert exactly `blocks` to VMeanba (every other block runs the full scan); returns `model`.

    Raises ValueError naming any entry that is not a convertible block of `model`.
    """
    blocks = list(blocks)
    available = find_blocks(model)
    unknown = [name for name in blocks if name not in available]
    if unknown:
        shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
        raise ValueError(f"blocks must be convertible blocks of the model ({shown}), got unknown {unknown}")
    chosen = set(blocks)
    modules = dict(model.named_modules())
    for name in available:
        modules[name].vmeanba = name in chosen
    return model
