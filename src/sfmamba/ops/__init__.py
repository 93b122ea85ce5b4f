from .conv1d import depthwise_conv1d
from .selective_scan import selective_scan, selective_scan_fn, selective_scan_naive

__all__ = ["depthwise_conv1d", "selective_scan", "selective_scan_fn", "selective_scan_naive"]
