"""Object detection and instance segmentation with torchvision's detectors on a timm backbone (ours included).

`BackboneWithFPN` turns a timm model's `features_only` stages into what torchvision's detection models take: an
OrderedDict of feature-pyramid maps and an `out_channels` attribute. `create_detector` builds Faster R-CNN, Mask R-CNN
(the MambaVision and VMamba papers' COCO detector), RetinaNet or FCOS on it, with torchvision's own heads, losses,
anchors and transforms:

    model = create_detector("mask_rcnn", "sf_mamba_tiny", num_classes=91)
    losses = model(images, targets)        # training: dict of losses
    detections = model(images)             # eval: [{"boxes", "labels", "scores", "masks"}] per image
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..eval.detection_metrics import DetectionMetrics
from ..eval.evaluate import autocast_context
from ._backbone import MultiScaleBackbone

__all__ = [
    "DETECTORS", "BackboneWithFPN", "DetectionNetwork", "create_detector", "detector_with_network",
    "evaluate_detection", "split_network_outputs",
]  # fmt: skip

DETECTORS = ("faster_rcnn", "mask_rcnn", "retinanet", "fcos")


class BackboneWithFPN(nn.Module):
    """A timm backbone's maps at `strides` + torchvision's FeaturePyramidNetwork.

    Two-stage detectors (Faster/Mask R-CNN) take strides 4-32 and an extra max-pooled level (maps "0"-"3" and
    "pool", strides 4-64); one-stage ones (RetinaNet, FCOS) strides 8-32 and two extra convs (P3-P7, strides 8-128).

    Args:
        backbone: a timm model name or a `features_only` module with `feature_info`.
        out_channels: the pyramid's width.
        strides: the backbone maps fed to the pyramid.
        extra_levels: "pool" (max-pool of the last map) or "p6p7" (two stride-2 convs).
        **backbone_kwargs: to `timm.create_model` (e.g. `pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`).
    """

    def __init__(self, backbone: str | nn.Module, out_channels: int = 256, strides: Sequence[int] = (4, 8, 16, 32),
                 extra_levels: str = "pool", **backbone_kwargs):  # fmt: skip
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

        if extra_levels not in ("pool", "p6p7"):
            raise ValueError(f"extra_levels must be 'pool' or 'p6p7', got {extra_levels!r}")
        self.body = MultiScaleBackbone(backbone, strides, **backbone_kwargs)
        extra = LastLevelMaxPool() if extra_levels == "pool" else LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(self.body.channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def create_detector(detector: str, backbone: str | nn.Module, num_classes: int, fpn_channels: int = 256,
                    backbone_kwargs: dict | None = None, **detector_kwargs) -> nn.Module:  # fmt: skip
    """torchvision's `detector` ("faster_rcnn", "mask_rcnn", "retinanet" or "fcos") on `BackboneWithFPN(backbone)`
    (strides 4-32 + a pooled level for the R-CNNs, 8-32 + P6/P7 for the one-stage detectors, as torchvision has it).

    The targets' labels index the class logits for every detector, background 0 included: `num_classes` must exceed
    the largest label (COCO: 91), as in torchvision. `detector_kwargs` go to the torchvision class (e.g. `min_size`,
    `max_size`, `box_score_thresh`); `backbone_kwargs` to `timm.create_model`."""
    from torchvision.models import detection

    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (the background and at least one class), got {num_classes}")
    if detector == "fcos" and fpn_channels % 32:  # its head's GroupNorm has 32 groups
        raise ValueError(f"fpn_channels must be a multiple of 32 for fcos (GroupNorm(32)), got {fpn_channels}")
    two_stage = detector in ("faster_rcnn", "mask_rcnn")
    body = BackboneWithFPN(
        backbone, fpn_channels, strides=(4, 8, 16, 32) if two_stage else (8, 16, 32),
        extra_levels="pool" if two_stage else "p6p7", **(backbone_kwargs or {}),
    )  # fmt: skip
    if detector == "fcos":  # mmdet's FCOS test setting (torchvision's default 0.2 drops low-score boxes AP counts)
        detector_kwargs.setdefault("score_thresh", 0.05)
    cls = {"faster_rcnn": detection.FasterRCNN, "mask_rcnn": detection.MaskRCNN,
           "retinanet": detection.RetinaNet, "fcos": detection.FCOS}[detector]  # fmt: skip
    return cls(body, num_classes=num_classes, **detector_kwargs)


class DetectionNetwork(nn.Module):
    """A torchvision detector's network without its pre- and post-processing, for export (`sfmamba export`).

    torch.export cannot trace a whole torchvision detector: its box decoding and NMS branch on data-dependent sizes
    (`batched_nms` in torchvision/ops/boxes.py), so those stay in Python. This module is what runs between them: the
    batch the detector's transform makes (images normalised by its `image_mean`/`image_std`, resized to short side
    `min_size` and long side at most `max_size`, zero-padded at the bottom and right to a multiple of 32) -> the
    backbone and feature pyramid (maps "0", "1", ... as the detector names them) and the dense head's raw outputs:
    for RetinaNet and FCOS the head's "cls_logits", "bbox_regression" (and FCOS's "bbox_ctrness") over all levels'
    anchors, for Faster and Mask R-CNN the region-proposal head's "objectness_<level>" and "rpn_deltas_<level>" per
    level. The modules are the detector's own (shared, not copied). `detector_with_network` puts the processing back
    around a network like this one (an exported program's module, say)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        rpn = getattr(detector, "rpn", None)
        self.backbone = detector.backbone
        self.head = rpn.head if rpn is not None else detector.head
        self.two_stage = rpn is not None

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.backbone(images)
        outputs = OrderedDict(maps)
        if self.two_stage:
            for kind, per_level in zip(RPN_OUTPUTS, self.head(list(maps.values()))):
                outputs.update((f"{kind}_{name}", value) for name, value in zip(maps, per_level))
        else:
            outputs.update(self.head(list(maps.values())))
        return outputs


HEAD_OUTPUTS = ("cls_logits", "bbox_regression", "bbox_ctrness")  # a one-stage head's (torchvision's names)
RPN_OUTPUTS = ("objectness", "rpn_deltas")  # per level, "<kind>_<level>"


def split_network_outputs(outputs: dict[str, Tensor]) -> tuple[OrderedDict[str, Tensor], object]:
    """`DetectionNetwork`'s outputs as torchvision passes them on: (the pyramid maps, the dense head's outputs: a dict
    for RetinaNet/FCOS, (objectness per level, box deltas per level) for the R-CNNs)."""
    rpn = [k for k in outputs if k.startswith(tuple(f"{kind}_" for kind in RPN_OUTPUTS))]
    head = [k for k in outputs if k in HEAD_OUTPUTS]
    maps = OrderedDict((k, v) for k, v in outputs.items() if k not in rpn and k not in head)
    if rpn:
        return maps, tuple([outputs[f"{kind}_{name}"] for name in maps] for kind in RPN_OUTPUTS)
    return maps, {k: outputs[k] for k in head}


class _NetworkMaps(nn.Module):
    """Stands in for a detector's backbone: runs `network` on the transform's batch and keeps the dense head's
    outputs for `_NetworkHead`, which takes them (they are not kept past the call)."""

    def __init__(self, network):
        super().__init__()
        self.network = [network]  # (a list: not a submodule, so eval() leaves it alone: an exported program's refuses)
        self.head_outputs = None

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps, self.head_outputs = split_network_outputs(self.network[0](x))
        return maps


class _NetworkHead(nn.Module):
    """Stands in for a detector's dense head (or region-proposal head): the outputs `_NetworkMaps` kept."""

    def __init__(self, maps: _NetworkMaps):
        super().__init__()
        self.maps = [maps]  # (a list: not a submodule twice)

    def forward(self, features: list[Tensor]) -> object:
        outputs, self.maps[0].head_outputs = self.maps[0].head_outputs, None
        return outputs


def _with_modules(module: nn.Module, **replaced: nn.Module) -> nn.Module:
    """A shallow copy of `module` with some submodules replaced (the others shared)."""
    twin = copy.copy(module)
    twin._modules = {**module._modules, **replaced}
    return twin


class _EvalOnly(nn.Module):
    """Runs `detector` in eval mode and puts each of its modules back in the mode it was in (the modules it shares
    with the original detector included: that one may go on training)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        modes = [(module, module.training) for module in self.detector.modules()]
        self.detector.eval()
        try:
            return self.detector(images)
        finally:
            for module, training in modes:
                module.training = training


def detector_with_network(detector: nn.Module, network, size: Sequence[int]) -> nn.Module:
    """`detector`'s inference with its backbone and dense head replaced by `network`, a callable with
    `DetectionNetwork`'s inputs and outputs at a fixed `size` (height, width), e.g. `sfmamba.export.load_program(path)
    .module()` of one exported at that size: torchvision's normalisation, resize, anchors, box decoding, NMS (and the
    R-CNNs' RoI heads, in eager PyTorch) run around it as in `detector`, on every batch zero-padded to `size` (so
    each image, once resized, must fit in it). The detections equal `detector(images)`'s where the detector's own
    padding (the batch's largest resized image, rounded up to 32) is `size`; elsewhere they are the detector's on the
    larger padding, which changes the features (the backbones mix tokens over the whole padded image). The
    detector's other modules are shared, not copied, and stay in the mode they were in."""
    height, width = size

    def pad_to_size(images: list[Tensor], size_divisible: int = 32) -> Tensor:
        too_large = [tuple(image.shape[-2:]) for image in images if image.shape[-2] > height or image.shape[-1] > width]
        if too_large:
            raise ValueError(f"size: resized images of {too_large} do not fit the network's {height} x {width}")
        batch = images[0].new_zeros(len(images), images[0].shape[0], height, width)
        for padded, image in zip(batch, images):
            padded[:, : image.shape[-2], : image.shape[-1]] = image
        return batch

    transform = copy.copy(detector.transform)
    transform.batch_images = pad_to_size  # (an instance attribute: the copy's own batching)
    maps = _NetworkMaps(network)
    rpn = getattr(detector, "rpn", None)
    head = {"rpn": _with_modules(rpn, head=_NetworkHead(maps))} if rpn is not None else {"head": _NetworkHead(maps)}
    return _EvalOnly(_with_modules(detector, transform=transform, backbone=maps, **head))


@torch.no_grad()
def evaluate_detection(model: nn.Module, loader, device: torch.device | str, amp_dtype: torch.dtype | None = None,
                       ) -> dict[str, float]:  # fmt: skip
    """COCO's box AP/AR (`bbox_AP`, `bbox_AP50`, ...) and, where the model predicts masks, mask AP/AR (`segm_...`)
    over `loader`'s (images, targets) batches, in percent (`DetectionMetrics`). Under torchrun each process scores
    its share of the images and the result covers all of them."""
    device = torch.device(device)
    model.eval()
    roi_heads = getattr(model, "roi_heads", None)
    kinds = ["bbox", "segm"] if roi_heads is not None and roi_heads.has_mask() else ["bbox"]
    metrics = {kind: DetectionMetrics(kind) for kind in kinds}
    for images, targets in loader:
        with autocast_context(device, amp_dtype):
            outputs = model([image.to(device, non_blocking=True) for image in images])
        outputs = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outputs]
        for metric in metrics.values():
            metric.update(outputs, targets)
    return {f"{kind}_{name}": value for kind, metric in metrics.items() for name, value in metric.compute().items()}
