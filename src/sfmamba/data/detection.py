"""Object-detection data for torchvision's detectors: COCO instances files, a Fashion-MNIST detection set, and the
train / eval pipelines.

Targets are what torchvision's detectors take in training, one dict per image: "boxes" float32 [K, 4] (x1, y1, x2, y2
in pixels, a pixel's square being [j, j + 1) so the tight box of a mask's columns a..b is a to b + 1), "labels" int64
[K] (1..C, 0 being the background), "iscrowd" int64 [K], "area" float32 [K], "image_id" (int) and, for Mask R-CNN,
"masks" uint8 [K, H, W]. Images leave the transforms as float [3, H, W] in [0, 1]: the detectors' own
`GeneralizedRCNNTransform` normalises with the ImageNet statistics and resizes (`min_size` / `max_size`).

COCO (`CocoDetection`): category ids are mapped to contiguous labels 1..C in id order (COCO's 80 of 1..90 become
1..80, `num_classes` 81). With `clean_boxes` (training) boxes are clipped to the image and those under one pixel wide
or high dropped (mmdet's rule); without it (evaluation) every annotation keeps its box as the file has it, xywh ->
xyxy, unclipped, zero-sized ones included, as COCOeval reads the ground truth. Images left without annotations are
dropped with `remove_empty` (torchvision's reference, `_coco_remove_images_without_annotations`). Crowd regions stay
in the target with "iscrowd" 1 unless `drop_crowd`: torchvision's detectors do not read "iscrowd" and would learn
them as ordinary objects, so train with `drop_crowd=True` (torchvision's reference drops them); keep them for
evaluation. The three options are independent. Masks are decoded here, without pycocotools: polygons are rasterised
pixel for pixel as pycocotools does (its `frPyObjects` then `merge`, COCO's official mask ground truth: a pixel is in
when its centre is, to within its 1/5-pixel grid), RLE both as a list of counts and as COCO's compressed string.

Augmentation (`DetectionTrainTransform`): mmdet's multi-scale training of the 3x schedules (a short side drawn from
`scales`, the long side capped at `max_size`, aspect kept) and a horizontal flip. The draws use Python's `random`,
which `sfmamba.data.loader.create_loader` seeds per sample from (seed, epoch, index) for training, as for the
segmentation transforms, so a resumed run sees the same samples. Note that torchvision's detectors resize again to
their own `min_size` / `max_size`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, DatasetError, load_fashion_mnist
from .segmentation import _rescale_size

__all__ = [
    "MULTISCALE_TRAIN_SCALES", "CocoDetection", "DetectionEvalTransform", "DetectionTrainTransform",
    "FashionMNISTDetection", "decode_segmentation", "detection_collate", "masks_to_tight_boxes",
]  # fmt: skip

MULTISCALE_TRAIN_SCALES = tuple(range(480, 801, 32))  # mmdet's 3x recipe: short side 480..800, long side <= 1333
_POLYGON_SCALE = 5  # pycocotools rasterises polygons on a 5x finer grid (maskApi.c rleFrPoly)


def _rle_string_to_counts(string: str) -> list[int]:
    """COCO's compressed RLE string (pycocotools' rleFrString): each count in 5-bit groups, least significant first,
    as characters 48 + group, bit 0x20 meaning "more groups follow" and 0x10 of the last group the sign; from the
    fourth count on, each is stored as the difference to the count two places before."""
    counts, value, shift = [], 0, 0
    for char in string:
        group = ord(char) - 48
        if not 0 <= group < 64:
            raise ValueError(f"character {char!r} is not in COCO's RLE alphabet (ASCII 48-111)")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value, shift = 0, 0
    if shift:
        raise ValueError("the string ends inside a count (its last character has the continuation bit 0x20)")
    return counts


def _rle_to_mask(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Alternating runs of 0s and 1s (0s first) down the columns (column-major, as COCO stores them)."""
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any() or runs.sum() != height * width:
        raise ValueError(f"RLE counts must be non-negative and sum to height x width = {height * width}, got "
                         f"{len(runs)} counts summing to {runs.sum() if runs.ndim == 1 else '?'}")  # fmt: skip
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1
    return np.ascontiguousarray(np.repeat(values, runs).reshape(width, height).T)


def _polygon_toggles(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Where pycocotools' rasteriser (maskApi.c `rleFrPoly`) switches between outside and inside, as column-major
    pixel indices (x * height + y, up to height * width): each switch flips every pixel from it on, as an RLE reads.

    Its steps: vertices onto a 5x finer grid (C's `(int)(5 v + 0.5)`, truncating toward zero); each edge walked one
    grid step at a time along its longer axis, the other coordinate rounded from the edge's lower end on that axis
    (so both directions give the same points); a switch where a step crosses the vertical line through a column's
    pixel centres (grid x = 5 col + 2.5), at the first row whose centre (grid y = 5 row + 2.5) is at or past the
    smaller grid y of the step's two points + 0.5, clamped to [0, height]."""
    scale = float(_POLYGON_SCALE)
    grid = (scale * xy + 0.5).astype(np.int64)  # astype truncates toward zero, as C's (int)
    xs, ys = grid[:, 0], grid[:, 1]
    xe, ye = np.roll(xs, -1), np.roll(ys, -1)
    dx, dy = np.abs(xe - xs), np.abs(ye - ys)
    along_x = dx >= dy
    flip = np.where(along_x, xs > xe, ys > ye)  # walk from the lower end, numbering the points from the start
    x0, y0, x1, y1 = np.where(flip, xe, xs), np.where(flip, ye, ys), np.where(flip, xs, xe), np.where(flip, ys, ye)
    steps = np.maximum(dx, dy)
    major0, minor0 = np.where(along_x, x0, y0), np.where(along_x, y0, x0)
    slope = np.where(along_x, y1 - y0, x1 - x0) / np.maximum(steps, 1)  # a zero-length edge: its point is never read
    # the points of all edges, each edge's steps + 1 of them in order
    edge = np.repeat(np.arange(len(grid)), steps + 1)
    d = np.arange(len(edge)) - np.repeat(np.cumsum(steps + 1) - (steps + 1), steps + 1)
    t = np.where(flip[edge], steps[edge] - d, d)
    major = major0[edge] + t
    minor = (minor0[edge] + slope[edge] * t + 0.5).astype(np.int64)
    u, v = np.where(along_x[edge], major, minor), np.where(along_x[edge], minor, major)
    # steps that change x, and the column whose centre line they cross
    step = np.flatnonzero(u[1:] != u[:-1]) + 1
    ux = np.where(u[step] < u[step - 1], u[step], u[step] - 1)
    col = (ux + 0.5) / scale - 0.5
    keep = (np.floor(col) == col) & (col >= 0) & (col <= width - 1)
    step, col = step[keep], col[keep].astype(np.int64)
    row = (np.minimum(v[step], v[step - 1]) + 0.5) / scale - 0.5
    row = np.ceil(np.clip(row, 0, height)).astype(np.int64)
    return col * height + row


def _polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """The union of the polygons (x1, y1, x2, y2, ...), pixel for pixel as pycocotools' `frPyObjects` then `merge`
    (COCO's ground truth): see `_polygon_toggles`. A pixel is in, to within a fifth of a pixel, when its centre is;
    polygons of one or two points are empty. (`frPyObjects` alone reads a list whose first polygon has 4 values as
    [x, y, w, h] boxes; such a polygon is a segment here.)"""
    size = height * width
    union = np.zeros(size, dtype=np.uint8)  # column-major, as the RLE
    for polygon in polygons:
        xy = np.asarray(polygon, dtype=np.float64)
        if xy.ndim != 1 or len(xy) % 2 or not np.isfinite(xy).all():
            raise ValueError(f"a polygon must be a flat list of x, y pairs, got {len(xy)} values")
        if not len(xy) or not size:
            continue
        toggles = np.sort(_polygon_toggles(xy.reshape(-1, 2), height, width))
        toggles = toggles[toggles < size]  # a switch at the very end changes nothing
        if len(toggles):  # runs between switches, in from the 1st, out from the 2nd, ... (pairs at one index cancel)
            inside = (np.arange(len(toggles)) % 2 == 0).astype(np.uint8)
            union[toggles[0] :] |= np.repeat(inside, np.diff(toggles, append=size))
    return np.ascontiguousarray(union.reshape(width, height).T)


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """A COCO "segmentation" as a uint8 mask [height, width]: a list of polygons, an uncompressed RLE
    ({"counts": [ints], "size": [h, w]}) or a compressed one ({"counts": str, "size": [h, w]}).

    Raises:
        ValueError: a malformed polygon or RLE, or an RLE whose size is not (height, width).
    """
    if isinstance(segmentation, list):
        return _polygons_to_mask(segmentation, height, width)
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        keys = f" with keys {sorted(segmentation)}" if isinstance(segmentation, dict) else ""
        raise ValueError(f"expected a list of polygons or an RLE dict with 'counts' and 'size', got a "
                         f"{type(segmentation).__name__}{keys}")  # fmt: skip
    if list(segmentation["size"]) != [height, width]:
        raise ValueError(f"RLE size {list(segmentation['size'])} is not the image's [height, width] "
                         f"{[height, width]}")  # fmt: skip
    counts = segmentation["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = _rle_string_to_counts(counts)
    return _rle_to_mask(counts, height, width)


def masks_to_tight_boxes(masks: Tensor) -> Tensor:
    """Tight boxes [K, 4] (x1, y1, x2 + 1, y2 + 1: pixel edges) of masks [K, H, W]; zeros for an empty mask."""
    boxes = torch.zeros(len(masks), 4, dtype=torch.float32)
    for k, mask in enumerate(masks):
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        if len(rows):
            boxes[k] = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)
    return boxes


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (expected a COCO instances JSON file)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories', got a "
                           f"{type(data).__name__}")  # fmt: skip
    for key in ("images", "categories", "annotations"):
        if key not in data and key != "annotations":  # image-info files (test-dev) have no annotations
            raise DatasetError(f"{path}: no '{key}' field (expected COCO's instances format)")
        if not isinstance(data.get(key, []), list):
            raise DatasetError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def _field(path: Path, where: str, entry: object, key: str, kind: type | tuple[type, ...]):
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{path}: {where} has no '{key}' field")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{path}: {where}: '{key}' must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
    return value


class CocoDetection(torch.utils.data.Dataset):
    """COCO instances: `<root>/<file_name>` images with the annotations of `annotation_file`.

    Items are (RGB PIL image, target) or what `transform(image, target)` makes of them; see the module docstring for
    the target's fields and the label mapping.

    Args:
        root: the images' folder (e.g. `coco/train2017`).
        annotation_file: the instances JSON (e.g. `coco/annotations/instances_train2017.json`).
        transform: called with (image, target), e.g. `DetectionTrainTransform()`.
        with_masks: decode the segmentations into "masks" (Mask R-CNN).
        remove_empty: drop the images left without annotations (training; keep them for evaluation).
        drop_crowd: drop crowd regions (training with torchvision's detectors); else they carry "iscrowd" 1.
        clean_boxes: clip the boxes to the image and drop those under one pixel wide or high, as for training; False
            keeps every annotation's box as the file has it (xywh -> xyxy, unclipped, zero-sized ones too), as
            COCOeval reads the ground truth: use that for validation.

    Attributes:
        ids: the image ids, sorted, one per item.
        classes: category names by label, "__background__" first (`classes[label]`).
        num_classes: categories + 1 (the background), what `create_detector` takes.
        label_to_category / category_to_label: label (1..C) <-> COCO category id.
    """

    def __init__(self, root: str | Path, annotation_file: str | Path, transform: Callable | None = None,
                 with_masks: bool = False, remove_empty: bool = True, drop_crowd: bool = False,
                 clean_boxes: bool = True):  # fmt: skip
        self.root, self.annotation_file = Path(root), Path(annotation_file)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such directory (expected the images of {self.annotation_file.name})")
        self.transform, self.with_masks, self.drop_crowd = transform, with_masks, drop_crowd
        self.clean_boxes = clean_boxes
        data = _load_json(self.annotation_file)
        self._parse_categories(data["categories"])
        self.images = self._parse_images(data["images"])
        self.annotations = self._parse_annotations(data.get("annotations", []))
        self.ids = sorted(i for i in self.images if self.annotations[i] or not remove_empty)

    def _parse_categories(self, categories: list) -> None:
        path, names = self.annotation_file, {}
        for i, cat in enumerate(categories):
            cat_id = _field(path, f"categories[{i}]", cat, "id", int)
            if cat_id in names:
                raise DatasetError(f"{path}: categories[{i}]: id {cat_id} appears twice")
            names[cat_id] = str(cat.get("name", cat_id))
        if not names:
            raise DatasetError(f"{path}: 'categories' is empty (expected at least one category)")
        self.label_to_category = dict(enumerate(sorted(names), start=1))
        self.category_to_label = {cat_id: label for label, cat_id in self.label_to_category.items()}
        self.classes = ("__background__", *(names[c] for c in self.label_to_category.values()))
        self.num_classes = len(self.classes)

    def _parse_images(self, images: list) -> dict[int, dict]:
        path, parsed = self.annotation_file, {}
        for i, image in enumerate(images):
            image_id = _field(path, f"images[{i}]", image, "id", int)
            if image_id in parsed:
                raise DatasetError(f"{path}: images[{i}]: id {image_id} appears twice")
            parsed[image_id] = {
                "file_name": _field(path, f"images[{i}] (id {image_id})", image, "file_name", str),
                "height": _field(path, f"images[{i}] (id {image_id})", image, "height", int),
                "width": _field(path, f"images[{i}] (id {image_id})", image, "width", int),
            }
        return parsed

    def _parse_annotations(self, annotations: list) -> dict[int, list[dict]]:
        """The kept annotations per image id, boxes converted to xyxy (and cleaned with `clean_boxes`), each
        checked."""
        path, kept = self.annotation_file, {i: [] for i in self.images}
        for i, ann in enumerate(annotations):
            where = f"annotations[{i}] (id {ann.get('id', '?') if isinstance(ann, dict) else '?'})"
            image_id = _field(path, where, ann, "image_id", int)
            if image_id not in self.images:
                raise DatasetError(f"{path}: {where}: image_id {image_id} is not in 'images'")
            cat_id = _field(path, where, ann, "category_id", int)
            if cat_id not in self.category_to_label:
                raise DatasetError(f"{path}: {where}: category_id {cat_id} is not in 'categories'")
            bbox = _field(path, where, ann, "bbox", list)
            if len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
                raise DatasetError(f"{path}: {where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            crowd = int(ann.get("iscrowd", 0))
            if self.with_masks and "segmentation" not in ann:
                raise DatasetError(f"{path}: {where} has no 'segmentation' field (needed with with_masks)")
            if crowd and self.drop_crowd:
                continue
            x, y, w, h = bbox
            box = [x, y, x + w, y + h]
            if self.clean_boxes:
                info = self.images[image_id]
                box = [min(max(v, 0), info["width" if k % 2 == 0 else "height"]) for k, v in enumerate(box)]
                if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                    continue  # degenerate (or outside the image)
            area = _field(path, where, ann, "area", (int, float)) if "area" in ann else w * h
            kept[image_id].append({
                "id": ann.get("id"), "box": box, "label": self.category_to_label[cat_id], "iscrowd": crowd,
                "area": float(area), "segmentation": ann.get("segmentation") if self.with_masks else None,
            })  # fmt: skip
        return kept

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[object, dict]:
        image_id = self.ids[index]
        info, anns = self.images[image_id], self.annotations[image_id]
        image_path = self.root / info["file_name"]
        if not image_path.is_file():
            raise DatasetError(f"{image_path}: no such file (image id {image_id} of {self.annotation_file})")
        with Image.open(image_path) as img:
            image = img.convert("RGB")
        if image.size != (info["width"], info["height"]):
            raise DatasetError(f"{image_path}: {image.size[0]} x {image.size[1]} pixels but {self.annotation_file} "
                               f"gives width x height {info['width']} x {info['height']}")  # fmt: skip
        target = {
            "boxes": torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
            "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
            "image_id": image_id,
        }
        if self.with_masks:
            target["masks"] = self._masks(anns, info["height"], info["width"])
        return self.transform(image, target) if self.transform else (image, target)

    def _masks(self, anns: list[dict], height: int, width: int) -> Tensor:
        masks = torch.zeros(len(anns), height, width, dtype=torch.uint8)
        for k, ann in enumerate(anns):
            try:
                masks[k] = torch.from_numpy(decode_segmentation(ann["segmentation"], height, width))
            except ValueError as err:
                raise DatasetError(f"{self.annotation_file}: annotation id {ann['id']}: 'segmentation': {err}") from err
        return masks


def _to_float_tensor(image: Image.Image | Tensor) -> Tensor:
    """PIL image or [3, H, W] tensor (uint8 0-255 or float 0-1) -> float [3, H, W] in [0, 1]."""
    if isinstance(image, Image.Image):
        image = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image [3, H, W], got shape {tuple(image.shape)}")
    return image.float().div_(255) if image.dtype == torch.uint8 else image.float()


def _nearest_indices(size_in: int, size_out: int) -> Tensor:
    """torch's "nearest": output pixel d reads input pixel floor(d * in / out)."""
    return (torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)).floor().long().clamp_(max=size_in - 1)


def _resize(image: Tensor, target: dict, size: tuple[int, int]) -> tuple[Tensor, dict]:
    """Bilinear image (mmdet's cv2 resize), nearest masks, boxes and areas scaled by the size ratios."""
    (height, width), (new_h, new_w) = image.shape[1:], size
    image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    scale_x, scale_y = new_w / width, new_h / height
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=torch.float32)
        boxes[:, 0::2].clamp_(0, new_w), boxes[:, 1::2].clamp_(0, new_h)
        target["boxes"] = boxes
    if "area" in target:
        target["area"] = target["area"] * (scale_x * scale_y)
    if "masks" in target:
        rows, cols = _nearest_indices(height, new_h), _nearest_indices(width, new_w)
        target["masks"] = target["masks"][:, rows][:, :, cols]
    return image.clamp_(0, 1), target


def _hflip(image: Tensor, target: dict) -> tuple[Tensor, dict]:
    width, target = image.shape[-1], dict(target)
    if "boxes" in target:
        boxes = target["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
        target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class DetectionTrainTransform:
    """(PIL image or [3, H, W] tensor, target) -> (float [3, H', W'] in [0, 1], target): with `scales`, a short
    side drawn from them with the long side capped at `max_size` (aspect kept; boxes, masks and areas follow);
    then a horizontal flip with probability `flip_prob`. The draws use Python's `random` (see the module docstring).

    `scales=MULTISCALE_TRAIN_SCALES` with `max_size=1333` is mmdet's multi-scale training (MambaVision's 3x
    recipe); without `scales` the image keeps its size.
    """

    def __init__(self, flip_prob: float = 0.5, scales: Sequence[int] | None = None, max_size: int = 1333):
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"flip_prob must be a probability in [0, 1], got {flip_prob!r}")
        if scales is not None and (not len(scales) or any(not isinstance(s, int) or s < 1 for s in scales)):
            raise ValueError(f"scales must be None or a non-empty sequence of positive ints, got {scales!r}")
        if not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        self.flip_prob, self.scales, self.max_size = flip_prob, tuple(scales) if scales else None, max_size

    def __call__(self, image: Image.Image | Tensor, target: dict) -> tuple[Tensor, dict]:
        image = _to_float_tensor(image)
        if self.scales:
            short = random.choice(self.scales)
            image, target = _resize(image, target, _rescale_size(*image.shape[1:], (self.max_size, short)))
        if random.random() < self.flip_prob:
            image, target = _hflip(image, target)
        return image, target


class DetectionEvalTransform:
    """(PIL image or [3, H, W] tensor, target) -> (float [3, H, W] in [0, 1], target), sizes unchanged: the
    detector resizes internally and returns boxes at the input's size."""

    def __call__(self, image: Image.Image | Tensor, target: dict) -> tuple[Tensor, dict]:
        return _to_float_tensor(image), target


def detection_collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """(list of images, list of targets): torchvision's detectors take lists (the images' sizes may differ)."""
    return [image for image, _ in batch], [target for _, target in batch]


class FashionMNISTDetection(torch.utils.data.Dataset):
    """Detection and instance segmentation on real Fashion-MNIST garments: each item is a grey `canvas` x `canvas`
    image (3 channels, float in [0, 1], black background) with 1..`max_objects` garments of the split pasted at random
    places, overlapping at most lightly (each pair's box overlap <= 20 % of the smaller box; a garment that cannot be
    placed in 20 tries is left out, so an item may hold fewer).

    Target (as `CocoDetection`'s): "masks" a garment's nonzero pixels, "boxes" their tight box, "labels" its class + 1
    (1..10), "area" its pixel count, "iscrowd" 0, "image_id" the index. Items depend only on (seed, split, index), so
    the test split is fixed; `transform(image, target)` then augments (e.g. `DetectionTrainTransform()`).

    Args:
        data_dir: the Fashion-MNIST IDX files (Debian's `dataset-fashion-mnist`).
        split: "train" or "test" ("val": the test split); garments come from that split's images only.
        canvas: the image side, at least the garments' 28.
        max_objects: the most garments per image.
        seed: selects the set of items.
        length: the number of items (default: the split's number of garments).
        transform: called with (image, target).
    """

    classes = ("__background__", *FASHION_MNIST_CLASSES)
    num_classes = len(classes)
    max_overlap = 0.2

    def __init__(self, data_dir: str | Path = DEFAULT_FASHION_MNIST_DIR, split: str = "train", canvas: int = 64,
                 max_objects: int = 3, seed: int = 0, length: int | None = None,
                 transform: Callable | None = None):  # fmt: skip
        split = "test" if split == "val" else split
        self.garments, self.garment_labels = load_fashion_mnist(data_dir, split)
        side = max(self.garments.shape[1:])
        if not isinstance(canvas, int) or canvas < side:
            raise ValueError(f"canvas must be an int >= the garments' size {side}, got {canvas!r}")
        if not isinstance(max_objects, int) or max_objects < 1:
            raise ValueError(f"max_objects must be a positive int, got {max_objects!r}")
        if length is not None and (not isinstance(length, int) or length < 1):
            raise ValueError(f"length must be None or a positive int, got {length!r}")
        self.split, self.canvas, self.max_objects, self.seed = split, canvas, max_objects, seed
        self.length = len(self.garments) if length is None else length
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def _garment(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A random garment cropped to its nonzero pixels, and its class."""
        while True:
            i = int(rng.integers(len(self.garments)))
            image = self.garments[i]
            rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
            if len(rows):
                return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], int(self.garment_labels[i])

    def _fits(self, box: list[int], boxes: list[list[int]]) -> bool:
        for other in boxes:
            inter_w = min(box[2], other[2]) - max(box[0], other[0])
            inter_h = min(box[3], other[3]) - max(box[1], other[1])
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
            if inter_w > 0 and inter_h > 0 and inter_w * inter_h > self.max_overlap * smaller:
                return False
        return True

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, ("train", "test").index(self.split), index])
        canvas = np.zeros((self.canvas, self.canvas), dtype=np.uint8)
        boxes, labels, masks = [], [], []
        for _ in range(int(rng.integers(1, self.max_objects + 1))):
            garment, label = self._garment(rng)
            (h, w), span = garment.shape, self.canvas + 1
            for _ in range(20):
                top, left = int(rng.integers(span - h)), int(rng.integers(span - w))
                box = [left, top, left + w, top + h]
                if self._fits(box, boxes):
                    break
            else:
                continue
            mask = np.zeros_like(canvas)
            mask[top : top + h, left : left + w] = garment > 0
            canvas[top : top + h, left : left + w] = np.maximum(canvas[top : top + h, left : left + w], garment)
            boxes.append(box)
            labels.append(label + 1)
            masks.append(mask)
        masks_t = torch.from_numpy(np.stack(masks))
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
            "area": masks_t.flatten(1).sum(1).float(),
            "image_id": index,
            "masks": masks_t,
        }
        image = torch.from_numpy(canvas).float().div_(255).expand(3, -1, -1).contiguous()
        return self.transform(image, target) if self.transform else (image, target)
