"""Unstructured L1 pruning of Linear / Conv2d weights, made permanent (the paper's Table 1 combination with VMeanba)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["LAYER_TYPES", "prune_l1", "sparsity"]

LAYER_TYPES = {"linear": nn.Linear, "conv2d": nn.Conv2d}


def _targets(model: nn.Module, layer_types: Sequence[str], exclude: Sequence[str]) -> list[tuple[str, nn.Module]]:
    unknown = [t for t in layer_types if t not in LAYER_TYPES]
    if unknown or not layer_types:
        raise ValueError(f"layer_types must be a non-empty selection of {tuple(LAYER_TYPES)}, got {tuple(layer_types)}")
    classes = tuple(LAYER_TYPES[t] for t in layer_types)
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, classes) and not any(name == e or name.startswith(e + ".") for e in exclude)
    ]


def prune_l1(
    model: nn.Module,
    amount: float = 0.4,
    layer_types: Sequence[str] = ("linear", "conv2d"),
    *,
    exclude: Sequence[str] = (),
) -> dict[str, object]:
    """Zero the `amount` fraction of smallest-|w| entries of every selected layer's weight (per layer), permanently.

    `layer_types`: any of "linear", "conv2d"; `exclude`: module names (and their children) left dense, e.g.
    ("head",). Uses `torch.nn.utils.prune.l1_unstructured` then `prune.remove`, so the model keeps plain `weight`
    parameters (no masks or hooks) and saves like an unpruned one. Returns a summary: layers, weights, zeros, sparsity.
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    targets = _targets(model, layer_types, exclude)
    if not targets:
        raise ValueError(f"model has no {' or '.join(layer_types)} layers to prune")
    for _, module in targets:
        prune.l1_unstructured(module, name="weight", amount=float(amount))
        prune.remove(module, "weight")
    summary = sparsity(model, layer_types, exclude=exclude)
    return dict(amount=float(amount), layer_types=list(layer_types), exclude=list(exclude), **summary)


@torch.no_grad()
def sparsity(model: nn.Module, layer_types: Sequence[str] = ("linear", "conv2d"), *, exclude: Sequence[str] = ()):
    """{"layers", "weights", "zeros", "sparsity"} over the selected layers' weights."""
    targets = _targets(model, layer_types, exclude)
    weights = sum(m.weight.numel() for _, m in targets)
    zeros = sum(int((m.weight == 0).sum()) for _, m in targets)
    return dict(layers=len(targets), weights=weights, zeros=zeros, sparsity=zeros / weights if weights else 0.0)
