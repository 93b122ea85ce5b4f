"""Checkpoints that never lose work: every file is written to a temporary name and renamed into place.

A checkpoint named X in a run folder is
- `X.safetensors`: the model weights, with metadata to rebuild the model (`model`, `model_kwargs`, `num_classes`, ...);
- `X-ema.safetensors`: the EMA weights, when the run keeps an EMA;
- `X.state.pt` (only for `last`): optimizer, scheduler, grad scaler, EMA step, the RNG states of every rank, the step
  and epoch; loaded with `torch.load(weights_only=True)` (it holds only tensors and plain Python values).
All three are written to temporary names first and then renamed into place, the state last; all record the step, so
a run killed between the renames is detected on resume (`load_training_checkpoint` compares them) instead of silently
mixing two steps.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ..layers.vmeanba_switch import apply as apply_vmeanba
from ..models._checkpoint import VMEANBA_METADATA_KEY
from ..utils.files import atomic_write, atomic_write_all

STATE_SUFFIX = ".state.pt"
WEIGHTS_SUFFIX = ".safetensors"
EMA_SUFFIX = "-ema.safetensors"
FORMAT = "sfmamba-train-1"
_logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or inconsistent; the message names the file."""


def _weights_of(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied weights) and non-contiguous tensors: one host copy of each, contiguous
    return {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for k, v in module.state_dict().items()
    }


def save_weights(path: str | Path, module: nn.Module, metadata: dict[str, object]) -> None:
    """The module's state dict as safetensors; metadata values are stored as JSON strings."""
    write_weights(path, _weights_of(module), metadata)


def write_weights(path: str | Path, weights: dict[str, torch.Tensor], metadata: dict[str, object]) -> None:
    atomic_write(path, _weights_writer(weights, metadata))


def _weights_writer(weights: dict[str, torch.Tensor], metadata: dict[str, object]) -> Callable[[str], None]:
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    return lambda temp: save_file(weights, temp, metadata=meta)


def read_metadata(path: str | Path) -> dict[str, object]:
    """The metadata `save_weights` stored (decoded from JSON); an empty dict for a file from elsewhere."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        return {}
    return {k: json.loads(v) for k, v in meta.items() if k != "format"}


def load_weights(path: str | Path, module: nn.Module) -> dict[str, object]:
    """Load `path` into `module` (strict) and return its metadata; mismatched keys or shapes raise CheckpointError."""
    metadata = read_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: does not match the model ({str(err).splitlines()[0]} ...)") from err
    return metadata


def capture_rng_state() -> dict[str, object]:
    """The RNG states of Python, NumPy and torch (CPU and the current CUDA device) as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, object] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, object]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoint_paths(run_dir: str | Path, name: str) -> dict[str, Path]:
    run_dir = Path(run_dir)
    return {
        "weights": run_dir / f"{name}{WEIGHTS_SUFFIX}",
        "ema": run_dir / f"{name}{EMA_SUFFIX}",
        "state": run_dir / f"{name}{STATE_SUFFIX}",
    }


def save_training_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    ema: nn.Module | None,
    training_state: dict[str, object],
    metadata: dict[str, object],
    name: str = "last",
    writer: BackgroundWriter | None = None,
) -> None:
    """Weights (+ EMA weights), then the training state; `training_state` must hold 'step'.

    With a `writer`, everything is copied to host memory here and the files are written on its thread."""
    paths = checkpoint_paths(run_dir, name)
    step_meta = {**metadata, "step": training_state["step"], "epoch": training_state.get("epoch")}
    weights = _weights_of(model)
    ema_weights = _weights_of(ema) if ema is not None else None
    state = _to_cpu(training_state)

    def write() -> None:  # the state renamed last: see the module docstring
        files = [(paths["weights"], _weights_writer(weights, step_meta))]
        if ema_weights is not None:
            files.append((paths["ema"], _weights_writer(ema_weights, step_meta)))
        files.append((paths["state"], lambda temp: torch.save(state, temp)))
        atomic_write_all(files)

    if writer is None:
        write()
    else:
        writer.submit(write)


def _to_cpu(value):
    """A copy of nested dicts/lists/tuples with every tensor copied to host memory (optimizer states live on the GPU
    and keep changing after the call)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


class BackgroundWriter:
    """Writes checkpoint files on one worker thread, so a training step pays only for the copy to host memory (a
    ~150 MB checkpoint takes ~0.25 s to write: 4 % of a CUDA-graphed recipe's steps at the default interval).

    One write is in flight at a time (`submit` waits for the previous one); `wait()` before reading the files or
    exiting. A failed write raises from the next `submit`, `wait` or `close` (`wait(raise_error=False)` logs it
    instead: while another error is on its way out).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sfmamba-checkpoint")
        self._pending: Future | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(write)

    def wait(self, raise_error: bool = True) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        error = pending.exception()
        if error is not None and raise_error:
            raise error
        if error is not None:
            _logger.error("writing a checkpoint failed", exc_info=error)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def resolve_resume_path(resume: str | Path) -> Path:
    """A run folder, `X.safetensors` or `X.state.pt` -> the state file of that checkpoint (`last` in a folder)."""
    path = Path(resume)
    if path.is_dir():
        path = path / f"last{STATE_SUFFIX}"
    elif path.name.endswith(EMA_SUFFIX):
        path = path.with_name(path.name[: -len(EMA_SUFFIX)] + STATE_SUFFIX)
    elif path.suffix == WEIGHTS_SUFFIX:
        path = path.with_name(path.name[: -len(WEIGHTS_SUFFIX)] + STATE_SUFFIX)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no training state to resume from (expected a run folder holding "
            f"last{STATE_SUFFIX} and last{WEIGHTS_SUFFIX}, or one of those files)"
        )
    return path


def load_training_checkpoint(state_path: str | Path, model: nn.Module, ema: nn.Module | None) -> dict[str, object]:
    """Load the weights beside `state_path` into `model` (and `ema`) and return the training state."""
    state_path = Path(state_path)
    name = state_path.name[: -len(STATE_SUFFIX)]
    paths = checkpoint_paths(state_path.parent, name)
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or truncated files
        raise CheckpointError(f"{state_path}: cannot be loaded as a training state ({err})") from err
    weights_meta = load_weights(paths["weights"], model)
    if weights_meta.get("step") != state.get("step"):
        raise CheckpointError(
            f"{paths['weights']} is from step {weights_meta.get('step')} but {state_path} from step "
            f"{state.get('step')}: the run was killed while writing; resume from another copy"
        )
    if ema is not None:
        if not paths["ema"].is_file():
            raise CheckpointError(f"{paths['ema']}: missing (the run being resumed kept no EMA; drop --model-ema)")
        ema_step = load_weights(paths["ema"], ema).get("step")
        if ema_step != state.get("step"):  # e.g. left by an earlier session of the run that kept an EMA
            raise CheckpointError(
                f"{paths['ema']} is from step {ema_step} but {state_path} from step {state.get('step')}: "
                "the EMA weights are stale (drop --model-ema to resume without them)"
            )
    return state


def refuse_dense_weights(path: str | Path, metadata: dict[str, object]) -> None:
    """CheckpointError for a `train-seg` / `train-det` weights file (its "model" names only the backbone)."""
    from ..dense.checkpoint import DENSE_TASKS  # (here: sfmamba.dense imports this module)

    trainer, _ = DENSE_TASKS.get(metadata.get("task"), (None, None))
    if trainer:
        raise CheckpointError(f"{path}: a {metadata['task']} model's weights ({trainer}), not a classifier's: rebuild "
                              f"it with sfmamba.dense.model_from_checkpoint, score it with `sfmamba {trainer} "
                              f"--evaluate-only`")  # fmt: skip


def model_from_checkpoint(path: str | Path, **model_kwargs) -> tuple[nn.Module, dict[str, object]]:
    """Rebuild the model a `sfmamba train` weights file describes (its metadata) and load the weights.

    `model_kwargs` override the stored ones (e.g. drop rates); returns (model in eval mode, metadata).
    """
    import timm

    metadata = read_metadata(path)
    if "model" not in metadata:
        raise CheckpointError(f"{path}: no sfmamba training metadata (name the model with --model to load it)")
    refuse_dense_weights(path, metadata)
    kwargs = {**metadata.get("model_kwargs", {}), **model_kwargs}
    model = timm.create_model(metadata["model"], num_classes=metadata["num_classes"], **kwargs)
    load_weights(path, model)
    if metadata.get(VMEANBA_METADATA_KEY):  # a `sfmamba compress vmeanba` file: its blocks run VMeanba again
        apply_vmeanba(model, metadata[VMEANBA_METADATA_KEY])
    return model.eval(), metadata
