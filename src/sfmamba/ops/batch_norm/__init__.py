from .interface import batch_norm_act
from .naive import batch_norm_act_naive

__all__ = ["batch_norm_act", "batch_norm_act_naive"]
