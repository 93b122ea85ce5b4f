from .interface import drop_path_add
from .naive import drop_path_add_naive

__all__ = ["drop_path_add", "drop_path_add_naive"]
