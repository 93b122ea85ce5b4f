"""`layers.conv_bn.bn_act`: training BatchNorm + activation through `ops.batch_norm_act` (under the interpreter)
gives nn.BatchNorm2d + activation's results, running statistics and batch count, in MambaVision's ConvBlock and stem
too; the plain modules run wherever the kernels must not."""

from __future__ import annotations

import copy
import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from sfmamba.layers.conv_bn import bn_act  # noqa: E402
from sfmamba.models.mambavision import ConvBlock, PatchEmbed  # noqa: E402
from sfmamba.ops.batch_norm import chunk  # noqa: E402
from sfmamba.testing import assert_close  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    real = chunk.batch_norm_act_fwd
    monkeypatch.setattr(chunk, "batch_norm_act_fwd", lambda *a: calls.append(a[7]) or real(*a))  # the activation
    return calls


def _map(*shape: int) -> torch.Tensor:
    return torch.randn(shape).to(memory_format=torch.channels_last).requires_grad_()


@pytest.mark.parametrize("act", [None, nn.ReLU(), nn.GELU(), nn.GELU(approximate="tanh")])
def test_matches_batch_norm_and_activation(act, kernel_calls, triton_backend):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(12)
    with torch.no_grad():
        bn.weight.normal_(1, 0.2)
        bn.bias.normal_()
    plain = copy.deepcopy(bn)
    x = _map(3, 12, 5, 6)
    out = bn_act(x, bn, act)
    ref_x = x.detach().clone().requires_grad_()
    ref = plain(ref_x) if act is None else act(plain(ref_x))
    dout = torch.randn_like(ref)
    out.backward(dout)
    ref.backward(dout)
    assert len(kernel_calls) == 1
    assert_close("out", ref, out, 1e-5)
    assert_close("dx", ref_x.grad, x.grad, 1e-5)
    for name in ("weight", "bias"):
        assert_close(name, getattr(plain, name).grad, getattr(bn, name).grad, 1e-5)
    for name in ("running_mean", "running_var"):
        assert_close(name, getattr(plain, name), getattr(bn, name), 1e-6)
    assert bn.num_batches_tracked.item() == plain.num_batches_tracked.item() == 1


@pytest.mark.parametrize(
    "case", ["eval", "nchw", "momentum_none", "hook", "silu", "no_affine", "sync_bn"]
)  # fmt: skip
def test_plain_modules_where_the_kernels_must_not_run(case, kernel_calls, triton_backend):
    bn = nn.BatchNorm2d(4, momentum=None if case == "momentum_none" else 0.1, affine=case != "no_affine")
    act = nn.SiLU() if case == "silu" else nn.ReLU()
    x = torch.randn(2, 4, 3, 3) if case == "nchw" else _map(2, 4, 3, 3)
    if case == "eval":
        bn.eval()
    if case == "hook":
        bn.register_forward_hook(lambda *a: None)
    if case == "sync_bn":
        bn = nn.SyncBatchNorm(4)
    plain = copy.deepcopy(bn)
    torch.testing.assert_close(bn_act(x, bn, act), act(plain(x)))
    assert kernel_calls == []


def test_conv_block_and_stem_train_through_the_kernels(kernel_calls, triton_backend):
    torch.manual_seed(0)
    block, stem = ConvBlock(8), PatchEmbed(in_chans=3, in_dim=4, dim=8)
    for module, x in ((block, _map(2, 8, 6, 6)), (stem, _map(2, 3, 12, 12))):
        plain = copy.deepcopy(module)
        out = module(x)
        out.square().sum().backward()
        set_kernel_backend("naive")  # the reference: nn.BatchNorm2d and the activation modules
        ref = plain(x)
        ref.square().sum().backward()
        set_kernel_backend("triton")
        assert_close("out", ref, out, 1e-5)
        for (name, p), q in zip(module.named_parameters(), plain.parameters()):
            assert_close(name, q.grad, p.grad, 1e-4, atol=1e-4)  # conv biases before BN: gradient ~0, noise
        for (name, b), c in zip(module.named_buffers(), plain.buffers()):
            torch.testing.assert_close(b, c, msg=name)
    assert kernel_calls == ["gelu_tanh", "none", "relu", "relu"]
    # the ConvBlock's conv biases run as the BNs' shifts: BN cancels them, their gradient is exactly zero
    assert not block.conv1.bias.grad.any() and not block.conv2.bias.grad.any()


def test_fallback_with_shift_keeps_the_autocast_dtype(triton_backend):
    """The plain path adds a shift as a conv adds its bias (in the activation's dtype): no promotion to fp32."""
    bn = nn.BatchNorm2d(4)
    x = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16)  # NCHW: the plain path
    out = bn_act(x, bn, nn.GELU(), shift=torch.randn(4))
    assert out.dtype == torch.bfloat16


def test_empty_batch_as_batch_norm(kernel_calls, triton_backend):
    bn = nn.BatchNorm2d(5)
    x = _map(0, 5, 3, 3)
    out = bn_act(x, bn, nn.ReLU())
    assert out.shape == (0, 5, 3, 3) and kernel_calls == []


def test_backward_hooks_fire(kernel_calls, triton_backend):
    bn = nn.BatchNorm2d(4)
    fired = []
    bn.register_full_backward_hook(lambda *a: fired.append("bn"))
    bn_act(_map(2, 4, 3, 3), bn, nn.ReLU()).sum().backward()
    assert fired == ["bn"] and kernel_calls == []


def test_batch_norm_recalibration_refreshes_the_inference_fold(triton_backend):
    """BN-only recalibration (BN modules in train mode, forwards without gradients, eval again): the eval fold of
    BN into the conv must be rebuilt, though in-place running-statistics writes leave their version counters alone."""
    torch.manual_seed(0)
    block = ConvBlock(8).eval()
    x = _map(2, 8, 6, 6).detach()
    with torch.no_grad():
        block(x)  # fills the fold cache
        for bn in (block.norm1, block.norm2):
            bn.train()
        block(x * 3 + 1)  # new running statistics
        for bn in (block.norm1, block.norm2):
            bn.eval()
        got = block(x)
        fresh = copy.deepcopy(block)
        for m in fresh.modules():
            m.__dict__.pop("_bn_fold_cache", None)
        torch.testing.assert_close(got, fresh(x))


def test_torch_func_grad_through_bn_act(kernel_calls, triton_backend):
    """torch.func transforms take the plain path (batch statistics only: torch.func forbids the running-statistics
    writes of a captured buffer anyway)."""
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    x = _map(2, 4, 3, 3).detach()

    def loss(params):
        with torch.nn.utils.stateless._reparametrize_module(bn, params):
            return bn_act(x, bn, nn.GELU()).square().sum()

    grads = torch.func.grad(loss)(dict(bn.named_parameters()))
    loss(dict(bn.named_parameters())).backward()
    assert kernel_calls == ["gelu"]  # only the eager call took the kernels
    for name, p in bn.named_parameters():
        assert_close(name, p.grad, grads[name], 1e-5)


def test_stem_keeps_its_sequential_for_backward_hooks(kernel_calls, triton_backend):
    stem = PatchEmbed(in_chans=3, in_dim=4, dim=8)
    fired = []
    stem.conv_down.register_full_backward_hook(lambda *a: fired.append("conv_down"))
    stem(_map(2, 3, 12, 12)).sum().backward()
    assert fired == ["conv_down"] and kernel_calls == []
