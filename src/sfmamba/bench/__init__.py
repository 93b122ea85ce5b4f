"""Whole-model benchmarks: throughput (`throughput`), kernel-time breakdowns (`profile`) and the official
MambaVision baseline (`official`). The `sfmamba bench` command line drives them."""

from .official import official_model
from .profile import profile_model
from .throughput import measure_inference, measure_train

__all__ = ["measure_inference", "measure_train", "profile_model", "official_model"]
