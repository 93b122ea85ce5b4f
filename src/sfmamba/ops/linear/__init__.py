from .interface import linear_act
from .naive import ACTIVATIONS, bias_act_grad_naive, linear_act_naive

__all__ = ["ACTIVATIONS", "bias_act_grad_naive", "linear_act", "linear_act_naive"]
