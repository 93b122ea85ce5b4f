"""`sfmamba train-det` / `train_detection` on a tiny COCO-format folder: the schedule, the run folder, an exact resume
after a stop, the best checkpoint, argument errors, torchrun; `evaluate_detection`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sfmamba.cli.main import main
from sfmamba.dense import create_detector, evaluate_detection
from sfmamba.dense.train_det import multistep_lr
from sfmamba.train.checkpoint import load_weights


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    """COCO 2017's layout: 6 training and 2 validation images of 48-64 px, each with two bright squares of COCO
    categories 5 and 10 (polygon masks)."""
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    for split, count in (("train2017", 6), ("val2017", 2)):
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(count):
            h, w = (48, 64) if i % 2 else (56, 48)
            pixels = rng.integers(0, 30, (h, w, 3)).astype(np.uint8)
            for _ in range(2):
                category, side = int(rng.integers(1, 3)), int(rng.integers(10, 20))
                x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
                pixels[y : y + side, x : x + side] = 120 * category
                polygon = [x, y, x + side, y, x + side, y + side, x, y + side]
                annotation = dict(image_id=i + 1, category_id=5 * category, iscrowd=0, area=float(side * side),
                                  bbox=[x, y, side, side], segmentation=[polygon])  # fmt: skip
                annotations.append(dict(annotation, id=len(annotations) + 1))
            Image.fromarray(pixels).save(root / split / f"{i}.png")
            images.append(dict(id=i + 1, file_name=f"{i}.png", height=h, width=w))
        (root / "annotations").mkdir(exist_ok=True)
        categories = [dict(id=5, name="grey"), dict(id=10, name="white")]
        content = dict(images=images, annotations=annotations, categories=categories)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    return root


def _args(data, output, *extra):
    return ["train-det", "--data-dir", str(data), "--output", str(output), "--model", "mambavision_nano",
            "--min-size", "64", "--max-size", "64", "--fpn-channels", "16", "-b", "2", "--epochs", "2", "--lr-steps",
            "1", "--warmup-iters", "2", "--lr", "1e-3", "-j", "0", "--device", "cpu", "--drop-path", "0.1",
            *extra]  # fmt: skip


def test_multistep_schedule_with_warmup():
    assert multistep_lr(0, 100, 1.0, (8, 11), 500) == pytest.approx(1e-3)
    assert multistep_lr(250, 100, 1.0, (8, 11), 500) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)  # linear warm-up
    assert multistep_lr(500, 100, 1.0, (8, 11), 500) == 1.0
    assert multistep_lr(799, 100, 1.0, (8, 11), 500) == 1.0  # still epoch 7
    assert multistep_lr(800, 100, 1.0, (8, 11), 500) == pytest.approx(0.1)  # after epoch 8
    assert multistep_lr(1100, 100, 1.0, (8, 11), 500) == pytest.approx(0.01)  # after epoch 11


def test_run_folder_and_exact_resume_after_a_stop(coco_folder, tmp_path, capsys):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(_args(coco_folder, whole)) == 0
    out = capsys.readouterr().out
    assert "step 6: box AP" in out and "mask AP" in out  # 2 epochs of 3 steps; Mask R-CNN scores masks too
    with open(whole / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [3, 6]
    assert all(-1 <= float(r[k]) <= 100 for r in rows for k in ("bbox_AP", "bbox_AP50", "segm_AP"))
    assert {p.name for p in whole.iterdir()} >= {"last.safetensors", "last.state.pt", "best.safetensors", "args.json"}
    # the same run stopped after 4 steps (inside epoch 2: saved there), then resumed to the end
    assert main(_args(coco_folder, split, "--stop-after", "4")) == 0
    assert "stopped at step 4 of 6" in capsys.readouterr().out
    assert main(_args(coco_folder, split, "--resume", str(split))) == 0
    whole_weights, split_weights = _weights(whole / "last.safetensors"), _weights(split / "last.safetensors")
    assert whole_weights.keys() == split_weights.keys()
    assert all(torch.equal(whole_weights[k], split_weights[k]) for k in whole_weights)  # bit for bit
    assert (split / "summary.csv").read_text() == (whole / "summary.csv").read_text()
    best_row = max(rows, key=lambda r: float(r["bbox_AP"]))  # (the first of equals, as `best` keeps it)
    model = create_detector("mask_rcnn", "mambavision_nano", 3, fpn_channels=16)
    meta = load_weights(whole / "best.safetensors", model)
    assert meta["step"] == int(best_row["step"]) and meta["detector"] == "mask_rcnn" and meta["num_classes"] == 3
    assert meta["bbox_AP"] == pytest.approx(float(best_row["bbox_AP"]), abs=1e-3)
    # the best file scored alone: the detector, backbone and classes come from its metadata
    capsys.readouterr()
    assert main(["train-det", "--data-dir", str(coco_folder), "--evaluate-only", str(whole / "best.safetensors"),
                 "-j", "0", "--device", "cpu"]) == 0  # (the sizes too: 64, not the default 800)  # fmt: skip
    scored = capsys.readouterr().out
    assert f"(step {best_row['step']}): box AP {float(best_row['bbox_AP']):.2f}" in scored, scored
    assert f"mask AP {float(best_row['segm_AP']):.2f}" in scored
    # exported: the network before box decoding and NMS, at the detector's max_size (64) by default
    assert main(["export", "--checkpoint", str(whole / "best.safetensors"), "--output", str(tmp_path / "det.pt2"),
                 "--kernels", "naive"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "(mask_rcnn: the network before box decoding and NMS) ->" in printed and "64 px" in printed, printed


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_refuses_other_settings(coco_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(coco_folder, out, "--stop-after", "1")) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*_args(coco_folder, out, "--resume", str(out)), "--detector", "faster_rcnn"])
    assert "resume: settings differ from" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # into another folder: still checked against the resumed run's settings
        main([*_args(coco_folder, tmp_path / "other", "--resume", str(out)), "--lr", "2e-3"])
    assert f"resume: settings differ from {out / 'args.json'}: lr 0.001 -> 0.002" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr-steps", "3"], "lr_steps must be increasing epochs between 1 and epochs - 1 (1), got [3]"),
        (["--num-classes", "2"], "num_classes 2 is below the dataset's 3 (background included)"),
        (["--train-split", "train2014"], "train2014"),
        (["--detector", "fcos"], "fpn_channels must be a multiple of 32 for fcos (GroupNorm(32)), got 16"),
        (["--evaluate-only", "nowhere.safetensors"], "nowhere.safetensors"),
        (["--multiscale", "--min-size", "64"], "min_size must stay 800 with multiscale"),
        (["--weight-decay", "-1"], "weight_decay must be >= 0, got -1.0"),
    ],
)
def test_bad_settings_name_the_argument(coco_folder, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        main([*_args(coco_folder, tmp_path / "run"), *extra])
    assert message in capsys.readouterr().err


def test_splits_with_other_categories_are_refused(coco_folder, tmp_path, capsys):
    import shutil

    data = tmp_path / "coco"
    shutil.copytree(coco_folder, data)
    val_file = data / "annotations" / "instances_val2017.json"
    content = json.loads(val_file.read_text())
    content["categories"].append(dict(id=7, name="extra"))  # labels 1, 2, 3 -> 5, 7, 10: label 2 changes meaning
    val_file.write_text(json.dumps(content))
    with pytest.raises(SystemExit):
        main(_args(data, tmp_path / "run"))
    assert "val_split 'val2017': its categories {1: 5, 2: 7, 3: 10} differ from train_split" in capsys.readouterr().err


def test_evaluate_detection_scores_masks_only_for_mask_models(coco_folder):
    from sfmamba.data import CocoDetection, DetectionEvalTransform, detection_collate

    val = CocoDetection(coco_folder / "val2017", coco_folder / "annotations" / "instances_val2017.json",
                        DetectionEvalTransform(), with_masks=True, remove_empty=False)  # fmt: skip
    loader = torch.utils.data.DataLoader(val, batch_size=2, collate_fn=detection_collate)
    for detector, keys in (("mask_rcnn", {"bbox_AP", "segm_AP"}), ("fcos", {"bbox_AP"})):
        model = create_detector(detector, "mambavision_nano", 3, fpn_channels=32, min_size=64, max_size=64)
        result = evaluate_detection(model, loader, "cpu")
        assert {k for k in result if k.endswith("_AP")} == keys and not model.training
        assert len(result) == 12 * len(keys) and all(-1 <= v <= 100 for v in result.values())


def test_torchrun_two_processes(coco_folder, tmp_path):
    """The same command under torchrun (gloo, 2 CPU processes): each takes half of every batch, the gradients are
    averaged, and the validation split is scored once over both."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = _args(coco_folder, out, "--detector", "fcos", "--fpn-channels", "64")[
        1:
    ]  # (GroupNorm(32): 2 channels a group)
    args[args.index("-b") + 1] = "4"
    args[args.index("--epochs") + 1] = "1"
    args[args.index("--lr-steps") + 1 : args.index("--lr-steps") + 2] = []
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "sfmamba.cli.main", "train-det", *args]  # fmt: skip
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["step"]) == 1 and json.loads((out / "args.json").read_text())["batch_size"] == 4
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["step"] == 1 and len(state["rng"]) == 2


def test_fashion_mnist_dataset_and_image_limits(tmp_path, capsys):
    """`--dataset fashion_mnist` trains on garment canvases; `--limit-train` / `--limit-val` keep the first images."""
    from sfmamba.data import write_idx
    from sfmamba.dense.train_det import DetectionTrainConfig, _dataset

    rng = np.random.default_rng(0)
    for stem, n in (("train", 12), ("t10k", 6)):
        images = np.zeros((n, 28, 28), np.uint8)
        for image in images:
            top, left = rng.integers(0, 12, 2)
            image[top : top + 12, left : left + 10] = 200
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    args = ["train-det", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path), "--output", str(tmp_path / "run"),
            "--detector", "fcos", "--model", "mambavision_nano", "--fpn-channels", "64", "--min-size", "64",
            "--max-size", "64", "-b", "2", "--epochs", "1", "--lr-steps", "--warmup-iters", "1", "-j", "0",
            "--device", "cpu", "--limit-train", "4", "--limit-val", "3"]  # fmt: skip
    assert main(args) == 0
    assert "step 2: box AP" in capsys.readouterr().out  # 4 canvases at batch 2: 2 steps (12 without the limit: 6)
    config = DetectionTrainConfig(data_dir=str(tmp_path), output=None, dataset="fashion_mnist", limit_val=3,
                                  evaluate_only="unused")  # fmt: skip
    val, num_classes = _dataset(config, training=False)
    assert len(val) == 3 and num_classes == 11
    assert len(_dataset(DetectionTrainConfig(str(tmp_path), None, "fashion_mnist", evaluate_only="x"), False)[0]) == 6
