"""Segmentation metrics against a hand-computed case; ignored pixels, absent classes, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sfmamba.eval import SegmentationMetrics


def _logits(pred: list[list[int]], classes: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(pred), classes).permute(2, 0, 1)[None].float()  # [1, K, H, W]


def test_hand_computed_miou():
    # kept pixels (true -> predicted): 0->0, 0->1, 1->1, 1->1, 2->1; the last pixel is ignored; class 3 never occurs
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    metrics = SegmentationMetrics(4)
    metrics.update(_logits([[0, 1, 1], [1, 1, 0]], 4)[..., :2], target[..., :2])  # two batches accumulate
    metrics.update(_logits([[1], [0]], 4), target[..., 2:])
    result = metrics.result()
    # IoU = hits / (true + predicted - hits): class 0 1 / 2, class 1 2 / 4, class 2 0 / 1, class 3 absent
    assert result["per_class_iou"] == [50.0, 50.0, 0.0, None]
    assert result["mIoU"] == pytest.approx(100 / 3) and result["count"] == 5
    assert result["pixel_accuracy"] == pytest.approx(60.0)
    assert result["mean_accuracy"] == pytest.approx(50.0)  # (50 + 100 + 0) / 3


def test_a_class_only_predicted_counts_in_miou_not_in_mean_accuracy():
    """mmseg's definitions: a class with predictions but no target pixels has IoU 0 (its union is its predictions)
    and no accuracy (no target pixels); a class in neither has no IoU."""
    metrics = SegmentationMetrics(3)
    metrics.update(_logits([[0, 0, 2]], 3), torch.tensor([[[0, 0, 0]]]))
    result = metrics.result()
    assert result["per_class_iou"] == [pytest.approx(200 / 3), None, 0.0]
    assert result["mIoU"] == pytest.approx(100 / 3) and result["mean_accuracy"] == pytest.approx(200 / 3)


def test_nothing_counted_when_every_pixel_is_ignored():
    metrics = SegmentationMetrics(2)
    metrics.update(_logits([[0, 1]], 2), torch.tensor([[[255, 255]]]))
    result = metrics.result()
    assert result["count"] == 0 and result["mIoU"] == 0.0 and result["per_class_iou"] == [None, None]


def test_bad_inputs_are_named():
    metrics = SegmentationMetrics(3)
    with pytest.raises(ValueError, match=r"logits must be \[batch, 3, H, W\], got \(1, 2, 4, 4\)"):
        metrics.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must be \(1, 4, 4\), got \(1, 4, 5\)"):
        metrics.update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 3\) or 255, got 0..7"):
        metrics.update(torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 7]]]))
