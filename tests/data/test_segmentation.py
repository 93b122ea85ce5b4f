"""Segmentation folders in mmseg's ADE20K layout and its pipelines: pairing, ADE20K's zero label, the training crop
(size, padding, flips applied to image and labels together, the class-ratio retry), the eval rescale, errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from sfmamba.data import DatasetError, SegmentationEvalTransform, SegmentationFolder, SegmentationTrainTransform
from sfmamba.data.segmentation import IMAGENET_MEAN, IMAGENET_STD, photometric_distortion


def _write(root, split: str, name: str, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose left half is red and right half blue, labels 1 (left) and 2 (right), 0 on the top rows."""
    rng = np.random.default_rng(seed)
    label = np.ones((height, width), np.uint8)
    label[:, width // 2 :] = 2
    label[: height // 8] = 0
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.where(label == 1, 220, 20)
    image[..., 2] = np.where(label == 2, 220, 20)
    image[..., 1] = rng.integers(0, 30, (height, width))
    for kind, array, suffix in (("images", image, ".png"), ("annotations", label, ".png")):
        folder = root / kind / split
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"{name}{suffix}")
    return image, label


def test_pairs_images_with_their_labels_and_reduces_the_zero_label(tmp_path):
    image, label = _write(tmp_path, "training", "a", 40, 60, 0)
    _write(tmp_path, "training", "b", 30, 20, 1)
    data = SegmentationFolder(tmp_path, "train")
    assert len(data) == 2
    x, y = data[0]
    assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(image).permute(2, 0, 1))
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(label).long())
    _, reduced = SegmentationFolder(tmp_path, "train", reduce_zero_label=True)[0]
    assert torch.equal(reduced, torch.where(y == 0, 255, y - 1))  # ADE20K: "other" ignored, classes from 0
    Image.fromarray(np.array([[0, 1], [255, 150]], np.uint8)).save(tmp_path / "annotations" / "training" / "b.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "images" / "training" / "b.png")
    _, small = SegmentationFolder(tmp_path, "train", reduce_zero_label=True)[1]
    assert small.tolist() == [[255, 0], [255, 149]]  # an ignored pixel stays ignored (mmseg's)


def test_train_crop_pads_with_ignore_and_flips_image_and_labels_together(tmp_path):
    _write(tmp_path, "train", "a", 48, 64, 0)
    image, label = SegmentationFolder(tmp_path, "train")[0]
    transform = SegmentationTrainTransform(crop=80, scale=(64, 48), ratio_range=(1.0, 1.0), photometric=False, flip=1.0)
    x, y = transform(image, label)
    assert x.shape == (3, 80, 80) and y.shape == (80, 80)
    assert (y[48:] == 255).all() and (y[:, 64:] == 255).all() and (x[:, 48:] == 0).all()  # padded bottom / right
    red = x[0, :48, :64] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to 0-1
    flipped = label.flip(-1)
    assert torch.equal(y[:48, :64], flipped)  # labels 1 now on the right
    assert ((red > 0.5) == (flipped == 1))[flipped != 0].float().mean() > 0.97  # the red pixels moved with them


def test_rescaled_image_and_labels_stay_aligned(tmp_path):
    """Rescaled 2x (bilinear image, nearest labels) and cropped at random: the red pixels still carry label 1."""
    _write(tmp_path, "train", "a", 48, 64, 0)
    image, label = SegmentationFolder(tmp_path, "train")[0]
    transform = SegmentationTrainTransform(crop=40, scale=(64, 48), ratio_range=(2.0, 2.0), cat_max_ratio=1.0)
    random.seed(0)
    for _ in range(5):
        x, y = transform(image, label)  # photometric distortion on: red stays redder than blue
        red, blue = x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], x[2] * IMAGENET_STD[2] + IMAGENET_MEAN[2]
        labelled = (y == 1) | (y == 2)
        assert labelled.any() and ((red > blue) == (y == 1))[labelled].float().mean() > 0.95


def test_crop_origins_cover_every_position():
    transform = SegmentationTrainTransform(crop=20, scale=(23, 23), ratio_range=(1.0, 1.0), cat_max_ratio=1.0)
    random.seed(0)
    origins = {transform._crop_origin(torch.zeros(23, 25, dtype=torch.long)) for _ in range(400)}
    assert origins == {(top, left) for top in range(4) for left in range(6)}  # 0..H - crop inclusive


def test_photometric_distortion_stays_in_range_and_changes_the_image():
    torch.manual_seed(0)
    image = torch.rand(3, 16, 16) * 255
    random.seed(1)
    outs = [photometric_distortion(image) for _ in range(20)]
    assert all(o.shape == image.shape and o.min() >= 0 and o.max() <= 255 for o in outs)
    assert sum(not torch.allclose(o, image) for o in outs) >= 15  # all four steps skipped only 1 time in 16


def test_train_crop_retries_crops_dominated_by_one_class():
    """Class 1 fills the right 30 %: a 20-pixel crop has no class over 75 % only when it starts in 56-64 (one try in
    nine); up to ten tries make that most crops, one try (cat_max_ratio 1) about one in nine."""
    label = torch.zeros(100, 100, dtype=torch.long)
    label[:, 70:] = 1

    def mixed_share(cat_max_ratio: float) -> float:
        transform = SegmentationTrainTransform(crop=20, scale=(100, 100), ratio_range=(1.0, 1.0),
                                               cat_max_ratio=cat_max_ratio)  # fmt: skip
        random.seed(0)
        return sum(55 < left < 65 for _, left in (transform._crop_origin(label) for _ in range(300))) / 300

    assert mixed_share(0.75) > 0.55 and mixed_share(1.0) < 0.2


def test_eval_transform_rescales_the_image_only():
    image, label = torch.zeros(3, 100, 300, dtype=torch.uint8), torch.zeros(100, 300, dtype=torch.long)
    x, y = SegmentationEvalTransform(scale=(600, 200))(image, label)
    assert x.shape == (3, 200, 600) and y.shape == (100, 300)  # short side to 200 (long side 600 fits)
    torch.testing.assert_close(x[0, 0, 0], torch.tensor(-IMAGENET_MEAN[0] / IMAGENET_STD[0]))


def test_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match="no such directory"):
        SegmentationFolder(tmp_path / "missing")
    _write(tmp_path, "validation", "a", 8, 8, 0)
    with pytest.raises(DatasetError, match=r"images/training/ or .*images/train/"):
        SegmentationFolder(tmp_path, "train")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "annotations" / "validation" / "a.png")
    with pytest.raises(DatasetError, match=r"a.png: label map \(8, 9\) but image \(8, 8\)"):
        SegmentationFolder(tmp_path, "val")[0]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "annotations" / "validation" / "a.png")
    with pytest.raises(DatasetError, match=r"a.png: expected a single-channel 8-bit label map, got \(8, 8, 3\)"):
        SegmentationFolder(tmp_path, "val")[0]
    (tmp_path / "annotations" / "validation" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"no label map for 1 image\(s\), e.g. a.png"):
        SegmentationFolder(tmp_path, "val")
    (tmp_path / "images" / "validation" / "a.png").unlink()
    with pytest.raises(DatasetError, match="images/validation: no images"):
        SegmentationFolder(tmp_path, "val")


@pytest.mark.parametrize("kwargs, message", [
    (dict(crop=0), "crop must be a positive int, got 0"),
    (dict(scale=(0, 512)), r"scale must be two positive ints .* got \(0, 512\)"),
    (dict(ratio_range=(2.0, 1.0)), r"ratio_range must be \(low, high\) with 0 < low <= high"),
    (dict(cat_max_ratio=0.0), r"cat_max_ratio must be in \(0, 1\]"),
    (dict(flip=2.0), r"flip must be a probability in \[0, 1\], got 2.0"),
    (dict(mean=(0.5, 0.5)), "mean and std must be 3 values each"),
])  # fmt: skip
def test_transform_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentationTrainTransform(**kwargs)
    if "scale" in kwargs:
        with pytest.raises(ValueError, match=message):
            SegmentationEvalTransform(scale=kwargs["scale"])
