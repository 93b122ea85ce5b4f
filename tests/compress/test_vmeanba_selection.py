"""VMeanba block selection, conversion, report and checkpoints (`sfmamba.compress.vmeanba`)."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import timm
import torch
from torch import nn

import sfmamba.models  # noqa: F401  (registers the models)
import sfmamba.ops.vmeanba
from sfmamba.compress import vmeanba as V
from sfmamba.layers import ss2d

SCAN_MODELS = ("vmamba_v2_nano", "mambavision_nano", "sf_mamba_nano")


class DamagingBlock(nn.Module):
    """Identity, or with `vmeanba` set, a fixed shift of size `damage`: converting it costs accuracy in proportion."""

    def __init__(self, dim: int, damage: float, seed: int):
        super().__init__()
        self.vmeanba = False
        self.damage = damage
        self.register_buffer("direction", torch.randn(dim, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.damage * self.direction if self.vmeanba else x


class ToyModel(nn.Module):
    def __init__(self, damages: list[float], dim: int = 16, classes: int = 5):
        super().__init__()
        self.blocks = nn.Sequential(*(DamagingBlock(dim, d, seed=i) for i, d in enumerate(damages)))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def toy_loader(model: ToyModel, samples: int = 256, batch: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs labelled by the unconverted model itself: its accuracy is 100 %."""
    x = torch.randn(samples, model.head.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(-1)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, samples, batch)]


def test_find_apply_and_unknown_names():
    model = ToyModel([1.0, 2.0, 3.0])
    assert V.find_blocks(model) == ["blocks.0", "blocks.1", "blocks.2"]
    V.apply(model, ["blocks.2", "blocks.0"])
    assert V.converted_blocks(model) == ["blocks.0", "blocks.2"]
    V.apply(model, ["blocks.1"])  # exactly these: the others go back to the full scan
    assert V.converted_blocks(model) == ["blocks.1"]
    with pytest.raises(ValueError, match=r"blocks must be convertible blocks .* unknown \['head'\]"):
        V.apply(model, ["head"])


def test_select_picks_the_blocks_whose_conversion_hurts_least():
    torch.manual_seed(0)
    damages = [30.0, 0.0, 100.0, 0.001, 10.0]  # the harmless blocks are 1 and 3, not first in model order
    model = ToyModel(damages)
    loader = toy_loader(model)
    base, scores = V.score_blocks(model, loader)
    assert base == 100.0
    assert scores["blocks.1"] == 0.0 and scores["blocks.3"] == 0.0
    assert min(scores["blocks.0"], scores["blocks.2"], scores["blocks.4"]) > 10.0
    assert scores["blocks.2"] >= scores["blocks.0"] >= scores["blocks.4"]
    V.apply(model, ["blocks.4"])
    chosen = V.select(model, loader, 2)
    assert sorted(chosen) == ["blocks.1", "blocks.3"]
    assert V.converted_blocks(model) == ["blocks.4"]  # scoring restores the model's conversion
    assert V.select(model, loader, 3)[2] == "blocks.4"
    assert V.select(model, loader, 0) == []
    with pytest.raises(ValueError, match="k must be an int from 0 to the number of convertible blocks 5"):
        V.select(model, loader, 6)


def test_accuracy_latency_report(tmp_path):
    model = ToyModel([0.0, 50.0, 5.0])
    loader = toy_loader(model)
    ranking = ["blocks.0", "blocks.2", "blocks.1"]
    record = V.accuracy_latency_report(model, ranking, loader, loader[0][0], tmp_path, warmup=1, iters=2)
    rows = record["rows"]
    assert [r["k"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["top1"] == 100.0 and rows[0]["speedup"] == 1.0 and rows[0]["top1_drop"] == 0.0
    assert rows[1]["top1"] == 100.0  # damage 0
    assert rows[3]["top1"] == V.evaluate_accuracy(V.apply(model, ranking), loader)
    assert all(r["latency_ms"] > 0 for r in rows)
    assert json.loads((tmp_path / "vmeanba_report.json").read_text())["rows"] == rows
    table = (tmp_path / "vmeanba_report.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and table[3].startswith("| 1 | 100.00 |")
    assert (tmp_path / "vmeanba_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert V.k_steps(10, 4) == [0, 4, 8, 10]


@pytest.mark.parametrize("name", SCAN_MODELS)
def test_every_scan_model_converts_through_mean_selective_scan(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3).eval()
    blocks = V.find_blocks(model)
    assert blocks, f"{name} has no convertible blocks"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        V.apply(model, blocks)
        spy = mock.patch.object(
            sfmamba.ops.vmeanba, "mean_selective_scan", wraps=sfmamba.ops.vmeanba.mean_selective_scan
        )
        with spy as mean_scan:
            after = model(x)
        # VMamba's SS2D without a gradient: out_norm removes the scan term, so a converted block runs no scan; the
        # generic path (mean_selective_scan between cross_scan and cross_merge) gives the same output
        fast_ss2d = [m for m in model.modules() if isinstance(m, ss2d.SS2D)]
        for module in fast_ss2d:
            module.vmeanba_fast_path = False
        with spy as generic_mean_scan:
            generic = model(x)
    if fast_ss2d:
        assert mean_scan.call_count == 0 and generic_mean_scan.call_count == len(blocks)
        torch.testing.assert_close(after, generic, rtol=1e-4, atol=1e-5)
    else:  # one VMeanba scan per converted block, none elsewhere
        assert mean_scan.call_count == generic_mean_scan.call_count == len(blocks)
    assert torch.isfinite(after).all() and after.shape == before.shape
    assert not torch.equal(after, before)


@pytest.mark.parametrize("name", ("vmamba_v2_nano", "mambavision_nano"))
def test_save_and_load_compressed_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).eval()
    with torch.no_grad():  # a trained-looking model: weights away from their initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    blocks = V.find_blocks(model)[::2]
    V.apply(model, blocks)
    path = tmp_path / "compressed.safetensors"
    V.save_compressed(path, model, dict(model=name, num_classes=4, model_kwargs={}))
    assert V.read_compressed_blocks(path) == blocks
    rebuilt = V.load_compressed(path)
    assert V.converted_blocks(rebuilt) == blocks
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    plain = timm.create_model(name, num_classes=4)
    assert V.mark_blocks_from_file(plain, tmp_path / "weights.pth") is plain and not V.converted_blocks(plain)


@pytest.mark.parametrize("name", SCAN_MODELS)
def test_timm_create_model_rebuilds_a_compressed_file(name, tmp_path):
    """The model builders convert the blocks the file records: plain `timm.create_model` with a file overlay."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4).eval()
    blocks = V.find_blocks(model)[1::2]
    V.apply(model, blocks)
    path = tmp_path / "compressed.safetensors"
    V.save_compressed(path, model, dict(model=name, num_classes=4, model_kwargs={}))
    overlay = dict(file=str(path), num_classes=4)
    rebuilt = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=4).eval()
    assert V.converted_blocks(rebuilt) == blocks
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_eval_loader_rebuilds_a_compressed_file(tmp_path):
    """`sfmamba eval --checkpoint` goes through `model_from_checkpoint`: the converted blocks must run VMeanba."""
    from sfmamba.train.checkpoint import model_from_checkpoint

    torch.manual_seed(0)
    model = timm.create_model("mambavision_nano", num_classes=4).eval()
    blocks = V.find_blocks(model)[:1]
    V.apply(model, blocks)
    path = tmp_path / "compressed.safetensors"
    V.save_compressed(path, model, dict(model="mambavision_nano", num_classes=4, model_kwargs={}))
    rebuilt, _ = model_from_checkpoint(path)
    assert V.converted_blocks(rebuilt) == blocks
