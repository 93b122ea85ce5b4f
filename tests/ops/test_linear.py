"""Linear + activation with the Triton backward (activation gradient and fp32 bias gradient in one kernel) against
the fp32 reference under the interpreter: outputs and every gradient over token-row counts (odd ones included), all
dtypes and activations, NaN-poisoned buffers, several row blocks per program, the dispatch rules and bad arguments
(the layers that use it: tests/layers/test_mlp.py)."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.ops.linear import (  # noqa: E402
    ACTIVATIONS,
    bias_act_grad_naive,
    chunk,  # noqa: E402
    linear_act,
    linear_act_naive,
)
from sfmamba.testing import assert_close, run_without_interpreter  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _reference(x, weight, bias, act, dout, dtype):
    """fp32 output and gradients of (x, weight, bias) from the plain path, the inputs rounded to the compute dtype
    (so a ReLU's mask sees the signs the kernels see)."""
    leaves = [t.detach().to(dtype).float().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = linear_act_naive(*leaves, act)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], dout.float())
    return out, grads


@pytest.mark.parametrize(("shape", "out_features"), [((2, 49, 32), 40), ((3, 51, 24), 96), ((37, 20), 17),
                                                     ((1, 7, 48), 130)])  # fmt: skip
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("has_bias", [True, False])
def test_forward_and_gradients_match_reference(shape, out_features, act, dtype, has_bias, triton_backend):
    torch.manual_seed(sum(shape) + out_features)
    x = torch.randn(shape).requires_grad_()
    weight = (torch.randn(out_features, shape[-1]) / shape[-1] ** 0.5).requires_grad_()
    bias = torch.randn(out_features).requires_grad_() if has_bias else None
    inputs = [t for t in (x, weight, bias) if t is not None]
    calls = []
    real = chunk.bias_act_bwd
    chunk.bias_act_bwd = lambda *a: calls.append(1) or real(*a)
    try:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = linear_act(x, weight, bias, act)
        dout = torch.randn(out.shape)
        got = torch.autograd.grad(out, inputs, dout.to(out.dtype))
    finally:
        chunk.bias_act_bwd = real
    want_out, want = _reference(x, weight, bias, act, dout.to(dtype), dtype)
    assert out.dtype == dtype and out.shape == (*shape[:-1], out_features)
    assert calls == [1] and out.grad_fn is not None and "LinearAct" in type(out.grad_fn).__name__
    assert_close("out", want_out, out.float(), TOLERANCE[dtype])
    for name, g, w, t in zip(("dx", "dweight", "dbias"), got, want, inputs):
        assert g.dtype == t.dtype, f"{name} dtype"
        assert_close(name, w, g, TOLERANCE[dtype])


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bias_act_kernel_over_many_row_blocks_and_column_blocks(act, monkeypatch, triton_backend):
    """More rows than programs (each program sums several row blocks) and several column blocks."""
    monkeypatch.setattr(chunk, "_grid", lambda rows, channels, device: (3, triton_cdiv(channels, 8), 2, 8))
    torch.manual_seed(1)
    dout = torch.randn(41, 21, dtype=torch.bfloat16)
    pre = torch.randn(41, 21, dtype=torch.bfloat16) * 3
    dpre, dbias = chunk.bias_act_bwd(dout, pre, act, True)
    want_dpre, want_dbias = bias_act_grad_naive(dout, pre, act)
    assert dbias.dtype == torch.float32 and dpre.dtype == torch.bfloat16
    assert_close("dpre", want_dpre.float(), dpre.float(), 1e-2)
    assert_close("dbias", want_dbias, dbias, 1e-5)  # both sum the fp32 products


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def test_gelu_gradients_at_large_inputs(triton_backend):
    """The tanh form stays finite where exp(2 * inner) would overflow; both forms match PyTorch's backward."""
    pre = torch.tensor([[-60.0, -8.0, -1.0, 0.0, 0.5, 3.0, 9.0, 80.0]])
    dout = torch.ones_like(pre)
    for act in ("gelu", "gelu_tanh"):
        dpre, dbias = chunk.bias_act_bwd(dout, pre, act, True)
        want, _ = bias_act_grad_naive(dout, pre, act)
        assert torch.isfinite(dpre).all()
        torch.testing.assert_close(dpre, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(dbias, want.sum(0), atol=1e-5, rtol=1e-5)


def test_dispatch(triton_backend):
    x, w, b = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6)
    assert linear_act(x, w, b, "gelu").grad_fn is None  # nothing needs a gradient: the plain path
    with torch.no_grad():
        assert linear_act(x, w.requires_grad_(), b, "gelu").grad_fn is None
    assert "LinearAct" in type(linear_act(x, w, b, "gelu").grad_fn).__name__


def test_plain_path_without_triton():
    """Off the Triton path linear_act is exactly F.linear + F.gelu, autocast included."""
    x, w, b = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_act(x, w, b, "gelu")
        want = torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b))
    assert torch.equal(got, want) and "LinearAct" not in type(got.grad_fn).__name__


def test_dtype_mismatch_outside_autocast_is_not_coerced(triton_backend):
    x, w = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True), torch.randn(6, 8)
    with pytest.raises(RuntimeError, match="dtype"):
        linear_act(x, w)  # what F.linear says; never a silent cast


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(act="silu"), "act must be one of"),
        (dict(x=torch.randn(3, 8, dtype=torch.float64)), "x must be a float32/float16/bfloat16 tensor"),
        (dict(weight=torch.randn(6, 9)), r"weight must have shape \(out_features, 8\)"),
        (dict(bias=torch.randn(5)), r"bias must have shape \(6,\)"),
        (dict(bias=torch.randn(6, device="meta")), "bias must be on cpu"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(x=torch.randn(3, 8), weight=torch.randn(6, 8), bias=None, act="none") | kwargs
    with pytest.raises(ValueError, match=message):
        linear_act(**args)


def test_double_backward_fails_loudly(triton_backend):
    x, w = torch.randn(3, 8, requires_grad=True), torch.randn(8, 8, requires_grad=True)
    y = x + linear_act(x, w, None, "gelu")
    (grad,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


LINEAR_SM90_COMPILE = """
from sfmamba.ops.linear import chunk
from sfmamba.testing import compile_for_sm90

for dtype in ("bf16", "fp16", "fp32"):
    ptr = lambda name: "*fp32" if name == "part_ptr" else "*" + dtype
    built = [bool(compile_for_sm90(chunk.bias_act_bwd_kernel, dict(ACT=act, HAS_BIAS=has_bias, BLOCK_M=32,
                                                                  BLOCK_C=128), 4, ptr).asm.get("cubin"))
             for act in range(4) for has_bias in (True, False)]
    print(dtype, len(built), all(built))
"""


def test_kernel_compiles_for_sm90():
    """The interpreter never compiles: build the backward kernel for an H100 (every activation, with and without a
    bias) with Triton's bundled ptxas, for bf16/fp16/fp32 gradients."""
    result = run_without_interpreter(LINEAR_SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["bf16", "8", "True", "fp16", "8", "True", "fp32", "8", "True"], result.stdout
