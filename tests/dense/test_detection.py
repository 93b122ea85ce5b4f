"""torchvision's detectors on our backbones: the pyramid's maps and strides, training losses that reach the backbone,
eval detections in torchvision's format, argument errors."""

from __future__ import annotations

import math

import pytest
import torch

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba.dense import BackboneWithFPN, DetectionNetwork, create_detector, detector_with_network
from sfmamba.export import export_program

SMALL = dict(fpn_channels=32, min_size=64, max_size=96)
LOSSES = {"faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
          "retinanet": {"classification", "bbox_regression"},
          "fcos": {"classification", "bbox_regression", "bbox_ctrness"}}  # fmt: skip
LOSSES["mask_rcnn"] = LOSSES["faster_rcnn"] | {"loss_mask"}


def _images_and_targets():
    torch.manual_seed(0)
    images = [torch.rand(3, 80, 90), torch.rand(3, 64, 70)]
    masks = [torch.zeros(1, 80, 90, dtype=torch.uint8), torch.zeros(2, 64, 70, dtype=torch.uint8)]
    masks[0][0, 10:50, 10:40] = 1
    masks[1][0, 5:30, 5:30] = 1
    masks[1][1, 20:60, 20:60] = 1
    targets = [
        dict(boxes=torch.tensor([[10.0, 10.0, 40.0, 50.0]]), labels=torch.tensor([1]), masks=masks[0]),
        dict(boxes=torch.tensor([[5.0, 5.0, 30.0, 30.0], [20.0, 20.0, 60.0, 60.0]]), labels=torch.tensor([2, 1]),
             masks=masks[1]),
    ]  # fmt: skip
    return images, targets


@pytest.mark.parametrize("extra_levels, names, strides", [
    ("pool", ["0", "1", "2", "3", "pool"], [4, 8, 16, 32, 64]),
    ("p6p7", ["0", "1", "2", "p6", "p7"], [8, 16, 32, 64, 128]),
])  # fmt: skip
def test_pyramid_maps_and_strides(extra_levels, names, strides):
    backbone_strides = (4, 8, 16, 32) if extra_levels == "pool" else (8, 16, 32)
    backbone = BackboneWithFPN("sf_mamba_nano", 32, strides=backbone_strides, extra_levels=extra_levels)
    maps = backbone(torch.randn(1, 3, 96, 128))
    assert list(maps) == names and backbone.out_channels == 32
    for m, stride in zip(maps.values(), strides):
        assert m.shape == (1, 32, math.ceil(96 / stride), math.ceil(128 / stride))


@pytest.mark.parametrize("detector, backbone", [
    ("faster_rcnn", "sf_mamba_nano"), ("mask_rcnn", "mambavision_nano"), ("retinanet", "vmamba_v2_nano"),
    ("fcos", "sf_mamba_nano"),
])  # fmt: skip
def test_training_losses_reach_the_backbone_and_eval_detects(detector, backbone):
    model = create_detector(detector, backbone, num_classes=3, **SMALL)
    images, targets = _images_and_targets()
    losses = model(images, targets)
    assert set(losses) == LOSSES[detector] and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.body.parameters())

    model.eval()
    with torch.no_grad():
        detections = model(images)
    keys = {"boxes", "labels", "scores"} | ({"masks"} if detector == "mask_rcnn" else set())
    assert len(detections) == 2 and all(set(d) == keys for d in detections)
    for d, image in zip(detections, images):
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["labels"]) == len(d["scores"])
        if len(d["boxes"]):  # boxes in the original image's coordinates
            height, width = image.shape[1:]
            assert (d["boxes"][:, 2] <= width + 1e-3).all() and (d["boxes"][:, 3] <= height + 1e-3).all()


@pytest.mark.parametrize("detector", ["faster_rcnn", "fcos"])
def test_detection_network_is_what_the_detector_runs_before_post_processing(detector):
    """`DetectionNetwork` (what `sfmamba export` exports of a detector) gives the backbone's pyramid and the dense
    head's outputs that the whole detector computes, on the batch its transform makes."""
    torch.manual_seed(0)
    sizes = {**SMALL, "fpn_channels": 64}  # (FCOS's GroupNorm(32) needs 2 values a group at P7's 1 x 1 map)
    model = create_detector(detector, "sf_mamba_nano", num_classes=3, **sizes).eval()
    head = model.rpn.head if detector == "faster_rcnn" else model.head
    seen = {}
    model.backbone.register_forward_hook(lambda module, args, out: seen.setdefault("maps", out))
    head.register_forward_hook(lambda module, args, out: seen.setdefault("head", out))
    images = [torch.rand(3, 50, 50), torch.rand(3, 40, 60)]  # resized to 64 x 64 and 64 x 96
    network = DetectionNetwork(model)
    with torch.no_grad():
        model(images)
        outputs = network(model.transform(images)[0].tensors)
    expected = dict(seen["maps"])
    if detector == "faster_rcnn":
        names = list(seen["maps"])
        expected |= {f"objectness_{n}": o for n, o in zip(names, seen["head"][0])}
        expected |= {f"rpn_deltas_{n}": d for n, d in zip(names, seen["head"][1])}
    else:
        expected |= seen["head"]
        assert {"cls_logits", "bbox_regression", "bbox_ctrness"} <= set(outputs)
    assert list(outputs) == list(expected)
    for name, value in outputs.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5, msg=name)


def _same_detections(got: dict, expected: dict) -> bool:
    """Equal detection sets whatever their order among near-equal scores: every box (with its label and score) has a
    match within 1e-3 in the other set."""

    def rows(d):
        return torch.cat([d["boxes"], 1000 * d["scores"][:, None], 1000 * d["labels"][:, None]], 1).double()

    if len(got["boxes"]) != len(expected["boxes"]):
        return False
    distances = torch.cdist(rows(got), rows(expected), compute_mode="donot_use_mm_for_euclid_dist")
    return len(distances) == 0 or bool(
        (distances.min(0).values < 1e-3).all() and (distances.min(1).values < 1e-3).all()
    )


@pytest.mark.parametrize("detector", ["faster_rcnn", "mask_rcnn", "retinanet", "fcos"])
def test_exported_network_with_the_detectors_processing_detects_as_the_detector(detector):
    """The exported `DetectionNetwork` (a torch.export program of ATen ops, 64 x 96) inside `detector_with_network`
    gives the detector's own detections where the detector pads the batch to 64 x 96 too; an image resized smaller
    is padded up to it; one too large is refused by name; the detector's own modes are left as they were."""
    torch.manual_seed(0)
    thresholds = {"score_thresh": 0.0} if detector == "retinanet" else {}  # (untrained: no RetinaNet box above 0.05)
    model = create_detector(detector, "sf_mamba_nano", num_classes=3, **{**SMALL, "fpn_channels": 64}, **thresholds)
    program = export_program(DetectionNetwork(model.eval()), torch.rand(2, 3, 64, 96), kernels="naive")
    exported = detector_with_network(model, program.module(), (64, 96))
    images = [torch.rand(3, 40, 60), torch.rand(3, 50, 50)]  # resized to 64 x 96 and 64 x 64: padded to 64 x 96
    model.train()  # the detector goes on training: the wrapper runs in eval mode and leaves its modes alone
    with torch.no_grad():
        got = exported(images)
        assert all(m.training for m in model.modules())
        expected = model.eval()(images)
    assert sum(len(d["boxes"]) for d in expected) > 0
    assert all(_same_detections(g, e) for g, e in zip(got, expected))
    assert len(exported([torch.rand(3, 50, 50)])) == 1  # alone: padded from 64 x 64 up to the network's 64 x 96
    assert set(model.train()(*_images_and_targets())) == LOSSES[detector]
    with pytest.raises(ValueError, match=r"size: resized images of \[\(64, 96\)\] do not fit the network's 64 x 64"):
        detector_with_network(model, program.module(), (64, 64))([torch.rand(3, 40, 60)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="detector must be one of .* got 'yolo'"):
        create_detector("yolo", "sf_mamba_nano", num_classes=3)
    for detector in ("faster_rcnn", "retinanet"):  # labels index the logits, background 0 included, in all four
        with pytest.raises(ValueError, match=r"num_classes must be >= 2 \(the background and at least one class\)"):
            create_detector(detector, "sf_mamba_nano", num_classes=1)
    with pytest.raises(ValueError, match="extra_levels must be 'pool' or 'p6p7', got 'p6'"):
        BackboneWithFPN("sf_mamba_nano", extra_levels="p6")
    with pytest.raises(ValueError, match="backbone_kwargs apply to a backbone name only"):
        BackboneWithFPN(BackboneWithFPN("sf_mamba_nano").body, pretrained=True)
