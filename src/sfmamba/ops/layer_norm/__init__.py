from .interface import layer_norm
from .naive import layer_norm_naive

__all__ = ["layer_norm", "layer_norm_naive"]
