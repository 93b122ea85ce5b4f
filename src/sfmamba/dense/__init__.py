"""Dense prediction on the backbones' multi-scale features: UperNet semantic segmentation (`upernet`), its
evaluation by whole images or sliding windows (`inference`), and torchvision's detectors (`detection`)."""

from ._backbone import MultiScaleBackbone
from .detection import DETECTORS, BackboneWithFPN, create_detector, evaluate_detection
from .inference import evaluate_segmentation, slide_inference
from .upernet import FCNHead, PyramidPooling, UperNet, UperNetHead, segmentation_loss

__all__ = [
    "DETECTORS", "BackboneWithFPN", "FCNHead", "MultiScaleBackbone", "PyramidPooling", "UperNet", "UperNetHead",
    "create_detector", "evaluate_detection", "evaluate_segmentation", "segmentation_loss", "slide_inference",
]  # fmt: skip
