"""Train UperNet on a segmentation folder (mmseg's ADE20K layout): the papers' iteration-based recipe.

AdamW (no weight decay on norms and biases), a linear warm-up then a poly (power 1) decay to 0 by `iters`, batches
from `SegmentationTrainTransform`, `segmentation_loss` with the auxiliary head, mIoU on the validation split every
`eval_interval` steps (`evaluate_segmentation`, sliding windows by default). Runs resume exactly: the checkpoint
holds the weights, the optimizer, the step, the best mIoU and the RNG states, and the data order and augmentations
depend only on (seed, epoch, index), so a run killed after a checkpoint and resumed gives the uninterrupted run's
weights. Under torchrun each process takes its share of every batch of images (its own drop-path draws) and the
gradients are averaged; BatchNorm runs synchronised across CUDA processes (mmseg's SyncBN), and across CPU processes
rank 0's statistics are broadcast before each step (DDP's buffer broadcast).

Files in `output`: `last.safetensors` + `last.state.pt` (written atomically after each evaluation and every
`save_interval` steps; a resume checks that the settings and the number of processes are the run's), `best.safetensors`
(the best mIoU), `summary.csv` (one row per evaluation) and `args.json`. Command line: `sfmamba train-seg`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.loader import create_loader
from ..data.segmentation import SegmentationEvalTransform, SegmentationFolder, SegmentationTrainTransform
from ..train.checkpoint import save_weights
from ..train.distributed import average_gradients, broadcast_from_main, cleanup_distributed, init_distributed
from ..train.trainer import seed_everything
from ._run import (
    AMP_DTYPES,
    backbone_kwargs,
    is_main,
    param_groups,
    rank_mean,
    run_batches,
    save_last,
    set_lr,
    start_or_resume,
)
from .checkpoint import SEGMENTATION_KEYS, model_from_checkpoint
from .inference import evaluate_segmentation
from .upernet import UperNet, segmentation_loss

__all__ = ["SegmentationTrainConfig", "poly_lr", "train_segmentation"]
_logger = logging.getLogger(__name__)
RESUME_KEYS = ("model", "num_classes", "reduce_zero_label", "crop", "scale", "batch_size", "iters", "lr",
               "weight_decay", "warmup_iters", "seed", "channels", "aux_channels")  # fmt: skip


@dataclass
class SegmentationTrainConfig:
    """The run's settings (defaults: the MambaVision/VMamba ADE20K recipe, 160k iterations at batch 16)."""

    data_dir: str
    output: str | None  # the run folder (None only with evaluate_only)
    model: str = "sf_mamba_tiny"
    num_classes: int = 150
    reduce_zero_label: bool = True
    pretrained_backbone: str | None = None  # a classification checkpoint for the backbone
    drop_path_rate: float | None = None
    channels: int = 512
    aux_channels: int = 256
    aux_weight: float = 0.4
    crop: int = 512
    scale: tuple[int, int] = (2048, 512)
    batch_size: int = 16  # over all processes
    iters: int = 160_000
    lr: float = 6e-5
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    eval_interval: int = 16_000
    save_interval: int = 2000  # `last` between evaluations too: a kill loses at most these steps
    slide: bool = True  # evaluate by sliding crop x crop windows (stride 2/3 of the crop), else whole images
    amp: bool = False
    amp_dtype: str = "bfloat16"
    workers: int = 4
    seed: int = 0
    device: str | None = None
    resume: str | None = None
    evaluate_only: str | None = None  # a weights file (best.safetensors): score it on the validation split, no training
    stop_after: int | None = None  # end this run after this many steps (the schedule still spans `iters`)
    log_interval: int = 50
    extra: dict = field(default_factory=dict)  # more keyword arguments for the backbone's timm.create_model

    def check(self) -> None:
        if self.output is None and self.evaluate_only is None:
            raise ValueError("output (the run folder) is required, unless evaluate_only names a weights file")
        positive = ("num_classes", "crop", "batch_size", "iters", "eval_interval", "save_interval", "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_iters < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"warmup_iters and weight_decay must be >= 0 and lr > 0, got {self.warmup_iters}, "
                             f"{self.weight_decay}, {self.lr}")  # fmt: skip
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)} (float16 would need loss scaling), "
                             f"got {self.amp_dtype!r}")  # fmt: skip
        if self.aux_weight < 0 or (self.drop_path_rate is not None and not 0 <= self.drop_path_rate < 1):
            raise ValueError(f"aux_weight must be >= 0 and drop_path_rate in [0, 1), got {self.aux_weight}, "
                             f"{self.drop_path_rate}")  # fmt: skip
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")


def poly_lr(step: int, base_lr: float, iters: int, warmup_iters: int, warmup_ratio: float = 1e-6) -> float:
    """mmseg's schedule for these papers: LinearLR from `warmup_ratio` x base_lr to base_lr over `warmup_iters`, then
    PolyLR (power 1, eta_min 0) from base_lr to 0 over the remaining iterations."""
    if step < warmup_iters:
        return base_lr * (warmup_ratio + (1 - warmup_ratio) * step / warmup_iters)
    return base_lr * (1 - (step - warmup_iters) / max(iters - warmup_iters, 1))


def _build_model(config: SegmentationTrainConfig, device: torch.device, distributed: bool) -> nn.Module:
    kwargs = backbone_kwargs(config.extra, config.drop_path_rate, config.pretrained_backbone)
    model = UperNet(config.model, config.num_classes, config.channels, config.aux_channels, **kwargs)
    if distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    broadcast_from_main([*model.parameters(), *model.buffers()])  # one initialisation on every rank
    return model


def train_segmentation(config: SegmentationTrainConfig) -> dict[str, object]:
    """Run (or resume) the training; returns the last evaluation's metrics with `step` and `best_mIoU`."""
    config.check()
    info = init_distributed(config.device)
    try:
        return _evaluate_only(config, info) if config.evaluate_only else _train(config, info)
    finally:
        cleanup_distributed()


def _train(config: SegmentationTrainConfig, info) -> dict[str, object]:
    device, world = info.device, info.world_size
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {world} processes")
    seed_everything(config.seed)  # the same initial model everywhere (broadcast from rank 0 as well)
    train_set = SegmentationFolder(config.data_dir, "train", SegmentationTrainTransform(config.crop, config.scale),
                                   config.reduce_zero_label)  # fmt: skip
    pin = device.type == "cuda"
    loader = create_loader(train_set, config.batch_size // world, True, config.seed, config.workers, info.rank,
                           world, pin)  # fmt: skip
    val_loader = _val_loader(config, info.rank, world, pin)
    model = _build_model(config, device, info.distributed)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))
    seed_everything(config.seed + info.rank)  # each process its own drop-path draws
    step, best, history, losses = start_or_resume(config, model, optimizer, RESUME_KEYS, world, info.rank, device,
                                                  "best_mIoU")  # fmt: skip
    amp = torch.autocast(device.type, dtype=AMP_DTYPES[config.amp_dtype], enabled=config.amp)
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = list(model.buffers()) if info.distributed and device.type != "cuda" else []  # (CUDA: SyncBatchNorm)
    stop = config.iters if config.stop_after is None else min(config.iters, step + config.stop_after)
    result: dict[str, object] = dict(history[-1]) if history else {}
    started = time.perf_counter()
    model.train()
    for images, labels in run_batches(loader, step, stop):
        lr = poly_lr(step, config.lr, config.iters, config.warmup_iters)
        set_lr(optimizer, lr)
        broadcast_from_main(buffers)  # plain BatchNorm across CPU processes: rank 0's statistics, as DDP does
        with amp:
            outputs = model(images.to(device, non_blocking=True))
        loss = segmentation_loss({k: v.float() for k, v in outputs.items()}, labels.to(device, non_blocking=True),
                                 config.aux_weight)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params)
        optimizer.step()
        step += 1
        losses.append(loss.detach())
        if step % config.log_interval == 0 and info.is_main:
            _logger.info("step %d/%d: loss %.4f (rank 0), lr %.2e, %.1f s", step, config.iters,
                         float(torch.stack(losses[-config.log_interval:]).mean()), lr,
                         time.perf_counter() - started)  # fmt: skip
        if step % config.eval_interval == 0 or step == config.iters:
            broadcast_from_main(buffers)
            result = _evaluate_and_save(config, model, optimizer, val_loader, device, step, losses, history, best,
                                        world)  # fmt: skip
            best = max(best, float(result["mIoU"]))
            losses = []
            model.train()
        elif step % config.save_interval == 0 or step == stop:  # keep the steps since the last evaluation
            broadcast_from_main(buffers)
            _save(config, model, optimizer, step, history, best, losses, world)
    return {**result, "step": step, "best_mIoU": best}


def _evaluate_and_save(config: SegmentationTrainConfig, model: nn.Module, optimizer, val_loader, device, step: int,
                       losses: list, history: list, best: float, world: int) -> dict[str, object]:  # fmt: skip
    """Score the validation split, record a summary row, write `best` if it improved and `last` (every process takes
    part: the scoring and the loss sum over them)."""
    result = _score(config, model, val_loader, device)
    per_step = rank_mean(losses)
    row = dict(step=step, train_loss=sum(per_step) / len(per_step) if per_step else float("nan"), mIoU=result["mIoU"],
               pixel_accuracy=result["pixel_accuracy"], mean_accuracy=result["mean_accuracy"],
               pixels=result["count"])  # fmt: skip
    history.append(row)
    _logger.info("step %d: mIoU %.2f, pixel accuracy %.2f", step, result["mIoU"], result["pixel_accuracy"])
    if result["mIoU"] > best and is_main():  # before `last`, whose state records the best mIoU
        metadata = {**_metadata(config), "step": step, "mIoU": result["mIoU"]}
        save_weights(Path(config.output) / "best.safetensors", model, metadata)
    _save(config, model, optimizer, step, history, max(best, float(result["mIoU"])), [], world)
    return result


def _score(config: SegmentationTrainConfig, model: nn.Module, val_loader, device) -> dict[str, object]:
    """The validation split's mIoU and accuracies, by sliding windows (stride 2/3 of the crop) or whole images."""
    evaluate_kwargs = dict(crop=config.crop, stride=max(1, config.crop * 2 // 3)) if config.slide else {}
    amp_dtype = AMP_DTYPES[config.amp_dtype] if config.amp else None
    return evaluate_segmentation(model, val_loader, config.num_classes, device, amp_dtype=amp_dtype,
                                 **evaluate_kwargs)  # fmt: skip


def _val_loader(config: SegmentationTrainConfig, rank: int, world: int, pin: bool):
    val_set = SegmentationFolder(config.data_dir, "val", SegmentationEvalTransform(config.scale),
                                 config.reduce_zero_label)  # fmt: skip
    return create_loader(val_set, 1, False, config.seed, config.workers, rank, world, pin)


def _evaluate_only(config: SegmentationTrainConfig, info) -> dict[str, object]:
    """Score `config.evaluate_only`'s weights (a `train-seg` file: its metadata names the backbone, classes, heads'
    widths and the run's evaluation: label reduction, scale, crop, sliding or whole) on the validation split of
    `config.data_dir`, each process its share."""
    model, metadata = model_from_checkpoint(config.evaluate_only, "segmentation")
    settings = {k: metadata[k] for k in SEGMENTATION_KEYS}
    run = dataclasses.replace(config, **{**settings, "scale": tuple(settings["scale"])})
    loader = _val_loader(run, info.rank, info.world_size, info.device.type == "cuda")
    result = _score(run, model.to(info.device), loader, info.device)
    step = metadata.get("step", 0)
    return {**result, "step": step, "best_mIoU": result["mIoU"]}


def _metadata(config: SegmentationTrainConfig) -> dict[str, object]:
    """What a weights file records to be rebuilt and scored again as the run did (`model_from_checkpoint`)."""
    return dict(task="segmentation", **{k: getattr(config, k) for k in SEGMENTATION_KEYS})


def _save(config: SegmentationTrainConfig, model: nn.Module, optimizer, step: int, history: list, best: float,
          pending_losses: list, world: int) -> None:  # fmt: skip
    state = dict(step=step, best_mIoU=best, history=history)
    save_last(Path(config.output), model, optimizer, state, pending_losses, world, _metadata(config))
