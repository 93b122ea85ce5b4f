"""Fashion-MNIST batches built on the training device: the whole split held there as uint8, augmented per batch.

The CPU path (timm's PIL transforms in loader workers) cannot feed a GPU fast enough at 28 px; here each batch is
gathered from device tensors in the order `ResumableSampler` gives (the same (seed, epoch) permutation, per-rank
share and resume point as the CPU loader), then augmented in a few batched ops:

- random-resized-crop: timm's `RandomResizedCropAndInterpolation` parameters (10 tries of area in `scale`, log-uniform
  aspect ratio in `ratio`, integer box, centre-crop fallback), drawn for the whole batch at once; crop, resize to
  img_size and horizontal flip are one `affine_grid` + `grid_sample` (no antialiasing when a crop is shrunk);
- grey -> 3 channels, normalisation with the dataset's mean/std;
- random erasing: timm's `RandomErasing` (max_count 1) for the whole batch at once: per image a draw against the
  probability, 10 tries of area in (min_area, max_area) x image area and log-uniform aspect ratio, the first that
  fits erased with normal noise ('pixel'), a normal colour per channel ('rand') or zeros ('const'); one masked
  `torch.where` instead of timm's Python loop over the images.

On CUDA the batches are built one step ahead on a worker thread and stream (`data/prefetch.py`): their ~120 launches
overlap the training step's instead of adding to it.

Every random draw comes from one generator seeded from (seed, epoch, global batch index), so a resumed run sees the
same augmentations, and the training loop's own random streams are left alone.
Evaluation batches are resized (antialiased, as PIL does) and normalised, nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fashion_mnist import FashionMNIST
from .loader import AugmentConfig, ResumableSampler, _sample_seed, dataset_stats
from .prefetch import prefetched

DEFAULT_SCALE = (0.08, 1.0)  # timm's defaults for RandomResizedCrop
DEFAULT_RATIO = (3 / 4, 4 / 3)
_CROP_TRIES = 10
_ERASE_TRIES = 10  # timm's RandomErasing
ERASE_MODES = ("pixel", "rand", "const")
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


def _check_supported(augment: AugmentConfig) -> None:
    unsupported = {"vflip": augment.vflip > 0, "color_jitter": augment.color_jitter > 0, "aa": bool(augment.aa)}
    given = [name for name, on in unsupported.items() if on]
    if given:
        raise ValueError(f"data_on_device supports crop, hflip and random erasing only; unset {', '.join(given)}")
    if augment.interpolation not in _MODES:
        raise ValueError(
            f"interpolation must be one of {', '.join(_MODES)} with data_on_device, got {augment.interpolation!r}"
        )


def _first_fitting_boxes(
    draws: torch.Tensor, height: int, width: int, area: tuple[float, float], aspect: tuple[float, float], *,
    aspect_is_width: bool, strict: bool, min_side: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """timm's box search (RandomResizedCrop's and RandomErasing's), for a whole batch at once.

    draws [4+, batch, tries] uniforms: area fraction in `area`, log-uniform aspect in `aspect`, top, left. Sides are
    round(sqrt(area * aspect)) (the width when `aspect_is_width`, else the height) and round(sqrt(area / aspect)),
    rounded half to even as Python's round, at least `min_side`; a try fits when both sides are <= the image's (<
    when `strict`). Returns top, left, h, w [batch] of each image's first fitting try, and whether any try fits.
    """
    box_area = height * width * (area[0] + (area[1] - area[0]) * draws[0])
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * draws[1])
    along, across = torch.round(torch.sqrt(box_area * ratio)), torch.round(torch.sqrt(box_area / ratio))
    if min_side:
        along, across = along.clamp_(min=min_side), across.clamp_(min=min_side)
    box_w, box_h = (along, across) if aspect_is_width else (across, along)
    fits = (box_w < width) & (box_h < height) if strict else (box_w <= width) & (box_h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first try that fits
    tries = torch.stack((draws[2], draws[3], box_h, box_w))  # [4, batch, tries]: one gather for the four
    u_top, u_left, box_h, box_w = tries.gather(2, first.expand(4, -1, -1))[..., 0]
    top = torch.floor(u_top * (height - box_h + 1))
    left = torch.floor(u_left * (width - box_w + 1))
    return top, left, box_h, box_w, fits.any(dim=1)


def random_crop_boxes(
    batch: int, height: int, width: int, scale, ratio, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """[batch, 4] float (top, left, h, w): timm's RandomResizedCrop parameters, drawn for the whole batch."""
    draws = torch.rand((4, batch, _CROP_TRIES), generator=generator, device=device, dtype=torch.float64)
    top, left, crop_h, crop_w, any_fit = _first_fitting_boxes(
        draws, height, width, scale, ratio, aspect_is_width=True, strict=False, min_side=1
    )
    # no try fits: timm's fallback, a centre crop clamped to the ratio range
    in_ratio = width / height
    fallback_w = width if in_ratio <= max(ratio) else round(height * max(ratio))
    fallback_h = height if in_ratio >= min(ratio) else round(width / min(ratio))
    none_fit = ~any_fit
    crop_w = torch.where(none_fit, float(fallback_w), crop_w)
    crop_h = torch.where(none_fit, float(fallback_h), crop_h)
    top = torch.where(none_fit, float((height - fallback_h) // 2), top)
    left = torch.where(none_fit, float((width - fallback_w) // 2), left)
    return torch.stack((top, left, crop_h, crop_w), dim=1)


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int, mode: str):
    """images [B, C, H, W] float; boxes [B, 4] (top, left, h, w) in px; flip [B] bool -> [B, C, size, size].

    Output pixel centres map linearly onto the box (align_corners=False, edges clamped), as PIL's resize of a crop.
    """
    batch, _, height, width = images.shape
    top, left, crop_h, crop_w = boxes.unbind(1)
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64, device=images.device)
    theta[:, 0, 0] = torch.where(flip, -crop_w, crop_w) / width
    theta[:, 0, 2] = (2 * left + crop_w) / width - 1
    theta[:, 1, 1] = crop_h / height
    theta[:, 1, 2] = (2 * top + crop_h) / height - 1
    grid = F.affine_grid(theta.to(images.dtype), [batch, 1, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class EraseSettings:
    """timm's `RandomErasing` defaults (as `create_transform` builds it: max_count 1, no splits)."""

    probability: float
    mode: str = "pixel"
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3
    max_aspect: float = 1 / 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"reprob must be in [0, 1], got {self.probability!r}")
        if self.mode not in ERASE_MODES:
            raise ValueError(f"remode must be one of {', '.join(ERASE_MODES)}, got {self.mode!r}")


def random_erase_boxes(
    batch: int, height: int, width: int, settings: EraseSettings, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """[batch, 4] float (top, left, h, w) of timm's erasing box per image; all 0 where nothing is erased (the
    probability draw failed, or none of the tries fits)."""
    draws = torch.rand((5, batch, _ERASE_TRIES), generator=generator, device=device, dtype=torch.float64)
    area, aspect = (settings.min_area, settings.max_area), (settings.min_aspect, settings.max_aspect)
    # timm's erasing: the aspect sets the height, and a box must be strictly smaller than the image
    top, left, box_h, box_w, any_fit = _first_fitting_boxes(
        draws, height, width, area, aspect, aspect_is_width=False, strict=True
    )
    erase = any_fit & (draws[4, :, 0] < settings.probability)
    return torch.stack((top, left, box_h, box_w), dim=1) * erase[:, None]


def erase_boxes(images: torch.Tensor, boxes: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """images [B, C, H, W]; boxes [B, 4] (top, left, h, w) px -> images with each box replaced by mode's fill."""
    batch, channels, height, width = images.shape
    top, left, box_h, box_w = (v.view(batch, 1, 1, 1) for v in boxes.unbind(1))
    rows = torch.arange(height, device=images.device, dtype=boxes.dtype).view(1, 1, height, 1)
    cols = torch.arange(width, device=images.device, dtype=boxes.dtype).view(1, 1, 1, width)
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)  # [B, 1, H, W]
    if mode == "const":
        return images.masked_fill(inside, 0.0)
    noise_shape = (batch, channels, height, width) if mode == "pixel" else (batch, channels, 1, 1)
    noise = torch.randn(noise_shape, generator=generator, device=images.device, dtype=images.dtype)
    return torch.where(inside, noise, images)


class DeviceBatchLoader:
    """Iterates (images [B, 3, S, S] float32, labels [B] int64) on `device`, like the DataLoader of `create_loader`.

    `sampler` is a `ResumableSampler`, so `set_loader_epoch` and `sampler.batches_per_epoch()` work unchanged.
    """

    def __init__(
        self,
        dataset: FashionMNIST,
        batch_size: int,
        training: bool,
        img_size: int,
        device: torch.device | str,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        prefetch: bool | None = None,
    ):
        if not isinstance(dataset, FashionMNIST):
            raise ValueError(f"data_on_device needs the fashion_mnist dataset, got {type(dataset).__name__}")
        self.augment = augment or AugmentConfig()
        _check_supported(self.augment)
        self.dataset, self.batch_size, self.training, self.img_size = dataset, batch_size, training, img_size
        self.device, self.seed, self.rank, self.world = torch.device(device), seed, rank, world
        # batches built on a worker thread one step ahead (data/prefetch.py); default: on CUDA
        self.prefetch = self.device.type == "cuda" if prefetch is None else prefetch
        self.images = torch.from_numpy(dataset.images).to(self.device)  # [N, H, W] uint8
        self.labels = torch.from_numpy(dataset.labels).to(self.device)  # [N] int64
        mean, std = dataset_stats("fashion_mnist")
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.mode = _MODES[self.augment.interpolation]
        self.erase = EraseSettings(self.augment.reprob, self.augment.remode)
        self.sampler = ResumableSampler(
            len(self.labels), batch_size, shuffle=training, seed=seed, rank=rank, world=world
        )
        if training and self.sampler.batches_per_epoch() == 0:
            raise ValueError(
                f"batch_size {batch_size} x {world} process(es) exceeds the {len(self.labels)} training samples"
            )

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return prefetched(self._batches, self.device) if self.prefetch else self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(list(self.sampler), dtype=torch.int64, device=self.device)
        epoch, first = self.sampler.epoch, self.sampler.start_batch
        for number, batch in enumerate(order.split(self.batch_size)):
            images = self.images[batch].unsqueeze(1).float().div_(255)  # [B, 1, H, W] in [0, 1]
            if self.training and not self.augment.no_aug:
                global_batch = (first + number) * self.world + self.rank
                images = self._augment(images, _sample_seed(self.seed, epoch, global_batch))
            else:
                images = self._resize(images)
            yield images, self.labels[batch]

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.expand(-1, 3, -1, -1) - self.mean) / self.std  # grey repeated over three channels

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        antialias = self.mode != "nearest"  # PIL's resize averages over the source pixels when shrinking
        size = (self.img_size, self.img_size)
        return self._normalise(F.interpolate(images, size, mode=self.mode, antialias=antialias, align_corners=None))

    def _augment(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        batch, _, height, width = images.shape
        generator = torch.Generator(device=self.device).manual_seed(seed)
        scale, ratio = tuple(self.augment.scale or DEFAULT_SCALE), tuple(self.augment.ratio or DEFAULT_RATIO)
        boxes = random_crop_boxes(batch, height, width, scale, ratio, generator, self.device)
        flip = torch.rand(batch, generator=generator, device=self.device) < self.augment.hflip
        images = self._normalise(crop_resize_flip(images, boxes, flip, self.img_size, self.mode))
        if self.erase.probability > 0:
            erase = random_erase_boxes(batch, self.img_size, self.img_size, self.erase, generator, self.device)
            images = erase_boxes(images, erase, self.erase.mode, generator)
        return images.contiguous()


def create_device_loaders(
    train: FashionMNIST,
    val: FashionMNIST,
    batch_size: int,
    val_batch_size: int,
    img_size: int,
    device: torch.device | str,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
) -> tuple[DeviceBatchLoader, DeviceBatchLoader]:
    """(train, val) loaders holding both splits on `device` (the `--data-on-device` path of `sfmamba train`)."""
    train_loader = DeviceBatchLoader(train, batch_size, True, img_size, device, augment, seed, rank, world)
    val_loader = DeviceBatchLoader(val, val_batch_size, False, img_size, device, augment, seed, rank, world)
    return train_loader, val_loader


__all__ = [
    "DeviceBatchLoader",
    "EraseSettings",
    "create_device_loaders",
    "crop_resize_flip",
    "erase_boxes",
    "random_crop_boxes",
    "random_erase_boxes",
]
