"""Training BatchNorm + activation (Triton forward and backward) against the fp32 reference under the interpreter:
outputs, every gradient and the running statistics over conv-stage map shapes (odd sizes included), all dtypes and
activations, NaN-poisoned buffers, several row blocks per program, the dispatch rules and bad arguments. The layer
that uses it (`layers.conv_bn.bn_act`) is tested in tests/layers/test_bn_act.py."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sfmamba.ops._activations import ACTIVATIONS  # noqa: E402
from sfmamba.ops.batch_norm import batch_norm_act, batch_norm_act_naive, chunk  # noqa: E402
from sfmamba.testing import assert_close, run_without_interpreter  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(2, 20, 7, 7), (3, 33, 5, 9), (1, 8, 11, 3), (4, 40, 1, 1)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_gradients_and_running_stats_match_reference(shape, activation, dtype, triton_backend):
    torch.manual_seed(sum(shape))
    channels = shape[1]
    x = _channels_last((torch.randn(shape) * 2 + 1).to(dtype)).requires_grad_()
    weight = (torch.randn(channels) * 0.3 + 1).requires_grad_()
    bias = torch.randn(channels).requires_grad_()
    running = [torch.randn(channels), torch.rand(channels) + 0.5]
    ref_running = [t.clone() for t in running]
    out = batch_norm_act(x, weight, bias, *running, 0.1, 1e-5, activation)
    dout = torch.randn(shape).to(dtype)
    got = torch.autograd.grad(out, (x, weight, bias), dout)
    leaves = [t.detach().float().requires_grad_() for t in (x, weight, bias)]
    ref = batch_norm_act_naive(leaves[0], leaves[1], leaves[2], *ref_running, 0.1, 1e-5, activation)
    want = torch.autograd.grad(ref, leaves, dout.float())
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert_close("out", ref, out.float(), TOLERANCE[dtype])
    for name, g, w, t in zip(("dx", "dweight", "dbias"), got, want, (x, weight, bias)):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert_close(name, w, g.float(), TOLERANCE[dtype], atol=1e-5)
    assert_close("running_mean", ref_running[0], running[0], 1e-5)
    assert_close("running_var", ref_running[1], running[1], 1e-5)


def test_statistics_over_many_row_blocks_and_column_blocks(monkeypatch, triton_backend):
    """More row blocks than programs (shifted-sum partials combined across programs), several column blocks,
    and a large mean next to a small spread (where sum/sum-of-squares statistics would cancel)."""
    monkeypatch.setattr(chunk, "_blocks", lambda channels: (2, 4))
    monkeypatch.setattr(chunk, "_row_programs", lambda rows, block_m, col_blocks, device: 3)
    torch.manual_seed(3)
    x = _channels_last(torch.randn(3, 10, 5, 3) * 0.01 + 300.0).requires_grad_()
    weight, bias = torch.rand(10).requires_grad_(), torch.randn(10).requires_grad_()
    rm, rv = torch.zeros(10), torch.ones(10)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    out = batch_norm_act(x, weight, bias, rm, rv, 0.25, 1e-5, "gelu")
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, weight, bias), dout)
    x64 = x.detach().double().requires_grad_()
    w64, b64 = weight.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    ref = F.gelu(F.batch_norm(x64, rm_ref.double(), rv_ref.double(), w64, b64, True, 0.25, 1e-5))
    want = torch.autograd.grad(ref, (x64, w64, b64), dout.double())
    # an fp32 mean of values near 300 is off by ~ulp(300) = 3e-5, i.e. 3e-3 of the 0.01 spread: the bound of any fp32
    # BN (sum / sum-of-squares statistics would lose the variance entirely: 90000.0001 - 90000 in fp32)
    assert_close("out", ref, out, 5e-3)
    for name, g, w in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(name, w, g, 5e-3)
    torch.testing.assert_close(rm, 0.25 * x.detach().double().mean((0, 2, 3)).float())


@pytest.mark.parametrize("use_triton", [True, False])
def test_shift_moves_only_the_running_mean_and_has_zero_gradient(use_triton, triton_backend):
    """BN(x + shift) == BN(x) in training: the shift only enters the running mean; its gradient is exactly zero."""
    torch.manual_seed(2)
    x = _channels_last(torch.randn(2, 6, 4, 5)) if use_triton else torch.randn(2, 6, 4, 5)  # NCHW: the reference
    w, b, shift = torch.rand(6) + 0.5, torch.randn(6), torch.randn(6, requires_grad=True)
    rm, rv = torch.zeros(6), torch.ones(6)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    out = batch_norm_act(x, w, b, rm, rv, 0.1, 1e-5, "gelu", shift)
    ref = F.gelu(F.batch_norm(x + shift.detach().view(1, -1, 1, 1), rm_ref, rv_ref, w, b, True, 0.1, 1e-5))
    assert_close("out", ref, out, 1e-5)
    assert_close("running_mean", rm_ref, rm, 1e-6)
    assert_close("running_var", rv_ref, rv, 1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), shift)
    if use_triton:
        assert not grad.any()
    else:
        assert grad.abs().max() < 1e-4  # the reference's autograd: zero up to rounding


def test_without_running_statistics(triton_backend):
    x = _channels_last(torch.randn(2, 6, 4, 4))
    w, b = torch.ones(6), torch.zeros(6)
    out = batch_norm_act(x, w, b)
    torch.testing.assert_close(out, batch_norm_act_naive(x, w, b, None, None, 0.1, 1e-5), atol=1e-5, rtol=1e-5)


def test_dispatch(triton_backend, monkeypatch):
    calls = []
    real = chunk.batch_norm_act_fwd
    monkeypatch.setattr(chunk, "batch_norm_act_fwd", lambda *a: calls.append(1) or real(*a))
    w, b = torch.ones(6), torch.zeros(6)
    batch_norm_act(_channels_last(torch.randn(2, 6, 4, 4)), w, b)
    nchw = torch.randn(2, 6, 4, 4)  # channels not innermost: the reference
    torch.testing.assert_close(batch_norm_act(nchw, w, b), batch_norm_act_naive(nchw, w, b, None, None, 0.1, 1e-5))
    assert calls == [1]


def test_reference_without_triton():
    x = _channels_last(torch.randn(2, 6, 4, 4, dtype=torch.bfloat16))
    w, b = torch.ones(6), torch.zeros(6)
    assert torch.equal(batch_norm_act(x, w, b), batch_norm_act_naive(x, w, b, None, None, 0.1, 1e-5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(x=torch.randn(2, 6, 3, dtype=torch.float64)), "x must be a float32/float16/bfloat16 tensor"),
        (dict(x=torch.randn(6)), r"x must be a float32/float16/bfloat16 tensor \[B, C, \.\.\.\]"),
        (dict(weight=torch.randn(5)), r"weight must have shape \(6,\)"),
        (dict(running_mean=torch.zeros(6)), "running_mean and running_var must be given together"),
        (dict(shift=torch.zeros(5)), r"shift must have shape \(6,\)"),
        (dict(x=torch.randn(1, 6, 1)), "more than 1 value per channel"),
        (dict(momentum=1.5), r"momentum must be a float in \[0, 1\]"),
        (dict(eps=0), "eps must be a positive float"),
        (dict(activation="silu"), "activation must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(x=torch.randn(2, 6, 3), weight=torch.ones(6), bias=torch.zeros(6)) | kwargs
    with pytest.raises(ValueError, match=message):
        batch_norm_act(**args)


def test_double_backward_fails_loudly(triton_backend):
    x = _channels_last(torch.randn(2, 4, 3, 3)).requires_grad_()
    y = x + batch_norm_act(x, torch.ones(4), torch.zeros(4), activation="gelu")
    (grad,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


BATCH_NORM_SM90_COMPILE = """
from sfmamba.ops.batch_norm import chunk
from sfmamba.testing import compile_for_sm90

for dtype in ("bf16", "fp16", "fp32"):
    types = dict(x_ptr=dtype, y_ptr=dtype, dy_ptr=dtype, dx_ptr=dtype, rm_ptr="fp32", rv_ptr="fp32")
    ptr = lambda name: "*" + types.get(name, "fp32")
    blocks = dict(BLOCK_M=32, BLOCK_C=128)
    kernels = [(chunk.bn_stats_kernel, blocks)]
    kernels += [(chunk.bn_finalize_kernel, dict(UPDATE_RUNNING=u, HAS_SHIFT=s, BLOCK_P=256, BLOCK_C=8))
                for u in (True, False) for s in (True, False)]
    kernels += [(k, dict(ACT=act, **blocks)) for act in range(4)
                for k in (chunk.bn_act_fwd_kernel, chunk.bn_act_bwd_reduce_kernel, chunk.bn_act_bwd_dx_kernel)]
    built = [bool(compile_for_sm90(k, flags, 4, ptr).asm.get("cubin")) for k, flags in kernels]
    print(dtype, len(built), all(built))
"""


def test_kernels_compile_for_sm90():
    """The interpreter never compiles: build every BatchNorm kernel (each activation, shift and running-statistics
    variant) for an H100 with Triton's bundled ptxas, for bf16/fp16/fp32 maps."""
    result = run_without_interpreter(BATCH_NORM_SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["bf16", "17", "True", "fp16", "17", "True", "fp32", "17", "True"], result.stdout
