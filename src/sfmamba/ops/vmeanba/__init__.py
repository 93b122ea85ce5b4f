from .interface import mean_selective_scan
from .naive import mean_selective_scan_naive

__all__ = ["mean_selective_scan", "mean_selective_scan_naive"]
