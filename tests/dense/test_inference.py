"""Segmentation inference: sliding windows cover every pixel and average the overlaps; they equal whole-image
inference for a per-pixel model and for windows that cover the image; the mIoU loop; argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sfmamba.dense import UperNet, evaluate_segmentation, slide_inference
from sfmamba.dense.inference import _starts


class WindowCounter(nn.Module):
    """Returns ones for every class: slide_inference's average must then be one everywhere."""

    def forward(self, x):
        return {"out": torch.ones(x.shape[0], 2, *x.shape[2:])}


@pytest.mark.parametrize("size, window, stride, expected", [
    (512, 512, 341, [0]), (300, 512, 341, [0]), (683, 512, 341, [0, 171]), (1000, 512, 341, [0, 341, 488]),
    (10, 4, 3, [0, 3, 6]), (11, 4, 3, [0, 3, 6, 7]),
])  # fmt: skip
def test_window_starts_end_flush_with_the_border(size, window, stride, expected):
    assert _starts(size, window, stride) == expected


def test_every_pixel_is_covered_and_overlaps_are_averaged():
    out = slide_inference(WindowCounter(), torch.zeros(2, 3, 11, 13), 2, crop=4, stride=3)
    assert out.shape == (2, 2, 11, 13) and torch.equal(out, torch.ones_like(out))


def test_equals_whole_inference_for_a_per_pixel_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)  # each pixel's logits depend on that pixel only
    x = torch.randn(2, 3, 37, 50)
    with torch.no_grad():
        torch.testing.assert_close(slide_inference(model, x, 5, crop=(16, 20), stride=(9, 11)), model(x))


def test_one_window_over_the_whole_image_is_whole_inference():
    torch.manual_seed(0)
    model = UperNet("mambavision_nano", num_classes=3, channels=16, aux_channels=0).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(slide_inference(model, x, 3, crop=64, stride=32), model(x)["out"])


def test_evaluate_segmentation_scores_a_perfect_model_at_100():
    class Oracle(nn.Module):  # the labels are hidden in channel 0 of the images
        def forward(self, x):
            return nn.functional.one_hot(x[:, 0].long(), 3).permute(0, 3, 1, 2).float()

    labels = torch.randint(0, 3, (4, 9, 10))
    images = labels[:, None].float().expand(-1, 3, -1, -1)
    loader = [(images[:2], labels[:2]), (images[2:], labels[2:])]
    # images rescaled 2x for the model, labels at their size: the logits are resized back to them
    rescaled = [(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"), y) for x, y in loader]
    for batches in (loader, rescaled):
        for kwargs in ({}, dict(crop=4, stride=3)):
            result = evaluate_segmentation(Oracle(), batches, 3, torch.device("cpu"), **kwargs)
            assert result["mIoU"] == 100.0 and result["count"] == 4 * 9 * 10 and result["img_per_sec"] > 0


def test_bad_arguments():
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"crop must be a positive int or a \(height, width\) pair of them, got 0"):
        slide_inference(WindowCounter(), x, 2, crop=0, stride=2)
    with pytest.raises(ValueError, match=r"stride \(5, 2\) must be <= crop 3 on each side"):
        slide_inference(WindowCounter(), x, 2, crop=3, stride=(5, 2))
    with pytest.raises(ValueError, match="num_classes is 3 but the model gives 2 class logits"):
        slide_inference(WindowCounter(), x, 3, crop=4, stride=2)
    with pytest.raises(ValueError, match="crop and stride go together"):
        evaluate_segmentation(WindowCounter(), [], 2, torch.device("cpu"), crop=4)


def test_folder_to_trained_model_to_miou(tmp_path):
    """The pieces fit together as docs/dense_prediction.md's loop uses them: an ADE20K-layout folder, the training
    pipeline, UperNet and its loss, then the eval pipeline (labels at the original size) through sliding windows."""
    import numpy as np
    from PIL import Image

    from sfmamba.data import SegmentationEvalTransform, SegmentationFolder, SegmentationTrainTransform
    from sfmamba.dense import segmentation_loss

    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for i, (h, w) in enumerate([(40, 56), (48, 36), (44, 44)]):
            label = rng.integers(0, 4, (h // 4, w // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)  # 4 x 4 blocks
            image = (label[..., None] * 60 + rng.integers(0, 20, (h, w, 3))).astype(np.uint8)
            for kind, array in (("images", image), ("annotations", label)):
                (tmp_path / kind / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(tmp_path / kind / split / f"{i}.png")
    train = SegmentationFolder(tmp_path, "train", SegmentationTrainTransform(crop=32, scale=(64, 40)),
                               reduce_zero_label=True)  # fmt: skip
    loader = torch.utils.data.DataLoader(train, batch_size=3, shuffle=True)
    torch.manual_seed(0)
    model = UperNet("mambavision_nano", num_classes=3, channels=16, aux_channels=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for images, labels in loader:
        assert images.shape == (3, 3, 32, 32) and labels.shape == (3, 32, 32)
        loss = segmentation_loss(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    val = SegmentationFolder(tmp_path, "val", SegmentationEvalTransform(scale=(96, 64)), reduce_zero_label=True)
    val_loader = torch.utils.data.DataLoader(val, batch_size=1)  # sizes differ: one image per batch
    result = evaluate_segmentation(model, val_loader, 3, torch.device("cpu"), crop=32, stride=24)
    labelled = sum(int((val[i][1] != 255).sum()) for i in range(len(val)))
    assert result["count"] == labelled and len(result["per_class_iou"]) == 3
