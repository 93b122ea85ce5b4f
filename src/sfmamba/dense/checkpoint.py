"""Rebuild a dense-prediction model from the weights file its trainer wrote (`train-seg`'s UperNet, `train-det`'s
detector): the file's metadata names the task, the backbone, the classes and the heads' sizes, so the model comes back
without repeating the training flags.

    model, metadata = model_from_checkpoint("output/ade/best.safetensors")   # UperNet or a torchvision detector
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..train.checkpoint import CheckpointError, load_weights, read_metadata

__all__ = ["DENSE_TASKS", "DETECTION_KEYS", "SEGMENTATION_KEYS", "model_from_checkpoint", "read_dense_metadata"]

# what each trainer's weights files record: the model's build arguments, then what scores it again as the run did
SEGMENTATION_KEYS = ("model", "num_classes", "channels", "aux_channels", "extra", "reduce_zero_label", "crop", "scale",
                     "slide")  # fmt: skip
DETECTION_KEYS = ("model", "detector", "num_classes", "fpn_channels", "extra", "min_size", "max_size", "dataset",
                  "seed")  # fmt: skip
DENSE_TASKS = {"segmentation": ("train-seg", SEGMENTATION_KEYS), "detection": ("train-det", DETECTION_KEYS)}


def read_dense_metadata(path: str | Path, task: str | None = None) -> dict[str, object]:
    """The metadata of a `train-seg` / `train-det` weights file (of `task` if given), checked to hold every key its
    model needs; CheckpointError names the file and what is missing."""
    if task is not None and task not in DENSE_TASKS:
        raise ValueError(f"task must be one of {sorted(DENSE_TASKS)}, got {task!r}")
    metadata = read_metadata(path)
    found = metadata.get("task")
    if found not in DENSE_TASKS or (task is not None and found != task):
        wanted = f"a {DENSE_TASKS[task][0]}" if task else "a train-seg or train-det"
        raise CheckpointError(f"{path}: not {wanted} weights file (its metadata names task {found!r})")
    trainer, keys = DENSE_TASKS[found]
    missing = [k for k in keys if k not in metadata]
    if missing:
        raise CheckpointError(
            f"{path}: its {trainer} metadata lacks {', '.join(missing)} (an older version's "
            f"file?): build the model by hand and load it with `sfmamba.train.load_weights`"
        )
    return metadata


def model_from_checkpoint(path: str | Path, task: str | None = None) -> tuple[nn.Module, dict[str, object]]:
    """(model in eval mode, metadata) from a `train-seg` weights file (`UperNet`) or a `train-det` one (the
    torchvision detector); `task` ("segmentation" or "detection") refuses the other kind."""
    from .detection import create_detector
    from .upernet import UperNet

    metadata = read_dense_metadata(path, task)
    if metadata["task"] == "segmentation":
        model = UperNet(metadata["model"], metadata["num_classes"], metadata["channels"], metadata["aux_channels"],
                        **metadata["extra"])  # fmt: skip
    else:
        model = create_detector(metadata["detector"], metadata["model"], metadata["num_classes"],
                                metadata["fpn_channels"], backbone_kwargs=metadata["extra"],
                                min_size=metadata["min_size"], max_size=metadata["max_size"])  # fmt: skip
    load_weights(path, model)
    return model.eval(), metadata
