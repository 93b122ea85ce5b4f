"""Helpers shared by the model files' feature APIs."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["take_indices"]


def take_indices(num_stages: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """Stage indices for `forward_intermediates`: None = all, n = the last n, a list (negatives from the end);
    returns (indices, the last stage that must run)."""
    if indices is None:
        take = list(range(num_stages))
    elif isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices={indices} must be in 1..{num_stages}")
        take = list(range(num_stages - indices, num_stages))
    else:
        take = [i + num_stages if i < 0 else i for i in indices]
        if any(not 0 <= i < num_stages for i in take):
            raise ValueError(f"indices={list(indices)} out of range for {num_stages} stages")
    return take, max(take)
