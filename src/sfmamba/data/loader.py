"""Datasets, timm transforms and resumable, reproducible data loaders for training and evaluation.

Reproducibility: every sample's augmentation is seeded from (seed, epoch, index), and the sampler's order from
(seed, epoch), so a run resumed in the middle of an epoch sees exactly the batches the uninterrupted run saw,
whatever the number of loader workers.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNIST
from .folder import ImageFolderDataset

DATASETS = ("fashion_mnist", "folder")
_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, epoch, index) over 64 bits


@dataclass
class AugmentConfig:
    """timm's training-transform settings (the names of timm's train.py flags)."""

    scale: Sequence[float] | None = None
    ratio: Sequence[float] | None = None
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.0
    aa: str | None = None  # RandAugment / AutoAugment policy, e.g. 'rand-m9-mstd0.5-inc1'
    reprob: float = 0.0
    remode: str = "pixel"
    interpolation: str = "bilinear"
    no_aug: bool = False


def default_data_dir(dataset: str) -> Path | None:
    return DEFAULT_FASHION_MNIST_DIR if dataset == "fashion_mnist" else None


def dataset_stats(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) used to normalise the inputs."""
    if dataset == "fashion_mnist":
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD
    return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def build_transform(dataset: str, img_size: int, training: bool, augment: AugmentConfig | None = None):
    """timm's `create_transform` for the given split; evaluation resizes the whole image (crop_pct 1)."""
    mean, std = dataset_stats(dataset)
    if not training:
        return create_transform(
            img_size,
            is_training=False,
            crop_pct=1.0,
            mean=mean,
            std=std,
            interpolation=(augment or AugmentConfig()).interpolation,
        )
    a = augment or AugmentConfig()
    return create_transform(
        img_size,
        is_training=True,
        no_aug=a.no_aug,
        scale=tuple(a.scale) if a.scale else None,
        ratio=tuple(a.ratio) if a.ratio else None,
        hflip=a.hflip,
        vflip=a.vflip,
        color_jitter=a.color_jitter,
        auto_augment=a.aa,
        interpolation=a.interpolation,
        re_prob=a.reprob,
        re_mode=a.remode,
        mean=mean,
        std=std,
    )


def create_dataset(name: str, data_dir: str | Path | None, split: str, transform=None) -> torch.utils.data.Dataset:
    """'fashion_mnist' (splits 'train', 'test'; 'val' means 'test') or 'folder' (<data_dir>/<split>/<class>/...)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    if name == "fashion_mnist":
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be one of train, val, test (val: Fashion-MNIST's test set), got {split!r}")
        root = data_dir or DEFAULT_FASHION_MNIST_DIR
        return FashionMNIST(root, "test" if split == "val" else split, transform)
    if data_dir is None:
        raise ValueError("data_dir is required for dataset 'folder' (a folder holding train/ and val/)")
    return ImageFolderDataset(data_dir, split, transform)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return (((seed * _SEED_MIX + epoch) * _SEED_MIX + index) * _SEED_MIX) % (2**63)


def _seed_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU generators for one sample.

    A loader worker owns its generators, so they are only re-seeded there; in the main process (workers=0) their
    states are restored afterwards, so the training loop's own random stream does not depend on the data.
    """
    if torch.utils.data.get_worker_info() is not None:
        _seed_rngs(seed)
        yield
        return
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    _seed_rngs(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


class EpochSeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset so each sample's random augmentation depends only on (seed, epoch, index)."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with _seeded_rngs(_sample_seed(self.seed, self.epoch, index)):
            return self.dataset[index]


class ResumableSampler(torch.utils.data.Sampler[int]):
    """This rank's share of an epoch's order, starting after `start_batch` batches.

    Training order: a permutation drawn from (seed, epoch), trimmed to a multiple of world size x batch size (every
    rank gets the same number of full batches), dealt out round-robin. Evaluation order (shuffle=False): indices
    rank, rank + world, ... with no trimming, so every sample is counted exactly once over all ranks.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1):
        self.num_samples, self.batch_size, self.shuffle = num_samples, batch_size, shuffle
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.world * self.batch_size)

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.num_samples, self.world))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        used = self.batches_per_epoch() * self.world * self.batch_size
        return order[:used][self.rank :: self.world].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return len(self._indices()) - self.start_batch * self.batch_size


def create_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    training: bool,
    seed: int = 0,
    workers: int = 2,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` with a `ResumableSampler`; training drops the last partial batch. `collate_fn`:
    the DataLoader's (default: stacked tensors; detection batches are lists, `detection_collate`)."""
    if training:
        dataset = EpochSeededDataset(dataset, seed)
    sampler = ResumableSampler(len(dataset), batch_size, shuffle=training, seed=seed, rank=rank, world=world)
    if training and sampler.batches_per_epoch() == 0:
        raise ValueError(f"batch_size {batch_size} x {world} process(es) exceeds the {len(dataset)} training samples")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=training,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def set_loader_epoch(loader: torch.utils.data.DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Select the epoch (order and augmentation seeds) and the first batch of the next iteration over `loader`."""
    loader.sampler.set_epoch(epoch, start_batch)
    if isinstance(loader.dataset, EpochSeededDataset):
        loader.dataset.epoch = epoch
