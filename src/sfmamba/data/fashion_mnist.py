"""Fashion-MNIST from its IDX files (plain or gzipped), as served by Debian's `dataset-fashion-mnist` package.

The IDX format: a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the values in C order. Fashion-MNIST uses type 0x08 (unsigned byte) for both files.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..utils.files import atomic_write_bytes

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# per-channel statistics of the training images (grey, repeated over the three channels)
FASHION_MNIST_MEAN = (0.2860, 0.2860, 0.2860)
FASHION_MNIST_STD = (0.3530, 0.3530, 0.3530)
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetError(ValueError):
    """A dataset that is missing or malformed; the message names the path and what was expected."""


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (`.gz` files are decompressed).

    Raises:
        DatasetError: the file is missing, does not start with an IDX magic number, or holds fewer or more
            values than its header announces.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (expected an IDX file)")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # a truncated or corrupt gzip stream
        raise DatasetError(f"{path}: cannot be read as {'gzip' if opener is gzip.open else 'a file'}: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise DatasetError(
            f"{path}: not an IDX file (expected magic bytes 00 00 <type> <number of dims>, got {data[:4].hex()})"
        )
    ndim, dtype = data[3], np.dtype(_IDX_TYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header (expected {header} bytes, got {len(data)})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes in all) but the file has {len(data)} bytes"
            f" ({'truncated' if len(data) < expected else 'trailing data'})"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (root / name).is_file():
            return root / name
    raise DatasetError(
        f"{root}: no {stem} or {stem}.gz (expected the four Fashion-MNIST IDX files there; on Debian/Ubuntu "
        f"`apt-get install dataset-fashion-mnist` puts them in {DEFAULT_FASHION_MNIST_DIR})"
    )


def load_fashion_mnist(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the 'train' or 'test' split, checked for consistency."""
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_FILES)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory (expected the Fashion-MNIST IDX files there)")
    image_path, label_path = (_find_idx(root, stem) for stem in _SPLIT_FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{image_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{label_path}: expected {len(images)} labels, got shape {labels.shape}")
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{label_path}: label {labels.max()} out of range (10 classes)")
    return images, labels.astype(np.int64)


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST as RGB PIL images (the grey channel repeated), so timm's transforms apply unchanged."""

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self, root: str | Path = DEFAULT_FASHION_MNIST_DIR, split: str = "train", transform: Callable | None = None
    ):
        self.root, self.split, self.transform = Path(root), split, transform
        self.images, self.labels = load_fashion_mnist(root, split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` (uint8, any rank) as an IDX file, gzipped when `path` ends in '.gz'; written atomically."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"array must be a uint8 array of rank >= 1, got {array.dtype} of rank {array.ndim}")
    path = Path(path)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    atomic_write_bytes(path, payload)


def make_synthetic_fashion_mnist(root: str | Path, n_train: int = 32, n_test: int = 16, size: int = 28, seed: int = 0):
    """Write a tiny dataset in Fashion-MNIST's file layout (for smoke tests of the pipeline, not for accuracy):
    random images whose class sets their brightness, so a few training steps can learn something."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, len(FASHION_MNIST_CLASSES), n).astype(np.uint8)
        images = rng.integers(0, 40, (n, size, size)) + labels[:, None, None].astype(np.int64) * 20
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    return root
