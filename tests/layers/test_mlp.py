"""`layers.Mlp` and `layers.fused_linear`: training through `ops.linear_act`'s Triton backward (under the interpreter)
gives timm's / torch's results, and the plain forward is kept wherever the kernels must not run."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from timm.layers import Mlp as TimmMlp  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from sfmamba.layers import Mlp, fused_linear  # noqa: E402
from sfmamba.ops.linear import chunk, linear_act  # noqa: E402
from sfmamba.testing import assert_close  # noqa: E402


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_mlp_matches_timm_mlp_in_training(approximate, triton_backend, monkeypatch):
    """`layers.Mlp` trains through the kernels (two calls per backward) and gives timm's Mlp's results."""
    calls = []
    real = chunk.bias_act_bwd
    monkeypatch.setattr(chunk, "bias_act_bwd", lambda *a: calls.append(a[2]) or real(*a))
    torch.manual_seed(0)
    act = lambda: nn.GELU(approximate=approximate)  # noqa: E731
    mlp, plain = Mlp(16, 40, act_layer=act), TimmMlp(16, 40, act_layer=act)
    plain.load_state_dict(mlp.state_dict())
    x = torch.randn(2, 9, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x)
    out.float().square().sum().backward()
    ref_x = x.detach().requires_grad_()
    ref = plain(ref_x)
    ref.square().sum().backward()
    assert calls == ["none", "gelu" if approximate == "none" else "gelu_tanh"]
    assert_close("out", ref, out.float(), 2e-2)
    assert_close("dx", ref_x.grad, x.grad, 3e-2)
    for (name, p), q in zip(mlp.named_parameters(), plain.parameters()):
        assert p.grad.dtype == torch.float32
        assert_close(name, q.grad, p.grad, 3e-2)


def test_mlp_keeps_plain_forward_with_hooks_or_other_activations(triton_backend, monkeypatch):
    calls = []
    monkeypatch.setattr(chunk, "bias_act_bwd", lambda *a: calls.append(1))
    x = torch.randn(2, 5, 8, requires_grad=True)
    silu_mlp = Mlp(8, 16, act_layer=nn.SiLU)
    silu_mlp(x).sum().backward()
    hooked = Mlp(8, 16)
    seen = []
    hooked.act.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    hooked(x).sum().backward()
    pruned = nn.Linear(8, 8)
    prune.l1_unstructured(pruned, "weight", amount=0.5)
    fused_linear(pruned, x).sum().backward()
    assert calls == [] and seen == [(2, 5, 16)]


def test_fused_linear_skips_non_linear_modules(triton_backend):
    conv = nn.Conv1d(4, 4, 1)
    x = torch.randn(2, 4, 3, requires_grad=True)
    assert torch.equal(fused_linear(conv, x), conv(x))


class LoraLinear(nn.Linear):
    """A subclass with its own forward (as LoRA or QAT layers have): the fused path must not bypass it."""

    def forward(self, x):
        return super().forward(x) + 1.0


def test_linear_subclasses_with_their_own_forward_keep_it(triton_backend):
    layer = LoraLinear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    torch.testing.assert_close(fused_linear(layer, x), layer(x))


def test_backward_hooks_fire(triton_backend):
    """Module backward hooks (Grad-CAM, Captum) need the module calls: the plain path runs when one is set."""
    mlp = Mlp(8, 16)
    fired = []
    mlp.fc1.register_full_backward_hook(lambda *a: fired.append("fc1"))
    mlp.act.register_full_backward_hook(lambda *a: fired.append("act"))
    mlp(torch.randn(2, 3, 8, requires_grad=True)).sum().backward()
    assert sorted(fired) == ["act", "fc1"]


def test_torch_func_grad_through_mlp(triton_backend):
    """torch.func transforms take the plain path (the Triton autograd Functions do not support them)."""
    mlp = Mlp(8, 16)
    params = dict(mlp.named_parameters())
    x = torch.randn(2, 8)
    grads = torch.func.grad(lambda p: torch.func.functional_call(mlp, p, (x,)).square().sum())(params)
    mlp(x).square().sum().backward()
    for name, p in mlp.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)


def test_fp64_weight_under_autocast_fails_as_plain_linear(triton_backend):
    x, w = torch.randn(3, 8, requires_grad=True), torch.randn(4, 8, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="dtype"):
        linear_act(x, w)


def test_zero_out_features(triton_backend):
    layer = nn.Linear(8, 0)
    x = torch.randn(3, 8, requires_grad=True)
    out = fused_linear(layer, x)
    out.sum().backward()
    assert out.shape == (3, 0) and torch.equal(x.grad, torch.zeros_like(x))
