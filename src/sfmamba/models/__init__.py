"""timm model files. Importing this package registers every model with timm (`timm.create_model(name)`)."""

from .mambavision import MambaVision

__all__ = ["MambaVision"]
