"""SF-Mamba: the model options and the defining property of every ablation variant (SPEC section 3)."""

from __future__ import annotations

import pytest
import timm
import torch

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba.models.sf_mamba import SFMambaStage


def test_nano_models_run_on_small_grey_images():
    torch.manual_seed(0)
    for name in ("sf_mamba_nano", "mambavision_nano"):
        model = timm.create_model(name, num_classes=10, in_chans=1)
        for side in (28, 32, 64):
            out = model(torch.randn(2, 1, side, side))
            assert out.shape == (2, 10) and torch.isfinite(out).all()


def _stage(depth: int, **options) -> SFMambaStage:
    torch.manual_seed(0)
    return SFMambaStage(dim=16, depth=depth, num_heads=2, window_size=4, attention=False, **options).eval()


def _first_depends_on_last(stage: torch.nn.Module) -> bool:
    """Is the gradient of the first patch token's output w.r.t. the last patch of the window nonzero?"""
    x = torch.randn(1, 16, 4, 4, requires_grad=True)
    out = stage(x)
    (grad,) = torch.autograd.grad(out[0, :, 0, 0].sum(), x)
    return bool(grad[0, :, -1, -1].abs().sum() > 0)


@pytest.mark.parametrize(
    "options, blocks, expected",
    [
        pytest.param(dict(aux_tokens=True), 1, False, id="aux-1-block"),
        pytest.param(dict(aux_tokens=True), 2, True, id="aux-2-blocks"),
        pytest.param(dict(aux_tokens=False), 2, False, id="no-aux-2-blocks"),
        pytest.param(dict(aux_tokens=False, scan="parallel"), 1, True, id="parallel-1-block"),
        pytest.param(dict(aux_tokens=False, scan="series"), 1, True, id="series-1-block"),
        pytest.param(dict(aux_tokens=False, scan="cross"), 1, True, id="cross-1-block"),
        pytest.param(dict(aux_tokens=False, flip=True), 1, False, id="flip-1-block"),
        pytest.param(dict(aux_tokens=False, flip=True), 2, True, id="flip-2-blocks"),
    ],
)
def test_future_to_past_information_flow(options, blocks, expected):
    assert _first_depends_on_last(_stage(blocks, **options)) is expected
