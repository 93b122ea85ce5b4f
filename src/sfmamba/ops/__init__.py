from .selective_scan import selective_scan, selective_scan_fn, selective_scan_naive

__all__ = ["selective_scan", "selective_scan_fn", "selective_scan_naive"]
