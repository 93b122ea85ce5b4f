"""`sfmamba train-seg` / `train_segmentation` on a tiny ADE20K-layout folder: the schedule, the run folder, an exact
resume after a stop, the best checkpoint, argument errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from sfmamba.cli.main import main
from sfmamba.dense.train import poly_lr
from sfmamba.train.checkpoint import load_weights


@pytest.fixture
def ade_folder(tmp_path):
    """Six training and two validation images of 4 x 4-pixel blocks, labels 1-3 (0 = 'other', ignored)."""
    rng = np.random.default_rng(0)
    for split, count in (("training", 6), ("validation", 2)):
        for i in range(count):
            h, w = (40, 48) if i % 2 else (36, 44)
            label = rng.integers(0, 4, (h // 4, w // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
            image = (label[..., None] * 60 + rng.integers(0, 20, (h, w, 3))).astype(np.uint8)
            for kind, array in (("images", image), ("annotations", label)):
                (tmp_path / "ade" / kind / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(tmp_path / "ade" / kind / split / f"{i}.png")
    return tmp_path / "ade"


def _args(data, output, *extra):
    return ["train-seg", "--data-dir", str(data), "--output", str(output), "--model", "mambavision_nano",
            "--num-classes", "3", "--crop", "32", "--scale", "64", "40", "--channels", "16", "--aux-channels", "8",
            "-b", "2", "--iters", "6", "--warmup-iters", "2", "--lr", "1e-3", "--eval-interval", "3", "-j", "0",
            "--device", "cpu", "--drop-path", "0.1", *extra]  # fmt: skip


def test_poly_schedule_with_warmup():
    assert poly_lr(0, 1.0, 110, 10) == pytest.approx(1e-6)
    assert poly_lr(5, 1.0, 110, 10) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)  # linear warm-up
    assert poly_lr(10, 1.0, 110, 10) == 1.0 and poly_lr(60, 1.0, 110, 10) == pytest.approx(0.5)  # poly after it
    assert poly_lr(110, 1.0, 110, 10) == 0.0


def test_run_folder_and_exact_resume_after_a_stop(ade_folder, tmp_path, capsys):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(_args(ade_folder, whole)) == 0
    assert "step 6: mIoU" in capsys.readouterr().out
    with open(whole / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [3, 6] and all(0 <= float(r["mIoU"]) <= 100 for r in rows)
    assert {p.name for p in whole.iterdir()} >= {"last.safetensors", "last.state.pt", "best.safetensors", "args.json"}
    # the same run stopped after 4 steps (between evaluations: saved there), then resumed to the end
    assert main(_args(ade_folder, split, "--stop-after", "4")) == 0
    assert "stopped at step 4 of 6" in capsys.readouterr().out
    assert main(_args(ade_folder, split, "--resume", str(split))) == 0
    whole_weights, split_weights = _weights(whole / "last.safetensors"), _weights(split / "last.safetensors")
    assert whole_weights.keys() == split_weights.keys()
    assert all(torch.equal(whole_weights[k], split_weights[k]) for k in whole_weights)  # bit for bit
    assert (split / "summary.csv").read_text() == (whole / "summary.csv").read_text()


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_best_checkpoint_holds_the_best_evaluation(ade_folder, tmp_path, capsys):
    """`best` holds the best evaluation's weights; its metadata rebuilds the model (`model_from_checkpoint`), scores
    it again as the run did (`--evaluate-only`), and exports it (`sfmamba export`); `sfmamba eval` refuses it."""
    out = tmp_path / "run"
    assert main(_args(ade_folder, out, "--model-kwargs", "layer_scale=1e-5")) == 0
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    best_row = max(rows, key=lambda r: float(r["mIoU"]))
    from sfmamba.dense import UperNet, model_from_checkpoint

    model = UperNet("mambavision_nano", 3, channels=16, aux_channels=8, layer_scale=1e-5)
    meta = load_weights(out / "best.safetensors", model)
    assert meta["step"] == int(best_row["step"]) and meta["mIoU"] == pytest.approx(float(best_row["mIoU"]), abs=1e-3)
    rebuilt, rebuilt_meta = model_from_checkpoint(out / "best.safetensors")
    assert rebuilt_meta == meta and not rebuilt.training
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    # scored alone: the crop, scale, sliding windows and classes come from the file, not these (other) flags
    capsys.readouterr()
    assert main(["train-seg", "--data-dir", str(ade_folder), "--evaluate-only", str(out / "best.safetensors"),
                 "--crop", "64", "--num-classes", "150", "-j", "0", "--device", "cpu"]) == 0  # fmt: skip
    assert f"(step {best_row['step']}): mIoU {float(best_row['mIoU']):.2f}%" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(out / "best.safetensors"), "--output", str(tmp_path / "seg.pt2"),
                 "--kernels", "naive"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "(UperNet) ->" in printed and "32 px, dynamic batch" in printed and (tmp_path / "seg.pt2").is_file()
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(out / "best.safetensors"), "--data-dir", str(ade_folder)])
    assert "not a classifier's" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(out / "best.safetensors"), "--model", "mambavision_nano", "--output",
              str(tmp_path / "x.pt2")])  # fmt: skip
    assert "--model: a train-seg / train-det checkpoint names its model itself" in capsys.readouterr().err


def test_weights_without_the_model_settings_are_refused(tmp_path):
    from sfmamba.dense import model_from_checkpoint
    from sfmamba.train import save_weights

    path = tmp_path / "old.safetensors"
    save_weights(path, torch.nn.Linear(2, 2), dict(model="mambavision_nano", task="segmentation", num_classes=3))
    with pytest.raises(ValueError, match="metadata lacks channels, aux_channels, extra, reduce_zero_label, crop"):
        model_from_checkpoint(path)
    with pytest.raises(ValueError, match="not a train-det weights file"):
        model_from_checkpoint(path, "detection")
    with pytest.raises(ValueError, match="task must be one of"):
        model_from_checkpoint(path, "classification")


def test_evaluate_only_or_output_is_required(ade_folder, capsys):
    with pytest.raises(SystemExit):
        main(["train-seg", "--data-dir", str(ade_folder)])
    assert "--output is required" in capsys.readouterr().err


def test_resuming_a_finished_run_reports_its_last_evaluation(ade_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(ade_folder, out)) == 0
    first = capsys.readouterr().out
    assert main(_args(ade_folder, out, "--resume", str(out))) == 0
    assert capsys.readouterr().out == first  # nothing left to train: the same last evaluation


def test_resume_refuses_other_settings(ade_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(ade_folder, out, "--stop-after", "1")) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*_args(ade_folder, out, "--resume", str(out)), "--lr", "2e-3"])  # (the last --lr wins)
    err = capsys.readouterr().err
    assert "resume: settings differ from" in err and "lr 0.001 -> 0.002" in err
    state = torch.load(out / "last.state.pt", weights_only=True)
    state["world_size"] = 2
    torch.save(state, out / "last.state.pt")
    with pytest.raises(SystemExit):
        main(_args(ade_folder, out, "--resume", str(out)))
    assert "the run used 2 process(es), this one 1" in capsys.readouterr().err


def test_missing_data_names_the_layout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_args(tmp_path / "nowhere", tmp_path / "run"))
    assert "no such directory (expected images/<split>/ and annotations/<split>/)" in capsys.readouterr().err


def test_torchrun_two_processes(ade_folder, tmp_path):
    """The same command under torchrun (gloo, 2 CPU processes): each takes half of every batch, the gradients are
    averaged, and the validation split is scored once over both (its pixel count is the whole split's)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = _args(ade_folder, out)[1:]
    args[args.index("-b") + 1] = "4"  # 2 images per process: BatchNorm needs more than one value per channel
    args[args.index("--iters") + 1] = "2"
    args[args.index("--eval-interval") + 1] = "2"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "sfmamba.cli.main", "train-seg", *args]  # fmt: skip
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["step"]) == 2 and json.loads((out / "args.json").read_text())["batch_size"] == 4
    labels = [np.array(Image.open(p)) for p in sorted((ade_folder / "annotations" / "validation").iterdir())]
    assert int(row["pixels"]) == sum(int((label != 0).sum()) for label in labels)  # 0 is ignored
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["step"] == 2 and len(state["history"]) == 1
