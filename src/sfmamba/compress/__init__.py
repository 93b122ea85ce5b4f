"""Training-free compression: VMeanba block conversion and L1 unstructured pruning."""

from . import vmeanba
from .prune import prune_l1, sparsity

__all__ = ["prune_l1", "sparsity", "vmeanba"]
