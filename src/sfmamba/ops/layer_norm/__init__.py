from .interface import layer_norm, layer_norm_residual
from .naive import layer_norm_naive

__all__ = ["layer_norm", "layer_norm_naive", "layer_norm_residual"]
