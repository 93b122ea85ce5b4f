"""timm model files. Importing this package registers every model with timm (`timm.create_model(name)`)."""

from .mambavision import MambaVision
from .sf_mamba import SFMamba
from .vmamba import VMamba

__all__ = ["MambaVision", "SFMamba", "VMamba"]
