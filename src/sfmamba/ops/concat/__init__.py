from .interface import concat_last, split_last
from .naive import concat_last_naive, split_last_naive

__all__ = ["concat_last", "concat_last_naive", "split_last", "split_last_naive"]
