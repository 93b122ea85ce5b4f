"""`layers.residual.add_drop_path` is `x + DropPath(y)`: the same mask from the same random stream, the same
gradients, and the plain path for inactive or hooked DropPaths."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from timm.layers import DropPath  # noqa: E402
from torch import nn  # noqa: E402

from sfmamba.layers.residual import add_drop_path  # noqa: E402


@pytest.mark.parametrize("scale_by_keep", [True, False])
@pytest.mark.parametrize("shape", [(6, 5, 8), (4, 3, 2, 2)])
def test_equals_timm_drop_path_in_training(shape, scale_by_keep):
    drop = DropPath(0.5, scale_by_keep=scale_by_keep).train()
    x, y = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
    torch.manual_seed(7)
    out = add_drop_path(x, y, drop)
    torch.manual_seed(7)
    ref = x + drop(y)
    torch.testing.assert_close(out, ref)
    dout = torch.randn(shape)
    got = torch.autograd.grad(out, (x, y), dout)
    want = torch.autograd.grad(ref, (x, y), dout)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    dropped = (out - x).flatten(1).abs().sum(1) == 0
    assert 0 < dropped.sum() < shape[0]  # the seed drops some samples and keeps others: the mask is in play


@pytest.mark.parametrize("case", ["eval", "identity", "zero_prob", "hooked"])
def test_plain_path(case):
    drop = {"identity": nn.Identity(), "zero_prob": DropPath(0.0)}.get(case, DropPath(0.5))
    if case == "eval":
        drop.eval()
    seen = []
    if case == "hooked":
        drop.register_forward_hook(lambda m, i, o: seen.append(1))
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    torch.manual_seed(1)
    out = add_drop_path(x, y, drop)
    torch.manual_seed(1)
    torch.testing.assert_close(out, x + drop(y))
    assert seen == ([1, 1] if case == "hooked" else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_kernel_path_equals_timm_drop_path(dtype, triton_backend):
    """With the ops on Triton (the interpreter here) the add runs `ops.drop_path_add` (fp64 keeps addcmul): the same
    result and gradients as x + DropPath(y)."""
    drop = DropPath(0.5).train()
    x = torch.randn(6, 5, 8, dtype=dtype, requires_grad=True)
    y = torch.randn(6, 5, 8, dtype=dtype, requires_grad=True)
    torch.manual_seed(3)
    out = add_drop_path(x, y, drop)
    torch.manual_seed(3)
    ref = x + drop(y)
    tol = dict(atol=1e-2, rtol=1e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(out, ref, **tol)
    expected_node = "AddcmulBackward0" if dtype == torch.float64 else "DropPathAddFunctionBackward"
    assert type(out.grad_fn).__name__ == expected_node
    dout = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (x, y), dout), torch.autograd.grad(ref, (x, y), dout)):
        torch.testing.assert_close(g, w, **tol)
