"""MambaVision specifics: parameter count, the (B, L, D) mixer against the official (B, D, L) computation,
window partitioning, and loading official-layout checkpoints through timm's `pretrained_cfg_overlay=dict(file=...)`.
"""

from __future__ import annotations

import re

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba.layers import MambaVisionMixer
from sfmamba.models.mambavision import window_partition, window_reverse
from sfmamba.ops import selective_scan_naive
from sfmamba.testing import assert_close, randomise_scan_parameters


def test_mambavision_tiny_parameter_count():
    with torch.device("meta"):
        model = timm.create_model("mambavision_tiny")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 31.79


def _official_mixer_forward(m: MambaVisionMixer, hidden: torch.Tensor) -> torch.Tensor:
    """The official mixer's computation, step by step, in its (batch, channels, L) layout."""
    b, length, _ = hidden.shape
    x, z = m.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    x = F.silu(F.conv1d(x, m.conv1d_x.weight, m.conv1d_x.bias, padding="same", groups=m.d_half))
    z = F.silu(F.conv1d(z, m.conv1d_z.weight, m.conv1d_z.bias, padding="same", groups=m.d_half))
    x_dbl = m.x_proj(x.transpose(1, 2).reshape(b * length, -1))
    dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = m.dt_proj(dt).view(b, length, -1).transpose(1, 2)
    B = B.view(b, length, -1).transpose(1, 2).contiguous()
    C = C.view(b, length, -1).transpose(1, 2).contiguous()
    A = -torch.exp(m.A_log.float())
    y = selective_scan_naive(x, dt, A, B, C, m.D.float(), None, m.dt_proj.bias.float(), True)
    return m.out_proj(torch.cat([y, z], dim=1).transpose(1, 2))


def test_mixer_matches_official_computation():
    torch.manual_seed(0)
    m = randomise_scan_parameters(MambaVisionMixer(d_model=40, d_state=8, d_conv=3, expand=1))
    assert not m.conv1d_x.bias and not m.conv1d_z.bias  # the official `bias=conv_bias // 2` is 0
    assert [n for n, _ in m.named_parameters()] == [
        "A_log", "D", "in_proj.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "out_proj.weight",
        "conv1d_x.weight", "conv1d_z.weight",
    ]  # fmt: skip
    x = torch.randn(3, 49, 40, requires_grad=True)
    out = m(x)
    ref = _official_mixer_forward(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, *m.parameters()])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *m.parameters()])
    names = ["input", *(n for n, _ in m.named_parameters())]
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        assert_close(name, r, g, 1e-5, atol=0)  # relative: the scan's parameter gradients are small


def test_window_partition_round_trip():
    x = torch.randn(2, 5, 14, 21)
    w = window_partition(x, 7)
    assert w.shape == (2 * 2 * 3, 49, 5)
    torch.testing.assert_close(w[1, 8], x[0, :, 1, 7 + 1])  # window (0, 1), token row 1 col 1
    torch.testing.assert_close(window_reverse(w, 7, 14, 21), x)


def _to_official_keys(state_dict: dict) -> dict:
    """Our layout -> the official one: the downsample that starts our stage i + 1 ends the official stage i."""
    return {
        re.sub(r"^levels\.(\d+)\.downsample\.", lambda m: f"levels.{int(m.group(1)) - 1}.downsample.", k): v
        for k, v in state_dict.items()
    }


@pytest.fixture(scope="module")
def tiny_and_input():
    torch.manual_seed(0)
    model = timm.create_model("mambavision_tiny").eval()
    with torch.no_grad():  # non-trivial BN statistics, so the buffers are checked too
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 72, 88)  # not a window multiple in either direction
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests run (conftest's one_thread starts after this module-scoped fixture)
    try:
        with torch.no_grad():
            ref = model(x)
    finally:
        torch.set_num_threads(threads)
    return model, x, ref


@pytest.mark.parametrize("layout", ["official", "ours", "safetensors"])
def test_checkpoint_round_trip(tmp_path, tiny_and_input, layout):
    model, x, ref = tiny_and_input
    state = model.state_dict()
    if layout == "official":
        state = {f"module.{k}": v for k, v in _to_official_keys(state).items()}  # DataParallel-saved, as some are
        assert "module.levels.0.downsample.reduction.0.weight" in state
    if layout == "safetensors":
        path = tmp_path / "model.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "mambavision_tiny_1k.pth.tar"
        torch.save({"epoch": 309, "state_dict": state, "metric": 82.3}, path)
    loaded = timm.create_model("mambavision_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with torch.no_grad():
        out = loaded.eval()(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # another classifier size or none: the backbone still loads (timm re-initialises or drops the head)
    for num_classes in (0, 10):
        backbone = timm.create_model(
            "mambavision_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=num_classes
        ).eval()
        with torch.no_grad():
            torch.testing.assert_close(backbone.forward_features(x), model.forward_features(x), rtol=0, atol=0)


def test_checkpoint_mismatch_is_a_clear_error(tmp_path, tiny_and_input):
    model = tiny_and_input[0]
    state = _to_official_keys(model.state_dict())
    del state["levels.2.blocks.0.mixer.A_log"]
    state["levels.2.blocks.0.mixer.extra"] = torch.zeros(1)
    state["levels.3.blocks.0.norm1.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(RuntimeError) as info:
        timm.create_model("mambavision_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(info.value)
    assert "missing keys (1): levels.2.blocks.0.mixer.A_log" in message
    assert "unexpected keys (1): levels.2.blocks.0.mixer.extra" in message
    assert "levels.3.blocks.0.norm1.weight: file (3,) vs model (640,)" in message
