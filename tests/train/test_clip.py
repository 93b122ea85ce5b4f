"""The trainer's gradient-norm clipping equals torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import pytest
import torch

from sfmamba.train.trainer import clip_grad_norm_


def _params(dtypes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = []
    for i, dtype in enumerate(dtypes):
        p = torch.nn.Parameter(torch.randn(3 + i, 5, generator=generator).to(dtype))
        p.grad = torch.randn(p.shape, generator=generator).to(dtype) * (i + 1)
        params.append(p)
    params.append(torch.nn.Parameter(torch.zeros(2)))  # no gradient: skipped, as torch does
    return params


@pytest.mark.parametrize("max_norm", [0.5, 1e4])  # clips / leaves the gradients alone
@pytest.mark.parametrize(
    "dtypes", [[torch.float32] * 4, [torch.bfloat16] * 3, [torch.float32, torch.float64, torch.float32]]
)
def test_clip_grad_norm_matches_torch(max_norm, dtypes):
    ours, reference = _params(dtypes), _params(dtypes)
    total = clip_grad_norm_(ours, max_norm)
    want = torch.nn.utils.clip_grad_norm_(reference, max_norm)
    assert total.dtype == want.dtype and torch.equal(total, want)  # the same operations: bit for bit
    for a, b in zip(ours, reference):
        if b.grad is None:
            assert a.grad is None
        else:
            assert torch.equal(a.grad, b.grad)
    if max_norm > 1e3:
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, _params(dtypes)) if b.grad is not None)


def test_clip_without_gradients_returns_zero():
    assert float(clip_grad_norm_([torch.nn.Parameter(torch.ones(2))], 1.0)) == 0.0
