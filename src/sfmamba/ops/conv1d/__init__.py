from .interface import depthwise_conv1d
from .naive import depthwise_conv1d_naive

__all__ = ["depthwise_conv1d", "depthwise_conv1d_naive"]
