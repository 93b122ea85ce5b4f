"""Evaluate a classifier over a loader: metrics, images per second, and a confusion-matrix plot."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from .metrics import ClassificationMetrics

_logger = logging.getLogger(__name__)


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    num_classes: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, object]:
    """top1/top5 (%), loss, per-class top-1 (%), count, img_per_sec (the whole loop) and the confusion matrix.

    Under DDP every rank evaluates its share and the counts are summed over ranks.
    """
    was_training = model.training
    model.eval()
    metrics = ClassificationMetrics(num_classes, device)
    start = time.perf_counter()
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp_dtype):
            logits = model(images)
        metrics.update(logits, target.to(device, non_blocking=True))
    result = finish_evaluation(metrics, model, was_training, device, start)
    result["confusion"] = metrics.confusion.cpu().tolist()
    return result


def finish_evaluation(metrics, model: nn.Module, was_training: bool, device: torch.device, start: float,
                      images: int | None = None) -> dict[str, object]:  # fmt: skip
    """End an evaluation loop begun at `start` (perf_counter): wait for the device, sum `metrics` over the ranks,
    put the model back in its mode; the metrics' result with `seconds` and `img_per_sec` (`images`, default the
    metrics' count over all ranks, per second)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    metrics.all_reduce()
    model.train(was_training)
    result = metrics.result()
    images = metrics.count if images is None else images
    result.update(img_per_sec=images / seconds if seconds > 0 else 0.0, seconds=seconds)
    return result


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str
) -> None:
    """A row-normalised confusion matrix (true class per row) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.files import atomic_write

    matrix = torch.tensor(confusion, dtype=torch.float64)
    rates = (matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1)).numpy()
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    f"{rates[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=120))
    plt.close(fig)
