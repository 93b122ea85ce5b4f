"""The device-resident Fashion-MNIST loader (`--data-on-device`): batches, augmentation, order and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sfmamba.data import AugmentConfig, build_transform, create_dataset, make_synthetic_fashion_mnist
from sfmamba.data.device_loader import DeviceBatchLoader, crop_resize_flip, random_crop_boxes
from sfmamba.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from sfmamba.data.loader import ResumableSampler
from sfmamba.train import TrainConfig, train


@pytest.fixture
def fmnist_root(tmp_path):
    return make_synthetic_fashion_mnist(tmp_path / "fmnist", n_train=32, n_test=12)


def _split(root, split):
    return create_dataset("fashion_mnist", root, split)


def test_training_batches_shape_dtype_labels_and_sampler_order(fmnist_root):
    train_set = _split(fmnist_root, "train")
    aug = AugmentConfig(scale=[0.6, 1.0], hflip=0.5, reprob=0.25)
    loader = DeviceBatchLoader(train_set, 4, True, 20, "cpu", aug, seed=7, rank=1, world=2)
    loader.sampler.set_epoch(3)
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # 32 // (2 ranks x 4)
    reference = ResumableSampler(32, 4, shuffle=True, seed=7, rank=1, world=2)
    reference.set_epoch(3)
    order = list(reference)
    for number, (images, labels) in enumerate(batches):
        assert images.shape == (4, 3, 20, 20) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        assert labels.tolist() == train_set.labels[order[4 * number : 4 * number + 4]].tolist()
    # normalised with the dataset statistics: pixels stay in [(0 - mean) / std, (1 - mean) / std] outside erasing
    low, high = (0 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0], (1 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    plain = DeviceBatchLoader(train_set, 4, True, 20, "cpu", AugmentConfig(scale=[0.6, 1.0]), seed=7)
    images = torch.cat([b[0] for b in plain])
    assert images.min() >= low - 1e-5 and images.max() <= high + 1e-5
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])  # grey x 3
    loader.sampler.set_epoch(4)
    assert not torch.equal(next(iter(loader))[0], batches[0][0])  # a new order and new augmentations each epoch


def test_eval_batches_match_the_cpu_eval_transform(fmnist_root):
    val_set = _split(fmnist_root, "val")
    for size in (16, 48):  # shrinking (antialiased, as PIL) and enlarging
        transform = build_transform("fashion_mnist", size, False)
        reference = torch.stack([transform(val_set[i][0]) for i in range(len(val_set))])
        loader = DeviceBatchLoader(val_set, 5, False, size, "cpu", AugmentConfig(scale=[0.1, 0.2], reprob=1.0))
        batches = list(loader)
        assert [len(b[1]) for b in batches] == [5, 5, 2]  # evaluation keeps the last partial batch
        images = torch.cat([b[0] for b in batches])
        # PIL rounds the resized image to uint8: at most ~one grey level (1 / 255 / std = 0.011) apart
        assert (images - reference).abs().max() < 0.02
        assert [int(v) for v in torch.cat([b[1] for b in batches])] == val_set.labels.tolist()


def test_crop_resize_flip_matches_pil_crop_and_resize():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    top, left, height, width = 3, 5, 20, 17
    pil = Image.fromarray(grey).crop((left, top, left + width, top + height)).resize((64, 64), Image.BILINEAR)
    expected = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255)
    images = torch.from_numpy(grey).float().div(255)[None, None]
    boxes = torch.tensor([[top, left, height, width]], dtype=torch.float64)
    out = crop_resize_flip(images, boxes, torch.tensor([False]), 64, "bilinear")[0, 0]
    # inside the box the two agree to PIL's uint8 rounding; on the outermost output pixels the device path blends in
    # the neighbouring pixel outside the box (PIL clamps at the crop edge)
    assert (out[2:-2, 2:-2] - expected[2:-2, 2:-2]).abs().max() < 1.5 / 255
    flipped = crop_resize_flip(images, boxes, torch.tensor([True]), 64, "bilinear")[0, 0]
    assert torch.allclose(flipped, out.flip(-1), atol=1e-5)


def test_crop_boxes_follow_scale_and_ratio():
    generator = torch.Generator().manual_seed(0)
    boxes = random_crop_boxes(2000, 28, 28, (0.3, 0.7), (3 / 4, 4 / 3), generator, torch.device("cpu"))
    top, left, height, width = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 28).all() and (left + width <= 28).all()
    area = height * width / 28**2
    assert area.min() > 0.25 and area.max() < 0.76  # the scale range, up to rounding of the sides
    assert area.mean().item() == pytest.approx(0.5, abs=0.03)
    assert ((width / height) > 0.68).all() and ((width / height) < 1.47).all()
    assert len(set(top.tolist())) > 5 and len(set(left.tolist())) > 5  # positions vary
    # no try fits (scale above 1): timm's fallback, the whole (square) image
    generator.manual_seed(1)
    fallback = random_crop_boxes(8, 28, 28, (1.5, 2.0), (3 / 4, 4 / 3), generator, torch.device("cpu"))
    assert fallback.tolist() == [[0.0, 0.0, 28.0, 28.0]] * 8


def test_resume_from_a_batch_index_gives_the_same_batches(fmnist_root):
    train_set = _split(fmnist_root, "train")
    loader = DeviceBatchLoader(train_set, 4, True, 16, "cpu", AugmentConfig(reprob=0.5), seed=1)
    loader.sampler.set_epoch(2)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    full = list(loader)
    assert torch.equal(torch.random.get_rng_state(), state)  # the loop's own RNG streams are untouched
    loader.sampler.set_epoch(2, start_batch=5)
    rest = list(loader)
    assert len(rest) == 3
    for (a, la), (b, lb) in zip(full[5:], rest, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def _config(data_dir, output, **overrides) -> TrainConfig:
    settings = dict(
        model="mambavision_nano", img_size=16, dataset="fashion_mnist", data_dir=str(data_dir), batch_size=8,
        epochs=2, warmup_epochs=0.5, lr=2e-3, drop_path=0.1, mixup=0.2, cutmix=1.0, smoothing=0.1, reprob=0.25,
        scale=[0.5, 1.0], log_interval=2, checkpoint_interval=100, progress=False, device="cpu", seed=5,
        data_on_device=True, output=str(output) if output else None,
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def test_train_with_data_on_device_resumes_bit_exact(fmnist_root, tmp_path):
    straight = train(_config(fmnist_root, tmp_path / "straight"))
    assert straight["step"] == 8 and straight["stop"] == "done"  # 32 images / 8 = 4 steps per epoch, 2 epochs
    paused = train(_config(fmnist_root, tmp_path / "resumed", stop_step=6))  # mid-epoch 1
    assert paused["step"] == 6 and paused["stop"] == "stop_step"
    resumed = train(_config(fmnist_root, None, resume=str(tmp_path / "resumed")))
    assert resumed["step"] == 8
    a, b = (
        load_file(str(tmp_path / "straight" / "last.safetensors")),
        load_file(str(tmp_path / "resumed" / "last.safetensors")),
    )
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert resumed["eval_top1"] == straight["eval_top1"]


def test_data_on_device_is_refused_for_folder_datasets(fmnist_root, tmp_path):
    with pytest.raises(ValueError, match="data_on_device supports only dataset 'fashion_mnist'"):
        _config(tmp_path, tmp_path / "x", dataset="folder")
    with pytest.raises(ValueError, match="data_on_device needs the fashion_mnist dataset"):
        DeviceBatchLoader(object(), 4, True, 16, "cpu")
    with pytest.raises(ValueError, match="data_on_device supports crop, hflip and random erasing only; unset aa"):
        DeviceBatchLoader(_split(fmnist_root, "train"), 4, True, 16, "cpu", AugmentConfig(aa="rand-m9"))
