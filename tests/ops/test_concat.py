"""Last-dim concat and split under the interpreter against `torch.cat` / slicing: values and gradients over the
mixer's shapes (contiguous and strided halves, odd widths), all dtypes, NaN-poisoned buffers (conftest), one missing
gradient, the dispatch rules, bad arguments, and the sm_90 build. The layers that use them: the Mamba mixers
(tests/layers/test_mamba_mixer.py, tests/models)."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.ops.concat import chunk, concat_last, concat_last_naive, split_last  # noqa: E402
from sfmamba.testing import run_without_interpreter  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize(("shape", "ca"), [((2, 51, 40), 20), ((3, 198, 33), 17), ((1, 49, 7), 3), ((5, 64), 61)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_concat_matches_cat(shape, ca, dtype, triton_backend):
    torch.manual_seed(shape[-1])
    a = torch.randn(*shape[:-1], ca).to(dtype).requires_grad_()
    wide = torch.randn(*shape[:-1], 2 * shape[-1]).to(dtype)
    b = wide[..., 1 : 1 + shape[-1] - ca].requires_grad_()  # a strided view: row stride 2C
    out = concat_last(a, b)
    assert type(out.grad_fn).__name__.startswith("ConcatLastFunction")
    assert out.is_contiguous() and torch.equal(out, torch.cat((a, b), -1))
    dout = torch.randn(out.shape).to(dtype)
    got = torch.autograd.grad(out, (a, b), dout)
    want = torch.autograd.grad(torch.cat((a, b), -1), (a, b), dout)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    with torch.no_grad():
        assert torch.equal(concat_last(a, b), out)  # no graph: the kernel alone


@pytest.mark.parametrize(("shape", "first"), [((2, 51, 40), 20), ((3, 198, 33), 17), ((4, 9), 1)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grads", ["both", "first", "second"])
def test_split_gradient_is_the_concatenation(shape, first, dtype, grads, triton_backend):
    torch.manual_seed(first)
    x = torch.randn(shape).to(dtype).requires_grad_()
    a, b = split_last(x, first)
    assert type(a.grad_fn).__name__.startswith("SplitLastFunction")
    assert torch.equal(a, x[..., :first]) and torch.equal(b, x[..., first:])
    assert a.data_ptr() == x.data_ptr()  # views, no copy
    used = {"both": (a, b), "first": (a,), "second": (b,)}[grads]
    douts = [torch.randn(t.shape).to(dtype) for t in used]
    (got,) = torch.autograd.grad(used, x, douts)
    ref_x = x.detach().requires_grad_()
    ref_parts = ref_x.split((first, shape[-1] - first), -1)
    ref_used = {"both": ref_parts, "first": ref_parts[:1], "second": ref_parts[1:]}[grads]
    (want,) = torch.autograd.grad(ref_used, ref_x, douts)
    assert torch.equal(got, want)


def test_strided_gradients_reach_the_kernel(triton_backend, monkeypatch):
    # the mixer's case: the scan's gradient is contiguous, z's is a view of the out_proj input's gradient
    calls = []
    real = chunk.concat_rows
    monkeypatch.setattr(chunk, "concat_rows", lambda *a: calls.append([t.is_contiguous() for t in a]) or real(*a))
    x = torch.randn(2, 10, 8, requires_grad=True)
    u, z = split_last(x, 4)
    y = u * 2.0
    out = concat_last(y, z)
    out.backward(torch.arange(160.0).view(2, 10, 8))
    assert calls == [[True, False], [True, False]]
    expected = torch.arange(160.0).view(2, 10, 8) * torch.tensor([2.0] * 4 + [1.0] * 4)
    assert torch.equal(x.grad, expected)


def test_reference_without_triton():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    assert torch.equal(concat_last(a, b), concat_last_naive(a, b))
    x = torch.randn(2, 6, requires_grad=True)
    u, z = split_last(x, 2)
    assert u.grad_fn is not None and not type(u.grad_fn).__name__.startswith("SplitLast")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: concat_last(torch.randn(2, 3), torch.randn(3, 3)), "share all but the last dim"),
        (lambda: concat_last(torch.randn(2, 3), torch.randn(2, 3).double()), "share dtype and device"),
        (lambda: concat_last(torch.randn(2, 3), [1.0]), "must be tensors"),
        (lambda: split_last(torch.randn(2, 4), 4), r"first must be an int in \(0, 4\)"),
        (lambda: split_last(torch.randn(2, 4), 0), r"first must be an int in \(0, 4\)"),
        (lambda: split_last(torch.randn(2, 4), True), "first must be an int"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


CONCAT_SM90_COMPILE = """
from sfmamba.ops.concat import chunk
from sfmamba.testing import compile_for_sm90

for dtype in ("bf16", "fp16", "fp32"):
    kernel = compile_for_sm90(chunk.concat_last_kernel, dict(BLOCK_M=16, BLOCK_C=256), 4, lambda name: "*" + dtype)
    print(dtype, bool(kernel.asm.get("cubin")))
"""


def test_kernel_compiles_for_sm90():
    result = run_without_interpreter(CONCAT_SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["bf16", "True", "fp16", "True", "fp32", "True"], result.stdout
