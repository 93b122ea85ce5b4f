"""L1 unstructured pruning of Linear / Conv2d weights (`sfmamba.compress.prune_l1`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sfmamba.compress import prune_l1, sparsity


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10), nn.ReLU(), nn.Linear(10, 7))


def test_forty_percent_of_each_layer_smallest_weights_become_zero_permanently():
    model = small_model()
    before = {name: m.weight.detach().clone() for name, m in model.named_modules() if hasattr(m, "weight")}
    summary = prune_l1(model, 0.4)
    for name, module in model.named_modules():
        if name not in before:
            continue
        weight, original = module.weight.detach(), before[name]
        zeros = weight == 0
        assert zeros.sum().item() == round(0.4 * weight.numel()), name  # per layer, as torch.nn.utils.prune rounds
        assert original[zeros].abs().max() <= original[~zeros].abs().min(), name  # the smallest |w| went
        assert torch.equal(weight[~zeros], original[~zeros])
        assert isinstance(module.weight, nn.Parameter) and not hasattr(module, "weight_orig")  # prune.remove ran
        assert not module._forward_pre_hooks
    assert summary["layers"] == 3 and abs(summary["sparsity"] - 0.4) < 0.01
    assert summary == {**summary, **sparsity(model)}


def test_layer_types_and_exclusions():
    model = small_model()
    prune_l1(model, 0.4, ("conv2d",))
    assert sparsity(model, ("conv2d",))["sparsity"] == pytest.approx(0.4, abs=0.01)
    assert sparsity(model, ("linear",))["zeros"] == 0
    model = small_model()
    prune_l1(model, 0.4, ("linear",), exclude=("4",))
    assert (model[4].weight == 0).sum() == 0 and (model[2].weight == 0).float().mean() == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(amount=1.0), "amount must be a fraction in"),
        (dict(amount=-0.1), "amount must be a fraction in"),
        (dict(layer_types=("conv1d",)), "layer_types must be a non-empty selection of"),
        (dict(layer_types=("linear",), exclude=("2", "4")), "model has no linear layers to prune"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune_l1(small_model(), **kwargs)
