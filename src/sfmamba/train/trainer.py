"""The training loop: timm's recipe components, AMP, channels-last, torch.compile, DDP, exact resume.

`Trainer(config).fit()` trains, evaluates after every epoch and returns the final metrics. Everything a run writes
goes to its folder: args.yaml, last/best checkpoints (see `checkpoint.py`), summary.csv, steps.csv,
train_curves.png and results.json.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, get_optimizer_info
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data import AugmentConfig, build_transform, create_dataset, create_loader, dataset_stats, set_loader_epoch
from ..data.device_loader import create_device_loaders
from ..eval.evaluate import autocast_context, evaluate
from ..utils.cuda_graph import GraphedTrainForward
from ..utils.files import atomic_write_text
from .checkpoint import (
    BackgroundWriter,
    capture_rng_state,
    checkpoint_paths,
    load_training_checkpoint,
    resolve_resume_path,
    restore_rng_state,
    save_training_checkpoint,
    save_weights,
)
from .config import TrainConfig, config_to_yaml, load_yaml_config, resume_differences
from .distributed import (
    DistributedInfo,
    all_gather_objects,
    average_gradients,
    broadcast_from_main,
    broadcast_from_rank0,
    cleanup_distributed,
    init_distributed,
    mean_over_ranks,
)
from .history import write_history

_logger = logging.getLogger(__name__)
AMP_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_TIME_CHECK_EVERY = 10  # steps between time-limit checks (under torchrun: an exchange between the ranks' hosts)
# torch optimizers with a fused CUDA kernel (timm's adam, adamw, sgd, momentum): one multi-tensor kernel per parameter
# group and dtype instead of a dozen foreach kernels per step
FUSED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def _no_mark(phase: str) -> None:
    """The default `mark` of `Trainer._train_step`: phases are not timed."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (timm's Mixup draws from it) and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def create_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """timm.create_model with the run's classes, dropout rates and --model-kwargs."""
    kwargs = dict(config.model_kwargs)
    kwargs.setdefault("drop_rate", config.drop)
    if config.drop_path is not None:
        kwargs.setdefault("drop_path_rate", config.drop_path)
    if not timm.is_model(config.model):
        close = timm.list_models(f"*{config.model.split('_')[0]}*")[:10]
        raise ValueError(f"model {config.model!r} is not registered with timm (similar: {', '.join(close) or 'none'})")
    return timm.create_model(config.model, pretrained=config.pretrained, num_classes=num_classes, **kwargs)


def optimizer_device_kwargs(opt: str, device: torch.device) -> dict[str, object]:
    """Extra keyword arguments for timm's optimizer factory: `fused=True` where torch has a fused kernel for the
    optimizer on this device (CUDA: Adam, AdamW, SGD), nothing elsewhere (the CPU keeps torch's default)."""
    if device.type != "cuda":
        return {}
    opt_class = get_optimizer_info(opt.lower().split("_")[-1]).opt_class  # timm's name, after 'lookahead_'
    return {"fused": True} if opt_class in FUSED_OPTIMIZERS else {}


def create_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device, factory: Callable[..., object] = create_optimizer_v2
):
    """timm's `create_optimizer_v2` (weight-decay / layer-decay parameter groups) with the device's extra kwargs."""
    return factory(
        model,
        opt=config.opt,
        lr=config.lr,
        weight_decay=config.weight_decay,
        layer_decay=config.layer_decay,
        **optimizer_device_kwargs(config.opt, device),
    )


class ModelEma(ModelEmaV3):
    """timm's `ModelEmaV3` with its tensor lists built at the first update instead of every step.

    ModelEmaV3's foreach update walks both models' `state_dict()` each step, sorts the tensors in a Python loop and
    copies each integer buffer with its own kernel; here one foreach lerp updates the float tensors and one foreach
    copy the others. The model's parameters and buffers are updated in place (optimizer, BatchNorm, checkpoint
    loading), so the lists stay valid; they hold the Parameter objects themselves (`keep_vars`), so a
    `param.data = ...` is followed too. (`update` runs under no_grad.)
    """

    _lists: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None

    def apply_update_(self, model: nn.Module, decay: float) -> None:
        if not self.foreach:
            return super().apply_update_(model, decay)
        if self._lists is None:
            ema_state, model_state = self.module.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
            if list(ema_state) != list(model_state):
                raise ValueError("model_ema: the EMA copy and the model have different state_dict keys")
            floats = [k for k, v in ema_state.items() if v.is_floating_point()]
            others = [k for k, v in ema_state.items() if not v.is_floating_point()]
            self._lists = (
                [ema_state[k] for k in floats],
                [model_state[k] for k in floats],
                [ema_state[k] for k in others],
                [model_state[k] for k in others],
            )
        ema_floats, model_floats, ema_others, model_others = self._lists
        torch._foreach_lerp_(ema_floats, model_floats, 1.0 - decay)  # not timm's helper: older timm lacks it
        if ema_others:
            torch._foreach_copy_(ema_others, model_others)


@torch.no_grad()
def clip_grad_norm_(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (2-norm, eps 1e-6, foreach) for parameters of one device: the same math in
    ~5 launches, without torch's per-call grouping of the tensors by device and dtype (~1 ms of host time per step
    for a 100-tensor model, a fifth of a CUDA-graphed step). Returns the total norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if len({(g.device, g.dtype) for g in grads}) > 1:  # mixed devices or dtypes: torch groups them
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


class _StreamMark:
    """A point of the training stream: the host clock and, on CUDA, a timing event, after a non-blocking copy of
    `value` (a device scalar) into pinned memory. Read one log interval later, when the GPU is long past it, `value()`
    and `seconds_since()` wait for nothing, so logging never drains the GPU queue; and an interval's time is the
    GPU's, not the host's, which runs ahead of it by a varying number of steps."""

    def __init__(self, device: torch.device, value: torch.Tensor | None = None):
        self.host_time = time.perf_counter()
        self._event, self._value = None, value
        if device.type == "cuda":
            if value is not None:
                self._value = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                self._value.copy_(value, non_blocking=True)
            self._event = torch.cuda.Event(enable_timing=True)
            self._event.record()
        elif value is not None:
            self._value = value.detach().clone()

    def value(self) -> float:
        if self._event is not None:
            self._event.synchronize()
        return float(self._value)

    def seconds_since(self, start: _StreamMark) -> float:
        if self._event is None or start._event is None:
            return self.host_time - start.host_time
        self._event.synchronize()
        return start._event.elapsed_time(self._event) / 1e3


def resolve_img_size(config: TrainConfig, model: nn.Module) -> int:
    """--img-size, else the model's own `img_size` keyword (timm leaves its pretrained cfg's input size at the
    default then, e.g. deit at 224 with img_size=32), else the pretrained cfg's input size."""
    if config.img_size is not None:
        return config.img_size
    size = config.model_kwargs.get("img_size")
    if size is not None:
        sides = {size} if isinstance(size, int) else set(size)
        if len(sides) != 1:
            raise ValueError(f"model_kwargs img_size must be one side (training takes square images), got {size!r}")
        return int(sides.pop())
    input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    return int(input_size[-1])


def _check_resume_settings(config: TrainConfig, saved_path: Path) -> None:
    """A resume continues its run's recipe: ValueError naming each setting that differs from the run's args.yaml
    (`RESUME_MAY_CHANGE` may; a run folder without one is not checked)."""
    if not saved_path.is_file():
        _logger.warning("%s: missing, so the resumed run's settings are not checked", saved_path)
        return
    differences = resume_differences(config, load_yaml_config(saved_path))
    if differences:
        raise ValueError(f"resume: settings differ from {saved_path}: {'; '.join(differences)} (a resumed run keeps "
                         f"its recipe: start a new run, with another --output, to change them)")  # fmt: skip


def default_run_dir(config: TrainConfig) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("output/train") / f"{config.model}-{stamp}"


@dataclasses.dataclass
class RunState:
    """Where the run stands: `step` optimizer steps done, `batch_in_epoch` of them in the current `epoch`."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1
    elapsed_s: float = 0.0  # training time over all sessions of the run (evaluation excluded)
    summary: list = dataclasses.field(default_factory=list)
    steps: list = dataclasses.field(default_factory=list)


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.dist: DistributedInfo = init_distributed(config.device)
        self.device = self.dist.device
        self.amp_dtype = AMP_TORCH_DTYPES[config.amp_dtype] if config.amp else None
        self.state = RunState()
        self._agreed_elapsed = 0.0  # rank 0's seconds of this session at the last time-limit check
        self.checkpoint_writer = BackgroundWriter()  # `last` checkpoints are written on its thread
        self.resume_path = resolve_resume_path(config.resume) if config.resume else None  # fail before any work
        if self.resume_path is not None:
            _check_resume_settings(config, self.resume_path.parent / "args.yaml")
        self._setup_data_and_model()
        self._setup_optimization()
        self._setup_run_dir()

    # ---- set-up ---------------------------------------------------------------------------------------------------
    def _setup_data_and_model(self) -> None:
        c = self.config
        # datasets first: a missing dataset fails before a model is built
        probe = create_dataset(c.dataset, c.data_dir, "train")
        self.classes = tuple(probe.classes)
        self.num_classes = len(self.classes)
        torch.manual_seed(c.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        self.model = create_model(c, self.num_classes).to(self.device)
        if c.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if c.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.img_size = resolve_img_size(c, self.model)
        if self.device.type == "cpu" and self.amp_dtype is torch.bfloat16 and self.img_size < 32:
            # torch's CPU bf16 (oneDNN) Conv2d backward leaves part of the weight gradient of a stride-2 conv over a
            # 1x1 map unwritten (the last downsample of our models below 32 px): see docs/status.md, Known issues
            _logger.warning(
                "CPU bf16 autocast at %d px: torch's oneDNN conv backward gives wrong gradients for 1x1 maps; "
                "train at >= 32 px or without --amp on CPU",
                self.img_size,
            )
        augment = AugmentConfig(
            c.scale, c.ratio, c.hflip, c.vflip, c.color_jitter, c.aa, c.reprob, c.remode, c.interpolation, c.no_aug
        )
        probe.transform = build_transform(c.dataset, self.img_size, True, augment)
        val = create_dataset(c.dataset, c.data_dir, "val", build_transform(c.dataset, self.img_size, False, augment))
        pin = self.device.type == "cuda"
        rank, world = self.dist.rank, self.dist.world_size
        val_batch = c.validation_batch_size or c.batch_size
        if c.data_on_device:  # both splits held on the device, batches augmented there (fashion_mnist only)
            self.train_loader, self.val_loader = create_device_loaders(
                probe, val, c.batch_size, val_batch, self.img_size, self.device, augment, c.seed, rank, world
            )
        else:
            self.train_loader = create_loader(probe, c.batch_size, True, c.seed, c.workers, rank, world, pin)
            self.val_loader = create_loader(val, val_batch, False, c.seed, c.workers, rank, world, pin)
        self.steps_per_epoch = self.train_loader.sampler.batches_per_epoch()
        self.total_steps = c.max_steps or c.epochs * self.steps_per_epoch

    def _setup_optimization(self) -> None:
        c = self.config
        self.optimizer = create_optimizer(self.model, c, self.device)
        self.model_parameters = list(self.model.parameters())  # for gradient clipping, without a module walk per step
        # clip_grad_norm_'s foreach path: one norm kernel per dtype instead of one per tensor (cpu and cuda have it)
        self.clip_foreach = True if self.device.type in ("cpu", "cuda") else None
        if c.sched != "cosine":
            raise ValueError(f"sched must be 'cosine' (timm's CosineLRScheduler, stepped per update), got {c.sched!r}")
        warmup_steps = round(c.warmup_epochs * self.steps_per_epoch)
        self.scheduler = CosineLRScheduler(
            self.optimizer,
            t_initial=self.total_steps,
            lr_min=c.min_lr,
            warmup_t=warmup_steps,
            warmup_lr_init=c.warmup_lr,
            t_in_epochs=False,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.ema = ModelEma(self.model, decay=c.model_ema_decay, use_warmup=c.model_ema_warmup) if c.model_ema else None
        self.mixup = None
        if c.mixup > 0 or c.cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=c.mixup,
                cutmix_alpha=c.cutmix,
                prob=c.mixup_prob,
                switch_prob=c.mixup_switch_prob,
                mode=c.mixup_mode,
                label_smoothing=c.smoothing,
                num_classes=self.num_classes,
            )
            self.train_loss_fn: nn.Module = SoftTargetCrossEntropy()
        elif c.smoothing > 0:
            self.train_loss_fn = LabelSmoothingCrossEntropy(smoothing=c.smoothing)
        else:
            self.train_loss_fn = nn.CrossEntropyLoss()
        self.train_model: nn.Module = self.model
        # under torchrun with --cuda-graph the gradients are averaged after the graphed backward (DDP's hooks cannot
        # run inside a graph): the same weights from rank 0, the same averaged gradients, rank 0's buffers if ddp_bb
        self.average_gradients = c.cuda_graph and self.dist.distributed
        if self.dist.distributed and not c.cuda_graph:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids, broadcast_buffers=c.ddp_bb)
        if c.torchcompile:
            self.train_model = torch.compile(self.train_model, backend=c.torchcompile, mode=c.torchcompile_mode)
        if c.cuda_graph:
            if self.device.type != "cuda":
                raise ValueError(f"cuda_graph needs CUDA devices, got {self.device}")
            broadcast_from_main([*self.model.parameters(), *self.model.buffers()])
            self.train_model = GraphedTrainForward(self.model, self.amp_dtype)
        self.broadcast_buffers = list(self.model.buffers()) if self.average_gradients and c.ddp_bb else []

    def _setup_run_dir(self) -> None:
        c = self.config
        resume_path = self.resume_path
        if c.output:
            self.run_dir = Path(c.output)
        elif resume_path is not None:
            self.run_dir = resume_path.parent
        else:
            self.run_dir = default_run_dir(c)
        last_state = checkpoint_paths(self.run_dir, "last")["state"]
        if resume_path is None and last_state.is_file():
            raise ValueError(
                f"{self.run_dir} already holds a run ({last_state.name}): pass --resume {self.run_dir} to continue it, "
                "or another --output (a new run would overwrite its checkpoints)"
            )
        if resume_path is not None:
            self._resume(resume_path)
        else:
            seed_everything(c.seed + self.dist.rank)  # per-rank streams for dropout, drop-path and mixup
        self.scheduler.step_update(self.state.step)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resume_path is None or not (self.run_dir / "args.yaml").is_file():  # a resume keeps the run's recipe
                atomic_write_text(self.run_dir / "args.yaml", config_to_yaml(c))
            _logger.info(
                "run folder %s; %d steps/epoch, %d steps in all, model %s (%.2f M parameters), %d px",
                self.run_dir,
                self.steps_per_epoch,
                self.total_steps,
                c.model,
                sum(p.numel() for p in self.model.parameters()) / 1e6,
                self.img_size,
            )

    def _resume(self, state_path: Path) -> None:
        ema_module = self.ema.module if self.ema is not None else None
        saved = load_training_checkpoint(state_path, self.model, ema_module)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        fields = {f.name for f in dataclasses.fields(RunState)}
        self.state = RunState(**{k: v for k, v in saved["run_state"].items() if k in fields})
        rng = saved["rng"]
        if len(rng) != self.dist.world_size:
            _logger.warning(
                "resuming %d process(es) from a %d-process run: RNG streams are re-seeded, so the "
                "continuation is not bit-exact",
                self.dist.world_size,
                len(rng),
            )
            seed_everything(self.config.seed + self.dist.rank + self.state.step)
        else:
            restore_rng_state(rng[self.dist.rank])
        if self.dist.is_main:
            _logger.info(
                "resumed %s at step %d (epoch %d, batch %d)",
                state_path,
                self.state.step,
                self.state.epoch,
                self.state.batch_in_epoch,
            )

    # ---- checkpoints ------------------------------------------------------------------------------------------------
    def _metadata(self) -> dict[str, object]:
        c = self.config
        mean, std = dataset_stats(c.dataset)
        return dict(
            model=c.model,
            model_kwargs=c.model_kwargs,
            num_classes=self.num_classes,
            img_size=self.img_size,
            dataset=c.dataset,
            classes=list(self.classes),
            mean=list(mean),
            std=list(std),
            interpolation=c.interpolation,
        )

    def save_last(self) -> None:
        rng = all_gather_objects(capture_rng_state())  # every rank takes part; rank 0 writes
        if not self.dist.is_main:
            return
        training_state = dict(
            step=self.state.step,
            epoch=self.state.epoch,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng,
            run_state=dataclasses.asdict(self.state),
        )
        ema = self.ema.module if self.ema is not None else None
        save_training_checkpoint(
            self.run_dir, self.model, ema, training_state, self._metadata(), writer=self.checkpoint_writer
        )
        write_history(self.run_dir, self.state.summary, self.state.steps, plot=False)

    def _save_best(self, top1: float) -> None:
        module = self.ema.module if self.ema is not None else self.model
        meta = {
            **self._metadata(),
            "step": self.state.step,
            "epoch": self.state.epoch,
            "top1": top1,
            "weights": "ema" if self.ema is not None else "model",
        }
        save_weights(self.run_dir / "best.safetensors", module, meta)

    # ---- training ---------------------------------------------------------------------------------------------------
    def _train_step(
        self, images: torch.Tensor, target: torch.Tensor, mark: Callable[[str], None] | None = None
    ) -> torch.Tensor:
        """One optimizer step; returns the loss (a device tensor: no sync). `mark(phase)` is called after each
        phase (batch, forward, backward, clip, optimizer, scheduler, ema): benchmarks/train/step_overhead.py."""
        c, mark = self.config, mark or _no_mark
        images = images.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        if self.mixup is not None:
            images, target = self.mixup(images, target)
        if c.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.broadcast_buffers:
            broadcast_from_main(self.broadcast_buffers)
        mark("batch")
        with autocast_context(self.device, self.amp_dtype):
            loss = self.train_loss_fn(self.train_model(images), target)
        mark("forward")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.average_gradients:
            average_gradients(self.model_parameters)
        mark("backward")
        if c.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            if c.clip_mode == "norm" and self.clip_foreach:
                clip_grad_norm_(self.model_parameters, c.clip_grad)
            elif c.clip_mode == "norm":
                torch.nn.utils.clip_grad_norm_(self.model_parameters, c.clip_grad)
            else:
                dispatch_clip_grad(self.model_parameters, c.clip_grad, mode=c.clip_mode)
        mark("clip")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        mark("optimizer")
        self.scheduler.step_update(self._schedule_step())
        mark("scheduler")
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.step)
        mark("ema")
        return loss.detach()

    def _schedule_step(self) -> int:
        """The step the LR schedule is at: the optimizer step, or with --time-schedule the share of --time-limit
        elapsed (whichever is further), so a fixed-time run ends its schedule at its limit however fast it runs."""
        c = self.config
        if not (c.time_schedule and c.time_limit):
            return self.state.step
        # under torchrun every rank must follow the same schedule: rank 0's clock, as of the last time check
        elapsed = self._agreed_elapsed if self.dist.distributed else time.perf_counter() - self._started
        return min(self.total_steps, max(self.state.step, int(self.total_steps * elapsed / c.time_limit)))

    def _should_stop(self, started: float) -> str | None:
        c, s = self.config, self.state
        if s.step >= self.total_steps:
            return "done"
        if c.stop_step is not None and s.step >= c.stop_step:
            return "stop_step"
        if c.time_limit is not None and s.step % _TIME_CHECK_EVERY == 0:
            # rank 0's clock decides for all (every rank stops at the same step), exchanged over gloo: no GPU sync
            self._agreed_elapsed = broadcast_from_rank0(time.perf_counter() - started)
            if self._agreed_elapsed >= c.time_limit:
                return "time_limit"
        return None

    def _record_log_row(self, pending: tuple[dict, _StreamMark, _StreamMark, int, int] | None, bar) -> None:
        """Complete a log interval's row with its loss (mean over its steps and the ranks) and img/s; report it."""
        if pending is None:
            return
        row, start, end, steps, images = pending
        row["loss"] = mean_over_ranks(end.value() / steps)
        row["img_per_sec"] = images / max(end.seconds_since(start), 1e-9)
        self.state.steps.append(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", img_s=f"{row['img_per_sec']:.0f}",
                            refresh=False)  # fmt: skip
        elif self.dist.is_main:
            _logger.info(
                "epoch %d step %d/%d loss %.4f lr %.2e %.0f img/s",
                row["epoch"],
                row["step"],
                self.total_steps,
                row["loss"],
                row["lr"],
                row["img_per_sec"],
            )

    def _train_epoch(self, bar, started: float) -> tuple[str | None, float, float]:
        """Train until the epoch ends or a stop; returns (stop reason, mean loss of this session's steps, img/s)."""
        c, s = self.config, self.state
        set_loader_epoch(self.train_loader, s.epoch, s.batch_in_epoch)
        self.model.train()
        # the losses are summed on the device; a log interval's sum and end are read at the next log (its row is
        # recorded one interval late), so logging never makes the host wait for the GPU
        loss_sum = torch.zeros((), device=self.device)
        interval_loss = torch.zeros((), device=self.device)
        pending: tuple[dict, _StreamMark, _StreamMark, int, int] | None = None
        steps_done, interval_steps, images_done = 0, 0, 0
        epoch_start = time.perf_counter()
        interval_start = _StreamMark(self.device)
        stop = None
        for images, target in self.train_loader:
            loss = self._train_step(images, target)
            s.batch_in_epoch += 1
            interval_loss += loss
            steps_done, interval_steps = steps_done + 1, interval_steps + 1
            images_done += images.shape[0]
            if s.step % c.log_interval == 0 or s.step == self.total_steps:
                end = _StreamMark(self.device, interval_loss)
                loss_sum += interval_loss
                interval_loss.zero_()
                self._record_log_row(pending, bar)
                row = dict(step=s.step, epoch=s.epoch, loss=None, lr=self.optimizer.param_groups[0]["lr"])
                images_seen = interval_steps * images.shape[0] * self.dist.world_size
                pending = (row, interval_start, end, interval_steps, images_seen)
                interval_steps, interval_start = 0, end
            if bar is not None:
                bar.update(1)
            if s.step % c.checkpoint_interval == 0:
                self._record_log_row(pending, bar)  # the checkpoint holds every row up to its step
                pending = None
                self.save_last()
            stop = self._should_stop(started)
            if stop:
                break
        self._record_log_row(pending, bar)
        mean_loss = mean_over_ranks(float(loss_sum + interval_loss) / max(steps_done, 1))  # the epoch's one wait
        seconds = time.perf_counter() - epoch_start
        s.elapsed_s += seconds
        return stop, mean_loss, images_done * self.dist.world_size / max(seconds, 1e-9)

    def _evaluate_and_record(self, train_loss: float, img_per_sec: float) -> dict[str, object]:
        s = self.state
        result = evaluate(
            self.train_model, self.val_loader, self.num_classes, self.device, self.amp_dtype, self.config.channels_last
        )
        row: dict[str, object] = dict(
            epoch=s.epoch,
            step=s.step,
            lr=self.optimizer.param_groups[0]["lr"],
            train_loss=train_loss,
            eval_loss=result["loss"],
            eval_top1=result["top1"],
            eval_top5=result["top5"],
            train_img_per_sec=img_per_sec,
            elapsed_s=s.elapsed_s,
        )
        metric = result["top1"]
        if self.ema is not None:
            ema_result = evaluate(
                self.ema.module,
                self.val_loader,
                self.num_classes,
                self.device,
                self.amp_dtype,
                self.config.channels_last,
            )
            row.update(ema_loss=ema_result["loss"], ema_top1=ema_result["top1"], ema_top5=ema_result["top5"])
            metric = ema_result["top1"]
        s.summary.append(row)
        if metric > s.best_top1:
            s.best_top1, s.best_epoch = metric, s.epoch
            if self.dist.is_main:
                self._save_best(metric)
        if self.dist.is_main:
            _logger.info(
                "epoch %d (step %d): eval top-1 %.2f%% top-5 %.2f%% loss %.4f%s",
                s.epoch,
                s.step,
                result["top1"],
                result["top5"],
                result["loss"],
                f"; EMA top-1 {row['ema_top1']:.2f}%" if self.ema is not None else "",
            )
        return row

    def _progress_bar(self):
        if not (self.config.progress and self.dist.is_main):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=self.total_steps, initial=self.state.step, unit="step", dynamic_ncols=True, mininterval=1.0)

    def fit(self) -> dict[str, object]:
        """Train to the end of the schedule (or a stop), evaluate, checkpoint; returns the final metrics."""
        s, started = self.state, time.perf_counter()
        self._started = started
        stop = self._should_stop(started)
        bar = self._progress_bar()
        try:
            while stop is None:
                if bar is not None:
                    bar.set_description(f"epoch {s.epoch}")
                stop, train_loss, img_per_sec = self._train_epoch(bar, started)
                epoch_ended = s.batch_in_epoch == self.steps_per_epoch
                interval = self.config.eval_interval
                if (epoch_ended and interval and (s.epoch + 1) % interval == 0) or stop in ("done", "time_limit"):
                    self._evaluate_and_record(train_loss, img_per_sec)
                if epoch_ended:
                    s.epoch, s.batch_in_epoch = s.epoch + 1, 0
                    stop = stop or self._should_stop(started)
                self.save_last()
                if self.dist.is_main:
                    write_history(self.run_dir, s.summary, s.steps)
        except BaseException:  # the loop's own error is the one to report: a failed write is only logged
            self.checkpoint_writer.wait(raise_error=False)  # the last checkpoint is on disk before fit raises
            raise
        finally:
            if bar is not None:
                bar.close()
        self.checkpoint_writer.wait()  # the last checkpoint is on disk before fit returns
        return self._finish(stop)

    def _finish(self, stop: str | None) -> dict[str, object]:
        s = self.state
        last = s.summary[-1] if s.summary else {}
        results = dict(
            stop=stop,
            step=s.step,
            epoch=s.epoch,
            total_steps=self.total_steps,
            run_dir=str(self.run_dir),
            best_top1=s.best_top1,
            best_epoch=s.best_epoch,
            train_seconds=s.elapsed_s,
            **{k: v for k, v in last.items() if k not in ("epoch", "step")},
        )
        if self.dist.is_main:
            atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
            _logger.info(
                "stopped (%s) at step %d/%d; best top-1 %.2f%% (epoch %d); %s",
                stop,
                s.step,
                self.total_steps,
                s.best_top1,
                s.best_epoch,
                self.run_dir,
            )
        return results

    def close(self) -> None:
        try:
            self.checkpoint_writer.close()
        finally:
            cleanup_distributed()


def train(config: TrainConfig) -> dict[str, object]:
    """Train with `config` (under torchrun: one process per GPU) and return the final metrics."""
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        trainer.close()


__all__ = [
    "ModelEma",
    "RunState",
    "Trainer",
    "create_model",
    "create_optimizer",
    "optimizer_device_kwargs",
    "resolve_img_size",
    "train",
]
