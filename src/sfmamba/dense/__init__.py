"""Dense prediction on the backbones' multi-scale features: UperNet semantic segmentation (`upernet`), its
evaluation by whole images or sliding windows (`inference`), torchvision's detectors (`detection`), and either model
rebuilt from its trainer's weights file (`checkpoint`)."""

from ._backbone import MultiScaleBackbone
from .checkpoint import model_from_checkpoint
from .detection import (
    DETECTORS,
    BackboneWithFPN,
    DetectionNetwork,
    create_detector,
    detector_with_network,
    evaluate_detection,
)
from .inference import evaluate_segmentation, slide_inference
from .upernet import FCNHead, PyramidPooling, UperNet, UperNetHead, segmentation_loss

__all__ = [
    "DETECTORS", "BackboneWithFPN", "DetectionNetwork", "FCNHead", "MultiScaleBackbone", "PyramidPooling", "UperNet",
    "UperNetHead", "create_detector", "detector_with_network", "evaluate_detection", "evaluate_segmentation",
    "model_from_checkpoint", "segmentation_loss", "slide_inference",
]  # fmt: skip
