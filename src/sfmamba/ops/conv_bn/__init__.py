from .interface import bias_act, fold_batch_norm, runs_fused
from .naive import ACTIVATIONS, bias_act_naive, fold_batch_norm_naive

__all__ = ["ACTIVATIONS", "bias_act", "bias_act_naive", "fold_batch_norm", "fold_batch_norm_naive", "runs_fused"]
