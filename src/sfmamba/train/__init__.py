"""Training: the recipe (`TrainConfig`), the loop (`Trainer`, `train`), atomic checkpoints and run history."""

from .checkpoint import CheckpointError, load_weights, read_metadata, save_weights
from .config import TrainConfig, load_yaml_config, merge_config
from .trainer import Trainer, create_model, train

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "Trainer",
    "create_model",
    "load_weights",
    "load_yaml_config",
    "merge_config",
    "read_metadata",
    "save_weights",
    "train",
]
