"""Classification metrics accumulated batch by batch: top-k counts, summed loss and a confusion matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _add_counts(confusion: Tensor, truth: Tensor, pred: Tensor) -> None:
    """confusion[true, predicted] += the number of each (truth, pred) pair."""
    classes = confusion.shape[0]
    confusion += torch.bincount(truth * classes + pred, minlength=classes**2).view(classes, -1)


def _sum_over_ranks(*tensors: Tensor) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for tensor in tensors:
            dist.all_reduce(tensor)


class ClassificationMetrics:
    """Accumulates logits/targets; `result()`: top-1/top-5 (%), mean loss, per-class accuracy (%; None: no samples).

    The state is a few tensors on one device, so `all_reduce()` sums it over the processes of a DDP run.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", topk: tuple[int, ...] = (1, 5)):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes, self.topk = num_classes, topk
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)  # [true, pred]
        self.topk_correct = torch.zeros(len(topk), dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits [B, K], integer targets [B]."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [batch, {self.num_classes}], got {tuple(logits.shape)}")
        logits = logits.float()
        self.loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        k_max = min(max(self.topk), self.num_classes)
        top = logits.topk(k_max, dim=1).indices  # [B, k_max]
        hits = top.eq(target[:, None])
        for i, k in enumerate(self.topk):
            self.topk_correct[i] += hits[:, : min(k, k_max)].any(dim=1).sum()
        _add_counts(self.confusion, target, top[:, 0])

    def all_reduce(self) -> None:
        _sum_over_ranks(self.confusion, self.topk_correct, self.loss_sum)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def result(self) -> dict[str, object]:
        n = max(self.count, 1)
        totals = self.confusion.sum(dim=1).tolist()
        # a class without samples has no accuracy (None), not 0 %
        per_class = [int(c) / t * 100 if t else None for c, t in zip(self.confusion.diag().tolist(), totals)]
        out: dict[str, object] = {f"top{k}": float(c) / n * 100 for k, c in zip(self.topk, self.topk_correct.tolist())}
        out.update(loss=float(self.loss_sum) / n, count=self.count, per_class_top1=per_class)
        return out


class SegmentationMetrics:
    """Accumulates per-pixel predictions; `result()`: mIoU, pixel accuracy and mean class accuracy (%), per-class
    IoU (%; None for a class absent from both targets and predictions), as mmsegmentation reports them.

    Pixels whose target is `ignore_index` are left out. The state is one confusion matrix, so `all_reduce()` sums it
    over the processes of a DDP run.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = 255):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)  # [true, pred]

    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits [B, K, H, W], integer targets [B, H, W] (values in 0..K-1 or `ignore_index`)."""
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [batch, {self.num_classes}, H, W], got {tuple(logits.shape)}")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"target must be {tuple(logits.shape[:1] + logits.shape[2:])}, got {tuple(target.shape)}")
        keep = target != self.ignore_index
        truth, pred = target[keep].long(), logits.argmax(dim=1)[keep]
        if truth.numel() and (truth.min() < 0 or truth.max() >= self.num_classes):
            raise ValueError(f"target values must be in [0, {self.num_classes}) or {self.ignore_index}, "
                             f"got {int(truth.min())}..{int(truth.max())}")  # fmt: skip
        _add_counts(self.confusion, truth, pred)

    def all_reduce(self) -> None:
        _sum_over_ranks(self.confusion)

    def result(self) -> dict[str, object]:
        confusion = self.confusion.double()
        hits, truths, preds = confusion.diag(), confusion.sum(dim=1), confusion.sum(dim=0)
        union = truths + preds - hits
        iou = [float(h / u * 100) if u else None for h, u in zip(hits, union)]
        accuracy = [float(h / t * 100) if t else None for h, t in zip(hits, truths)]
        present = [v for v in iou if v is not None]
        present_acc = [v for v in accuracy if v is not None]
        return dict(
            mIoU=sum(present) / len(present) if present else 0.0,
            pixel_accuracy=float(hits.sum() / truths.sum().clamp_min(1) * 100),
            mean_accuracy=sum(present_acc) / len(present_acc) if present_acc else 0.0,
            per_class_iou=iou,
            count=int(truths.sum()),
        )
