"""sfmamba: fast vision state-space models (SF-Mamba, MambaVision, VMamba) with Triton kernels."""

__version__ = "0.1.0"
from . import models  # noqa: F401  (registers timm models)
