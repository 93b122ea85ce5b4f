"""Dense prediction on the backbones' multi-scale features: UperNet semantic segmentation (`upernet`) and
torchvision's detectors (`detection`)."""

from ._backbone import MultiScaleBackbone
from .detection import DETECTORS, BackboneWithFPN, create_detector
from .upernet import FCNHead, PyramidPooling, UperNet, UperNetHead, segmentation_loss

__all__ = [
    "DETECTORS", "BackboneWithFPN", "FCNHead", "MultiScaleBackbone", "PyramidPooling", "UperNet", "UperNetHead",
    "create_detector", "segmentation_loss",
]  # fmt: skip
