"""What the dense-prediction trainers (`train` for segmentation, `train_det` for detection) share: the optimizer's
parameter groups, the backbone's creation arguments, a new run's args.json or a resumed run's checked state, and
`last`'s training state written with every process's RNG state and pending losses."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..data.loader import set_loader_epoch
from ..train.checkpoint import (
    capture_rng_state,
    load_training_checkpoint,
    resolve_resume_path,
    restore_rng_state,
    save_training_checkpoint,
)
from ..train.distributed import all_gather_objects
from ..train.history import rows_to_csv
from ..utils.files import atomic_write_text

AMP_DTYPES = {"bfloat16": torch.bfloat16}  # (float16 would need a GradScaler)
_logger = logging.getLogger(__name__)


def backbone_kwargs(extra: dict, drop_path_rate: float | None, pretrained_backbone: str | None) -> dict:
    """`timm.create_model` keyword arguments for the backbone: `extra`, the drop-path rate and a classification
    checkpoint to start from (timm's `pretrained_cfg_overlay`, so official and `sfmamba train` files both load)."""
    kwargs = dict(extra)
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_backbone:
        if not Path(pretrained_backbone).is_file():
            raise FileNotFoundError(f"pretrained_backbone: no such file {pretrained_backbone}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_backbone)))
    return kwargs


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices and kernels, none on norms and biases (1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def start_or_resume(config, model: nn.Module, optimizer, keys: tuple[str, ...], world: int, rank: int,
                    device: torch.device, best_key: str) -> tuple[int, float, list, list]:  # fmt: skip
    """(step, best score, history, pending losses) to start from: a new run's (its args.json written), or, with
    `config.resume`, the resumed run's (its settings named by `keys` and its process count checked; the weights, the
    optimizer and this process's RNG state loaded; `best_key` names the best score in the state)."""
    output = Path(config.output)
    if not config.resume:
        if is_main():
            _write_args(output, config)
        return 0, -1.0, [], []
    state_path = resolve_resume_path(config.resume)
    _check_resume_settings(config, state_path.parent, keys)  # (the resumed run's folder: --output may differ)
    if is_main() and not (output / "args.json").is_file():
        _write_args(output, config)
    state = load_training_checkpoint(state_path, model, None)
    _check_resume_world(state, world)
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_state(state["rng"][rank])
    losses = [torch.tensor(v, device=device) for v in state["pending_losses"]]  # since the last evaluation
    _logger.info("resumed from %s at step %d", state_path, state["step"])
    return state["step"], state[best_key], list(state["history"]), losses


def _write_args(output: Path, config) -> None:
    """The run's settings as `output/args.json` (a dataclass)."""
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "args.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def _check_resume_settings(config, run_dir: Path, keys: tuple[str, ...]) -> None:
    """A resumed run must be the same run: the settings named by `keys`, against the resumed run's args.json (checked
    before any weights load, so a changed model is reported as the change it is)."""
    args_file = run_dir / "args.json"
    if args_file.is_file():
        before = json.loads(args_file.read_text())
        now = json.loads(json.dumps(dataclasses.asdict(config)))  # (tuples as lists, as written)
        changed = [f"{k} {before.get(k)!r} -> {now[k]!r}" for k in keys if before.get(k) != now[k]]
        if changed:
            raise ValueError(f"resume: settings differ from {args_file}: {', '.join(changed)}")


def _check_resume_world(state: dict, world: int) -> None:
    """... and the same number of processes (each has its own RNG state and share of the data)."""
    if state.get("world_size", 1) != world:
        raise ValueError(f"resume: the run used {state.get('world_size', 1)} process(es), this one {world}: resume "
                         f"with the same number")  # fmt: skip


def run_batches(loader: torch.utils.data.DataLoader, start: int, stop: int) -> Iterator:
    """The run's batches `start` to `stop` - 1, epoch after epoch: each epoch's order and augmentations depend only
    on (seed, epoch, index), so a resumed run starts mid-epoch at the batch the stopped one would have taken next."""
    step, per_epoch = start, loader.sampler.batches_per_epoch()
    while step < stop:
        epoch, position = divmod(step, per_epoch)
        set_loader_epoch(loader, epoch, position)
        for batch in loader:
            yield batch
            step += 1
            if step >= stop:
                return


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def rank_mean(values: list) -> list[float]:
    """Each value averaged over the processes (one all-reduce); all processes must call it."""
    if not values:
        return []
    stacked = torch.stack(values).double()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(stacked)
        stacked /= torch.distributed.get_world_size()
    return stacked.tolist()


def is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def save_last(output: Path, model: nn.Module, optimizer, state: dict, pending_losses: list, world: int,
              metadata: dict) -> None:  # fmt: skip
    """`last` (weights + `state` + the optimizer, every process's RNG state and the training losses since the last
    evaluation averaged over the processes; atomically) and summary.csv from `state["history"]`. Every process calls
    it; the main process writes."""
    rng = all_gather_objects(capture_rng_state())
    pending = rank_mean(pending_losses)
    if not is_main():
        return
    full = dict(state, optimizer=optimizer.state_dict(), rng=rng, pending_losses=pending, world_size=world)
    save_training_checkpoint(output, model, None, full, metadata)
    atomic_write_text(output / "summary.csv", rows_to_csv(state["history"]))
