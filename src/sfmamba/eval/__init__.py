"""Evaluation: classification metrics, an evaluation loop with throughput, a confusion-matrix plot."""

from .evaluate import evaluate, plot_confusion_matrix
from .metrics import ClassificationMetrics

__all__ = ["ClassificationMetrics", "evaluate", "plot_confusion_matrix"]
