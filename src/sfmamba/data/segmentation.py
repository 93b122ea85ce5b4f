"""Semantic-segmentation data: image / label-map folders in mmsegmentation's ADE20K layout and its pipelines.

Layout: `<root>/images/<split>/<name>.jpg` with `<root>/annotations/<split>/<name>.png` (one class index per pixel),
the split folder named `training` / `validation` (ADE20K) or `train` / `val`. ADE20K labels "other" as 0: with
`reduce_zero_label` it becomes the ignored 255 and every other class moves down by one (150 classes), as mmseg does.

Pipelines (mmseg's ADE20K config): `SegmentationTrainTransform` rescales to a random 0.5-2.0 of the 2048 x 512 scale
(aspect kept), crops 512 x 512 retrying up to ten times while one class covers over 75 % of the crop, flips half the
images, applies PhotoMetricDistortion (`photometric_distortion`: its steps, probabilities and ranges; saturation by
torchvision's grey blend), normalises, and pads to the crop (labels with 255);
`SegmentationEvalTransform` rescales to the 2048 x 512 scale and leaves the labels at the original size
(`sfmamba.dense.evaluate_segmentation` resizes the logits to them).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from .fashion_mnist import DatasetError
from .folder import IMAGE_SUFFIXES

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
_SPLIT_FOLDERS = {"train": ("training", "train"), "val": ("validation", "val")}

__all__ = [
    "SegmentationEvalTransform", "SegmentationFolder", "SegmentationTrainTransform", "photometric_distortion",
]  # fmt: skip


def _split_folder(root: Path, kind: str, split: str) -> Path:
    names = _SPLIT_FOLDERS.get(split, (split,))
    folder = next((root / kind / n for n in names if (root / kind / n).is_dir()), None)
    if folder is None:
        expected = " or ".join(f"{root / kind / n}/" for n in names)
        raise DatasetError(f"{root}: no {expected} (expected images/<split>/ and annotations/<split>/)")
    return folder


class SegmentationFolder(torch.utils.data.Dataset):
    """(image, label map) pairs: uint8 RGB images [3, H, W] and int64 labels [H, W], or what `transform` makes."""

    def __init__(self, root: str | Path, split: str = "train", transform=None, reduce_zero_label: bool = False,
                 ignore_index: int = 255):  # fmt: skip
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: no such directory (expected images/<split>/ and annotations/<split>/)")
        image_dir, label_dir = _split_folder(root, "images", split), _split_folder(root, "annotations", split)
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"{image_dir}: no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
        labels = [label_dir / f"{p.stem}.png" for p in images]
        missing = [p.name for p in labels if not p.is_file()]
        if missing:
            raise DatasetError(f"{label_dir}: no label map for {len(missing)} image(s), e.g. {', '.join(missing[:3])}")
        self.samples = list(zip(images, labels))
        self.transform, self.reduce_zero_label, self.ignore_index = transform, reduce_zero_label, ignore_index

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, label_path = self.samples[index]
        with Image.open(image_path) as img:
            image = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()
        with Image.open(label_path) as lbl:
            label = torch.from_numpy(np.array(lbl))  # "L" or palette ("P") indices, as written
        if label.dim() != 2 or label.dtype != torch.uint8:
            raise DatasetError(f"{label_path}: expected a single-channel 8-bit label map, got {tuple(label.shape)} "
                               f"{label.dtype}")  # fmt: skip
        if label.shape != image.shape[1:]:
            raise DatasetError(f"{label_path}: label map {tuple(label.shape)} but image {tuple(image.shape[1:])}")
        label = label.long()
        if self.reduce_zero_label:  # 0 ("other") and ignored pixels -> ignored, c -> c - 1 (mmseg's)
            label = torch.where((label == 0) | (label == self.ignore_index), self.ignore_index, label - 1)
        return self.transform(image, label) if self.transform else (image, label)


def _rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmseg's keep-ratio rescale: the largest size whose long side fits max(scale) and short side min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize(image: Tensor, label: Tensor | None, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    image = image.round().clamp(0, 255)  # mmseg's cv2 resize returns uint8
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, label


def _normalise(image: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """0-255 floats -> (x / 255 - mean) / std per channel."""
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return (image / 255 - mean_t) / std_t


class SegmentationTrainTransform:
    """mmseg's ADE20K training pipeline on (uint8 image [3, H, W], int64 labels [H, W]) -> (normalised float
    [3, crop, crop], labels [crop, crop] with `ignore_index` where padded)."""

    def __init__(self, crop: int = 512, scale: tuple[int, int] = (2048, 512),
                 ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75, flip: float = 0.5,
                 photometric: bool = True, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, ignore_index: int = 255):  # fmt: skip
        if not isinstance(crop, int) or crop < 1:
            raise ValueError(f"crop must be a positive int, got {crop!r}")
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range!r}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1] (1: no retries), got {cat_max_ratio!r}")
        if not 0 <= flip <= 1:
            raise ValueError(f"flip must be a probability in [0, 1], got {flip!r}")
        self.crop, self.scale, self.ratio_range = crop, _check_scale(scale), ratio_range
        self.cat_max_ratio = cat_max_ratio
        self.flip, self.photometric, self.ignore_index = flip, photometric, ignore_index
        self.mean, self.std = _check_stats(mean, std)

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        ratio = random.uniform(*self.ratio_range)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, label = _resize(image, label, _rescale_size(*image.shape[1:], scale))
        top, left = self._crop_origin(label)
        image = image[:, top : top + self.crop, left : left + self.crop]
        label = label[top : top + self.crop, left : left + self.crop]
        if random.random() < self.flip:
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = photometric_distortion(image)
        pad_h, pad_w = self.crop - image.shape[1], self.crop - image.shape[2]
        image = F.pad(_normalise(image, self.mean, self.std), (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image, label

    def _crop_origin(self, label: Tensor) -> tuple[int, int]:
        """A random crop origin (0..H - crop inclusive); with cat_max_ratio < 1, redrawn up to ten times while one
        class covers over cat_max_ratio of the crop's labelled pixels, the last draw kept unchecked (mmseg's
        RandomCrop)."""
        height, width = label.shape

        def draw() -> tuple[int, int]:
            return random.randint(0, max(height - self.crop, 0)), random.randint(0, max(width - self.crop, 0))

        top, left = draw()
        if self.cat_max_ratio < 1:
            for _ in range(10):
                window = label[top : top + self.crop, left : left + self.crop]
                counts = torch.bincount(window[window != self.ignore_index].flatten())
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                top, left = draw()
        return top, left


def photometric_distortion(image: Tensor) -> Tensor:
    """mmseg's PhotoMetricDistortion on a 0-255 float image [3, H, W], each step with probability 1/2 and the result
    clipped to 0-255 after each: brightness +-32, contrast x 0.5-1.5 (before or after the colour steps), saturation
    0.5-1.5 (torchvision's adjust_saturation, a blend with the grey image; mmseg scales HSV saturation), hue +-18 of
    OpenCV's 180 (torchvision's adjust_hue, the same HSV shift)."""
    from torchvision.transforms.functional import adjust_hue, adjust_saturation

    def chance() -> bool:
        return random.random() < 0.5

    def contrast(x: Tensor) -> Tensor:
        return (x * random.uniform(0.5, 1.5)).clamp(0, 255) if chance() else x

    image = (image + random.uniform(-32, 32)).clamp(0, 255) if chance() else image
    contrast_first = chance()
    if contrast_first:
        image = contrast(image)
    if chance():
        image = adjust_saturation(image / 255, random.uniform(0.5, 1.5)).clamp(0, 1) * 255
    if chance():
        image = adjust_hue(image / 255, random.uniform(-0.1, 0.1)) * 255
    return image if contrast_first else contrast(image)


def _check_scale(scale: tuple[int, int]) -> tuple[int, int]:
    if len(scale) != 2 or any(not isinstance(v, int) or v < 1 for v in scale):
        raise ValueError(f"scale must be two positive ints (long side, short side bounds), got {scale!r}")
    return tuple(scale)


def _check_stats(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 values each (RGB), std > 0; got {mean!r}, {std!r}")
    return tuple(mean), tuple(std)


class SegmentationEvalTransform:
    """mmseg's ADE20K test pipeline: the image rescaled to the 2048 x 512 scale (aspect kept) and normalised; the
    labels stay at the original size."""

    def __init__(self, scale: tuple[int, int] = (2048, 512), mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):  # fmt: skip
        self.scale = _check_scale(scale)
        self.mean, self.std = _check_stats(mean, std)

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        image, _ = _resize(image, None, _rescale_size(*image.shape[1:], self.scale))
        return _normalise(image, self.mean, self.std), label
