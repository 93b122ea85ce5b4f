"""`sfmamba eval` and the metrics behind it: a hand-computed case, a checkpoint round trip, errors."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch

from sfmamba.cli.main import main
from sfmamba.data import build_transform, create_dataset, create_loader, make_synthetic_fashion_mnist
from sfmamba.eval import ClassificationMetrics, evaluate
from sfmamba.train import save_weights


def test_metrics_hand_computed():
    # logits = log(probabilities), so every loss term is -log(probability of the target)
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.5, 0.3, 0.2], [0.1, 0.15, 0.75]])
    target = torch.tensor([0, 2, 2, 2])
    metrics = ClassificationMetrics(3, topk=(1, 2))
    metrics.update(probs[:2].log(), target[:2])  # two batches accumulate
    metrics.update(probs[2:].log(), target[2:])
    result = metrics.result()
    # predictions 0, 1, 0, 2: right, wrong, wrong, right; top-2 sets {0,1}, {1,2}, {0,1}, {2,1}: hit, hit, miss, hit
    assert result["top1"] == 50.0 and result["top2"] == 75.0 and result["count"] == 4
    assert result["loss"] == pytest.approx(-(math.log(0.5) + math.log(0.3) + math.log(0.2) + math.log(0.75)) / 4)
    assert metrics.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [1, 1, 1]]  # rows: true class, columns: predicted
    assert result["per_class_top1"] == [100.0, None, pytest.approx(100 / 3)]


def test_metrics_top5_is_capped_by_the_class_count():
    metrics = ClassificationMetrics(3)
    metrics.update(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([2]))
    assert metrics.result()["top5"] == 100.0 and metrics.result()["top1"] == 0.0
    with pytest.raises(ValueError, match=r"logits must be \[batch, 3\], got \(1, 4\)"):
        metrics.update(torch.zeros(1, 4), torch.tensor([0]))


def test_eval_cli_matches_evaluate_on_a_checkpoint(tmp_path, capsys):
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=8, n_test=12)
    torch.manual_seed(0)
    model = timm.create_model("mambavision_nano", num_classes=10).eval()
    meta = dict(model="mambavision_nano", model_kwargs={}, num_classes=10, img_size=16, dataset="fashion_mnist")
    save_weights(tmp_path / "best.safetensors", model, meta)
    dataset = create_dataset("fashion_mnist", data, "test", build_transform("fashion_mnist", 16, False))
    expected = evaluate(model, create_loader(dataset, 5, False, workers=0), 10, torch.device("cpu"))

    out_json, out_png = tmp_path / "eval.json", tmp_path / "cm.png"
    status = main([
        "eval", "--checkpoint", str(tmp_path / "best.safetensors"), "--data-dir", str(data), "--workers", "0",
        "--batch-size", "7", "--per-class", "--confusion-matrix", str(out_png), "--results-file", str(out_json),
        "--device", "cpu",
    ])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert f"top-1 {expected['top1']:.2f}%" in printed and "Ankle boot" in printed
    record = json.loads(out_json.read_text())
    assert record["count"] == 12 and record["img_size"] == 16 and record["model"] == "mambavision_nano"
    assert record["confusion"] == expected["confusion"]
    assert record["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_eval_cli_errors(tmp_path, capsys):
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=4, n_test=4)
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(tmp_path / "plain.pth"), "--data-dir", str(data)])
    assert "name a model with --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", "mambavision_nano", "--data-dir", str(tmp_path / "missing")])
    assert "missing: no such directory" in capsys.readouterr().err
