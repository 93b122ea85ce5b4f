"""Segmentation inference over a loader: whole images or mmsegmentation's sliding windows, scored by mIoU."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..eval.evaluate import autocast_context, finish_evaluation
from ..eval.metrics import SegmentationMetrics

__all__ = ["evaluate_segmentation", "slide_inference"]


def _logits(output: Tensor | dict[str, Tensor]) -> Tensor:
    return output["out"] if isinstance(output, dict) else output


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of them, got {value!r}")
    return pair


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets every `stride` pixels, the last one flush with the border (one window if it covers all)."""
    if size <= window:
        return [0]
    return sorted({*range(0, size - window, stride), size - window})


@torch.no_grad()
def slide_inference(model: nn.Module, images: Tensor, num_classes: int, crop: int | tuple[int, int],
                    stride: int | tuple[int, int]) -> Tensor:  # fmt: skip
    """[B, 3, H, W] -> [B, num_classes, H, W] logits from `crop`-sized windows every `stride` pixels (the last one
    flush with each border), averaged where they overlap, as mmsegmentation's "slide" mode (ADE20K: crop 512, stride
    341). A model returning a dict (UperNet) is read at "out"."""
    (crop_h, crop_w), (stride_h, stride_w) = _pair(crop, "crop"), _pair(stride, "stride")
    if stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"stride {stride!r} must be <= crop {crop!r} on each side, or some pixels get no window")
    batch, _, height, width = images.shape
    logits = images.new_zeros(batch, num_classes, height, width, dtype=torch.float32)
    counts = images.new_zeros(1, 1, height, width, dtype=torch.float32)
    for top in _starts(height, crop_h, stride_h):
        for left in _starts(width, crop_w, stride_w):
            window = (slice(None), slice(None), slice(top, top + crop_h), slice(left, left + crop_w))
            out = _logits(model(images[window])).float()
            if out.shape[1] != num_classes:
                raise ValueError(f"num_classes is {num_classes} but the model gives {out.shape[1]} class logits")
            logits[window] += out
            counts[window] += 1
    return logits / counts


@torch.inference_mode()
def evaluate_segmentation(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    num_classes: int,
    device: torch.device,
    crop: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    amp_dtype: torch.dtype | None = None,
    ignore_index: int = 255,
) -> dict[str, object]:
    """mIoU, pixel accuracy, mean class accuracy, per-class IoU (%; `SegmentationMetrics`), count, img_per_sec over a
    loader of (images [B, 3, H, W], labels [B, H', W']): whole images, or sliding windows with `crop` and `stride`;
    logits are resized (bilinear) to the labels' size where the images were rescaled (`SegmentationEvalTransform`).
    Under DDP every rank scores its share and the counts are summed over ranks."""
    if (crop is None) != (stride is None):
        raise ValueError(f"crop and stride go together (sliding windows) or not at all, got crop={crop!r}, "
                         f"stride={stride!r}")  # fmt: skip
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes, device, ignore_index)
    images_seen, start = 0, time.perf_counter()
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        with autocast_context(device, amp_dtype):
            if crop is None:
                logits = _logits(model(images))
            else:
                logits = slide_inference(model, images, num_classes, crop, stride)
        labels = labels.to(device, non_blocking=True)
        if logits.shape[-2:] != labels.shape[-2:]:  # images rescaled for the model, labels at the original size
            logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        metrics.update(logits, labels)
        images_seen += len(images)
    return finish_evaluation(metrics, model, was_training, device, start, images_seen)
