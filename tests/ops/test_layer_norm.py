"""Triton LayerNorm (forward and backward, the weight/bias gradients reduced in the kernel) against the fp32
reference under the interpreter: outputs and every gradient over real token-row widths and odd ones, all dtypes,
NaN-poisoned buffers, the dispatch rules, bad arguments, and the model LayerNorm that uses it."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.layers import LayerNorm  # noqa: E402
from sfmamba.ops.layer_norm import (  # noqa: E402
    chunk,  # noqa: E402
    layer_norm,
    layer_norm_naive,
    layer_norm_residual,
)
from sfmamba.testing import assert_close, run_without_interpreter  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize(("shape", "affine"), [((2, 49, 80), "both"), ((3, 51, 33), "weight"), ((37, 160), "none"),
                                               ((1, 7, 320), "bias"), ((70, 96), "both")])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_and_gradients_match_reference(shape, affine, dtype, triton_backend):
    torch.manual_seed(sum(shape))
    channels = shape[-1]
    x = (torch.randn(shape) * 3 + 1).to(dtype).requires_grad_()
    weight = (torch.randn(channels) + 1).requires_grad_() if affine in ("both", "weight") else None
    bias = torch.randn(channels).requires_grad_() if affine in ("both", "bias") else None
    inputs = [t for t in (x, weight, bias) if t is not None]
    out = layer_norm(x, weight, bias, 1e-5)
    dout = torch.randn(shape)
    got = torch.autograd.grad(out, inputs, dout.to(dtype))
    ref_x = x.detach().float().requires_grad_()
    ref_w = weight.detach().clone().requires_grad_() if weight is not None else None
    ref_b = bias.detach().clone().requires_grad_() if bias is not None else None
    ref = layer_norm_naive(ref_x, ref_w, ref_b, 1e-5)
    want = torch.autograd.grad(ref, [t for t in (ref_x, ref_w, ref_b) if t is not None], dout.to(dtype).float())
    assert out.dtype == dtype and out.shape == x.shape
    assert_close("out", ref, out.float(), TOLERANCE[dtype])
    for name, g, w in zip(("dx", "dweight", "dbias"), got, want):
        assert g.dtype == next(t for t in inputs if t.shape == g.shape).dtype
        assert_close(name, w, g.float(), TOLERANCE[dtype])


def test_many_row_blocks_per_backward_program(monkeypatch, triton_backend):
    """More rows than programs: each backward program accumulates its partial sums over several row blocks."""
    monkeypatch.setattr(chunk, "_blocks", lambda channels: (2, 32, 1))
    torch.manual_seed(0)
    x, w, b = torch.randn(41, 24, requires_grad=True), torch.randn(24, requires_grad=True), torch.randn(24)
    b.requires_grad_()
    out = layer_norm(x, w, b)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, w, b), dout)
    want = torch.autograd.grad(layer_norm_naive(x, w, b), (x, w, b), dout)
    for name, g, ref in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(name, ref, g, 1e-5)


def test_dispatch(triton_backend, monkeypatch):
    calls = []
    real = chunk.layer_norm_fwd
    monkeypatch.setattr(chunk, "layer_norm_fwd", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(4, 16)
    layer_norm(x)
    out = layer_norm(x, torch.ones(16, requires_grad=True))
    assert calls == [1, 1] and out.requires_grad  # no autograd node without a gradient to compute, one with
    with torch.no_grad():
        assert not layer_norm(x, torch.ones(16, requires_grad=True)).requires_grad


def test_reference_without_triton():
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert torch.equal(layer_norm(x), layer_norm_naive(x, None, None))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(x=torch.randn(3, 8, dtype=torch.float64)), "x must be float32, float16 or bfloat16"),
        (dict(weight=torch.randn(9)), "weight must have shape (8,)"),
        (dict(bias=torch.randn(2, 8)), "bias must have shape (8,)"),
        (dict(eps=0.0), "eps must be a positive float"),
        (dict(x=torch.randn(3, 0)), "non-empty last dim"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(x=torch.randn(3, 8), weight=None, bias=None, eps=1e-5) | kwargs
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layer_norm(**args)


def test_model_layer_norm_uses_the_kernels_in_training(triton_backend, monkeypatch):
    """`layers.LayerNorm` runs the Triton forward and backward under autocast and gives nn.LayerNorm's results."""
    calls = []
    real = chunk.layer_norm_bwd
    monkeypatch.setattr(chunk, "layer_norm_bwd", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    norm, plain = LayerNorm(32), torch.nn.LayerNorm(32)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    out.float().sum().backward()
    plain(x.float()).sum().backward()
    assert calls == [1] and out.dtype == torch.bfloat16
    assert_close("out", plain(x.float()), out.float(), 2e-2)
    assert_close("dweight", plain.weight.grad, norm.weight.grad, 2e-2)
    assert_close("dbias", plain.bias.grad, norm.bias.grad, 1e-5)


def test_double_backward_fails_loudly(triton_backend):
    x, w = torch.randn(3, 8, requires_grad=True), torch.randn(8, requires_grad=True)
    y = x + layer_norm(x, w)  # the residual path carries a graph; the norm's part must not pass as a constant
    (grad,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()  # (autograd.grad(..., x) prunes the error node: no path from it to x)


def test_model_layer_norm_keeps_multi_dim_shapes(triton_backend):
    """Only one-dim normalized shapes take the kernels; others keep nn.LayerNorm's behaviour and errors."""
    norm = LayerNorm((4, 8))
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(norm(x), torch.nn.functional.layer_norm(x, (4, 8), norm.weight, norm.bias))
    with pytest.raises(RuntimeError, match=r"normalized_shape=\[8\], expected input with shape \[\*, 8\]"):
        LayerNorm(8, elementwise_affine=False)(torch.randn(2, 9))


@pytest.mark.parametrize("used", ["both", "skip", "norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_gradient_is_added_in_the_backward_kernel(used, dtype, triton_backend, monkeypatch):
    """layer_norm_residual(x) = (x, LN(x)): the skip's gradient reaches x through the LayerNorm backward kernel (one
    backward launch, no autograd sum), equal to the plain two-consumer graph's; either output may go unused."""
    launches = []
    real = chunk.layer_norm_bwd
    monkeypatch.setattr(chunk, "layer_norm_bwd", lambda *a: launches.append(a[-1] is not None) or real(*a))
    torch.manual_seed(1)
    x = (torch.randn(3, 51, 40) * 2).to(dtype).requires_grad_()
    w, b = torch.randn(40, requires_grad=True), torch.randn(40, requires_grad=True)
    skip, out = layer_norm_residual(x, w, b, 1e-5)
    assert type(out.grad_fn).__name__ == "LayerNormResidualFunctionBackward" and torch.equal(skip, x)
    d_skip, d_out = torch.randn(x.shape).to(dtype), torch.randn(x.shape).to(dtype)
    outputs, grads = {"both": ((skip, out), (d_skip, d_out)), "skip": ((skip,), (d_skip,)),
                      "norm": ((out,), (d_out,))}[used]  # fmt: skip
    got = torch.autograd.grad(outputs, (x, w, b), grads, allow_unused=True)
    ref_x, ref_w, ref_b = (t.detach().float().requires_grad_() for t in (x, w, b))
    ref_out = layer_norm_naive(ref_x, ref_w, ref_b, 1e-5)
    ref_outputs = {"both": (ref_x * 1.0, ref_out), "skip": (ref_x * 1.0,), "norm": (ref_out,)}[used]
    want = torch.autograd.grad(ref_outputs, (ref_x, ref_w, ref_b), [g.float() for g in grads], allow_unused=True)
    assert launches == {"both": [True], "skip": [], "norm": [False]}[used]
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        if r is None:
            assert g is None, name
        else:
            assert_close(name, r, g.float(), TOLERANCE[dtype])


def test_residual_variant_without_gradients_is_plain(triton_backend):
    x = torch.randn(2, 5, 8)
    skip, out = layer_norm_residual(x)
    assert skip is x and torch.equal(out, layer_norm(x))
    with pytest.raises(ValueError, match="eps must be a positive float"):
        layer_norm_residual(x, eps=0.0)


LAYER_NORM_SM90_COMPILE = """
from sfmamba.ops.layer_norm import chunk
from sfmamba.testing import compile_for_sm90

stats = ("mean_ptr", "rstd_ptr", "dw_part_ptr", "db_part_ptr", "w_ptr", "b_ptr")
for dtype in ("bf16", "fp16", "fp32"):
    ptr = lambda name: "*fp32" if name in stats else "*" + dtype
    flags = dict(HAS_W=True, HAS_B=True, BLOCK_M=4, BLOCK_C=512)
    bwd = chunk.layer_norm_bwd_kernel
    cases = ((chunk.layer_norm_fwd_kernel, flags), (bwd, flags | dict(HAS_RES=1)), (bwd, flags | dict(HAS_RES=0)))
    built = [bool(compile_for_sm90(k, f, 4, ptr).asm.get("cubin")) for k, f in cases]
    print(dtype, all(built))
"""


def test_kernels_compile_for_sm90():
    """The interpreter never compiles: build the forward and backward kernels for an H100 with Triton's ptxas."""
    result = run_without_interpreter(LAYER_NORM_SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["bf16", "True", "fp16", "True", "fp32", "True"], result.stdout
