from .conv1d import depthwise_conv1d
from .cross_scan import cross_merge, cross_scan
from .layer_norm import layer_norm
from .selective_scan import selective_scan, selective_scan_fn, selective_scan_naive
from .vmeanba import mean_selective_scan

__all__ = [
    "cross_merge",
    "cross_scan",
    "depthwise_conv1d",
    "layer_norm",
    "mean_selective_scan",
    "selective_scan",
    "selective_scan_fn",
    "selective_scan_naive",
]
