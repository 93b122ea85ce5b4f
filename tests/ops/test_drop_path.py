"""Residual add with a per-sample scale (stochastic depth) under the interpreter against `torch.addcmul`: output and
both gradients over token and map shapes, all dtypes and mixed ones, dropped and kept samples, NaN-poisoned buffers,
the dispatch rules and bad arguments. The layer that uses it: tests/layers/test_residual.py."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.ops.drop_path import chunk, drop_path_add, drop_path_add_naive  # noqa: E402


def _scale(batch: int, dtype: torch.dtype, keep: float = 0.6) -> torch.Tensor:
    mask = torch.tensor([1.0, 0.0] * batch)[:batch]  # kept and dropped samples alternate
    return (mask / keep).to(dtype)


DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
               (torch.float32, torch.bfloat16)]  # fmt: skip


@pytest.mark.parametrize("shape", [(4, 51, 24), (3, 198, 40), (2, 8, 5, 7), (5, 1), (1, 130)])
@pytest.mark.parametrize(("x_dtype", "y_dtype"), DTYPE_PAIRS)
def test_forward_and_gradients_match_addcmul(shape, x_dtype, y_dtype, triton_backend):
    torch.manual_seed(sum(shape))
    x = torch.randn(shape).to(x_dtype).requires_grad_()
    y = torch.randn(shape).to(y_dtype).requires_grad_()
    scale = _scale(shape[0], y_dtype)
    out = drop_path_add(x, y, scale)
    assert "DropPathAdd" in type(out.grad_fn).__name__
    dout = torch.randn(shape).to(out.dtype)
    got = torch.autograd.grad(out, (x, y), dout)
    ref = drop_path_add_naive(x, y, scale)
    want = torch.autograd.grad(ref, (x, y), dout)
    assert out.dtype == ref.dtype == torch.result_type(x, y)
    torch.testing.assert_close(out, ref, **_tolerance(out.dtype))
    for g, w, t in zip(got, want, (x, y)):
        assert g.dtype == t.dtype
        torch.testing.assert_close(g, w, **_tolerance(g.dtype))  # one rounding apart at most
    dropped = scale == 0
    assert torch.equal(out[dropped].float(), x[dropped].to(out.dtype).float())  # a dropped sample is x exactly


def _tolerance(dtype: torch.dtype) -> dict:
    return dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)


def test_dispatch(triton_backend, monkeypatch):
    calls = []
    real = chunk.scaled_add
    monkeypatch.setattr(chunk, "scaled_add", lambda *a: calls.append(1) or real(*a))
    x, y, scale = torch.randn(2, 6, 4), torch.randn(2, 6, 4), torch.ones(2)
    drop_path_add(x, y, scale)
    strided = torch.randn(2, 4, 6).transpose(1, 2)  # not contiguous: the reference
    torch.testing.assert_close(drop_path_add(x, strided, scale), drop_path_add_naive(x, strided, scale))
    assert calls == [1]


@pytest.mark.parametrize("dout_layout", ["channels_last", "contiguous"])
def test_channels_last_maps_take_the_kernel(dout_layout, triton_backend, monkeypatch):
    # ConvBlock residuals are channels-last maps: one dense block per sample, so the kernel runs on them as they are,
    # and the result keeps the layout; a backward gradient in another layout is brought to the forward's first
    calls = []
    real = chunk.scaled_add
    monkeypatch.setattr(chunk, "scaled_add", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    x, y = (torch.randn(3, 5, 4, 6).to(memory_format=torch.channels_last).requires_grad_() for _ in range(2))
    scale = _scale(3, torch.float32)
    out = drop_path_add(x, y, scale)
    assert out.is_contiguous(memory_format=torch.channels_last) and calls == [1]
    dout = torch.randn(out.shape)
    dout = dout.to(memory_format=torch.channels_last) if dout_layout == "channels_last" else dout
    got = torch.autograd.grad(out, (x, y), dout)
    ref = drop_path_add_naive(x, y, scale)
    want = torch.autograd.grad(ref, (x, y), dout)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
    mixed = drop_path_add(x.detach().contiguous(), y.detach(), scale)  # x and y laid out differently: the reference
    torch.testing.assert_close(mixed, ref.detach(), atol=1e-6, rtol=1e-6)
    assert calls == [1, 1]


def test_reference_without_triton():
    x, y, scale = torch.randn(2, 6, 4), torch.randn(2, 6, 4), torch.tensor([0.0, 2.0])
    assert torch.equal(drop_path_add(x, y, scale), torch.addcmul(x, y, scale.view(2, 1, 1)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(y=torch.randn(2, 5)), r"x and y must have one shape"),
        (dict(scale=torch.ones(3)), r"scale must have shape \(2,\)"),
        (dict(scale=torch.ones(2, dtype=torch.float64)), "scale must be a float32/float16/bfloat16 tensor"),
        (dict(x=torch.randn(2, 4, device="meta")), "must be on one device"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(x=torch.randn(2, 4), y=torch.randn(2, 4), scale=torch.ones(2)) | kwargs
    with pytest.raises(ValueError, match=message):
        drop_path_add(**args)


def test_double_backward_fails_loudly(triton_backend):
    x = torch.randn(2, 4, requires_grad=True)
    out = drop_path_add(x, x * 1.0, torch.ones(2))
    (grad,) = torch.autograd.grad(out.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


DROP_PATH_SM90_COMPILE = """
from sfmamba.ops.drop_path import chunk
from sfmamba.testing import compile_for_sm90

for dtype in ("bf16", "fp16", "fp32"):
    built = [bool(compile_for_sm90(chunk.scaled_add_kernel, dict(HAS_X=has_x, BLOCK=2048), 8,
                                   lambda name: "*" + dtype).asm.get("cubin")) for has_x in (True, False)]
    print(dtype, all(built))
"""


def test_kernel_compiles_for_sm90():
    from sfmamba.testing import run_without_interpreter

    result = run_without_interpreter(DROP_PATH_SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["bf16", "True", "fp16", "True", "fp32", "True"], result.stdout
