"""ImageNet-style folders: `<root>/<split>/<class name>/<image files>`, read through timm's `ImageDataset`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from timm.data import ImageDataset

from .fashion_mnist import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
_SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation", "test"), "test": ("test", "val", "validation")}


def find_split_dir(root: str | Path, split: str) -> Path:
    """The folder of `split` under `root` ('val' also accepts 'validation' or 'test'), checked to hold classes."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory (expected train/ and val/ folders with one folder per class)")
    if split not in _SPLIT_NAMES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_NAMES)}, got {split!r}")
    candidates = [root / name for name in _SPLIT_NAMES[split]]
    split_dir = next((c for c in candidates if c.is_dir()), None)
    if split_dir is None:
        raise DatasetError(
            f"{root}: no {' or '.join(c.name + '/' for c in candidates)} folder (expected one per split)"
        )
    class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir())
    if not class_dirs:
        raise DatasetError(f"{split_dir}: no class folders (expected one folder of images per class)")
    empty = [d.name for d in class_dirs if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.rglob("*"))]
    if empty:
        raise DatasetError(
            f"{split_dir}: class folders without images ({', '.join(empty[:5])}); expected "
            f"files ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    return split_dir


class ImageFolderDataset(ImageDataset):
    """timm's folder reader with RGB conversion (grey images get three channels) and `classes` in label order."""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None):
        split_dir = find_split_dir(root, split)
        super().__init__(str(split_dir), transform=transform, input_img_mode="RGB")
        class_to_idx = self.reader.class_to_idx
        self.classes = tuple(sorted(class_to_idx, key=class_to_idx.get))
