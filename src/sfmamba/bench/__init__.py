"""Whole-model benchmarks: throughput (`throughput`) and kernel-time breakdowns (`profile`)."""

from .throughput import measure_inference, measure_train

__all__ = ["measure_inference", "measure_train"]
