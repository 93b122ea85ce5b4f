"""Values derived from parameters and kept between eager inference calls (`sfmamba.utils.inference_cache`): the same
results as recomputing, reused while the sources are unchanged, recomputed after any in-place update, never kept
while a gradient is needed."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import sfmamba.models  # noqa: E402, F401  (registers the models)
from sfmamba.layers import MambaVisionMixer  # noqa: E402
from sfmamba.layers import conv_bn as conv_bn_layer  # noqa: E402
from sfmamba.ops import _checks  # noqa: E402
from sfmamba.ops.selective_scan import selective_scan  # noqa: E402
from sfmamba.testing import randomise_norms  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402
from sfmamba.utils.inference_cache import CastCachedLinear, cache_linear_casts, cached, caches_now  # noqa: E402


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return cache_linear_casts(nn.Sequential(nn.Linear(16, 8)))[0]


def test_cached_reuses_until_a_source_changes_in_place():
    owner, weight, calls = nn.Module(), torch.randn(4), []

    def make():
        calls.append(1)
        return weight * 2

    first = cached(owner, "_c", (weight,), make)
    assert cached(owner, "_c", (weight,), make) is first and len(calls) == 1
    weight.add_(1.0)  # bumps the version counter
    again = cached(owner, "_c", (weight,), make)
    assert len(calls) == 2 and torch.equal(again, weight * 2)
    assert cached(owner, "_c", (weight,), make, extra="other key") is not again and len(calls) == 3
    assert "_c" not in owner.state_dict()


def test_cast_cached_linear_equals_autocast_and_reuses_its_cast():
    linear = _linear()
    assert type(linear) is CastCachedLinear and set(linear.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear(x)
        cast = linear._cast_cache[1][0]
        assert linear(x).dtype == torch.bfloat16 and linear._cast_cache[1][0] is cast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = nn.functional.linear(x, linear.weight, linear.bias)  # autocast casts every call
        torch.testing.assert_close(out, plain, rtol=0, atol=0)
        linear(x)
        assert linear._cast_cache[1][0] is cast  # kept across autocast regions
    with torch.no_grad():
        linear.weight.mul_(2.0)  # an optimizer step
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(linear(x), nn.functional.linear(x, linear.weight, linear.bias), rtol=0, atol=0)
        assert linear._cast_cache[1][0] is not cast


def test_cast_cached_linear_keeps_nothing_when_a_gradient_is_needed():
    linear = _linear()
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear(x).float().sum().backward()
    assert "_cast_cache" not in linear.__dict__ and linear.weight.grad is not None
    linear.requires_grad_(False)  # frozen parameters, autograd still on (adapters, input gradients): nothing kept
    assert not caches_now(linear.weight)
    with torch.no_grad():
        assert caches_now(linear.weight)


def test_inference_mode_parameters_and_values_never_cached():
    """Parameters made under inference_mode keep no version counter; values made under it must never reach a later
    forward that autograd records."""
    torch.manual_seed(0)
    with torch.inference_mode():
        mixer = MambaVisionMixer(d_model=16, d_state=4).eval()
        mixer(torch.randn(2, 9, 16))  # built and run in inference mode: no crash, nothing cached
    assert "_A_cache" not in mixer.__dict__
    frozen = MambaVisionMixer(d_model=16, d_state=4).eval().requires_grad_(False)
    with torch.inference_mode():
        frozen(torch.randn(2, 9, 16))
    x = torch.randn(2, 9, 16, requires_grad=True)
    frozen(x).sum().backward()  # a cached inference tensor here would fail "cannot be saved for backward"
    assert x.grad is not None


def test_models_drop_caches_on_mode_and_device_changes():
    """Writes that skip the version counter (p.data, raw-pointer optimizers, collectives) are caught at the
    train()/eval() switch every training loop makes."""
    torch.manual_seed(0)
    model = timm.create_model("mambavision_nano", num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = model(x)
    head = model.head
    assert "_cast_cache" in head.__dict__
    head.weight.data.add_(1.0)  # no version bump
    model.train().eval()
    assert "_cast_cache" not in head.__dict__
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.equal(model(x), first)
        model(x)
    model.to(torch.float32)
    assert "_cast_cache" not in head.__dict__
    model.reset_classifier(3)
    assert type(model.head) is CastCachedLinear


def test_models_use_cast_cached_linears():
    model = timm.create_model("sf_mamba_nano", num_classes=5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is CastCachedLinear for m in linears)


def test_folded_conv_bn_kept_between_calls_and_refolded_after_a_change(monkeypatch, triton_backend):
    torch.manual_seed(0)
    model = randomise_norms(timm.create_model("mambavision_nano", num_classes=5)).eval()
    folds = []
    real_fold = conv_bn_layer.fold_batch_norm

    def counting_fold(*args):
        folds.append(1)
        return real_fold(*args)

    monkeypatch.setattr(conv_bn_layer, "fold_batch_norm", counting_fold)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        first = model(x)
        n_folds = len(folds)
        assert n_folds > 0 and torch.equal(model(x), first) and len(folds) == n_folds
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        bn.running_mean.add_(0.5)  # what a training step in train mode does
        changed = model(x)
    assert len(folds) == n_folds + 1 and not torch.equal(changed, first)
    set_kernel_backend("naive")  # the plain modules (the fixture restores the default afterwards)
    with torch.no_grad():
        torch.testing.assert_close(changed, model(x), rtol=1e-4, atol=1e-5)


def test_mixer_keeps_A_and_checks_it_once(monkeypatch):
    monkeypatch.setenv("SFMAMBA_VALUE_CHECKS", "1")  # a benchmark module imported by another test turns them off
    torch.manual_seed(0)
    mixer = MambaVisionMixer(d_model=16, d_state=4).eval()
    checks = []
    real_isfinite = torch.isfinite
    monkeypatch.setattr(_checks.torch, "isfinite", lambda t: checks.append(1) or real_isfinite(t))
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        out = mixer(x)
        A = mixer._A_cache[1]
        assert torch.equal(mixer(x), out) and mixer._A_cache[1] is A and len(checks) == 1
        mixer.A_log.add_(0.1)
        mixer(x)
    assert mixer._A_cache[1] is not A and len(checks) == 2
    mixer(x).sum().backward()  # training: A recomputed, not kept; checked every call
    assert len(checks) == 3 and mixer.A_log.grad is not None


def test_check_finite_sees_in_place_changes(monkeypatch):
    monkeypatch.setenv("SFMAMBA_VALUE_CHECKS", "1")  # a benchmark module imported by another test turns them off
    torch.manual_seed(0)
    u, delta = torch.randn(1, 4, 5), torch.rand(1, 4, 5)
    A, B, C = -torch.rand(4, 2), torch.randn(1, 2, 5), torch.randn(1, 2, 5)
    selective_scan(u, delta, A, B, C)
    A[0, 0] = float("inf")
    with pytest.raises(ValueError, match="A must be finite"):
        selective_scan(u, delta, A, B, C)
