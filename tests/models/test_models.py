"""One generic test over every model sfmamba registers with timm, after timm's own `tests/test_models.py` checks.

CPU, small non-window-multiple images (the hybrid stages pad and crop), the naive op path.
"""

from __future__ import annotations

import math
import re

import pytest
import timm
import torch

import sfmamba.models  # noqa: F401  (registers the models)

MODELS = sorted(timm.list_models(module=["mambavision", "sf_mamba", "vmamba"]))
IMG = 64  # stage maps 16, 8, 4, 2: the hybrid stages pad to their 14 / 7 windows and crop back
NUM_CLASSES = 7
# The base and large models (98-228 M parameters) run with windows that fit the stage maps (4 and 2): padded to 14 / 7
# their hybrid stages cost as much as at 224 px (9-30 s each on one thread). Same parameters and code; the padding
# path is covered by the tiny and small models.
SMALL_WINDOWS = {
    name: (8, 8, 4, 2) for name in MODELS if name.endswith(("_base", "_large")) and not name.startswith("vmamba")
}


def test_models_are_registered():
    expected = {"mambavision_tiny", "mambavision_tiny2", "mambavision_small", "mambavision_base", "mambavision_large"}
    expected |= {"mambavision_nano", "sf_mamba_nano", "sf_mamba_tiny", "sf_mamba_small", "sf_mamba_base"}
    expected |= {"vmamba_v2_nano", "vmamba_v2_tiny", "vmamba_v2_small", "vmamba_v2_base"}
    assert expected | {"sf_mamba_large"} <= set(MODELS)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _features_state(fmodel, model) -> dict:
    """`model`'s weights under the feature model's names: a FeatureListNet flattens stage `levels.<i>` to
    `levels_<i>`, a FeatureGetterNet (features through `forward_intermediates`) wraps the model as `model.`."""
    source = model.state_dict()
    names = {k: re.sub(r"^(levels|layers)_(\d+)\.", r"\1.\2.", k.removeprefix("model.")) for k in fmodel.state_dict()}
    return {k: source[name] for k, name in names.items()}


@pytest.mark.parametrize("name", MODELS)
def test_model(name):
    torch.manual_seed(0)
    kwargs = dict(window_size=SMALL_WINDOWS[name]) if name in SMALL_WINDOWS else {}
    model = timm.create_model(name, num_classes=NUM_CLASSES, drop_path_rate=0.0, **kwargs)
    cfg = model.pretrained_cfg
    x = torch.randn(2, 3, IMG, IMG)

    # forward finite; backward reaches every parameter with a finite gradient
    model.train()
    out = model(x)
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad}"
    model.zero_grad(set_to_none=True)

    # gradient checkpointing leaves the output unchanged
    model.eval()
    with torch.no_grad():
        ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    _close(out.detach(), ref)
    model.set_grad_checkpointing(False)
    model.zero_grad(set_to_none=True)

    with torch.no_grad():
        # forward_intermediates agrees with forward_features; stage outputs follow feature_info
        feats = model.forward_features(x)
        final, inters = model.forward_intermediates(x)
        _close(final, feats)
        assert len(inters) == len(model.feature_info) == 4
        assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
        for t, info in zip(inters, model.feature_info):
            side = math.ceil(IMG / info["reduction"])
            assert t.shape == (2, info["num_chs"], side, side)
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(only) == 2
        _close(only[-1], inters[-1])
        _close(model.forward_head(feats), ref)

        # bf16 autocast: finite and near the fp32 output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
        assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
        assert (low.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3

        # default cfg consistency and the classifier reset
        assert cfg["pool_size"] == tuple(s // 32 for s in cfg["input_size"][1:])
        assert cfg["classifier"] == "head" and model.get_classifier() is model.head
        assert feats.shape[1] == model.num_features
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
        model.reset_classifier(0)
        pooled = model(x)
        assert pooled.shape == (2, model.num_features)
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.shape == feats.shape
        _close(unpooled, feats)

    # features_only: carries `model`'s weights, so its outputs equal the intermediates
    fmodel = timm.create_model(name, features_only=True, drop_path_rate=0.0, **kwargs).eval()
    fmodel.load_state_dict(_features_state(fmodel, model))
    assert fmodel.feature_info.channels() == [f["num_chs"] for f in model.feature_info]
    assert fmodel.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = fmodel(x)
    assert len(outs) == 4
    for o, t in zip(outs, inters):
        _close(o, t)


@pytest.mark.parametrize("name", MODELS)
def test_model_exports_with_a_dynamic_batch(name):
    """torch.export traces the eval model (the ops' PyTorch references on the CPU) with a symbolic batch: the program
    runs a batch size it was not traced with and gives the eager output."""
    from sfmamba.export import check_program, export_program

    torch.manual_seed(0)
    # short scans (the reference scan's steps unroll into the traced graph): windows that fit the stage maps, and
    # VMamba at 32 px; the padded windows are traced alike (the tiny models' export tests, tests/test_model_export.py)
    vmamba = name.startswith("vmamba")
    kwargs = {} if vmamba else dict(window_size=(8, 8, 4, 2))
    img = 32 if vmamba else IMG
    model = timm.create_model(name, num_classes=NUM_CLASSES, **kwargs)
    program = export_program(model, torch.randn(2, 3, img, img))
    assert not model.training
    assert check_program(program, model, torch.randn(2, 3, img, img)) < 1e-5  # checked at batch 3


@pytest.mark.parametrize("name", [n for n in MODELS if n.endswith("nano")])
def test_dropout_rates_must_be_probabilities(name):
    with pytest.raises(ValueError, match=r"drop_path_rate must be a probability in \[0, 1\), got 1.5"):
        timm.create_model(name, drop_path_rate=1.5)
    with pytest.raises(ValueError, match=r"drop_rate must be a probability in \[0, 1\), got -0.1"):
        timm.create_model(name, drop_rate=-0.1)
