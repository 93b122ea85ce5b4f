"""Evaluation: classification and segmentation metrics, an evaluation loop with throughput, a confusion-matrix plot."""

from .detection_metrics import DetectionMetrics
from .evaluate import evaluate, plot_confusion_matrix
from .metrics import ClassificationMetrics, SegmentationMetrics

__all__ = ["ClassificationMetrics", "DetectionMetrics", "SegmentationMetrics", "evaluate", "plot_confusion_matrix"]
