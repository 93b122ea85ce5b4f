"""Our MambaVision against the official code: the `mambavision` wheel from PyPI (installed with `--no-deps` by
`make setup`), run on sfmamba's `selective_scan_fn` through a stand-in `mamba_ssm` package (`official_stub/`).

An official-layout training checkpoint (timm's CheckpointSaver layout, which the official `train.py` uses: weights
under `state_dict`, EMA weights under `state_dict_ema`, an `argparse.Namespace` under `args`, optimizer and scaler
state) must load through `timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH))` with
`weights_only=True`, and our model must then compute what the official model computes with the official loader.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba.models.mambavision import checkpoint_filter_fn
from sfmamba.ops import selective_scan_fn

STUB_DIR = Path(__file__).parent / "official_stub"
OURS = {
    "mamba_vision_T": "mambavision_tiny",
    "mamba_vision_T2": "mambavision_tiny2",
    "mamba_vision_S": "mambavision_small",
    "mamba_vision_B": "mambavision_base",
    "mamba_vision_L": "mambavision_large",
}


@pytest.fixture(scope="module")
def official():
    """The official `mambavision.models.mamba_vision` module, freshly imported against the stand-in `mamba_ssm`."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in sys.modules if n.split(".")[0] in ("mamba_ssm", "mambavision")]:
            patch.delitem(sys.modules, name)  # another test (sfmamba bench) may have imported them its own way
        patch.syspath_prepend(str(STUB_DIR))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # it imports timm.models.layers / .registry
            warnings.simplefilter("ignore", UserWarning)  # a re-import re-registers its names with timm
            module = importlib.import_module("mambavision.models.mamba_vision")
        assert Path(sys.modules["mamba_ssm"].__file__).is_relative_to(STUB_DIR)
        assert module.selective_scan_fn is selective_scan_fn
        yield module


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Perturb every float parameter and BN statistic, so any swapped or skipped tensor changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            else:
                tensor.add_(0.02 * noise)


def _training_checkpoint(model: torch.nn.Module, arch: str) -> dict:
    """What the official train.py (timm's CheckpointSaver, model_ema on) writes for `model`. The EMA weights differ
    by 1 % noise: a loader that picks `state_dict_ema` (timm's generic one does) fails the equality tests."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    ema = {k: v * (1 + 0.01 * torch.randn(v.shape, generator=gen)) if v.is_floating_point() else v.clone()
           for k, v in state.items()}  # fmt: skip
    first = next(iter(state))
    return {
        "epoch": 309,
        "arch": arch,
        "state_dict": state,
        "optimizer": {
            "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(state[first])}},
            "param_groups": [{"lr": 5e-6, "betas": (0.9, 0.999), "params": [0]}],
        },  # fmt: skip
        "version": 2,
        "args": argparse.Namespace(model=arch, lr=0.005, opt="lamb", input_size=[3, 224, 224], model_ema=True),
        "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
        "state_dict_ema": ema,
        "metric": 82.3,
    }


@pytest.fixture(scope="module")
def tiny_pair(official, tmp_path_factory):
    """(official mamba_vision_T loaded by the official loader, ours loaded by timm from the same file, the file)."""
    torch.manual_seed(0)
    source = official.mamba_vision_T()
    _randomize(source, seed=1)
    path = tmp_path_factory.mktemp("official") / "mambavision_tiny_1k.pth.tar"
    torch.save(_training_checkpoint(source, "mamba_vision_T"), path)

    reference = official.mamba_vision_T()  # a fresh model, loaded the way the official package loads its files
    with torch.serialization.safe_globals([argparse.Namespace]):  # its bare torch.load refuses `args` otherwise
        reference._load_state_dict(str(path))
    ours = timm.create_model("mambavision_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    return reference.eval(), ours.eval(), path


@pytest.mark.parametrize("size", [(224, 224), (200, 264)], ids=["224", "200x264"])
def test_tiny_equals_official(tiny_pair, size):
    reference, ours, _ = tiny_pair
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        actual = ours(x)
    assert expected.abs().max() > 0.1  # a real signal, not a collapsed output
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_hugging_face_safetensors_layout(tiny_pair, tmp_path):
    """NVIDIA's Hugging Face repos hold the same weights as `model.safetensors`, nested under `model.`."""
    reference, _, _ = tiny_pair
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({f"model.{k}": v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    ours = timm.create_model("mambavision_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_features_only_from_an_official_file(tiny_pair):
    _, ours, path = tiny_pair
    features = timm.create_model(
        "mambavision_tiny", pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for got, want in zip(features(x), ours.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_small_equals_official_at_small_resolution(official):
    torch.manual_seed(0)
    reference = official.mamba_vision_S().eval()
    _randomize(reference, seed=3)
    ours = timm.create_model("mambavision_small").eval()
    ours.load_state_dict(checkpoint_filter_fn(reference.state_dict(), ours))
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", list(OURS))
def test_variant_keys_and_shapes_match_official(official, arch):
    reference = getattr(official, arch)()  # its constructor calls .item(): no meta device
    with torch.device("meta"):
        ours = timm.create_model(OURS[arch])
    mapped = checkpoint_filter_fn(reference.state_dict(), ours)  # raises on any missing/unexpected/misshapen key
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in ours.parameters())


def test_file_of_another_variant_lists_the_keys(official, tiny_pair):
    path = tiny_pair[2]
    with pytest.raises(RuntimeError) as info:
        timm.create_model("mambavision_tiny2", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(info.value)
    # stage 3 of T: 4 Mamba + 4 attention blocks; of T2: 6 + 5. So T2's block 4 is Mamba, T's is attention.
    assert re.search(r"missing keys \(\d+\): .*levels\.2\.blocks\.4\.mixer\.A_log", message)
    assert re.search(r"unexpected keys \(\d+\): .*levels\.2\.blocks\.4\.mixer\.qkv\.weight", message)


def test_corrupt_file_is_a_clear_error(tiny_pair, tmp_path):
    data = tiny_pair[2].read_bytes()
    path = tmp_path / "truncated.pth.tar"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=f"cannot read checkpoint file {re.escape(repr(str(path)))}"):
        timm.create_model("mambavision_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_pickled_code_is_refused(tiny_pair, tmp_path, capsys):
    path = tmp_path / "unsafe.pth.tar"
    state = tiny_pair[1].state_dict()
    torch.save({"state_dict": state, "hook": functools.partial(print, "pwned")}, path)
    with pytest.raises(RuntimeError, match="cannot read checkpoint file") as info:
        timm.create_model("mambavision_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert "weights_only" in str(info.value) or "functools.partial" in str(info.value)
    assert "pwned" not in capsys.readouterr().out
