"""The device-resident Fashion-MNIST loader (`--data-on-device`): batches, augmentation, order and exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sfmamba.data import AugmentConfig, build_transform, create_dataset, make_synthetic_fashion_mnist
from sfmamba.data.device_loader import (
    DEFAULT_RATIO,
    DeviceBatchLoader,
    EraseSettings,
    crop_resize_flip,
    erase_boxes,
    random_crop_boxes,
    random_erase_boxes,
)
from sfmamba.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from sfmamba.data.loader import ResumableSampler, _sample_seed
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


def _timm_erase_box(u, height, width, settings):
    """timm's RandomErasing._erase (max_count 1) for one image, on the given uniform draws u [5, tries]."""
    if not u[4][0] < settings.probability:
        return [0.0] * 4
    log_lo, log_hi = math.log(settings.min_aspect), math.log(settings.max_aspect)
    for attempt in range(len(u[0])):
        target_area = (settings.min_area + (settings.max_area - settings.min_area) * u[0][attempt]) * height * width
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1][attempt])
        h, w = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if w < width and h < height:
            top, left = int(u[2][attempt] * (height - h + 1)), int(u[3][attempt] * (width - w + 1))
            return [float(top), float(left), float(h), float(w)]
    return [0.0] * 4


def test_erase_boxes_follow_timm_draw_by_draw():
    settings = EraseSettings(0.6)
    generator = torch.Generator().manual_seed(3)
    boxes = random_erase_boxes(300, 24, 40, settings, generator, torch.device("cpu"))
    generator.manual_seed(3)
    draws = torch.rand((5, 300, 10), generator=generator, dtype=torch.float64)
    expected = [_timm_erase_box(draws[:, i].tolist(), 24, 40, settings) for i in range(300)]
    assert boxes.tolist() == expected
    # no try fits: nothing is erased (timm gives up after its 10 tries)
    huge = EraseSettings(1.0, min_area=1.5, max_area=2.0)
    assert random_erase_boxes(16, 24, 40, huge, generator, torch.device("cpu"))[:, 2:].abs().sum() == 0


def test_erase_boxes_fraction_position_area_and_aspect():
    generator = torch.Generator().manual_seed(0)
    settings = EraseSettings(0.25)
    boxes = random_erase_boxes(4000, 64, 64, settings, generator, torch.device("cpu"))
    top, left, height, width = boxes.unbind(1)
    erased = height > 0
    assert erased.float().mean().item() == pytest.approx(0.25, abs=0.03)  # 4.4 sigma of a binomial over 4000
    assert ((height > 0) == (width > 0)).all()
    top, left, height, width = top[erased], left[erased], height[erased], width[erased]
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 64).all() and (left + width <= 64).all()
    assert (height < 64).all() and (width < 64).all()
    area = height * width / 64**2
    assert area.min() > 0.015 and area.max() < 0.36  # (0.02, 1/3) up to the rounding of the sides
    aspect = height / width
    assert aspect.min() > 0.25 and aspect.max() < 4.0  # (0.3, 1/0.3) up to rounding
    assert aspect.min() < 0.4 and aspect.max() > 2.5 and area.min() < 0.03 and area.max() > 0.3  # the whole range
    assert len(set(top.tolist())) > 20 and len(set(left.tolist())) > 20
    assert random_erase_boxes(500, 64, 64, EraseSettings(0.0), generator, torch.device("cpu"))[:, 2:].sum() == 0


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
def test_erasing_fills_only_the_box(mode):
    images = torch.full((2, 3, 16, 20), 7.0)
    boxes = torch.tensor([[2.0, 3.0, 5.0, 9.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    out = erase_boxes(images.clone(), boxes, mode, torch.Generator().manual_seed(0))
    inside = torch.zeros(2, 1, 16, 20, dtype=torch.bool)
    inside[0, :, 2:7, 3:12] = True
    inside = inside.expand_as(images)
    assert torch.equal(out[~inside], images[~inside])  # outside the box (and the whole second image) untouched
    box = out[0, :, 2:7, 3:12]
    if mode == "const":
        assert torch.equal(box, torch.zeros_like(box))
    elif mode == "rand":  # one normal colour per channel
        assert torch.equal(box, box[:, :1, :1].expand_as(box)) and (box != 7.0).all()
    else:  # normal noise per pixel and channel
        assert (box != 7.0).all() and len(set(box.flatten().tolist())) == box.numel()
        noise = erase_boxes(torch.zeros(64, 3, 16, 20), boxes[:1].expand(64, 4), mode, torch.Generator())
        values = noise[:, :, 2:7, 3:12]
        assert abs(values.mean().item()) < 0.05 and values.std().item() == pytest.approx(1.0, abs=0.05)


def test_erasing_settings_are_checked():
    with pytest.raises(ValueError, match="remode must be one of pixel, rand, const, got 'noise'"):
        EraseSettings(0.25, "noise")
    with pytest.raises(ValueError, match=r"reprob must be in \[0, 1\], got 1.5"):
        EraseSettings(1.5)


def test_erasing_leaves_the_crop_path_and_is_seeded(fmnist_root):
    train_set = _split(fmnist_root, "train")

    def batches(reprob: float, seed: int = 4) -> list[torch.Tensor]:
        loader = DeviceBatchLoader(train_set, 8, True, 24, "cpu", AugmentConfig(scale=[0.5, 1.0], reprob=reprob), seed)
        loader.sampler.set_epoch(1)
        return [images for images, _ in loader]

    plain, erased = batches(0.0), batches(1.0)
    # the crop path: the loader's batch is random_crop_boxes + crop_resize_flip from the batch's seed
    sampler = ResumableSampler(32, 8, True, seed=4)
    sampler.set_epoch(1)
    order = torch.tensor(list(sampler))
    generator = torch.Generator().manual_seed(_sample_seed(4, 1, 0))
    crops = random_crop_boxes(8, 28, 28, (0.5, 1.0), DEFAULT_RATIO, generator, torch.device("cpu"))
    flip = torch.rand(8, generator=generator) < 0.5
    source = torch.from_numpy(train_set.images)[order[:8]].unsqueeze(1).float().div(255)
    expected = crop_resize_flip(source, crops, flip, 24, "bilinear").expand(-1, 3, -1, -1) - FASHION_MNIST_MEAN[0]
    assert torch.allclose(plain[0], expected / FASHION_MNIST_STD[0], atol=1e-6)
    low, high = (0 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0], (1 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    for clean, noisy in zip(plain, erased, strict=True):
        assert clean.min() >= low - 1e-5 and clean.max() <= high + 1e-5  # reprob 0: nothing erased
        changed = (clean != noisy).any(dim=1)  # [B, H, W]
        rows, cols = changed.any(dim=2).sum(dim=1), changed.any(dim=1).sum(dim=1)
        assert (rows > 0).all()  # reprob 1: every image has a box (24 px: a try fits)
        assert torch.equal(changed.flatten(1).sum(dim=1), rows * cols)  # what changed is one rectangle
    again, other = batches(1.0), batches(1.0, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(erased, again, strict=True))  # same seed: the same batches
    assert not torch.equal(erased[0], other[0])
