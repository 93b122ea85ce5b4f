from .interface import add_layer_norm, fused_add_layer_norm, runs_fused
from .naive import add_layer_norm_naive

__all__ = ["add_layer_norm", "add_layer_norm_naive", "fused_add_layer_norm", "runs_fused"]
