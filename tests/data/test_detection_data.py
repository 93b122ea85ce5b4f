"""Detection data: COCO instances files (label mapping, boxes cleaned or as COCOeval reads them, polygon masks exactly
as pycocotools rasterises them, RLE / compressed-RLE masks, crowd and empty images, errors), the train / eval
transforms (flip, multi-scale, determinism per (seed, epoch, index)), the collate function and the Fashion-MNIST
detection set."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sfmamba.data import (
    DEFAULT_FASHION_MNIST_DIR,
    CocoDetection,
    DatasetError,
    DetectionEvalTransform,
    DetectionTrainTransform,
    FashionMNISTDetection,
    decode_segmentation,
    detection_collate,
    masks_to_tight_boxes,
    write_idx,
)
from sfmamba.data.loader import EpochSeededDataset


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths down the columns, zeros first."""
    flat = mask.T.ravel()
    edges = [0, *(np.flatnonzero(np.diff(flat)) + 1).tolist(), len(flat)]
    runs = np.diff(edges).tolist()
    return [0, *runs] if flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE (pycocotools' rleToString): from the fourth count on, the difference to the count two
    before; each value in 5-bit groups, least significant first, 0x20 = more groups follow, the last group's 0x10
    the sign; characters 48 + group."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            group, x = x & 0x1F, x >> 5
            more = x != -1 if group & 0x10 else x != 0
            out.append(chr(48 + (group | 0x20 if more else group)))
    return "".join(out)


def square(x0: int, y0: int, x1: int, y1: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


# image 1 (20 x 30): a polygon square (dog), an RLE rectangle (cat) and a degenerate box; image 2 (16 x 16): a
# compressed-RLE L shape (bird), a crowd RLE (cat) and a polygon leaving the image; image 3: no annotations;
# image 4: only a degenerate box
RECT = square(10, 4, 25, 12, 20, 30)
L_SHAPE = square(1, 1, 4, 9, 16, 16) | square(1, 6, 8, 9, 16, 16)
CROWD = square(9, 0, 16, 5, 16, 16)


def write_coco(tmp_path, **overrides) -> tuple:
    images = [
        {"id": 1, "file_name": "a.png", "height": 20, "width": 30},
        {"id": 2, "file_name": "b.png", "height": 16, "width": 16},
        {"id": 3, "file_name": "c.png", "height": 12, "width": 12},
        {"id": 4, "file_name": "d.png", "height": 10, "width": 10},
    ]
    rng = np.random.default_rng(0)
    for info in images:
        array = rng.integers(0, 256, (info["height"], info["width"], 3), dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / info["file_name"])
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 7, "bbox": [2, 2, 4, 4], "area": 16.0, "iscrowd": 0,
         "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10, 4, 15, 8], "area": 120.0, "iscrowd": 0,
         "segmentation": {"counts": rle_counts(RECT), "size": [20, 30]}},
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0.5, 3], "area": 1.0, "iscrowd": 0,
         "segmentation": [[5, 5, 5.5, 5, 5.5, 8]]},
        {"id": 20, "image_id": 2, "category_id": 12, "bbox": [1, 1, 7, 8], "area": float(L_SHAPE.sum()),
         "iscrowd": 0, "segmentation": {"counts": rle_string(rle_counts(L_SHAPE)), "size": [16, 16]}},
        {"id": 21, "image_id": 2, "category_id": 3, "bbox": [9, 0, 7, 5], "area": 35.0, "iscrowd": 1,
         "segmentation": {"counts": rle_counts(CROWD), "size": [16, 16]}},
        {"id": 22, "image_id": 2, "category_id": 7, "bbox": [12, 12, 10, 10], "area": 100.0, "iscrowd": 0,
         "segmentation": [[12, 12, 22, 12, 22, 22, 12, 22]]},
        {"id": 40, "image_id": 4, "category_id": 7, "bbox": [1, 1, 0, 5], "area": 0.0, "iscrowd": 0,
         "segmentation": [[1, 1, 1, 6, 1, 6]]},
    ]  # fmt: skip
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 12, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}  # fmt: skip
    data.update(overrides)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return tmp_path, path


def test_labels_boxes_crowd_and_empty_images(tmp_path):
    root, ann = write_coco(tmp_path)
    data = CocoDetection(root, ann)
    assert data.ids == [1, 2] and len(data) == 2  # 3 has no annotations, 4 only a degenerate box
    assert data.classes == ("__background__", "cat", "dog", "bird") and data.num_classes == 4
    assert data.category_to_label == {3: 1, 7: 2, 12: 3} and data.label_to_category == {1: 3, 2: 7, 3: 12}
    image, target = data[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (30, 20)
    assert target["image_id"] == 1 and "masks" not in target
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 2, 6, 6], [10, 4, 25, 12]]))  # 12 dropped
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    assert target["iscrowd"].tolist() == [0, 0] and target["area"].tolist() == [16.0, 120.0]
    _, target = data[1]
    torch.testing.assert_close(target["boxes"], torch.tensor([[1.0, 1, 8, 9], [9, 0, 16, 5], [12, 12, 16, 16]]))
    assert target["labels"].tolist() == [3, 1, 2] and target["iscrowd"].tolist() == [0, 1, 0]
    assert target["area"].dtype == torch.float32 and target["boxes"].dtype == torch.float32

    assert CocoDetection(root, ann, drop_crowd=True)[1][1]["iscrowd"].tolist() == [0, 0]
    everything = CocoDetection(root, ann, remove_empty=False, with_masks=True)
    assert everything.ids == [1, 2, 3, 4]
    _, empty = everything[3]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["masks"].shape == (0, 10, 10)


def test_clean_boxes_off_keeps_the_annotation_boxes_as_cocoeval_reads_them(tmp_path):
    """Image 1 (20 x 30) holds a box crossing its right edge and one 0.6 px wide; image 4 only a zero-width box."""
    root, ann = write_coco(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"] += [
        {"id": 13, "image_id": 1, "category_id": 7, "bbox": [26.5, -2, 8, 6], "area": 48.0, "iscrowd": 0,
         "segmentation": [[26.5, -2, 34.5, -2, 34.5, 4, 26.5, 4]]},
        {"id": 14, "image_id": 1, "category_id": 12, "bbox": [3, 10, 0.6, 4], "area": 2.4, "iscrowd": 0,
         "segmentation": [[3, 10, 3.6, 10, 3.6, 14, 3, 14]]},
    ]  # fmt: skip
    ann.write_text(json.dumps(data))
    raw = CocoDetection(root, ann, clean_boxes=False)
    assert raw.ids == [1, 2, 4]  # image 4's zero-width box is kept, so the image is not empty
    _, target = raw[0]
    torch.testing.assert_close(target["boxes"], torch.tensor(
        [[2.0, 2, 6, 6], [10, 4, 25, 12], [5, 5, 5.5, 8], [26.5, -2, 34.5, 4], [3, 10, 3.6, 14]]))  # fmt: skip
    assert target["labels"].tolist() == [2, 1, 1, 2, 3] and target["area"].tolist() == pytest.approx(
        [16, 120, 1, 48, 2.4])  # fmt: skip
    torch.testing.assert_close(raw[1][1]["boxes"][2], torch.tensor([12.0, 12, 22, 22]))  # past the 16 x 16 image
    torch.testing.assert_close(raw[2][1]["boxes"], torch.tensor([[1.0, 1, 1, 6]]))
    assert raw[2][1]["area"].tolist() == [0.0]
    _, target = CocoDetection(root, ann)[0]  # clean_boxes: clipped to the image, under a pixel dropped
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 2, 6, 6], [10, 4, 25, 12], [26.5, 0, 30, 4]]))
    assert target["area"].tolist() == [16, 120, 48]  # the annotation's area, as COCOeval has it
    # independent of drop_crowd and remove_empty
    assert CocoDetection(root, ann, clean_boxes=False, drop_crowd=True)[1][1]["iscrowd"].tolist() == [0, 0]
    assert CocoDetection(root, ann, clean_boxes=False, remove_empty=False).ids == [1, 2, 3, 4]
    masks = CocoDetection(root, ann, clean_boxes=False, with_masks=True)[0][1]["masks"]
    assert masks.shape == (5, 20, 30) and masks[3].sum() == 4 * 3  # columns 27..29, rows 0..3


def test_masks_from_polygons_rle_and_compressed_rle(tmp_path):
    root, ann = write_coco(tmp_path)
    data = CocoDetection(root, ann, with_masks=True)
    (_, first), (_, second) = data[0], data[1]
    assert first["masks"].dtype == torch.uint8 and first["masks"].shape == (2, 20, 30)
    np.testing.assert_array_equal(first["masks"][0].numpy(), square(2, 2, 6, 6, 20, 30))  # pixel centres inside
    np.testing.assert_array_equal(first["masks"][1].numpy(), RECT)
    np.testing.assert_array_equal(second["masks"][0].numpy(), L_SHAPE)
    np.testing.assert_array_equal(second["masks"][1].numpy(), CROWD)
    np.testing.assert_array_equal(second["masks"][2].numpy(), square(12, 12, 16, 16, 16, 16))  # clipped
    for target in (first, second):
        torch.testing.assert_close(masks_to_tight_boxes(target["masks"]), target["boxes"])
    # pixel (i, j) is in when its centre (j + 0.5, i + 0.5) is: 1.6..6.4 holds the centres 2.5..5.5, and the
    # triangle x + y <= 8.5 the pixels with i + j <= 7
    off_grid = decode_segmentation([[1.6, 1.6, 6.4, 1.6, 6.4, 6.4, 1.6, 6.4]], 8, 9)
    np.testing.assert_array_equal(off_grid, square(2, 2, 6, 6, 8, 9))
    triangle = decode_segmentation([[0, 0, 8.5, 0, 0, 8.5]], 10, 10)
    np.testing.assert_array_equal(triangle, np.add.outer(np.arange(10), np.arange(10)) <= 7)


def test_compressed_rle_known_string_and_round_trip():
    """The string "5X1d0K" worked by hand: '5' -> 5; 'X' (40: 8 + more) '1' (1 << 5) -> 40; 'd' (52: 20 + more)
    '0' -> 20; 'K' (27: 0x10 set, last) -> 27 - 32 = -5, the fourth count, so + counts[1] = 35. Counts 5, 40, 20, 35
    down the columns of a 10 x 10 mask."""
    expected = np.zeros((10, 10), np.uint8)
    expected[5:, 0] = 1
    expected[:, 1:4] = 1
    expected[:5, 4] = 1
    expected[5:, 6] = 1
    expected[:, 7:] = 1
    np.testing.assert_array_equal(decode_segmentation({"counts": "5X1d0K", "size": [10, 10]}, 10, 10), expected)
    assert rle_counts(expected) == [5, 40, 20, 35] and rle_string([5, 40, 20, 35]) == "5X1d0K"
    rng = np.random.default_rng(1)
    for shape in [(7, 5), (40, 33), (64, 64)]:
        mask = (rng.random(shape) < rng.uniform(0.05, 0.95)).astype(np.uint8)
        mask[0, 0] = 1  # starts with a zero-length run
        counts = rle_counts(mask)
        for rle in ({"counts": counts, "size": list(shape)}, {"counts": rle_string(counts), "size": list(shape)}):
            np.testing.assert_array_equal(decode_segmentation(rle, *shape), mask)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' NumPy 2 copy keyword
def test_rle_decoder_agrees_with_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(2)
    for _ in range(20):
        height, width = (int(v) for v in rng.integers(10, 60, 2))
        mask = (rng.random((height, width)) < 0.3).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(mask))
        assert rle_string(rle_counts(mask)) == rle["counts"].decode()
        np.testing.assert_array_equal(decode_segmentation({**rle, "counts": rle["counts"].decode()}, height, width),
                                      mask)  # fmt: skip


def random_polygon(rng: np.random.Generator, kind: str, height: int, width: int) -> list[float]:
    """A polygon of 3..9 vertices ("degenerate": 1..2) centred in the image or up to 3 pixels outside it."""
    k = int(rng.integers(1, 3)) if kind == "degenerate" else int(rng.integers(3, 10))
    centre = rng.uniform(-3, [width + 3, height + 3])
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    if kind == "convex":  # on a circle
        radii = np.full(k, rng.uniform(1, max(height, width)))
    elif kind == "tiny":  # radius 1..3 pixels
        radii = rng.uniform(1, 3, k)
    elif kind == "star":  # non-convex
        radii = rng.uniform(0.5, max(height, width) / 2, k)
    else:  # "tangled" (self-intersecting: vertices in random order), "degenerate"
        angles, radii = rng.uniform(0, 2 * np.pi, k), rng.uniform(0, max(height, width), k)
    xy = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    if rng.random() < 0.3:  # on the pixel grid, its half or its fifth (pycocotools' rounding ties)
        step = float(rng.choice([1, 2, 5]))
        xy = np.round(xy * step) / step
    return xy.ravel().tolist()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_polygons_rasterise_exactly_as_pycocotools():
    """COCO's mask ground truth is pycocotools' rasterisation (frPyObjects, then merge for an object's polygons):
    ours must match it pixel for pixel, whatever the polygon."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(3)
    kinds = ["convex", "tiny", "star", "tangled"]
    for case in range(1200):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        polygons = [random_polygon(rng, kinds[case % 4], height, width)]
        polygons += [random_polygon(rng, str(rng.choice([*kinds, "degenerate"])), height, width)
                     for _ in range(int(rng.integers(0, 3)))]  # fmt: skip
        expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
        ours = decode_segmentation(polygons, height, width)
        assert ours.dtype == np.uint8 and ours.shape == (height, width)
        np.testing.assert_array_equal(ours, expected, err_msg=f"case {case}: {height} x {width}, {polygons}")
    for polygon in ([-10, -10, 650, -10, 650, 490, -10, 490], [0, 0, 640, 0, 640, 480, 0, 480],
                    random_polygon(rng, "star", 480, 640), random_polygon(rng, "tangled", 480, 640)):  # fmt: skip
        expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], 480, 640)))
        np.testing.assert_array_equal(decode_segmentation([polygon], 480, 640), expected)


def test_errors_name_the_file_and_field(tmp_path):
    root, ann = write_coco(tmp_path)
    with pytest.raises(DatasetError, match="nowhere: no such directory"):
        CocoDetection(root / "nowhere", ann)
    with pytest.raises(DatasetError, match=r"missing.json: no such file"):
        CocoDetection(root, root / "missing.json")
    (root / "broken.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"broken.json: not valid JSON"):
        CocoDetection(root, root / "broken.json")
    (root / "list.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"list.json: expected a JSON object"):
        CocoDetection(root, root / "list.json")
    with pytest.raises(DatasetError, match=r"instances.json: no 'categories' field"):
        CocoDetection(*_without(tmp_path, "categories"))
    bad = {"id": 5, "image_id": 9, "category_id": 3, "bbox": [0, 0, 2, 2], "area": 4}
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 5\): image_id 9 is not in 'images'"):
        CocoDetection(*write_coco(tmp_path, annotations=[bad]))
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 5\): category_id 4 is not in 'categories'"):
        CocoDetection(*write_coco(tmp_path, annotations=[{**bad, "image_id": 1, "category_id": 4}]))
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 5\): 'bbox' must be 4 finite numbers"):
        CocoDetection(*write_coco(tmp_path, annotations=[{**bad, "image_id": 1, "bbox": [0, 0, 2]}]))
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 5\) has no 'segmentation' field"):
        CocoDetection(*write_coco(tmp_path, annotations=[{**bad, "image_id": 1}]), with_masks=True)
    wrong_size = {**bad, "image_id": 1, "segmentation": {"counts": [600], "size": [20, 29]}}
    with pytest.raises(DatasetError, match=r"annotation id 5: 'segmentation': RLE size \[20, 29\] is not"):
        CocoDetection(*write_coco(tmp_path, annotations=[wrong_size]), with_masks=True)[0]
    root, ann = write_coco(tmp_path)
    (root / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"a.png: no such file \(image id 1 of .*instances.json\)"):
        CocoDetection(root, ann)[0]
    Image.new("RGB", (31, 20)).save(root / "a.png")
    with pytest.raises(DatasetError, match=r"a.png: 31 x 20 pixels but .*instances.json gives width x height 30 x 20"):
        CocoDetection(root, ann)[0]


def _without(tmp_path, key: str) -> tuple:
    root, ann = write_coco(tmp_path)
    data = json.loads(ann.read_text())
    del data[key]
    ann.write_text(json.dumps(data))
    return root, ann


def test_flip_moves_boxes_and_masks_together(tmp_path):
    root, ann = write_coco(tmp_path)
    image, target = CocoDetection(root, ann, with_masks=True)[0]
    plain, kept = DetectionEvalTransform()(image, target)
    assert plain.dtype == torch.float32 and plain.shape == (3, 20, 30) and plain.min() >= 0 and plain.max() <= 1
    torch.testing.assert_close(plain, torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    assert kept is target
    flipped, out = DetectionTrainTransform(flip_prob=1.0)(image, target)
    torch.testing.assert_close(flipped, plain.flip(-1))
    torch.testing.assert_close(out["boxes"], torch.tensor([[24.0, 2, 28, 6], [5, 4, 20, 12]]))
    torch.testing.assert_close(masks_to_tight_boxes(out["masks"]), out["boxes"])
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 2, 6, 6], [10, 4, 25, 12]]))  # input left as it was
    same, out = DetectionTrainTransform(flip_prob=0.0)(image, target)
    torch.testing.assert_close(same, plain)
    torch.testing.assert_close(out["boxes"], target["boxes"])


def test_multiscale_resize_keeps_boxes_on_their_masks(tmp_path):
    root, ann = write_coco(tmp_path)
    image, target = CocoDetection(root, ann, with_masks=True)[0]  # 20 x 30
    x, out = DetectionTrainTransform(flip_prob=0.0, scales=[40])(image, target)  # exactly x 2
    assert x.shape == (3, 40, 60) and out["masks"].shape == (2, 40, 60)
    torch.testing.assert_close(out["boxes"], target["boxes"] * 2)
    torch.testing.assert_close(masks_to_tight_boxes(out["masks"]), out["boxes"])
    torch.testing.assert_close(out["area"], target["area"] * 4)
    x, out = DetectionTrainTransform(flip_prob=0.5, scales=[40, 44], max_size=50)(image, target)  # long side capped
    assert x.shape == (3, 33, 50) and out["masks"].shape[1:] == (33, 50)
    assert (masks_to_tight_boxes(out["masks"]) - out["boxes"]).abs().max() < 1
    torch.testing.assert_close(out["area"], target["area"] * (50 / 30) * (33 / 20))
    with pytest.raises(ValueError, match="scales must be None or a non-empty sequence"):
        DetectionTrainTransform(scales=[])


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    root, ann = write_coco(tmp_path)
    transform = DetectionTrainTransform(scales=[16, 20, 24, 28, 32], max_size=64)
    data = EpochSeededDataset(CocoDetection(root, ann, transform=transform, with_masks=True), seed=5)

    def sample(epoch: int, index: int, noise: int):
        random.seed(noise)  # the caller's random state must not matter
        data.epoch = epoch
        return data[index]

    a, b = sample(3, 1, noise=0), sample(3, 1, noise=1)
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in ("boxes", "masks", "area"))
    shapes = {tuple(sample(epoch, 1, 0)[0].shape) for epoch in range(12)}
    assert len(shapes) > 1  # the scale changes with the epoch


def test_collate_returns_lists(tmp_path):
    root, ann = write_coco(tmp_path)
    data = CocoDetection(root, ann, transform=DetectionEvalTransform())
    images, targets = detection_collate([data[0], data[1]])
    assert isinstance(images, list) and isinstance(targets, list)
    assert [tuple(x.shape) for x in images] == [(3, 20, 30), (3, 16, 16)] and targets[1]["image_id"] == 2


def write_garments(root, split: str, n: int, brightness: int, seed: int) -> np.ndarray:
    """Rectangles of random size and place on a 28 x 28 black field, the class setting the width."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    for image, label in zip(images, labels):
        top, left = rng.integers(0, 10, 2)
        image[top : top + 10 + label, left : left + 8 + label] = brightness
    stem = "train" if split == "train" else "t10k"
    write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
    write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    return labels


def check_items(data: FashionMNISTDetection, count: int) -> None:
    for index in range(count):
        image, target = data[index]
        k = len(target["labels"])
        assert image.shape == (3, data.canvas, data.canvas) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1 and torch.equal(image[0], image[2])
        assert 1 <= k <= data.max_objects and target["masks"].shape == (k, data.canvas, data.canvas)
        assert ((target["labels"] >= 1) & (target["labels"] <= 10)).all() and target["iscrowd"].tolist() == [0] * k
        torch.testing.assert_close(masks_to_tight_boxes(target["masks"]), target["boxes"])
        torch.testing.assert_close(target["area"], target["masks"].flatten(1).sum(1).float())
        assert (image[0][target["masks"].any(0).bool()] > 0).all() and target["image_id"] == index


def test_fashion_mnist_detection_is_deterministic_and_uses_its_split(tmp_path):
    labels = write_garments(tmp_path, "train", 30, 255, 0)
    write_garments(tmp_path, "test", 20, 100, 1)
    train = FashionMNISTDetection(tmp_path, "train", canvas=48, max_objects=3, seed=0)
    assert len(train) == 30 and train.num_classes == 11
    check_items(train, 20)
    a, b = train[7], FashionMNISTDetection(tmp_path, "train", canvas=48, seed=0)[7]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    other_seed = FashionMNISTDetection(tmp_path, "train", canvas=48, seed=1)
    assert not torch.equal(a[0], train[8][0]) and not torch.equal(a[0], other_seed[7][0])
    # the class sets a rectangle garment's size: 8 + c wide, 10 + c high
    for index in range(10):
        _, target = train[index]
        sizes = target["boxes"][:, 2:] - target["boxes"][:, :2]
        torch.testing.assert_close(sizes, torch.stack([target["labels"] + 7, target["labels"] + 9], 1).float())
    assert set(labels.tolist()) >= {int(label) - 1 for index in range(10) for label in train[index][1]["labels"]}
    test = FashionMNISTDetection(tmp_path, "val", canvas=48, length=12)
    assert len(test) == 12 and {round(test[i][0].max().item() * 255) for i in range(12)} == {100}
    assert {round(train[i][0].max().item() * 255) for i in range(12)} == {255}
    with pytest.raises(ValueError, match="canvas must be an int >= the garments' size 28"):
        FashionMNISTDetection(tmp_path, "train", canvas=20)
    flipped, target = FashionMNISTDetection(tmp_path, "test", canvas=48, transform=DetectionTrainTransform(1.0))[0]
    torch.testing.assert_close(masks_to_tight_boxes(target["masks"]), target["boxes"])
    torch.testing.assert_close(flipped, test[0][0].flip(-1))


@pytest.mark.skipif(not DEFAULT_FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_detection_reads_the_real_files():
    data = FashionMNISTDetection(DEFAULT_FASHION_MNIST_DIR, "test", canvas=64, max_objects=3, seed=0)
    assert len(data) == 10_000
    check_items(data, 40)
    counts = [len(data[i][1]["labels"]) for i in range(40)]
    assert set(counts) == {1, 2, 3}
    again = FashionMNISTDetection(DEFAULT_FASHION_MNIST_DIR, "test", seed=0, length=5)
    assert torch.equal(again[4][0], data[4][0])
