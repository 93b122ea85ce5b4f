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
from sfmamba.ops.linear import chunk  # noqa: E402
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
