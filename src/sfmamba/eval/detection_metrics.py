"""COCO detection metrics (box AP and mask AP) with pycocotools' COCOeval definitions, without pycocotools.

`DetectionMetrics` takes torchvision detectors' eval outputs and torchvision-style targets batch by batch and reports
COCOeval's twelve summary numbers. Each image is evaluated when it arrives (IoUs, greedy matching per IoU threshold
and area range, as `COCOeval.evaluate` does), so only a few small arrays per image and category are kept, never the
masks; `compute()` gathers them from every process of a DDP run and accumulates as `COCOeval.accumulate` and
`summarize` do:

    metrics = DetectionMetrics("segm")
    for images, targets in loader:
        metrics.update(model(images), targets)
    metrics.compute()  # {"AP": 37.1, "AP50": ..., "AR100": ..., "AR_large": ...}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..train.distributed import all_gather_objects  # (over a gloo group: no CUDA device needed under NCCL)

__all__ = ["DetectionMetrics"]

IOU_TYPES = ("bbox", "segm")
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval's Params.iouThrs
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCOeval's Params.recThrs
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}
_MASK_CHUNK = 1 << 24  # pixels x detections converted to float at once in the mask IoU

# a detection's state per (area range, IoU threshold): what COCOeval's dtMatches/dtIgnore amount to
_FALSE_POSITIVE, _TRUE_POSITIVE, _IGNORED = 0, 1, -1


def _box_iou(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """[D, G] IoU of xywh boxes (float64) as pycocotools' bbIou computes it: x + w for the right edge, and the
    detection's area as the denominator for a crowd gt."""
    dx, dy, dw, dh = (v[:, None] for v in det.T)
    gx, gy, gw, gh = (v[None, :] for v in gt.T)
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    det_area, gt_area = dw * dh, gw * gh
    union = np.where(crowd[None, :], det_area, det_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / union, 0.0)


def _mask_iou(det: Tensor, gt: Tensor, crowd: np.ndarray) -> np.ndarray:
    """[D, G] IoU of boolean masks [D, H, W] and [G, H, W] (on any device), the detection's area as the denominator
    for a crowd gt. The pixel counts are sums of 0/1 in float32, exact below 2**24 pixels per image."""
    det, gt = det.flatten(1), gt.flatten(1)
    gt_float = gt.float()
    chunk = max(1, _MASK_CHUNK // max(det.shape[1], 1))
    inter = torch.cat([d.float() @ gt_float.T for d in det.split(chunk)]) if len(det) else det.new_zeros(0, len(gt))
    inter = inter.double().cpu().numpy()
    det_area = det.sum(1).double().cpu().numpy()[:, None]
    gt_area = gt.sum(1).double().cpu().numpy()[None, :]
    union = np.where(crowd[None, :], det_area, det_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _match(ious: np.ndarray, gt_ignored: np.ndarray, crowd: np.ndarray, det_outside: np.ndarray) -> np.ndarray:
    """COCOeval.evaluateImg's greedy matching for one image and category, every area range and threshold at once.

    Args:
        ious: [D, G], detections in descending score order.
        gt_ignored: [A, G], crowd or area outside the range.
        crowd: [G]; a crowd gt can be matched any number of times.
        det_outside: [A, D], the detection's area outside the range.

    Returns:
        [A, T, D] int8: `_TRUE_POSITIVE`, `_FALSE_POSITIVE` or `_IGNORED` (matched to an ignored gt, or unmatched and
        outside the area range).
    """
    (A, G), D, T = gt_ignored.shape, len(ious), len(IOU_THRESHOLDS)
    state = np.full((A, T, D), _FALSE_POSITIVE, dtype=np.int8)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]  # [1, T, 1]
    taken = np.zeros((A, T, G), dtype=bool)
    ignored = gt_ignored[:, None, :]  # [A, 1, G]
    a_all, t_all = np.indices((A, T))
    # COCOeval walks the gts, non-ignored first (in their order), then the ignored ones, keeping the one whose IoU is
    # >= the best so far (the threshold to start with) and not looking at ignored gts once a non-ignored one is taken.
    # So the match is the *last* best-IoU candidate among the free non-ignored gts, else among the free ignored ones.
    for d in np.flatnonzero(ious.max(1, initial=-1.0) >= thresholds.min()):
        iou = ious[d]
        free = (iou >= thresholds) & (~taken | crowd)  # [A, T, G]
        regular = free & ~ignored
        candidates = np.where(regular.any(-1, keepdims=True), regular, free & ignored)
        hit = candidates.any(-1)  # [A, T]
        best = G - 1 - np.argmax(np.where(candidates, iou, -1.0)[..., ::-1], axis=-1)  # the last argmax, [A, T]
        a, t, g = a_all[hit], t_all[hit], best[hit]
        taken[a, t, g] = True
        state[a, t, d] = np.where(gt_ignored[a, g], _IGNORED, _TRUE_POSITIVE)
    outside = (state == _FALSE_POSITIVE) & det_outside[:, None, :]
    state[outside] = _IGNORED
    return state


class DetectionMetrics:
    """COCO box or mask AP/AR of torchvision detectors' outputs, as pycocotools' COCOeval computes them.

    `update(predictions, targets)` takes one dict per image. Predictions are what torchvision's detectors return in
    eval mode: "labels" [K], "scores" [K], "boxes" [K, 4] (xyxy; for "bbox") and "masks" [K, 1, H, W] or [K, H, W]
    (for "segm"; probabilities, kept where > 0.5, or booleans). Targets: "labels" [K], "boxes" [K, 4] (xyxy; for
    "bbox"), "masks" [K, H, W] (for "segm"; uint8 or bool, the predictions' size), optional "iscrowd" [K] (default 0)
    and "area" [K] (the area that picks the size range, COCO's annotation "area"; default: the box's area for "bbox",
    the mask's pixel count for "segm"). Images are numbered by arrival, process by process; that order only breaks
    ties between equal scores of different images (COCOeval: the image id).

    COCOeval's definitions: IoU thresholds .50:.05:.95; 101 recall points; areas all, small [0, 32**2], medium
    [32**2, 96**2] and large [96**2, 1e10], both ends included; per image and category the `max_dets[-1]`
    best-scored detections; crowd and out-of-range gts ignored; crowd IoU over the detection's area; greedy matching
    in score order, a detection taking the free gt of best IoU (the last of equal ones), non-ignored gts first;
    unmatched detections outside the area range ignored; the precision envelope sampled at the recall points.
    Categories: those of `class_ids` (the others' boxes are dropped), else every label met. A category is averaged
    only where it has a non-crowd gt in the area range.

    `compute()` returns percentages: "AP" (IoU .50:.95), "AP50", "AP75", "AP_small", "AP_medium", "AP_large" at
    `max_dets[-1]` detections, "AR{m}" for each m of `max_dets` (AR1, AR10, AR100 by default) and
    "AR_small/medium/large" at `max_dets[-1]`. A number is -1 where COCOeval's summarize gives -1: no category has a
    non-crowd gt in that area range (e.g. "AP_large" on images with only small objects, or everything before the
    first update). With other `max_dets` than (1, 10, 100) the numbers follow them; COCOeval's "AP" stays at 100
    detections (-1 where 100 is not among them) and its other numbers take the third.

    Under torch.distributed each rank updates with its share of the images and `compute()` gathers every rank's
    per-image results (`all_gather_object`, so with NCCL the current CUDA device must be set) on all ranks.
    """

    def __init__(self, iou_type: str = "bbox", max_dets: Sequence[int] = (1, 10, 100),
                 class_ids: Sequence[int] | None = None):  # fmt: skip
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        max_dets = sorted(int(m) for m in max_dets)
        if not max_dets or max_dets[0] < 1 or len(set(max_dets)) != len(max_dets):
            raise ValueError(f"max_dets must be distinct positive integers, got {max_dets}")
        self.iou_type, self.max_dets = iou_type, tuple(max_dets)
        self.class_ids = None if class_ids is None else frozenset(int(c) for c in class_ids)
        self.area_ranges = np.array(list(AREA_RANGES.values()))  # [A, 2]
        self.reset()

    def reset(self) -> None:
        # one (category, scores [D] descending, state [A, T, D] int8, non-ignored gt count [A]) per image and category
        self.records: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.num_images = 0

    def update(self, predictions: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        """One prediction dict and one target dict per image (see the class docstring)."""
        if not isinstance(predictions, (list, tuple)) or not isinstance(targets, (list, tuple)):
            raise ValueError("predictions and targets must be lists of dicts, one per image, got "
                             f"{type(predictions).__name__} and {type(targets).__name__}")  # fmt: skip
        if len(predictions) != len(targets):
            raise ValueError(f"predictions and targets must have one dict per image each, got {len(predictions)} "
                             f"predictions and {len(targets)} targets")  # fmt: skip
        images = []  # every image checked before any is counted
        for i, (pred, target) in enumerate(zip(predictions, targets)):
            pred, target = self._read(pred, f"predictions[{i}]", True), self._read(target, f"targets[{i}]", False)
            if self.iou_type == "segm" and len(pred["labels"]) and len(target["labels"]):
                size, expected = tuple(pred["masks"].shape[1:]), tuple(target["masks"].shape[1:])
                if size != expected:
                    raise ValueError(f"predictions[{i}]['masks'] must have the size of targets[{i}]['masks'], "
                                     f"{expected}, got {size}")  # fmt: skip
            images.append((pred, target))
        for pred, target in images:
            self._evaluate_image(pred, target)
        self.num_images += len(targets)

    def _read(self, item: dict[str, Tensor], name: str, is_prediction: bool) -> dict[str, object]:
        """Checked host arrays: labels [K] int64; scores [K]; boxes [K, 4] xywh float64 (bbox); masks [K, H, W] bool,
        left on their device (segm); iscrowd [K] bool and area [K] float64 (targets)."""
        if not isinstance(item, dict):
            raise ValueError(f"{name} must be a dict, got {type(item).__name__}")
        required = ("labels", "scores") if is_prediction else ("labels",)
        required += ("boxes",) if self.iou_type == "bbox" else ("masks",)
        for key in required:
            if key not in item:
                raise ValueError(f"{name}[{key!r}] is required for iou_type={self.iou_type!r}")
        labels = torch.as_tensor(item["labels"]).detach().cpu().long().numpy()
        if labels.ndim != 1:
            raise ValueError(f"{name}['labels'] must be [K], got {tuple(labels.shape)}")
        K = len(labels)
        out: dict[str, object] = {"labels": labels}
        if is_prediction:
            out["scores"] = self._vector(item["scores"], f"{name}['scores']", K)
        if self.iou_type == "bbox":
            boxes = torch.as_tensor(item["boxes"]).detach().cpu().double().numpy()
            if boxes.shape != (K, 4):
                raise ValueError(f"{name}['boxes'] must be [K, 4] with K={K} (the labels'), got {tuple(boxes.shape)}")
            out["boxes"] = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # COCO's xywh
        else:
            masks = torch.as_tensor(item["masks"]).detach()
            if is_prediction and masks.ndim == 4 and masks.shape[1] == 1:
                masks = masks[:, 0]
            if masks.ndim != 3 or len(masks) != K:
                shape = "[K, 1, H, W] or [K, H, W]" if is_prediction else "[K, H, W]"
                raise ValueError(f"{name}['masks'] must be {shape} with K={K} (the labels'), got {tuple(masks.shape)}")
            out["masks"] = masks if masks.dtype == torch.bool else (masks > 0.5 if is_prediction else masks != 0)
        if not is_prediction:
            crowd = item.get("iscrowd")
            out["iscrowd"] = np.zeros(K, bool) if crowd is None else self._vector(crowd, f"{name}['iscrowd']", K) != 0
            area = item.get("area")
            if area is None:
                area = out["boxes"][:, 2] * out["boxes"][:, 3] if self.iou_type == "bbox" else out["masks"].sum((1, 2))
            out["area"] = self._vector(area, f"{name}['area']", K)
        return out

    @staticmethod
    def _vector(values: Tensor | np.ndarray, name: str, length: int) -> np.ndarray:
        values = torch.as_tensor(values).detach().cpu().double().numpy()
        if values.shape != (length,):
            raise ValueError(f"{name} must be [K] with K={length} (the labels'), got {tuple(values.shape)}")
        return values

    def _evaluate_image(self, pred: dict[str, object], target: dict[str, object]) -> None:
        lo, hi = self.area_ranges[:, :1], self.area_ranges[:, 1:]  # [A, 1]
        for category in np.unique(np.concatenate([pred["labels"], target["labels"]])).tolist():
            if self.class_ids is not None and category not in self.class_ids:
                continue
            gts = np.flatnonzero(target["labels"] == category)
            dets = np.flatnonzero(pred["labels"] == category)
            dets = dets[np.argsort(-pred["scores"][dets], kind="mergesort")][: self.max_dets[-1]]
            crowd, gt_area = target["iscrowd"][gts], target["area"][gts]
            if self.iou_type == "bbox":
                det_boxes = pred["boxes"][dets]
                ious = _box_iou(det_boxes, target["boxes"][gts], crowd)
                det_area = det_boxes[:, 2] * det_boxes[:, 3]
            else:
                det_masks = pred["masks"][torch.as_tensor(dets, device=pred["masks"].device)]
                ious = _mask_iou(det_masks, target["masks"][torch.as_tensor(gts, device=target["masks"].device)], crowd)
                det_area = det_masks.sum((1, 2)).double().cpu().numpy()
            gt_ignored = crowd[None, :] | (gt_area[None, :] < lo) | (gt_area[None, :] > hi)  # [A, G]
            det_outside = (det_area[None, :] < lo) | (det_area[None, :] > hi)  # [A, D]
            state = _match(ious, gt_ignored, crowd, det_outside)
            self.records.append((category, pred["scores"][dets], state, (~gt_ignored).sum(1)))

    def _accumulate(self, records: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
        """COCOeval.accumulate: precision [T, R, K, A, M] and recall [T, K, A, M], -1 where a category has no
        non-crowd gt in the area range."""
        by_category = defaultdict(list)
        for record in records:
            by_category[record[0]].append(record[1:])
        T, R, A, M = len(IOU_THRESHOLDS), len(RECALL_POINTS), len(self.area_ranges), len(self.max_dets)
        precision = -np.ones((T, R, len(by_category), A, M))
        recall = -np.ones((T, len(by_category), A, M))
        for k, category in enumerate(sorted(by_category)):
            scores, states, gt_counts = zip(*by_category[category])
            rank = np.concatenate([np.arange(len(s)) for s in scores])  # position within its image, for max_dets
            scores, states = np.concatenate(scores), np.concatenate(states, axis=2)  # [N], [A, T, N]
            gt_counts = np.sum(gt_counts, axis=0)  # [A]
            for m, max_det in enumerate(self.max_dets):
                keep = np.flatnonzero(rank < max_det)
                order = keep[np.argsort(-scores[keep], kind="mergesort")]
                tp = np.cumsum(states[:, :, order] == _TRUE_POSITIVE, axis=2).astype(float)  # [A, T, N]
                fp = np.cumsum(states[:, :, order] == _FALSE_POSITIVE, axis=2).astype(float)
                for a in np.flatnonzero(gt_counts):
                    precision[:, :, k, a, m], recall[:, k, a, m] = 0.0, 0.0  # defined, and 0 without detections
                    if not len(order):
                        continue
                    rc, pr = tp[a] / gt_counts[a], tp[a] / (fp[a] + tp[a] + np.spacing(1))  # [T, N]
                    recall[:, k, a, m] = rc[:, -1]
                    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the envelope from the right
                    for t in range(T):
                        at = np.searchsorted(rc[t], RECALL_POINTS, side="left")  # recall points past the end: 0
                        precision[t, at < len(order), k, a, m] = pr[t, at[at < len(order)]]
        return precision, recall

    def compute(self) -> dict[str, float]:
        """COCOeval's summary numbers in percent (-1 where undefined), over every rank's images."""
        records = [record for rank_records in all_gather_objects(self.records) for record in rank_records]
        precision, recall = self._accumulate(records)
        areas, last = list(AREA_RANGES), len(self.max_dets) - 1

        def mean(values: np.ndarray) -> float:
            values = values[values > -1]
            return float(values.mean() * 100) if values.size else -1.0

        out = {"AP": mean(precision[..., 0, last]), "AP50": mean(precision[0, ..., 0, last]),
               "AP75": mean(precision[5, ..., 0, last])}  # fmt: skip
        out.update({f"AP_{area}": mean(precision[..., a, last]) for a, area in enumerate(areas) if a})
        out.update({f"AR{m}": mean(recall[..., 0, i]) for i, m in enumerate(self.max_dets)})
        out.update({f"AR_{area}": mean(recall[..., a, last]) for a, area in enumerate(areas) if a})
        return out
