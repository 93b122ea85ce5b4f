"""The tiled transpose behind the scan's (batch, D, L) layout: the Triton kernel (interpreter, NaN-poisoned output from
conftest) equals PyTorch's transposing copy, including odd sizes, strided rows and the fallbacks."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.ops._transpose import transpose_copy  # noqa: E402


@pytest.mark.parametrize(("batch", "rows", "cols"), [(1, 1, 1), (3, 37, 50), (2, 16, 16), (2, 5, 49)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transpose_copy_equals_torch(triton_backend, batch, rows, cols, dtype):
    x = torch.randn(batch, rows, cols).to(dtype)
    y = transpose_copy(x)
    assert y.is_contiguous() and y.shape == (batch, cols, rows)
    assert torch.equal(y, x.transpose(-1, -2))


def test_strided_rows_and_fallbacks(triton_backend, monkeypatch):
    x = torch.randn(2, 7, 40)[:, :, 3:33]  # row stride 40 > 30 columns
    assert torch.equal(transpose_copy(x), x.transpose(-1, -2))
    launched = []
    monkeypatch.setattr("sfmamba.ops._transpose.transpose_kernel", launched)  # a list: indexing it would fail
    for odd in (torch.randn(2, 7, 6).transpose(1, 2), torch.randn(3, 2, 5, 4)):  # column stride != 1; 4 dims
        assert torch.equal(transpose_copy(odd), odd.transpose(-1, -2).contiguous())
    assert launched == []
