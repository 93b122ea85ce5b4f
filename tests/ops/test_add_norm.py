"""Fused residual add + LayerNorm: the Triton forward (interpreter) against the reference, the dispatch rules, bad
arguments, and the pre-norm block that uses it (fused == unfused)."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.models.mambavision import Block  # noqa: E402
from sfmamba.ops.add_norm import add_layer_norm, add_layer_norm_naive, runs_fused  # noqa: E402
from sfmamba.ops.add_norm.chunk import add_layer_norm_fwd  # noqa: E402
from sfmamba.testing import assert_close  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402


@pytest.mark.parametrize(("rows", "channels"), [(1, 7), (5, 64), (37, 96)])
@pytest.mark.parametrize(
    ("x_dtype", "y_dtype", "with_gamma", "affine", "norm_dtype"),
    [
        (torch.float32, torch.float32, True, True, None),
        (torch.float32, torch.bfloat16, True, True, torch.bfloat16),  # the autocast residual stream
        (torch.bfloat16, torch.bfloat16, False, True, torch.bfloat16),
        (torch.float32, torch.float32, False, False, None),
    ],
)
def test_fused_forward_matches_reference(rows, channels, x_dtype, y_dtype, with_gamma, affine, norm_dtype):
    torch.manual_seed(rows * channels)
    x, y = torch.randn(rows, channels).to(x_dtype) * 2 + 1, torch.randn(rows, channels).to(y_dtype)
    gamma = torch.rand(channels) + 0.5 if with_gamma else None
    weight, bias = (torch.randn(channels), torch.randn(channels)) if affine else (None, None)
    want_res, want_norm = add_layer_norm_naive(x, y, gamma, weight, bias, 1e-5, norm_dtype)
    res_dtype = want_res.dtype
    got_res, got_norm = add_layer_norm_fwd(x, y, gamma, weight, bias, 1e-5, res_dtype, norm_dtype or res_dtype)
    assert got_res.dtype == want_res.dtype and got_norm.dtype == want_norm.dtype
    tolerance = 1e-5 if res_dtype == torch.float32 and norm_dtype is None else 1e-2
    assert_close("residual", want_res.float(), got_res.float(), tolerance)
    assert_close("normed", want_norm.float(), got_norm.float(), tolerance)


def test_dispatch_fuses_only_without_gradients(triton_backend):
    x, y, w = torch.randn(3, 8), torch.randn(3, 8), torch.randn(8, requires_grad=True)
    assert not runs_fused(x, y, w)  # autograd needs the reference's graph
    with torch.no_grad():
        assert runs_fused(x, y, w)
        residual, normed = add_layer_norm(x, y, None, w, None)
    assert_close("residual", x + y, residual, 1e-6)
    residual, normed = add_layer_norm(x, y, None, w, None)
    assert normed.requires_grad  # the reference ran


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(y=torch.randn(3, 9)), "y must have x's shape"),
        (dict(gamma=torch.randn(9)), "gamma must have shape (8,)"),
        (dict(weight=torch.randn(2, 8)), "weight must have shape (8,)"),
    ],
)
def test_bad_arguments_name_the_argument(change, message):
    args = dict(x=torch.randn(3, 8), y=torch.randn(3, 8), gamma=None, weight=None, bias=None)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        add_layer_norm(**{**args, **change})


@pytest.mark.parametrize("autocast", [False, True])
def test_prenorm_block_fused_equals_unfused(autocast):
    torch.manual_seed(0)
    block = Block(16, num_heads=2, use_attention=True, layer_scale=0.5).eval()
    with torch.no_grad():
        block.norm2.weight.normal_()
        block.norm2.bias.normal_()
    x = torch.randn(2, 9, 16)
    outputs = {}
    for backend in ("naive", "triton"):
        set_kernel_backend(backend)
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                assert block._fuses_residual_norm(x, x) == (backend == "triton")
                outputs[backend] = block(x)
        finally:
            set_kernel_backend(None)
    assert outputs["triton"].dtype == outputs["naive"].dtype
    assert_close("block", outputs["naive"].float(), outputs["triton"].float(), 2e-2 if autocast else 1e-5)
