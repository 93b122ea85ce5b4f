"""Test helpers shared by the op tests: relative-error comparison and input poisoning."""

from __future__ import annotations

import torch
from torch import Tensor


def relative_error(ref: Tensor, out: Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64 (0 when both are zero)."""
    ref64, out64 = ref.detach().double(), out.detach().double()
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(name: str, ref: Tensor, out: Tensor, ratio: float, atol: float = 1e-6) -> None:
    """Fail unless `out` is finite wherever `ref` is, and ||out-ref||/||ref|| <= ratio (or max|diff| <= atol)."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    finite = torch.isfinite(ref)
    assert torch.isfinite(out[finite]).all(), f"{name}: non-finite values where the reference is finite"
    max_diff = (out.detach().double() - ref.detach().double()).abs().max().item() if ref.numel() else 0.0
    if max_diff <= atol:
        return
    err = relative_error(ref, out)
    assert err <= ratio, f"{name}: relative error {err:.3e} > {ratio:.1e} (max abs diff {max_diff:.3e})"
