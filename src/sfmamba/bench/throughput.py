"""Whole-model throughput: inference (forward under `torch.inference_mode`) and training (forward, cross-entropy,
backward, AdamW step), timed per iteration.

Timing: CUDA events around every iteration on a GPU (the host enqueues all iterations, then synchronises once),
`time.perf_counter` on the CPU. Each call returns a plain dict (JSON-ready) with images per second as median and
mean ± std over the timed iterations, the per-step time, the host time per step (time to enqueue one step: when it is
close to the GPU time, the model is launch-bound) and the peak CUDA memory of the timed region.

    >>> model = timm.create_model("mambavision_tiny").cuda()
    >>> measure_inference(model, 128, 224, device="cuda", amp_dtype=torch.bfloat16, warmup=50, iters=200)
    {'mode': 'inference', 'img_per_sec_median': ..., 'img_per_sec_mean': ..., 'img_per_sec_std': ..., ...}

`cuda_graph=True` captures one forward (inference) in a CUDA graph and replays it; compile a model with
`torch.compile` before passing it. The models themselves are not changed, except that `measure_train` trains them
(their weights move) and both leave the model in the train/eval mode it had.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.cuda_graph import GraphedTrainForward

__all__ = [
    "measure_inference", "measure_train", "make_inference_step", "make_train_step", "time_steps", "summarize",
    "graphed_replay", "make_optimizer", "OPTIMIZERS",
    "normalize_img_size",
]  # fmt: skip


def normalize_img_size(img_size: int | Sequence[int]) -> tuple[int, int]:
    """224 or (224, 224) -> (224, 224); anything else is a ValueError naming `img_size`."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"img_size must be a positive int or a pair of positive ints, got {img_size!r}")
    return size  # type: ignore[return-value]


def _check_counts(batch_size: int, warmup: int, iters: int) -> None:
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    if not isinstance(iters, int) or iters <= 0:
        raise ValueError(f"iters must be a positive int, got {iters!r}")


def _in_chans(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    input_size = cfg.get("input_size")
    return int(input_size[0]) if input_size else 3


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> AbstractContextManager:
    if amp_dtype is None:
        return nullcontext()
    if amp_dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be torch.bfloat16, torch.float16 or None, got {amp_dtype!r}")
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _random_images(model: nn.Module, batch_size: int, img_size, device: torch.device, channels_last: bool) -> Tensor:
    height, width = normalize_img_size(img_size)
    images = torch.randn(batch_size, _in_chans(model), height, width, device=device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def time_steps(step: Callable[[], object], device: torch.device, warmup: int, iters: int) -> dict[str, list[float]]:
    """Run `step` `warmup` times untimed, then `iters` times timed.

    Returns {"step_s": seconds per timed step (GPU time from CUDA events on CUDA, wall time on the CPU),
    "host_s": [host seconds to issue all timed steps / iters]}.
    """
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        host_start = time.perf_counter()
        for start, end in events:
            start.record()
            step()
            end.record()
        host_s = (time.perf_counter() - host_start) / iters
        torch.cuda.synchronize(device)
        return {"step_s": [start.elapsed_time(end) / 1e3 for start, end in events], "host_s": [host_s]}
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"step_s": times, "host_s": [statistics.fmean(times)]}


def summarize(step_s: Sequence[float], batch_size: int) -> dict[str, float]:
    """Images per second (median, mean, std over steps) and step milliseconds (median, mean, std)."""
    rates = [batch_size / t for t in step_s]
    spread = statistics.stdev if len(step_s) > 1 else (lambda _: 0.0)
    return {
        "img_per_sec_median": statistics.median(rates),
        "img_per_sec_mean": statistics.fmean(rates),
        "img_per_sec_std": spread(rates),
        "step_ms_median": 1e3 * statistics.median(step_s),
        "step_ms_mean": 1e3 * statistics.fmean(step_s),
        "step_ms_std": 1e3 * spread(step_s),
    }


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def graphed_replay(forward: Callable[[], Tensor], device: torch.device) -> Callable[[], Tensor]:
    """Capture `forward` (static input inside) in a CUDA graph after a few side-stream warm-up calls; return replay."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs device='cuda', got {device}")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # autotuners, cuDNN algorithm search and lazy inits must run before capture
            forward()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = forward()

    def replay() -> Tensor:
        graph.replay()
        return output

    return replay


def make_inference_step(
    model: nn.Module,
    batch_size: int,
    img_size: int | Sequence[int],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
) -> Callable[[], Tensor]:
    """Put `model` in eval mode and return a no-argument forward on fixed random images (replaying a CUDA graph)."""
    model.eval()
    images = _random_images(model, batch_size, img_size, device, channels_last)

    def forward() -> Tensor:
        with torch.inference_mode(), _autocast(device, amp_dtype):
            return model(images)

    return graphed_replay(forward, device) if cuda_graph else forward


OPTIMIZERS = ("adamw", "adamw-fused", "sgd")


def make_optimizer(opt: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if opt == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if opt == "adamw-fused":
        return torch.optim.AdamW(params, lr=lr, fused=True)
    if opt == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"opt must be one of {OPTIMIZERS}, got {opt!r}")


def make_train_step(
    model: nn.Module,
    batch_size: int,
    img_size: int | Sequence[int],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
    lr: float = 1e-4,
    opt: str = "adamw",
) -> Callable[[], None]:
    """Put `model` in train mode and return one training step (forward, cross-entropy, backward, optimizer step);
    `cuda_graph`: forward and backward replayed from CUDA graphs (`GraphedTrainForward`, as `sfmamba train`);
    `opt`: one of `OPTIMIZERS` (adamw: torch's default multi-tensor AdamW, adamw-fused: `fused=True`, sgd)."""
    model.train()
    images = _random_images(model, batch_size, img_size, device, channels_last)
    num_classes = _num_classes(model, images, device, amp_dtype)
    if cuda_graph:
        model = GraphedTrainForward(model, amp_dtype)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    optimizer = make_optimizer(opt, [p for p in model.parameters() if p.requires_grad], lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    def train_step() -> None:
        with _autocast(device, amp_dtype):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return train_step


def _settings(mode: str, model: nn.Module, batch_size: int, img_size, device: torch.device, **extra) -> dict:
    return {
        "mode": mode,
        "model": type(model).__name__,
        "batch_size": batch_size,
        "img_size": list(normalize_img_size(img_size)),
        "device": str(device),
        **extra,
    }


def measure_inference(
    model: nn.Module,
    batch_size: int,
    img_size: int | Sequence[int],
    *,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
    warmup: int = 10,
    iters: int = 50,
) -> dict:
    """Images per second of `model(images)` in eval mode under `torch.inference_mode` (the model must be on `device`).

    Args:
        model: an image classifier (or any module taking `[B, C, H, W]`); `in_chans` comes from its pretrained_cfg.
        batch_size: images per forward.
        img_size: 224 or (height, width).
        device: where the model lives; CUDA timing uses events, CPU timing `perf_counter`.
        amp_dtype: `torch.bfloat16` / `torch.float16` for autocast, None for the model's own dtype.
        channels_last: feed NHWC-strided images (convert the model with `model.to(memory_format=...)` yourself).
        cuda_graph: capture one forward in a CUDA graph and time its replay.
        warmup, iters: untimed and timed iterations.
    """
    _check_counts(batch_size, warmup, iters)
    device = torch.device(device)
    was_training = model.training
    try:
        step = make_inference_step(
            model, batch_size, img_size, device=device, amp_dtype=amp_dtype, channels_last=channels_last,
            cuda_graph=cuda_graph,
        )  # fmt: skip
        _reset_peak_memory(device)
        times = time_steps(step, device, warmup, iters)
    finally:
        model.train(was_training)
    return {
        **_settings("inference", model, batch_size, img_size, device, amp_dtype=_dtype_name(amp_dtype)),
        "channels_last": channels_last,
        "cuda_graph": cuda_graph,
        "warmup": warmup,
        "iters": iters,
        **summarize(times["step_s"], batch_size),
        "host_ms_per_step": 1e3 * times["host_s"][0],
        "peak_memory_mib": _peak_memory_mib(device),
    }


def measure_train(
    model: nn.Module,
    batch_size: int,
    img_size: int | Sequence[int],
    *,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
    warmup: int = 10,
    iters: int = 50,
    lr: float = 1e-4,
    opt: str = "adamw",
) -> dict:
    """Images per second of one training step: forward, cross-entropy on random labels, backward, optimizer step.

    Same arguments as `measure_inference`, plus `opt` (see `make_train_step`); `cuda_graph` replays the forward and
    backward from CUDA graphs. The model trains (its weights change); fp16 autocast uses a `GradScaler`. The optimizer
    state is created before the warm-up, so it is counted in the peak memory.
    """
    _check_counts(batch_size, warmup, iters)
    device = torch.device(device)
    was_training = model.training
    try:
        step = make_train_step(
            model, batch_size, img_size, device=device, amp_dtype=amp_dtype, channels_last=channels_last,
            cuda_graph=cuda_graph, lr=lr, opt=opt,
        )  # fmt: skip
        _reset_peak_memory(device)
        times = time_steps(step, device, warmup, iters)
    finally:
        model.train(was_training)
    return {
        **_settings("train", model, batch_size, img_size, device, amp_dtype=_dtype_name(amp_dtype)),
        "channels_last": channels_last,
        "cuda_graph": cuda_graph,
        "warmup": warmup,
        "iters": iters,
        "optimizer": opt,
        **summarize(times["step_s"], batch_size),
        "host_ms_per_step": 1e3 * times["host_s"][0],
        "peak_memory_mib": _peak_memory_mib(device),
    }


def _num_classes(model: nn.Module, images: Tensor, device: torch.device, amp_dtype: torch.dtype | None) -> int:
    """The classifier width: `model.num_classes` if positive, else the width of one forward's output."""
    num_classes = getattr(model, "num_classes", 0)
    if isinstance(num_classes, int) and num_classes > 0:
        return num_classes
    model.eval()  # one probe image: keep batch-norm statistics out of it
    try:
        with torch.no_grad(), _autocast(device, amp_dtype):
            output = model(images[:1])
    finally:
        model.train()
    if output.ndim != 2:
        raise ValueError(f"measure_train needs a classifier with [B, classes] output, got shape {tuple(output.shape)}")
    return output.shape[1]


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")
