"""mamba_ssm's scan entry point, answered by sfmamba's drop-in replacement."""

from sfmamba.ops import selective_scan_fn

__all__ = ["selective_scan_fn"]
