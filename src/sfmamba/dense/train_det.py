"""Train a torchvision detector (Mask R-CNN by default) on a timm backbone: the papers' epoch-based COCO recipe.

mmdetection's 1x schedule as the MambaVision and VMamba papers use it: AdamW (lr 1e-4, weight decay 0.05, none on
norms and biases), a linear warm-up over 500 iterations from 0.001 x lr, the learning rate divided by 10 after epochs
8 and 11 of 12 (3x: `epochs=36, lr_steps=(27, 33), multiscale=True`, short sides 480-800 at training), batch 16.
COCO box (and mask) AP on the validation split after every `eval_interval` epochs (`evaluate_detection`). Runs resume
exactly, as `train_segmentation`'s do: the data order and augmentations depend only on (seed, epoch, index), and the
checkpoint holds the optimizer, the step and the RNG states. Under torchrun each process takes its share of every
batch and the gradients are averaged; BatchNorm runs synchronised across CUDA processes.

Files in `output`: `last.safetensors` + `last.state.pt` (after each evaluation and every `save_interval` steps),
`best.safetensors` (best box AP), `summary.csv` (one row per evaluation), `args.json`. Command line: `sfmamba
train-det`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.detection import (
    MULTISCALE_TRAIN_SCALES,
    CocoDetection,
    DetectionEvalTransform,
    DetectionTrainTransform,
    FashionMNISTDetection,
    detection_collate,
)
from ..data.loader import create_loader
from ..train.checkpoint import save_weights
from ..train.distributed import (
    average_gradients,
    broadcast_from_main,
    cleanup_distributed,
    fill_missing_gradients,
    init_distributed,
)
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
from .checkpoint import DETECTION_KEYS, model_from_checkpoint
from .detection import DETECTORS, create_detector, evaluate_detection

__all__ = ["DATASETS", "DetectionTrainConfig", "multistep_lr", "train_detection"]
_logger = logging.getLogger(__name__)
DATASETS = ("coco", "fashion_mnist")
RESUME_KEYS = ("dataset", "detector", "model", "num_classes", "train_split", "limit_train", "multiscale", "min_size",
               "max_size", "batch_size", "epochs", "lr", "weight_decay", "lr_steps", "warmup_iters", "seed",
               "fpn_channels")  # fmt: skip
# what a weights file records to be scored again as it was (`evaluate_only`) besides its detector, backbone, classes
EVALUATION_KEYS = tuple(k for k in DETECTION_KEYS if k not in ("model", "detector", "num_classes"))


@dataclass
class DetectionTrainConfig:
    """The run's settings (defaults: Mask R-CNN 1x on COCO 2017, batch 16)."""

    data_dir: str
    output: str | None  # the run folder (None only with evaluate_only)
    dataset: str = "coco"  # COCO's layout: <split>/ images + annotations/instances_<split>.json; or "fashion_mnist"
    detector: str = "mask_rcnn"
    model: str = "sf_mamba_tiny"
    num_classes: int | None = None  # background included; default: the dataset's
    train_split: str = "train2017"
    val_split: str = "val2017"
    pretrained_backbone: str | None = None  # a classification checkpoint for the backbone
    drop_path_rate: float | None = None
    fpn_channels: int = 256
    limit_train: int | None = None  # only the first N training images (quick runs, checks)
    limit_val: int | None = None  # only the first N validation images
    multiscale: bool = False  # training short sides 480-800 (evaluation: 800), instead of min_size
    min_size: int = 800  # the detector's resize (torchvision's GeneralizedRCNNTransform)
    max_size: int = 1333
    batch_size: int = 16  # over all processes
    epochs: int = 12
    lr: float = 1e-4
    weight_decay: float = 0.05
    lr_steps: tuple[int, ...] = (8, 11)  # epochs after which the learning rate is divided by 10
    warmup_iters: int = 500
    eval_interval: int = 1  # epochs
    save_interval: int = 2000  # steps: `last` between evaluations too
    amp: bool = False
    amp_dtype: str = "bfloat16"
    workers: int = 4
    seed: int = 0
    device: str | None = None
    resume: str | None = None
    evaluate_only: str | None = None  # a weights file (best.safetensors): score it on the validation split, no training
    stop_after: int | None = None  # end this run after this many steps (the schedule still spans `epochs`)
    log_interval: int = 50
    extra: dict = field(default_factory=dict)  # more keyword arguments for the backbone's timm.create_model

    def check(self) -> None:
        if self.output is None and self.evaluate_only is None:
            raise ValueError("output (the run folder) is required, unless evaluate_only names a weights file")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        positive = ("min_size", "max_size", "batch_size", "epochs", "eval_interval", "save_interval", "log_interval",
                    "fpn_channels")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("limit_train", "limit_val"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {self.num_classes}")
        for name in ("warmup_iters", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.multiscale and self.min_size != 800:  # torchvision evaluates at the largest training scale
            raise ValueError(f"min_size must stay 800 with multiscale (training short sides 480-800, evaluation at "
                             f"800), got {self.min_size}")  # fmt: skip
        if list(self.lr_steps) != sorted(set(self.lr_steps)) or any(not 0 < e < self.epochs for e in self.lr_steps):
            raise ValueError(f"lr_steps must be increasing epochs between 1 and epochs - 1 ({self.epochs - 1}), got "
                             f"{list(self.lr_steps)}")  # fmt: skip
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)} (float16 would need loss scaling), "
                             f"got {self.amp_dtype!r}")  # fmt: skip
        if self.drop_path_rate is not None and not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1, got {self.stop_after}")


def multistep_lr(step: int, steps_per_epoch: int, base_lr: float, lr_steps: tuple[int, ...], warmup_iters: int,
                 warmup_ratio: float = 1e-3) -> float:  # fmt: skip
    """mmdet's schedule: LinearLR from `warmup_ratio` x base_lr to base_lr over `warmup_iters` iterations, times
    MultiStepLR's 0.1 for each epoch of `lr_steps` already passed."""
    epoch = step // steps_per_epoch
    lr = base_lr * 0.1 ** sum(epoch >= e for e in lr_steps)
    if step < warmup_iters:
        lr *= warmup_ratio + (1 - warmup_ratio) * step / warmup_iters
    return lr


def train_detection(config: DetectionTrainConfig) -> dict[str, object]:
    """Run (or resume) the training; returns the last evaluation's metrics with `step`, `total_steps` and
    `best_AP`."""
    config.check()
    info = init_distributed(config.device)
    try:
        return _evaluate_only(config, info) if config.evaluate_only else _train(config, info)
    finally:
        cleanup_distributed()


def _dataset(config: DetectionTrainConfig, training: bool) -> tuple[torch.utils.data.Dataset, int]:
    """The training or validation set, cut to its `limit_*` first images, and the number of classes with the
    background."""
    if config.dataset == "fashion_mnist":
        split, transform = ("train", DetectionTrainTransform()) if training else ("test", DetectionEvalTransform())
        data = FashionMNISTDetection(config.data_dir, split, seed=config.seed, transform=transform)
    else:
        split = config.train_split if training else config.val_split
        root, masks = Path(config.data_dir), config.detector == "mask_rcnn"
        # training flips only (the detector resizes: `_build_model`), drops crowd regions and empty images and clips
        # boxes; validation keeps every annotation as COCOeval reads it
        transform = DetectionTrainTransform() if training else DetectionEvalTransform()
        data = CocoDetection(root / split, root / "annotations" / f"instances_{split}.json", transform,
                             with_masks=masks, remove_empty=training, drop_crowd=training,
                             clean_boxes=training)  # fmt: skip
    limit = config.limit_train if training else config.limit_val
    cut = torch.utils.data.Subset(data, range(min(limit, len(data)))) if limit else data
    return cut, data.num_classes


def _check_same_categories(train_set, val_set, config: DetectionTrainConfig) -> None:
    """The two splits must number the categories alike (label k the same COCO category), else the validation labels
    would silently mean other classes."""
    train_map, val_map = (getattr(getattr(d, "dataset", d), "label_to_category", None) for d in (train_set, val_set))
    if train_map != val_map:
        raise ValueError(f"val_split {config.val_split!r}: its categories {val_map} differ from train_split "
                         f"{config.train_split!r}'s {train_map} (label -> category id)")  # fmt: skip


def _build_model(config: DetectionTrainConfig, num_classes: int, device: torch.device, distributed: bool) -> nn.Module:
    kwargs = backbone_kwargs(config.extra, config.drop_path_rate, config.pretrained_backbone)
    # multi-scale training: torchvision's resize draws a short side per image from the global generator (seeded per
    # process, saved with the checkpoint); evaluation takes the largest
    min_size = MULTISCALE_TRAIN_SCALES if config.multiscale else config.min_size
    model = create_detector(config.detector, config.model, num_classes, config.fpn_channels, backbone_kwargs=kwargs,
                            min_size=min_size, max_size=config.max_size)  # fmt: skip
    if distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    broadcast_from_main([*model.parameters(), *model.buffers()])  # one initialisation on every rank
    return model


def _train(config: DetectionTrainConfig, info) -> dict[str, object]:
    device, world = info.device, info.world_size
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {world} processes")
    seed_everything(config.seed)  # the same initial model everywhere (broadcast from rank 0 as well)
    train_set, dataset_classes = _dataset(config, training=True)
    val_set = _dataset(config, training=False)[0]
    _check_same_categories(train_set, val_set, config)
    num_classes = config.num_classes or dataset_classes
    if num_classes < dataset_classes:
        raise ValueError(f"num_classes {num_classes} is below the dataset's {dataset_classes} (background included)")
    pin = device.type == "cuda"
    loader = create_loader(train_set, config.batch_size // world, True, config.seed, config.workers, info.rank, world,
                           pin, collate_fn=detection_collate)  # fmt: skip
    val_loader = create_loader(val_set, 1, False, config.seed, config.workers, info.rank, world, pin,
                               collate_fn=detection_collate)  # fmt: skip
    model = _build_model(config, num_classes, device, info.distributed)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))
    seed_everything(config.seed + info.rank)  # each process its own drop-path and sampling draws
    output = Path(config.output)
    metadata = dict(model=config.model, task="detection", detector=config.detector, num_classes=num_classes,
                    **{k: getattr(config, k) for k in EVALUATION_KEYS})  # fmt: skip
    step, best, history, losses = start_or_resume(config, model, optimizer, RESUME_KEYS, world, info.rank, device,
                                                  "best_AP")  # fmt: skip
    amp = torch.autocast(device.type, dtype=AMP_DTYPES[config.amp_dtype], enabled=config.amp)
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = list(model.buffers()) if info.distributed and device.type != "cuda" else []  # (CUDA: SyncBatchNorm)
    steps_per_epoch = loader.sampler.batches_per_epoch()
    total = config.epochs * steps_per_epoch
    stop = total if config.stop_after is None else min(total, step + config.stop_after)

    def save() -> None:
        broadcast_from_main(buffers)
        state = dict(step=step, best_AP=best, history=history)
        save_last(output, model, optimizer, state, losses, world, metadata)

    result: dict[str, object] = dict(history[-1]) if history else {}
    started = time.perf_counter()
    model.train()
    for images, targets in run_batches(loader, step, stop):
        lr = multistep_lr(step, steps_per_epoch, config.lr, config.lr_steps, config.warmup_iters)
        set_lr(optimizer, lr)
        broadcast_from_main(buffers)  # plain BatchNorm across CPU processes: rank 0's statistics, as DDP does
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]  # fmt: skip
        with amp:
            loss_parts = model(images, targets)
        loss = sum(part.float() for part in loss_parts.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fill_missing_gradients(params)
        average_gradients(params)
        optimizer.step()
        step += 1
        losses.append(loss.detach())
        if step % config.log_interval == 0 and info.is_main:
            _logger.info("step %d/%d: loss %.4f (rank 0), lr %.2e, %.1f s", step, total,
                         float(torch.stack(losses[-config.log_interval:]).mean()), lr,
                         time.perf_counter() - started)  # fmt: skip
        epoch_end = step % steps_per_epoch == 0
        if (epoch_end and (step // steps_per_epoch) % config.eval_interval == 0) or step == total:
            broadcast_from_main(buffers)
            result = _evaluate(config, model, val_loader, device, step, losses, history)
            if result["bbox_AP"] > best and is_main():  # before `last`, whose state records the best AP
                save_weights(output / "best.safetensors", model, {**metadata, "step": step, **_scores(result)})
            best = max(best, float(result["bbox_AP"]))
            losses = []
            save()
            model.train()
        elif step % config.save_interval == 0 or step == stop:  # keep the steps since the last evaluation
            save()
    return {**result, "step": step, "total_steps": total, "best_AP": best}


def _evaluate_only(config: DetectionTrainConfig, info) -> dict[str, object]:
    """Score `config.evaluate_only`'s weights (a `train-det` file: its metadata names the detector, backbone, classes,
    pyramid width, the evaluation's image sizes and the dataset's seed) on the validation split of `config.data_dir`,
    each process its share."""
    model, metadata = model_from_checkpoint(config.evaluate_only, "detection")
    run = dataclasses.replace(config, detector=metadata["detector"], model=metadata["model"],
                              num_classes=metadata["num_classes"], multiscale=False,
                              **{k: metadata[k] for k in EVALUATION_KEYS})  # fmt: skip
    val_set, dataset_classes = _dataset(run, training=False)
    if run.num_classes < dataset_classes:
        raise ValueError(f"{config.evaluate_only}: {run.num_classes} classes, below the data's {dataset_classes}")
    loader = create_loader(val_set, 1, False, run.seed, run.workers, info.rank, info.world_size,
                           info.device.type == "cuda", collate_fn=detection_collate)  # fmt: skip
    amp_dtype = AMP_DTYPES[run.amp_dtype] if run.amp else None
    result = evaluate_detection(model.to(info.device), loader, info.device, amp_dtype=amp_dtype)
    step = metadata.get("step", 0)
    return {**result, "step": step, "total_steps": step, "best_AP": result["bbox_AP"]}


def _scores(result: dict) -> dict[str, float]:
    return {k: v for k, v in result.items() if k.startswith(("bbox_", "segm_"))}


def _evaluate(config: DetectionTrainConfig, model: nn.Module, val_loader, device, step: int, losses: list,
              history: list) -> dict[str, object]:  # fmt: skip
    """Score the validation split (every process its share) and record a summary row."""
    amp_dtype = AMP_DTYPES[config.amp_dtype] if config.amp else None
    result = evaluate_detection(model, val_loader, device, amp_dtype=amp_dtype)
    per_step = rank_mean(losses)
    row = dict(step=step, train_loss=sum(per_step) / len(per_step) if per_step else float("nan"), **_scores(result))
    history.append(row)
    _logger.info("step %d: box AP %.2f%s", step, result["bbox_AP"],
                 f", mask AP {result['segm_AP']:.2f}" if "segm_AP" in result else "")  # fmt: skip
    return result
