"""Checkpoint files: read them safely and load them into a model (timm's `custom_load` hook).

timm calls `model.load_pretrained(path)` for `pretrained=True` when the pretrained cfg sets `custom_load=True`
(a `file=` overlay or a downloaded URL). Our models route that call here so that
- `torch.load` runs with `weights_only=True`, allowing only `argparse.Namespace` beyond tensors and plain
  containers: training files written by timm's CheckpointSaver (the official MambaVision `train.py`) pickle their
  command-line `args`; anything else that is pickled (code) is refused;
- a file holding both `state_dict` and `state_dict_ema` loads `state_dict`, as the official MambaVision loader does
  (timm's generic loader would take the EMA weights and the outputs would differ from the official model's);
- an unreadable file (truncated, corrupt, not a checkpoint) is a `RuntimeError` naming the file;
- a classifier of another size is left at its initialisation (like timm's `num_classes` adaptation);
- Hugging Face `model.safetensors` files (keys under `model.`) load like the `.pth.tar` files.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from os import PathLike
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from ..layers.vmeanba_switch import apply as apply_vmeanba

__all__ = [
    "SAFE_GLOBALS",
    "VMEANBA_METADATA_KEY",
    "create_with_file_hooks",
    "load_checkpoint_file",
    "mark_blocks_from_file",
    "read_checkpoint",
    "read_compressed_blocks",
    "route_files_to_load_pretrained",
]
_logger = logging.getLogger(__name__)

SAFE_GLOBALS = (argparse.Namespace,)
VMEANBA_METADATA_KEY = "vmeanba_blocks"  # safetensors metadata: JSON list of the converted blocks' module names


def read_checkpoint(path: str | PathLike) -> dict:
    """The raw content of a `.safetensors` file or a `torch.save` file (`.pth`, `.pth.tar`, `.bin`), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(str(path), device="cpu")
        safe_globals = getattr(torch.serialization, "safe_globals", None)  # a context manager from torch 2.5
        if safe_globals is None:
            torch.serialization.add_safe_globals(list(SAFE_GLOBALS))
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # re-raised with the file's name: truncated zip, bad header, refused pickled code
        raise RuntimeError(f"cannot read checkpoint file {str(path)!r}: {err}") from err


def _unwrap_hf(checkpoint: dict, model: nn.Module, prefix: str = "model.") -> dict:
    """NVIDIA's Hugging Face `model.safetensors` files nest the MambaVision network under `model.` (their
    `MambaVisionModelForImageClassification.model`); strip that prefix when every key has it and the model's don't."""
    keys = list(checkpoint)
    if not keys or not all(isinstance(v, Tensor) and k.startswith(prefix) for k, v in checkpoint.items()):
        return checkpoint
    if any(k.startswith(prefix) for k in model.state_dict()):
        return checkpoint
    return {k.removeprefix(prefix): v for k, v in checkpoint.items()}


def load_checkpoint_file(
    model: nn.Module, path: str | PathLike, filter_fn: Callable[[dict, nn.Module], dict[str, Tensor]]
) -> None:
    """Load `path` into `model` through `filter_fn(raw_checkpoint, model)`, which maps the keys and raises on any
    mismatch except the classifier's shape; a classifier of another shape keeps the model's initialisation."""
    state = filter_fn(_unwrap_hf(read_checkpoint(path), model), model)
    own = model.state_dict()
    skipped = sorted(k for k, v in state.items() if k in own and v.shape != own[k].shape)
    for key in skipped:
        del state[key]
    if skipped:
        _logger.info("classifier of another size in %s: kept the model's initialisation for %s", path, skipped)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - set(skipped) or unexpected:  # filter_fn should have caught these; never load silently
        raise RuntimeError(f"checkpoint {str(path)!r} does not match: missing {missing}, unexpected {unexpected}")


def route_files_to_load_pretrained(kwargs: dict) -> dict:
    """`kwargs` for `build_model_with_cfg` with `custom_load=True` added to a `file`/`url` pretrained_cfg_overlay.

    timm resets `custom_load` to False when an overlay names a new weight source, which would send
    `pretrained_cfg_overlay=dict(file=PATH)` through its generic loader (EMA weights first, no file name in errors);
    an explicit `custom_load` in the overlay is kept.
    """
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if overlay.get("file") or overlay.get("url"):
        kwargs = {**kwargs, "pretrained_cfg_overlay": {"custom_load": True, **overlay}}
    return kwargs


def read_compressed_blocks(path: str | PathLike) -> list[str] | None:
    """The VMeanba-converted blocks recorded in a safetensors file's metadata (`sfmamba compress vmeanba`), or None."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        value = (f.metadata() or {}).get(VMEANBA_METADATA_KEY)
    if value is None:
        return None
    blocks = json.loads(value)
    if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
        raise ValueError(f"{path}: metadata {VMEANBA_METADATA_KEY} must be a JSON list of module names, got {value!r}")
    return blocks


def mark_blocks_from_file(model: nn.Module, path: str | PathLike | None) -> nn.Module:
    """Convert the blocks a checkpoint's metadata records (no-op for other files)."""
    if path is None or Path(path).suffix != ".safetensors":
        return model
    blocks = read_compressed_blocks(path)
    return model if blocks is None else apply_vmeanba(model, blocks)


def create_with_file_hooks(build: Callable[..., nn.Module], pretrained: bool, kwargs: dict) -> nn.Module:
    """`build(**kwargs)` (a `build_model_with_cfg` call) routed through our loader for `file=`/`url=` overlays, then
    with the VMeanba blocks a compressed file records converted, so `timm.create_model(name, pretrained=True,
    pretrained_cfg_overlay=dict(file=...))` rebuilds a compressed model."""
    model = build(**route_files_to_load_pretrained(kwargs))
    file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file") if pretrained else None
    return mark_blocks_from_file(model, file)
