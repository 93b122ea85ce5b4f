"""Semantic-segmentation data: image / label-map folders in mmsegmentation's ADE20K layout and its pipelines.

Layout: `<root>/images/<split>/<name>.jpg` with `<root>/annotations/<split>/<name>.png` (one class index per pixel),
the split folder named `training` / `validation` (ADE20K) or `train` / `val`. ADE20K labels "other" as 0: with
`reduce_zero_label` it becomes the ignored 255 and every other class moves down by one (150 classes), as mmseg does.

Pipelines (mmseg's ADE20K config): `SegmentationTrainTransform` rescales to a random 0.5-2.0 of the 2048 x 512 scale
(aspect kept), crops 512 x 512 retrying up to ten times while one class covers over 75 % of the crop, flips half the
images, jitters brightness/contrast/saturation/hue (torchvision's ColorJitter at mmseg's PhotoMetricDistortion ranges),
normalises, and pads to the crop (labels with 255);
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
from torch import Tensor

from .fashion_mnist import DatasetError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_SPLIT_FOLDERS = {"train": ("training", "train"), "val": ("validation", "val")}

__all__ = ["SegmentationEvalTransform", "SegmentationFolder", "SegmentationTrainTransform"]


def _split_folder(root: Path, kind: str, split: str) -> Path:
    names = _SPLIT_FOLDERS.get(split, (split,))
    folder = next((root / kind / n for n in names if (root / kind / n).is_dir()), None)
    if folder is None:
        expected = " or ".join(f"{root / kind / n}/" for n in names)
        raise DatasetError(f"{root}: no {expected} (expected images/<split>/ and annotations/<split>/)")
    return folder


class SegmentationFolder(torch.utils.data.Dataset):
    """(image, label map) pairs: uint8 RGB images [3, H, W] and int64 labels [H, W], or what `transform` makes."""

    def __init__(self, root: str | Path, split: str = "train", transform=None, reduce_zero_label: bool = False):
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
        self.transform, self.reduce_zero_label = transform, reduce_zero_label

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
        if self.reduce_zero_label:  # 0 ("other") -> 255 (ignored), c -> c - 1
            label = label - 1  # uint8: 0 wraps to 255
        label = label.long()
        return self.transform(image, label) if self.transform else (image, label)


def _rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmseg's keep-ratio rescale: the largest size whose long side fits max(scale) and short side min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize(image: Tensor, label: Tensor | None, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, label


def _normalise(image: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """0-255 floats -> (x / 255 - mean) / std per channel."""
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return (image / 255 - mean_t) / std_t


class SegmentationTrainTransform:
    """mmseg's ADE20K training pipeline on (uint8 image [3, H, W], int64 labels [H, W]) -> (normalised float
    [3, crop, crop], labels [crop, crop] with 255 where padded)."""

    def __init__(self, crop: int = 512, scale: tuple[int, int] = (2048, 512),
                 ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75, flip: float = 0.5,
                 jitter: bool = True, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 ignore_index: int = 255):  # fmt: skip
        if crop < 1 or not 0 < ratio_range[0] <= ratio_range[1] or not 0 < cat_max_ratio <= 1:
            raise ValueError(f"crop must be >= 1, ratio_range increasing and positive, cat_max_ratio in (0, 1]; got "
                             f"{crop}, {ratio_range}, {cat_max_ratio}")  # fmt: skip
        self.crop, self.scale, self.ratio_range, self.cat_max_ratio = crop, scale, ratio_range, cat_max_ratio
        self.flip, self.mean, self.std, self.ignore_index = flip, mean, std, ignore_index
        from torchvision.transforms import ColorJitter

        # mmseg's PhotoMetricDistortion in torchvision's terms: brightness +-32 of 255 (here a +-12.5 % factor),
        # contrast and saturation 0.5-1.5, hue +-18 of OpenCV's 180 (0.1 of the circle)
        self.jitter = ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.1) if jitter else None

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        ratio = random.uniform(*self.ratio_range)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, label = _resize(image, label, _rescale_size(*image.shape[1:], scale))
        top, left = self._crop_origin(label)
        image = image[:, top : top + self.crop, left : left + self.crop]
        label = label[top : top + self.crop, left : left + self.crop]
        if random.random() < self.flip:
            image, label = image.flip(-1), label.flip(-1)
        if self.jitter is not None:
            image = self.jitter(image.clamp(0, 255).round().to(torch.uint8)).float()
        pad_h, pad_w = self.crop - image.shape[1], self.crop - image.shape[2]
        image = F.pad(_normalise(image, self.mean, self.std), (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image, label

    def _crop_origin(self, label: Tensor) -> tuple[int, int]:
        """A random crop origin; up to ten tries for one where no class covers over cat_max_ratio of the labelled
        pixels (the last try kept otherwise), as mmseg's RandomCrop."""
        height, width = label.shape
        for _ in range(10):
            top, left = random.randint(0, max(height - self.crop, 0)), random.randint(0, max(width - self.crop, 0))
            if self.cat_max_ratio >= 1:
                break
            window = label[top : top + self.crop, left : left + self.crop]
            counts = torch.bincount(window[window != self.ignore_index].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return top, left


class SegmentationEvalTransform:
    """mmseg's ADE20K test pipeline: the image rescaled to the 2048 x 512 scale (aspect kept) and normalised; the
    labels stay at the original size."""

    def __init__(self, scale: tuple[int, int] = (2048, 512), mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):  # fmt: skip
        self.scale, self.mean, self.std = scale, mean, std

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        image, _ = _resize(image, None, _rescale_size(*image.shape[1:], self.scale))
        return _normalise(image, self.mean, self.std), label
