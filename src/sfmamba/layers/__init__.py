"""Layers built on the ops: token mixers and their pieces, all in (batch, length, channels) layout."""

from .aux_tokens import AuxTokens, swap_aux_tokens_
from .conv_bn import conv_bn_act, fuses_conv_bn
from .linear import Mlp, fused_linear
from .mamba_mixer import MambaVisionMixer
from .norm import LayerNorm
from .scan_mixers import GroupedLinear, ScanMixer, SeriesScanMixer
from .ss2d import SS2D

__all__ = [
    "AuxTokens",
    "GroupedLinear",
    "LayerNorm",
    "MambaVisionMixer",
    "Mlp",
    "SS2D",
    "ScanMixer",
    "SeriesScanMixer",
    "conv_bn_act",
    "fused_linear",
    "fuses_conv_bn",
    "swap_aux_tokens_",
]
