"""COCO detection metrics: hand-computed cases (ranking, IoU thresholds, crowds, area ranges, max_dets, masks), bad
inputs, pycocotools' COCOeval on random datasets (box and mask, all 12 numbers), and the gather over 2 processes."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from sfmamba.eval import DetectionMetrics

KEYS = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
        "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]  # fmt: skip


def _target(boxes: list[list[float]], labels: list[int], **extra) -> dict[str, torch.Tensor]:
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32).view(-1, 4), labels=torch.tensor(labels), **extra)


def _pred(boxes: list[list[float]], labels: list[int], scores: list[float], **extra) -> dict[str, torch.Tensor]:
    return dict(_target(boxes, labels), scores=torch.tensor(scores), **extra)


def _evaluate(predictions, targets, **kwargs) -> dict[str, float]:
    metrics = DetectionMetrics(**kwargs)
    metrics.update(predictions, targets)
    return metrics.compute()


def test_perfect_detections_give_100_everywhere():
    small, medium, large = [0, 0, 20, 20], [50, 50, 100, 100], [100, 0, 250, 150]
    targets = [_target([small, medium], [1, 2]), _target([large], [1])]
    predictions = [_pred([medium, small], [2, 1], [0.3, 0.9]), _pred([large], [1], [0.5])]
    result = _evaluate(predictions, targets)
    assert list(result) == KEYS
    assert result == pytest.approx(dict.fromkeys(KEYS, 100.0))  # AR1 too: one object per image and category


def test_a_false_positive_ranked_above_the_true_positives():
    gt_a, gt_b, miss = [0, 0, 40, 40], [100, 100, 140, 140], [200, 200, 240, 240]
    # one gt, FP then TP: precision [0, 1/2] -> envelope 1/2 at every recall point
    result = _evaluate([_pred([miss, gt_a], [1, 1], [0.9, 0.8])], [_target([gt_a], [1])])
    assert result["AP"] == pytest.approx(50.0) and result["AR100"] == pytest.approx(100.0)
    # two gts, TP FP TP: recall [.5, .5, 1], precision [1, 1/2, 2/3]; envelope 1 at the 51 recall points <= .5,
    # 2/3 at the 50 above
    result = _evaluate([_pred([gt_a, miss, gt_b], [1, 1, 1], [0.9, 0.8, 0.7])], [_target([gt_a, gt_b], [1, 1])])
    assert result["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101 * 100)
    assert result["AR1"] == pytest.approx(50.0) and result["AR10"] == pytest.approx(100.0)


def test_iou_thresholds_and_the_best_iou_match():
    gt = [0, 0, 10, 10]
    # IoU 0.62: a match at thresholds .50, .55, .60 of ten
    result = _evaluate([_pred([[0, 0, 10, 6.2]], [1], [0.9])], [_target([gt], [1])])
    assert result["AP"] == pytest.approx(30.0) and result["AP50"] == pytest.approx(100.0) and result["AP75"] == 0.0
    assert result["AR100"] == pytest.approx(30.0)
    # the best-IoU gt, not the first above the threshold: the first detection (IoU .52 with gt A, .77 with gt B) takes
    # B up to .75 and leaves A to the second (IoU 1 with A, .4 with B); from .80 on it matches nothing and is a false
    # positive ranked first (recall [0, .5], precision [0, 1/2]: 1/2 at the 51 recall points <= .5)
    gts, dets = [[0, 0, 10, 10], [0, 0, 10, 4]], [[0, 0, 10, 5.2], [0, 0, 10, 10]]
    result = _evaluate([_pred(dets, [1, 1], [0.9, 0.8])], [_target(gts, [1, 1])])
    assert result["AP50"] == pytest.approx(100.0) and result["AP75"] == pytest.approx(100.0)
    assert result["AP"] == pytest.approx((6 * 100 + 4 * 51 * 0.5 / 101 * 100) / 10)
    assert result["AR100"] == pytest.approx((6 * 100 + 4 * 50) / 10)
    # an IoU equal to the threshold matches (IoU exactly .5)
    result = _evaluate([_pred([[0, 0, 10, 5]], [1], [0.9])], [_target([[0, 0, 10, 10]], [1])])
    assert result["AP50"] == pytest.approx(100.0) and result["AP"] == pytest.approx(10.0)


def test_an_iou_tie_between_gts_goes_to_the_later_gt():
    """COCOeval keeps the last of equal IoUs: the first detection (IoU 90 / 110 with both gts) takes the second gt, so
    the second detection (the second gt's box) falls back on the first gt, IoU 80 / 120 = .667."""
    gts, dets = [[0, 0, 10, 10], [2, 0, 12, 10]], [[1, 0, 11, 10], [2, 0, 12, 10]]
    result = _evaluate([_pred(dets, [1, 1], [0.9, 0.8])], [_target(gts, [1, 1])])
    # .50-.65: TP TP; .70-.80: TP FP (1 up to recall .5); .85-.95: FP TP (1/2 up to recall .5)
    assert result["AP"] == pytest.approx((4 * 100 + 3 * 51 / 101 * 100 + 3 * 25.5 / 101 * 100) / 10)


def test_crowd_gts_absorb_any_number_of_detections_and_are_not_counted():
    crowd, person = [0, 0, 100, 100], [200, 200, 220, 220]
    inside = [[10, 10, 20, 20], [30, 30, 40, 40], [95, 95, 105, 105]]  # IoU over the detection's area: 1, 1, 1/4
    preds = [_pred([*inside, person], [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.6])]
    targets = [_target([crowd, person], [1, 1], iscrowd=torch.tensor([1, 0]))]
    # the first two are ignored (crowd matches), the third (1/4) is a false positive above the true positive
    assert _evaluate(preds, targets)["AP"] == pytest.approx(50.0)
    # not a crowd: a 100x100 gt matched by nobody (IoU <= .01), three false positives above the one true positive:
    # recall [0, 0, 0, .5], precision [0, 0, 0, 1/4] -> 1/4 at the 51 recall points <= .5
    targets[0]["iscrowd"] = torch.tensor([False, False])
    result = _evaluate(preds, targets)
    assert result["AP"] == pytest.approx(51 * 0.25 / 101 * 100) and result["AR100"] == pytest.approx(50.0)
    # a category whose only gt is a crowd is undefined
    crowd_only = _evaluate([_pred([crowd], [1], [0.9])], [_target([crowd], [1], iscrowd=torch.tensor([1]))])
    assert all(value == -1.0 for value in crowd_only.values())


def test_area_ranges_use_the_gt_area_field_and_ignore_out_of_range_misses():
    small, large, medium_miss = [0, 0, 20, 20], [100, 100, 200, 200], [300, 300, 350, 350]
    preds = [_pred([medium_miss, small, large], [1, 1, 1], [0.9, 0.8, 0.7])]
    result = _evaluate(preds, [_target([small, large], [1, 1])])
    # all: FP TP TP -> recall [0, .5, 1], precision [0, 1/2, 2/3], envelope 2/3 everywhere; the medium-sized miss is
    # ignored in the small and large ranges (unmatched, outside), and so is the other range's match
    assert result["AP"] == pytest.approx(200 / 3)
    assert result["AP_small"] == pytest.approx(100.0) and result["AP_large"] == pytest.approx(100.0)
    assert result["AP_medium"] == -1.0 and result["AR_medium"] == -1.0  # no gt of medium size: undefined
    # the ranges include both ends: a 32x32 object is small and medium
    result = _evaluate([_pred([[0, 0, 32, 32]], [1], [0.9])], [_target([[0, 0, 32, 32]], [1])])
    assert result["AP_small"] == pytest.approx(100.0) and result["AP_medium"] == pytest.approx(100.0)
    assert result["AP_large"] == -1.0
    # the gt's "area" (COCO's annotation area, e.g. the polygon's) picks the range, not its box
    result = _evaluate(preds, [_target([small, large], [1, 1], area=torch.tensor([2000.0, 20000.0]))])
    assert result["AP_small"] == -1.0 and result["AR_medium"] == pytest.approx(100.0)
    # the medium-sized FP is now in range and ranked first: recall [0, 1], precision [0, 1/2] -> 1/2
    assert result["AP_medium"] == pytest.approx(50.0)


def test_max_dets_cut_per_image_and_category():
    gts = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    preds = [_pred([gts[2], gts[1], gts[0], [0, 0, 10, 10]], [1, 1, 1, 2], [0.7, 0.8, 0.9, 0.95])]
    result = _evaluate(preds, [_target(gts, [1, 1, 1])])
    # the label-2 box does not take category 1's only slot at max_dets 1: recall 1/3
    assert result["AR1"] == pytest.approx(100 / 3) and result["AR10"] == pytest.approx(100.0)
    result = _evaluate(preds, [_target(gts, [1, 1, 1])], max_dets=(2, 1))
    assert set(result) == set(KEYS) - {"AR10", "AR100"} | {"AR2"}
    # at 2 detections: recall 2/3 with precision 1 -> 1 at the 67 recall points <= 2/3
    assert result["AR2"] == pytest.approx(200 / 3) and result["AP"] == pytest.approx(67 / 101 * 100)


def test_mask_iou_thresholded_probabilities_and_crowds():
    gt = torch.zeros(2, 8, 8, dtype=torch.uint8)
    gt[0, :4, :4] = 1  # 16 pixels
    gt[1, 6:, :2] = 1  # 4 pixels
    prob = torch.zeros(2, 1, 8, 8)
    prob[0, 0, :4, :3] = 0.7  # 12 pixels inside the first gt
    prob[0, 0, 4, 0] = 0.9  # one outside
    prob[0, 0, 5:, 5:] = 0.5  # not above 0.5: not in the mask
    prob[1, 0] = gt[1] * 0.8  # the second gt exactly
    target = dict(labels=torch.tensor([1, 1]), masks=gt)
    pred = dict(labels=torch.tensor([1, 1]), scores=torch.tensor([0.9, 0.5]), masks=prob)
    result = _evaluate([pred], [target], iou_type="segm")
    # IoU 12 / 17 = .706: both true positives at .50 to .70; from .75 on the first is a false positive ranked first
    # (recall [0, .5], precision [0, 1/2]: 1/2 at the 51 recall points <= .5)
    expected = (5 * 100 + 5 * 51 * 0.5 / 101 * 100) / 10
    assert result["AP"] == pytest.approx(expected) and result["AP_small"] == pytest.approx(expected)
    assert result["AP_medium"] == -1.0
    # a crowd's IoU is over the detection's area, 12 / 13 = .923: the first detection is ignored at .50 to .90 and
    # is a false positive ranked first at .95 (recall [0, 1], precision [0, 1/2]: 1/2 everywhere)
    result = _evaluate([pred], [dict(target, iscrowd=torch.tensor([1, 0]))], iou_type="segm")
    assert result["AP"] == pytest.approx((9 * 100 + 50) / 10)
    # boxes play no part in segm; [K, H, W] predicted masks (booleans) are taken as they are
    result = _evaluate([dict(pred, masks=prob[:, 0] > 0.5, boxes=torch.zeros(2, 4))], [target], iou_type="segm")
    assert result["AP"] == pytest.approx(expected)


def test_class_ids_select_the_categories_and_empty_input_is_undefined():
    box = [0, 0, 50, 50]
    preds = [_pred([box, box], [1, 3], [0.9, 0.8])]
    targets = [_target([box, box], [1, 2])]
    # category 2 is missed (AP 0), 3 has no gt (left out): the mean over 1 and 2
    assert _evaluate(preds, targets)["AP"] == pytest.approx(50.0)
    assert _evaluate(preds, targets, class_ids=[1, 3, 4])["AP"] == pytest.approx(100.0)
    assert all(value == -1.0 for value in DetectionMetrics().compute().values())
    metrics = DetectionMetrics()
    metrics.update(preds, targets)
    metrics.reset()
    assert metrics.compute()["AP"] == -1.0 and metrics.num_images == 0


def test_bad_inputs_are_named():
    good_pred, good_target = _pred([[0, 0, 1, 1]], [1], [0.5]), _target([[0, 0, 1, 1]], [1])
    with pytest.raises(ValueError, match=r"iou_type must be 'bbox' or 'segm', got 'keypoints'"):
        DetectionMetrics("keypoints")
    with pytest.raises(ValueError, match=r"max_dets must be distinct positive integers, got \[0, 10\]"):
        DetectionMetrics(max_dets=(10, 0))
    metrics = DetectionMetrics()
    with pytest.raises(ValueError, match=r"one dict per image each, got 1 predictions and 2 targets"):
        metrics.update([good_pred], [good_target, good_target])
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] must be \[K, 4\] with K=1 .*got \(1, 5\)"):
        metrics.update([good_pred], [dict(good_target, boxes=torch.zeros(1, 5))])
    with pytest.raises(ValueError, match=r"predictions\[0\]\['scores'\] is required for iou_type='bbox'"):
        metrics.update([{k: v for k, v in good_pred.items() if k != "scores"}], [good_target])
    with pytest.raises(ValueError, match=r"targets\[0\]\['iscrowd'\] must be \[K\] with K=1"):
        metrics.update([good_pred], [dict(good_target, iscrowd=torch.zeros(2))])
    segm = DetectionMetrics("segm")
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\] is required for iou_type='segm'"):
        segm.update([dict(good_pred, masks=torch.zeros(1, 1, 4, 4))], [good_target])
    with pytest.raises(ValueError, match=r"predictions\[0\]\['masks'\] must have the size of targets\[0\]\['masks'\]"):
        segm.update([dict(good_pred, masks=torch.zeros(1, 1, 4, 4))], [dict(good_target, masks=torch.ones(1, 5, 5))])
    assert metrics.num_images == 0 and segm.num_images == 0


# --- random datasets, against pycocotools' COCOeval ---------------------------------------------------------------


def _ellipses(h: int, w: int, boxes: np.ndarray) -> np.ndarray:
    """[K, h, w] bool: the ellipses inscribed in the xyxy boxes [K, 4]."""
    center, radius = (boxes[:, :2] + boxes[:, 2:]) / 2, np.maximum((boxes[:, 2:] - boxes[:, :2]) / 2, 0.5)
    y, x = np.mgrid[:h, :w] + 0.5
    dx = (x[None] - center[:, 0, None, None]) / radius[:, 0, None, None]
    dy = (y[None] - center[:, 1, None, None]) / radius[:, 1, None, None]
    return dx**2 + dy**2 <= 1


def _random_dataset(seed: int, iou_type: str, images: int = 24, ties: bool = False, small_images: bool = False,
                    integer_boxes: bool = False) -> list[tuple[dict, dict]]:  # fmt: skip
    """Jittered copies of the gts (some relabelled, a category 7 that has no gt), random misses, crowds, objects
    from 4 to 150 px, images without gts or without detections, one image with 130 detections of a category.
    `ties`: scores in steps of 1/8; `small_images`: 48x64 images only (no large gt); `integer_boxes`: box corners
    on whole pixels (exact IoUs and areas, as integer annotations give)."""
    rng = np.random.default_rng(seed)
    data = []
    for i in range(images):
        h, w = [(48, 64), (160, 200), (240, 220)][0 if small_images else i % 3]
        n_gt = 0 if i % 7 == 3 else int(rng.integers(1, 7))
        side = np.exp(rng.uniform(np.log(4), np.log(150), n_gt))
        size = np.minimum(side[:, None] * rng.uniform(0.6, 1.4, (n_gt, 2)), [w - 1, h - 1])
        corner = rng.uniform(0, 1, (n_gt, 2)) * ([w, h] - size)
        gt_boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
        if integer_boxes:
            gt_boxes = gt_boxes.round()
        gt_labels = rng.choice([1, 2, 5], n_gt, p=[0.5, 0.4, 0.1])
        target = dict(boxes=torch.from_numpy(gt_boxes), labels=torch.from_numpy(gt_labels),
                      iscrowd=torch.from_numpy(rng.random(n_gt) < 0.12))  # fmt: skip
        if i % 4 == 1:  # COCO's annotation area differs from the box's (e.g. a polygon's)
            target["area"] = torch.from_numpy(size.prod(1) * rng.uniform(0.3, 1.0, n_gt))
        copies = rng.integers(0, 3, n_gt) if i % 5 != 4 else np.zeros(n_gt, int)
        source = np.repeat(np.arange(n_gt), copies)
        jitter = rng.normal(0, 0.06, (len(source), 4)) * np.tile(size[source], 2)
        n_miss = int(rng.integers(0, 4)) if i % 5 != 4 else 0
        if i == 0:
            n_miss = 130
        miss_corner = rng.uniform(0, 1, (n_miss, 2)) * [w, h]
        miss = np.concatenate([miss_corner, miss_corner + rng.uniform(3, 80, (n_miss, 2))], axis=1)
        boxes = np.concatenate([gt_boxes[source] + jitter, miss]).astype(np.float32)
        boxes = boxes.round() if integer_boxes else boxes
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + (1 if integer_boxes else 0.5))
        labels = np.concatenate([gt_labels[source], rng.choice([1, 2, 5, 7], n_miss) if i else np.ones(n_miss, int)])
        relabel = rng.random(len(labels)) < 0.1
        labels[relabel] = rng.choice([1, 2, 5, 7], relabel.sum())
        scores = (rng.random(len(labels)) * 0.7 + 0.3 * (np.arange(len(labels)) < len(source))).astype(np.float32)
        if ties:
            scores = np.round(scores * 8) / 8
        pred = dict(boxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels), scores=torch.from_numpy(scores))
        if iou_type == "segm":
            target["masks"] = torch.from_numpy(_ellipses(h, w, gt_boxes).astype(np.uint8))
            shapes = _ellipses(h, w, boxes)[:, None]
            pred["masks"] = torch.from_numpy(shapes * rng.uniform(0.44, 1.0, shapes.shape)).float()
        data.append((pred, target))
    return data


def _cocoeval(data: list[tuple[dict, dict]], iou_type: str, class_ids: list[int] | None) -> list[float]:
    """COCOeval's 12 stats (in %, -1 kept) on the same data, boxes turned to xywh in float64 as ours are."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box: torch.Tensor) -> list[float]:
        x1, y1, x2, y2 = box.double().tolist()
        return [x1, y1, x2 - x1, y2 - y1]

    def rle(mask: torch.Tensor) -> dict:
        return mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))

    images, annotations, results = [], [], []
    for image_id, (pred, target) in enumerate(data, 1):
        h, w = target["masks"].shape[1:] if "masks" in target else (256, 256)
        images.append(dict(id=image_id, height=int(h), width=int(w)))
        for k, label in enumerate(target["labels"].tolist()):
            box = xywh(target["boxes"][k])
            if "area" in target:
                area = float(target["area"][k])
            else:
                area = float(target["masks"][k].sum()) if iou_type == "segm" else box[2] * box[3]
            ann = dict(id=len(annotations) + 1, image_id=image_id, category_id=label, bbox=box, area=area,
                       iscrowd=int(target["iscrowd"][k]))  # fmt: skip
            if iou_type == "segm":
                ann["segmentation"] = rle(target["masks"][k])
            annotations.append(ann)
        for k, label in enumerate(pred["labels"].tolist()):
            result = dict(image_id=image_id, category_id=label, score=float(pred["scores"][k]))
            if iou_type == "segm":
                result["segmentation"] = rle(pred["masks"][k, 0] > 0.5)
            else:
                result["bbox"] = xywh(pred["boxes"][k])
            results.append(result)
    categories = class_ids or sorted({a["category_id"] for a in annotations})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dict(images=images, annotations=annotations, categories=[dict(id=c) for c in categories])
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) * 100 if s != -1 else -1.0 for s in evaluator.stats]


@pytest.mark.parametrize(
    ("seed", "iou_type", "class_ids", "options"),
    [(0, "bbox", None, {}), (1, "bbox", [1, 2, 5, 9], dict(ties=True)), (2, "bbox", [2], dict(small_images=True)),
     (5, "bbox", None, dict(integer_boxes=True, ties=True)), (3, "segm", None, {}),
     (4, "segm", [1, 5, 7], dict(ties=True))],
    ids=["bbox", "bbox-ties-class_ids", "bbox-one-class-no-large", "bbox-integer-boxes", "segm",
         "segm-ties-class_ids"],
)  # fmt: skip
def test_matches_pycocotools_cocoeval(seed, iou_type, class_ids, options):
    pytest.importorskip("pycocotools")
    data = _random_dataset(seed, iou_type, **options)
    metrics = DetectionMetrics(iou_type, class_ids=class_ids)
    for start in range(0, len(data), 5):  # batches of 5 images
        preds, targets = zip(*data[start : start + 5])
        metrics.update(list(preds), list(targets))
    ours = metrics.compute()
    assert metrics.num_images == len(data)
    expected = _cocoeval(data, iou_type, class_ids)
    assert [ours[key] for key in KEYS] == pytest.approx(expected, abs=1e-6, rel=0)
    assert 0 < ours["AP"] < 100 and len({round(v, 6) for v in expected}) > 4  # not a degenerate dataset
    assert (ours["AP_large"] == -1) == options.get("small_images", False)


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data = _random_dataset(0, "bbox", images=12)[rank::world]
        metrics = DetectionMetrics()
        for pred, target in data:
            metrics.update([pred], [target])
        with open(f"{out_dir}/{rank}.json", "w") as f:
            json.dump(metrics.compute(), f)
    finally:
        dist.destroy_process_group()


def test_compute_gathers_the_images_of_every_rank(tmp_path):
    """Two gloo processes, each with every other image: both get the numbers of one process over all images."""
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    whole = _evaluate(*map(list, zip(*_random_dataset(0, "bbox", images=12))))
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got == pytest.approx(whole, abs=1e-9)
    local = DetectionMetrics()
    local.update(*map(list, zip(*_random_dataset(0, "bbox", images=12)[::2])))
    assert local.compute() != pytest.approx(whole)  # one rank's half alone differs
