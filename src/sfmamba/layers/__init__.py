"""Layers built on the ops: token mixers and their pieces, all in (batch, length, channels) layout."""

from .mamba_mixer import MambaVisionMixer

__all__ = ["MambaVisionMixer"]
