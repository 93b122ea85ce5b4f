"""benchmarks/dense/fmnist_segmentation.py: its labels (garment pixels carry class + 1, padding is background) and a
two-step run on a synthetic dataset in Fashion-MNIST's layout that writes its JSON."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sfmamba.data.fashion_mnist import load_fashion_mnist, make_synthetic_fashion_mnist

BENCH_DENSE = Path(__file__).resolve().parents[2] / "benchmarks" / "dense"


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DENSE))
    yield importlib.import_module("fmnist_segmentation")
    sys.modules.pop("fmnist_segmentation", None)


def test_labels_mark_garment_pixels_with_their_class(script, tmp_path):
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=6, n_test=4)
    images, labels = load_fashion_mnist(data, "train")
    x, y = script.segmentation_split(str(data), "train", threshold=25)
    assert x.shape == (6, 3, 32, 32) and y.shape == (6, 32, 32)
    inner = y[:, 2:30, 2:30].numpy()
    expected = np.where(images > 25, labels[:, None, None].astype(np.int64) + 1, 0)
    assert np.array_equal(inner, expected)
    assert (y[:, :2] == 0).all() and (y[:, :, 30:] == 0).all()  # the padding is background
    grey = torch.from_numpy(images[0]).float() / 255
    torch.testing.assert_close(x[0, 1, 2:30, 2:30], (grey - script.MEAN) / script.STD)


def test_two_steps_write_the_metrics(script, tmp_path, monkeypatch, capsys):
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=8, n_test=4)
    argv = ["fmnist_segmentation.py", "--backbone", "mambavision_nano", "--steps", "2", "--batch-size", "2",
            "--data-dir", str(data), "--device", "cpu", "--out", str(tmp_path / "out")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    (path,) = (tmp_path / "out").glob("fmnist_segmentation_mambavision_nano_*.json")
    record = json.loads(path.read_text())
    assert record["steps"] == 2 and record["count"] == 4 * 32 * 32 and len(record["per_class_iou"]) == 11
    assert 0.0 <= record["mIoU"] <= 100.0 and "mIoU" in capsys.readouterr().out
