"""Folder datasets, timm transforms, and the resumable sampler / per-sample augmentation seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sfmamba.data import (
    AugmentConfig,
    DatasetError,
    ImageFolderDataset,
    ResumableSampler,
    build_transform,
    create_dataset,
    create_loader,
    set_loader_epoch,
    write_idx,
)


@pytest.fixture
def fake_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (24, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 24, dtype=np.uint8))
    return tmp_path


def test_sampler_shards_are_disjoint_equal_and_trimmed():
    shards = [ResumableSampler(50, 4, shuffle=True, seed=3, rank=r, world=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    indices = [list(s) for s in shards]
    assert [len(i) for i in indices] == [16, 16, 16]  # 50 // (3 * 4) = 4 batches of 4 per rank
    assert len(set().union(*map(set, indices))) == 48
    shards[0].set_epoch(3)
    assert list(shards[0]) != indices[0]  # a new order every epoch


def test_sampler_start_batch_skips_exactly_those_batches():
    sampler = ResumableSampler(40, 5, shuffle=True, seed=1)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1, start_batch=3)
    assert list(sampler) == full[15:] and len(sampler) == 25


def test_eval_sampler_covers_every_sample_once():
    shards = [ResumableSampler(11, 4, shuffle=False, rank=r, world=2) for r in range(2)]
    assert sorted(list(shards[0]) + list(shards[1])) == list(range(11))


def test_augmentation_depends_only_on_epoch_and_index(fake_fmnist):
    transform = build_transform("fashion_mnist", 16, True, AugmentConfig(scale=(0.3, 1.0), reprob=0.5))
    dataset = create_dataset("fashion_mnist", fake_fmnist, "train", transform)

    def first_batches(workers: int, epoch: int, start: int = 0) -> torch.Tensor:
        loader = create_loader(dataset, 4, True, seed=7, workers=workers)
        set_loader_epoch(loader, epoch, start)
        return torch.cat([images for images, _ in loader])

    torch.manual_seed(0)
    reference = first_batches(0, epoch=1)
    assert reference.shape == (24, 3, 16, 16)
    torch.manual_seed(123)  # the main process's stream does not matter
    assert torch.equal(first_batches(0, epoch=1), reference)
    assert torch.equal(first_batches(1, epoch=1), reference)  # nor does the worker count
    assert torch.equal(first_batches(0, epoch=1, start=2), reference[8:])
    assert not torch.equal(first_batches(0, epoch=2), reference)


def test_eval_transform_is_deterministic_and_normalised(fake_fmnist):
    dataset = create_dataset("fashion_mnist", fake_fmnist, "train", build_transform("fashion_mnist", 28, False))
    image, _ = dataset[0]
    raw = torch.from_numpy(dataset.images[0]).float() / 255
    torch.testing.assert_close(image[1], (raw - 0.2860) / 0.3530, atol=1e-5, rtol=0)


def test_folder_dataset_reads_grey_images_as_rgb(tmp_path):
    for split in ("train", "val"):
        for cls, value in (("cat", 10), ("dog", 200)):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((5, 6), value, np.uint8)).save(tmp_path / split / cls / "a.png")
    dataset = ImageFolderDataset(tmp_path, "val")
    assert dataset.classes == ("cat", "dog") and len(dataset) == 2
    image, label = dataset[1]
    assert image.mode == "RGB" and label == 1 and np.asarray(image)[0, 0].tolist() == [200, 200, 200]


def test_folder_dataset_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"missing: no such directory \(expected train/ and val/"):
        create_dataset("folder", tmp_path / "missing", "train")
    with pytest.raises(DatasetError, match=r"no val/ or validation/ or test/ folder"):
        create_dataset("folder", tmp_path, "val")
    (tmp_path / "train" / "empty").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"train: class folders without images \(empty\)"):
        create_dataset("folder", tmp_path, "train")
    with pytest.raises(ValueError, match=r"dataset must be one of fashion_mnist, folder, got 'mnist'"):
        create_dataset("mnist", tmp_path, "train")
