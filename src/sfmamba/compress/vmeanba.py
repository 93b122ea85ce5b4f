"""VMeanba, training-free: convert chosen Mamba blocks to the channel-mean scan (SPEC section 4).

A block is any module with a boolean attribute `vmeanba` (our `MambaVisionMixer`, the SF-Mamba mixers, VMamba's
`SS2D`): with `vmeanba = True` it calls `sfmamba.ops.vmeanba.mean_selective_scan` instead of `selective_scan`, so the
conversion needs no new weights and works on every model built from our scan layers.

- `find_blocks(model)`: the convertible blocks' module names, in model order;
- `apply(model, blocks)`: convert exactly these blocks (the others run the full scan);
- `score_blocks` / `select(model, loader, k)`: the paper's layer selection -- score every block by
  accuracy(original) - accuracy(only that block converted) on a calibration loader and pick the K lowest;
- `accuracy_latency_report`: accuracy and latency versus K (the paper's Table 4 / Figure 4) as JSON, a markdown
  table and a PNG;
- `save_compressed` / `load_compressed`: a safetensors checkpoint whose metadata records the converted blocks, and
  the model rebuilt from it through `timm.create_model(..., pretrained_cfg_overlay=dict(file=...))`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from ..bench.throughput import graphed_replay
from ..layers.vmeanba_switch import apply, converted_blocks, find_blocks
from ..models._checkpoint import VMEANBA_METADATA_KEY as METADATA_KEY
from ..models._checkpoint import mark_blocks_from_file, read_compressed_blocks

__all__ = [
    "METADATA_KEY",
    "accuracy_latency_report",
    "apply",
    "converted_blocks",
    "evaluate_accuracy",
    "find_blocks",
    "k_steps",
    "load_compressed",
    "mark_blocks_from_file",
    "measure_latency",
    "rank_blocks",
    "read_compressed_blocks",
    "save_compressed",
    "score_blocks",
    "select",
]
_logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _converted(model: nn.Module, blocks: Iterable[str]) -> Iterator[nn.Module]:
    """`model` with exactly `blocks` converted, restored afterwards."""
    before = converted_blocks(model)
    apply(model, blocks)
    try:
        yield model
    finally:
        apply(model, before)


def _batches(loader: Iterable, max_batches: int | None) -> Iterator:
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            return
        yield batch


@torch.inference_mode()
def evaluate_accuracy(
    model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None, max_batches: int | None = None
) -> float:
    """Top-1 accuracy (%) of `model` over (images, targets) batches of `loader` (the first `max_batches` if given)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for images, targets in _batches(loader, max_batches):
            logits = model(images.to(device))
            correct += (logits.argmax(-1) == targets.to(device)).sum().item()
            total += targets.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("loader must yield at least one (images, targets) batch")
    return 100.0 * correct / total


def score_blocks(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    blocks: Sequence[str] | None = None,
) -> tuple[float, dict[str, float]]:
    """(accuracy of the unconverted model, {block: accuracy(original) - accuracy(only that block converted)}).

    Every accuracy is measured on the same batches; the model's current conversion is restored afterwards.
    """
    blocks = list(find_blocks(model) if blocks is None else blocks)
    if not blocks:
        raise ValueError("model has no convertible blocks (modules with a bool `vmeanba` attribute)")
    with _converted(model, []):
        base = evaluate_accuracy(model, loader, device=device, max_batches=max_batches)
    scores = {}
    for name in blocks:
        with _converted(model, [name]):
            scores[name] = base - evaluate_accuracy(model, loader, device=device, max_batches=max_batches)
        _logger.info("VMeanba on %s alone: accuracy drop %.2f points", name, scores[name])
    return base, scores


def rank_blocks(scores: dict[str, float]) -> list[str]:
    """Blocks from the least to the most harmful to convert; ties keep model order."""
    return sorted(scores, key=lambda name: scores[name])  # stable: dict order is model order


def select(
    model: nn.Module,
    loader: Iterable,
    k: int,
    *,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
) -> list[str]:
    """The `k` blocks whose conversion alone costs the least calibration accuracy (the paper's layer selection)."""
    available = find_blocks(model)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(available):
        raise ValueError(f"k must be an int from 0 to the number of convertible blocks {len(available)}, got {k!r}")
    if k == 0:
        return []
    _, scores = score_blocks(model, loader, device=device, max_batches=max_batches)
    return rank_blocks(scores)[:k]


# ---------------------------------------------------------------------------------------------------------------------
# accuracy and latency versus K


@torch.inference_mode()
def measure_latency(
    model: nn.Module, images: torch.Tensor, *, warmup: int = 3, iters: int = 10, amp_dtype: torch.dtype | None = None
) -> float:
    """Median milliseconds of one forward pass on `images` (eval mode).

    On CUDA the forward is captured in a CUDA graph after the warm-up and each replay is timed with CUDA events: the
    GPU time, without the host's launch time (which in eager mode hides most of what a conversion saves). On CPU
    each pass is timed with the wall clock.
    """
    model.eval()
    device = images.device
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    def forward() -> torch.Tensor:
        with autocast:
            return model(images)

    if device.type == "cuda":
        replay = graphed_replay(forward, device)  # runs the warm-up passes itself
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        forward()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def k_steps(num_blocks: int, step: int = 1) -> list[int]:
    """K = 0, step, 2*step, ..., always ending with every block converted."""
    if step < 1:
        raise ValueError(f"step must be a positive int, got {step}")
    return sorted(set(range(0, num_blocks + 1, step)) | {num_blocks})


def accuracy_latency_report(
    model: nn.Module,
    ranking: Sequence[str],
    eval_loader: Iterable,
    latency_images: torch.Tensor,
    output_dir: str | Path,
    *,
    ks: Sequence[int] | None = None,
    scores: dict[str, float] | None = None,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    amp_dtype: torch.dtype | None = None,
    warmup: int = 3,
    iters: int = 10,
    title: str = "VMeanba",
) -> dict[str, object]:
    """Accuracy and latency with the first K blocks of `ranking` converted, for every K in `ks` (default 0..all).

    Writes `vmeanba_report.json`, `vmeanba_report.md` (a table) and `vmeanba_report.png` (accuracy and speed-up
    versus K) into `output_dir` and returns the JSON record. The model's conversion is restored afterwards.
    """
    ks = list(k_steps(len(ranking)) if ks is None else ks)
    bad = [k for k in ks if not 0 <= k <= len(ranking)]
    if bad:
        raise ValueError(f"ks must lie in 0..{len(ranking)} (the ranked blocks), got {bad}")
    rows = []
    for k in ks:
        with _converted(model, ranking[:k]):
            accuracy = evaluate_accuracy(model, eval_loader, device=device, max_batches=max_batches)
            latency = measure_latency(model, latency_images, warmup=warmup, iters=iters, amp_dtype=amp_dtype)
        rows.append(dict(k=k, blocks=list(ranking[:k]), top1=accuracy, latency_ms=latency))
        _logger.info("K=%d: top-1 %.2f%%, %.3f ms per batch", k, accuracy, latency)
    base = next((r for r in rows if r["k"] == 0), rows[0])
    for row in rows:
        row["top1_drop"] = base["top1"] - row["top1"]
        row["speedup"] = base["latency_ms"] / row["latency_ms"]
    record = dict(
        title=title,
        ranking=list(ranking),
        scores=scores,
        batch_shape=list(latency_images.shape),
        device=str(latency_images.device),
        amp_dtype=str(amp_dtype) if amp_dtype is not None else None,
        timing=dict(warmup=warmup, iters=iters, statistic="median"),
        rows=rows,
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(output_dir / "vmeanba_report.json", json.dumps(record, indent=2) + "\n")
    _atomic_write_text(output_dir / "vmeanba_report.md", report_table(rows))
    plot_report(rows, output_dir / "vmeanba_report.png", title)
    return record


def report_table(rows: Sequence[dict]) -> str:
    lines = [
        "| K | top-1 (%) | drop (points) | latency (ms/batch) | speed-up | last block converted |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        last = r["blocks"][-1] if r["blocks"] else "-"
        lines.append(
            f"| {r['k']} | {r['top1']:.2f} | {r['top1_drop']:.2f} | {r['latency_ms']:.3f} | {r['speedup']:.3f} | "
            f"`{last}` |"
        )
    return "\n".join(lines) + "\n"


def plot_report(rows: Sequence[dict], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, acc_axis = plt.subplots(figsize=(6, 4))
    acc_axis.plot(ks, [r["top1"] for r in rows], "o-", color="tab:blue", label="top-1")
    acc_axis.set_xlabel("K (blocks converted to VMeanba)")
    acc_axis.set_ylabel("top-1 (%)", color="tab:blue")
    speed_axis = acc_axis.twinx()
    speed_axis.plot(ks, [r["speedup"] for r in rows], "s--", color="tab:red", label="speed-up")
    speed_axis.set_ylabel("speed-up vs K = 0", color="tab:red")
    acc_axis.set_title(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints


def save_compressed(path: str | Path, model: nn.Module, metadata: dict[str, object]) -> None:
    """The model's weights as safetensors (atomically), with `metadata` plus the converted blocks under
    `METADATA_KEY`; readable by `sfmamba.train.checkpoint.read_metadata` and by timm."""
    from ..train.checkpoint import save_weights

    save_weights(path, model, {**metadata, METADATA_KEY: converted_blocks(model)})


def load_compressed(path: str | Path, model_name: str | None = None, **kwargs) -> nn.Module:
    """Rebuild a compressed model: `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))`
    with the checkpoint's `model`, `num_classes` and `model_kwargs` metadata (the builder converts the blocks).
    Returns the model in eval mode."""
    import timm

    from ..train.checkpoint import read_metadata

    metadata = read_metadata(path)
    name = model_name or metadata.get("model")
    if not name:
        raise ValueError(f"{path}: the checkpoint names no model; pass model_name")
    model_kwargs = {**metadata.get("model_kwargs", {}), **kwargs}
    overlay = dict(file=str(path))
    if "num_classes" in metadata:
        model_kwargs.setdefault("num_classes", metadata["num_classes"])
        overlay["num_classes"] = metadata["num_classes"]  # else timm drops a classifier sized unlike the cfg's
    # our model builders convert the blocks the file records (`models._checkpoint.create_with_file_hooks`)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs).eval()
