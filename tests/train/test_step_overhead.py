"""The per-step path's cheaper forms: fused optimizers on CUDA, the cached EMA update, the phase marks of a step."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn

from sfmamba.train import TrainConfig
from sfmamba.train.trainer import ModelEma, Trainer, create_optimizer, optimizer_device_kwargs

CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU


@pytest.mark.parametrize(
    "opt, fused", [("adamw", True), ("adam", True), ("sgd", True), ("momentum", True), ("lookahead_adamw", True),
                   ("lamb", False), ("adamwlegacy", False), ("nadam", False)]
)  # fmt: skip
def test_fused_only_for_torch_optimizers_with_a_fused_kernel_on_cuda(opt, fused):
    assert optimizer_device_kwargs(opt, CUDA) == ({"fused": True} if fused else {})
    assert optimizer_device_kwargs(opt, CPU) == {}  # the CPU keeps torch's default


def test_create_optimizer_passes_fused_to_timm_on_cuda_only():
    model = nn.Linear(3, 2)
    config = TrainConfig(opt="adamw", lr=0.01, weight_decay=0.05, layer_decay=0.8)

    def factory(*args, **kwargs):
        return args, kwargs

    args, kwargs = create_optimizer(model, config, CUDA, factory=factory)
    assert args == (model,)
    assert kwargs == dict(opt="adamw", lr=0.01, weight_decay=0.05, layer_decay=0.8, fused=True)
    assert "fused" not in create_optimizer(model, config, CPU, factory=factory)[1]


def _vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_vit", num_classes=3, img_size=16, patch_size=4)


def test_fused_adamw_through_timm_keeps_layer_decay_groups():
    """timm passes `fused` through to torch's AdamW, layer-wise groups included; torch's fused AdamW also runs on
    the CPU, so the CUDA kwargs are checked here against the foreach form of the same optimizer."""
    config = TrainConfig(opt="adamw", lr=0.01, weight_decay=0.05, layer_decay=0.7)
    models = _vit(), _vit()
    plain = create_optimizer(models[0], config, CPU)
    fused = create_optimizer(models[1], config, CPU, factory=lambda *a, **k: create_optimizer_v2(*a, **k, fused=True))
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    scales = [g["lr_scale"] for g in fused.param_groups]
    assert len(scales) > 2 and min(scales) < max(scales) == 1.0  # layer decay: per-depth learning-rate scales
    assert scales == [g["lr_scale"] for g in plain.param_groups]
    x = torch.randn(4, 3, 16, 16)
    start = [p.detach().clone() for p in models[0].parameters()]
    for model, optimizer in zip(models, (plain, fused), strict=True):
        for _ in range(2):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    # Adam divides by the gradients' own size: rounding noise in near-zero gradients moves a weight by up to ~lr
    moved = max((p - p0).abs().max().item() for p, p0 in zip(models[0].parameters(), start, strict=True))
    assert moved > 0.01
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=5e-4)


def test_cached_ema_matches_timm_model_ema_v3():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    ours, timms = ModelEma(model, decay=0.9), ModelEmaV3(copy.deepcopy(model), decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 4):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 6, 6)).sum().backward()  # BatchNorm updates its statistics and counter in place
        optimizer.step()
        ours.update(model, step=step)
        timms.update(model, step=step)
    expected = timms.module.state_dict()
    for key, value in ours.module.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert ours.module[1].num_batches_tracked.item() == model[1].num_batches_tracked.item() == 4  # copied
    assert not torch.equal(ours.module[0].weight, model[0].weight)  # an average, not a copy


def test_train_step_marks_every_phase_in_order(fake_fmnist, tmp_path):
    config = TrainConfig(model="test_vit", model_kwargs={"img_size": 16, "patch_size": 4}, img_size=16,
                         data_dir=str(fake_fmnist), batch_size=8, epochs=1, clip_grad=1.0, model_ema=True,
                         output=str(tmp_path / "run"), progress=False, device="cpu", data_on_device=True,
                         reprob=0.5)  # fmt: skip
    trainer = Trainer(config)
    phases: list[str] = []
    images, target = next(iter(trainer.train_loader))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer._train_step(images, target, phases.append)
    assert phases == ["batch", "forward", "backward", "clip", "optimizer", "scheduler", "ema"]
    assert loss.dim() == 0 and trainer.state.step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.clip_foreach is True and len(trainer.model_parameters) == len(before)


def test_step_overhead_benchmark_runs_the_recipe_on_the_cpu(fake_fmnist, tmp_path, capsys):
    script = Path(__file__).resolve().parents[2] / "benchmarks/train/step_overhead.py"
    spec = importlib.util.spec_from_file_location("step_overhead", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    overrides = ["model=test_vit", "model_kwargs={'img_size': 16, 'patch_size': 4}", "img_size=16", "batch_size=8",
                 "amp=False", "device=cpu", "time_limit=None"]  # fmt: skip
    argv = ["--data-dir", str(fake_fmnist), "--set", *overrides, "--steps", "2", "--warmup", "1",
            "--profile-steps", "1", "--results-dir", str(tmp_path), "--tag", "test"]  # fmt: skip
    assert bench.main(argv) == 0
    (path,) = tmp_path.glob("train_step_overhead_*_test.json")
    record = json.loads(path.read_text())
    phases = {p["phase"]: p for p in record["phases"]}
    assert list(phases) == ["batch", "forward", "backward", "clip", "optimizer", "scheduler", "ema"]
    assert record["settings"]["model_ema"] and record["settings"]["clip_grad"] == 5.0  # the recipe's, kept
    assert phases["forward"]["ops"] > 20 and phases["backward"]["leaf_ops"] > 20 and phases["batch"]["ops"] > 10
    assert phases["ema"]["ops"] <= 3  # one foreach lerp (+ one foreach copy of integer buffers)
    assert phases["scheduler"]["ops"] == 0  # a Python-only learning-rate update
    assert record["step_host_ms"] > 0 and record["device"].startswith("cpu") and "torch" in record["versions"]
    assert "forward" in capsys.readouterr().out
