"""`sfmamba train` on a tiny synthetic dataset (CPU): the run folder, config precedence, and clear errors."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml

from sfmamba.cli.main import build_parser, main
from sfmamba.cli.train import config_from_args
from sfmamba.data import make_synthetic_fashion_mnist


def parse(*argv: str):
    return build_parser().parse_args(["train", *argv])


def test_defaults_then_yaml_then_command_line(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("lr: 1e-3\nepochs: 7\nbatch-size: 16\nmodel_kwargs: {scan: parallel}\nscale: [0.5, 1.0]\n")
    merged = config_from_args(parse("--config", str(config), "--lr", "0.5", "--model-kwargs", "aux_tokens=False"))
    assert merged.lr == 0.5  # command line over YAML
    assert merged.epochs == 7 and merged.batch_size == 16 and merged.scale == [0.5, 1.0]  # YAML over defaults
    assert merged.model_kwargs == {"aux_tokens": False}  # the command line replaces the mapping as a whole
    assert merged.weight_decay == 0.05 and merged.model == "sf_mamba_nano"  # defaults
    given_default = config_from_args(parse("--config", str(config), "--epochs", "10"))
    assert given_default.epochs == 10  # an explicit value equal to the default still beats the YAML


def test_command_line_switches_off_a_flag_the_yaml_turns_on(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("amp: true\nmodel_ema: true\nchannels_last: true\n")
    assert config_from_args(parse("--config", str(config))).amp is True
    merged = config_from_args(parse("--config", str(config), "--no-amp", "--no-model-ema"))
    assert merged.amp is False and merged.model_ema is False and merged.channels_last is True


def test_bad_config_files_exit_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-3\nlearning_rate: 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(bad)])
    assert exit_info.value.code == 2
    assert "bad.yaml: unknown settings learning_rate" in capsys.readouterr().err
    bad.write_text("lr: fast\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(bad)])
    assert "bad.yaml: lr must be a number, got 'fast'" in capsys.readouterr().err


def test_missing_dataset_names_the_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data-dir", str(tmp_path / "nope"), "--output", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert (
        f"{tmp_path / 'nope'}: no such directory (expected the Fashion-MNIST IDX files there)"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_train_writes_the_run_folder(tmp_path, capsys):
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=24, n_test=8)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"epochs": 2, "lr": 1e-3, "batch_size": 8}))
    run = tmp_path / "run"
    status = main([
        "train", "--config", str(config), "--model", "mambavision_nano", "--img-size", "16", "--data-dir", str(data),
        "--workers", "0", "--output", str(run), "--log-interval", "1", "--checkpoint-interval", "2", "--lr", "2e-3",
        "--device", "cpu", "--no-progress", "--model-ema", "--model-ema-decay", "0.5",
    ])  # fmt: skip
    assert status == 0
    assert "final eval top-1" in capsys.readouterr().out
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["lr"] == 2e-3 and args["epochs"] == 2 and args["model"] == "mambavision_nano"
    with open(run / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [row["epoch"] for row in summary] == ["0", "1"] and {"eval_top1", "ema_top1"} <= set(summary[0])
    with open(run / "steps.csv") as f:
        assert [row["step"] for row in csv.DictReader(f)] == [str(s) for s in range(1, 7)]
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 6 and results["stop"] == "done"
    for name in ("last.safetensors", "last-ema.safetensors", "last.state.pt", "best.safetensors"):
        assert (run / name).stat().st_size > 0
    assert (run / "train_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_takes_the_runs_settings_and_refuses_other_ones(tmp_path, capsys):
    """`--resume FOLDER` alone continues with the run's args.yaml (model, size, schedule, data) and leaves it as it
    was; a setting that changes the recipe is refused by name, one that changes only how it runs is not."""
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=24, n_test=8)
    run = tmp_path / "run"
    assert main(["train", "--model", "mambavision_nano", "--img-size", "16", "--data-dir", str(data), "--workers", "0",
                 "--output", str(run), "--epochs", "2", "--batch-size", "8", "--lr", "2e-3", "--device", "cpu",
                 "--no-progress", "--stop-step", "2"]) == 0  # fmt: skip
    saved = (run / "args.yaml").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(run), "--lr", "1e-3", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert "resume: settings differ from" in err and "lr 0.002 -> 0.001; batch_size 8 -> 4" in err, err
    assert main(["train", "--resume", str(run), "--log-interval", "1"]) == 0  # (how it reports: may change)
    assert "final eval top-1" in capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 6 and results["stop"] == "done"  # 3 steps an epoch at batch 8, 2 epochs
    assert (run / "args.yaml").read_text() == saved


def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=32, n_test=8)
    out = tmp_path / "demo"
    status = main(["demo", "--data-dir", str(data), "--no-speed", "--train-minutes", "0.05", "--img-size", "16",
                   "--batch-size", "8", "--device", "cpu", "--output", str(out)])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "demo.json").read_text())
    assert f"{record['accuracy']:.2f}%" in printed and record["steps"] >= 1
    assert (out / "last.safetensors").is_file() and (out / "summary.csv").is_file()


@pytest.mark.parametrize(
    "flags",
    [["--torchcompile", "eager", "--amp", "--amp-dtype", "bfloat16"], ["--grad-checkpointing", "--amp"]],
    ids=["compile-bf16", "grad-checkpointing-bf16"],
)
def test_train_with_compile_checkpointing_channels_last_and_bf16(tmp_path, flags):
    # --torchcompile eager: the compile wrapper without inductor's minutes of code generation on a CPU.
    # (compile + grad checkpointing together fail inside torch 2.14's checkpoint under dynamo, for timm's own
    # models too: "modified by an inplace operation" on BatchNorm's counter; not combined here.)
    # 32 px, not 16: at 16 px the last downsample (3x3, stride 2, pad 1) sees a 1x1 map, and torch 2.14's oneDNN bf16
    # conv backward leaves that weight gradient's off-centre taps (pure padding) unwritten -- heap garbage, NaN once
    # the NaN-poisoned allocations of an earlier test are reused. See test_cpu_bf16_conv_weight_grad_at_1x1_input.
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=16, n_test=4)
    run = tmp_path / "run"
    status = main([
        "train", "--model", "mambavision_nano", "--img-size", "32", "--data-dir", str(data), "--workers", "0",
        "--batch-size", "8", "--epochs", "1", "--output", str(run), "--device", "cpu", "--no-progress",
        "--channels-last", "--clip-grad", "1.0", "--layer-decay", "0.8", *flags,
    ])  # fmt: skip
    assert status == 0
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 2 and 0.0 <= results["eval_top1"] <= 100.0
    assert math.isfinite(results["train_loss"])


def _nan_fill_freed_heap(numel: int) -> None:
    """Leave NaN in freed allocator blocks of about `numel` elements, as the NaN-poisoned tests before do."""
    blocks = [
        torch.full((numel + 64 * k,), math.nan, dtype=dtype)
        for k in range(32)
        for dtype in (torch.bfloat16, torch.float32)
    ]
    del blocks


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(
            1, marks=pytest.mark.xfail(reason="torch oneDNN bf16 conv backward: taps unwritten", strict=False)
        ),
        2,
    ],
)
def test_cpu_bf16_conv_weight_grad_at_1x1_input(size):
    # Why the bf16 training test above runs at 32 px: torch's CPU bf16 (oneDNN) Conv2d backward leaves the weight
    # gradient of a 3x3/stride-2/pad-1 conv over a 1x1 map unwritten at the off-centre taps (they see only padding,
    # so they must be 0). From a 2x2 map on, the gradient is right -- the sizes MambaVision's downsamples see at 32 px.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, 2, 1, bias=False).to(memory_format=torch.channels_last)
    reference = torch.nn.Conv2d(16, 32, 3, 2, 1, bias=False)
    reference.weight.data.copy_(conv.weight.data.bfloat16().float())
    images = torch.randn(4, 16, size, size).contiguous(memory_format=torch.channels_last)
    _nan_fill_freed_heap(conv.weight.numel())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(images)
    grad_out = torch.randn(out.shape)
    out.float().backward(grad_out)
    reference(images.bfloat16().float()).backward(grad_out.bfloat16().float())
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad, rtol=0.02, atol=0.02)


def test_recipe_overrides_read_literals_and_keep_the_original():
    from sfmamba.train.config import apply_overrides

    base = {"lr": 1e-3, "model": "sf_mamba_nano"}
    merged = apply_overrides(base, ["lr=3e-3", "model-kwargs={'dim': 64}", "model=mambavision_nano", "amp=True"])
    assert merged == {"lr": 3e-3, "model": "mambavision_nano", "model_kwargs": {"dim": 64}, "amp": True}
    assert base == {"lr": 1e-3, "model": "sf_mamba_nano"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(base, ["lr"])


def test_cuda_graph_on_cpu_exits_with_a_message(tmp_path, capsys):
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=24, n_test=8)
    assert parse("--cuda-graph").cuda_graph is True
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                "--data-dir",
                str(data),
                "--output",
                str(tmp_path / "run"),
                "-b",
                "8",
                "--cuda-graph",
                "--device",
                "cpu",
            ]
        )
    assert exit_info.value.code == 2
    assert "cuda_graph needs CUDA devices, got cpu" in capsys.readouterr().err


def test_image_size_follows_the_models_img_size_keyword():
    """The help's `--model-kwargs img_size=32 patch_size=4` example: timm keeps deit's pretrained cfg at 224 px."""
    import timm

    from sfmamba.train import TrainConfig
    from sfmamba.train.trainer import resolve_img_size

    model = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=4)
    assert model.pretrained_cfg["input_size"][-1] == 224
    kwargs = {"img_size": 32, "patch_size": 4}
    assert resolve_img_size(TrainConfig(model="deit_tiny_patch16_224", model_kwargs=kwargs), model) == 32
    assert resolve_img_size(TrainConfig(model_kwargs=kwargs, img_size=48), model) == 48  # --img-size first
    assert resolve_img_size(TrainConfig(model_kwargs={"img_size": (40, 40)}), model) == 40
    with pytest.raises(ValueError, match=r"model_kwargs img_size must be one side .* got \(24, 40\)"):
        resolve_img_size(TrainConfig(model_kwargs={"img_size": (24, 40)}), model)
