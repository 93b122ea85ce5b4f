from .interface import cross_merge, cross_scan
from .naive import cross_merge_naive, cross_scan_naive

__all__ = ["cross_merge", "cross_merge_naive", "cross_scan", "cross_scan_naive"]
