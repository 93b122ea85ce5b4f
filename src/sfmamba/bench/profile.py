"""Where a model's time goes: `torch.profiler` over a few steps, kernels ranked by time and grouped into categories.

On CUDA every GPU kernel (and memcpy/memset) is counted by its device time; on the CPU the ATen operators are
counted by their self CPU time. Categories come from the kernel names (first matching pattern wins):

    scan, attention, norm, conv, gemm, optimizer, elementwise/copy, other

The selective scan is matched first (our Triton kernels and mamba_ssm's are both named `selective_scan_*`), so a
scan kernel is never counted as elementwise.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ..utils._config import graph_train_kernels, train_kernels
from .throughput import _check_counts, make_inference_step, make_train_step, normalize_img_size

__all__ = ["CATEGORIES", "categorize", "profile_model", "kernel_breakdown"]

CATEGORIES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("scan", r"selective_scan|scan_fwd|scan_bwd|chunk_scan"),
        ("attention", r"flash|fmha|attention|sdpa|softmax"),
        ("norm", r"layer_?norm|batch_?norm|group_?norm|rms_?norm|welford|bn_fw|bn_bw|native_norm"),
        ("conv", r"conv|cudnn|implicit_?gemm|fprop|dgrad|wgrad|winograd"),
        ("gemm", r"gemm|matmul|\bmm\b|addmm|bmm|cutlass|nvjet|cublas|linear|xmma"),
        ("optimizer", r"adam|multi_tensor|foreach"),
        (
            "elementwise/copy",
            r"elementwise|vectorized|unrolled|copy|memcpy|memset|cat|transpose|permute|contiguous|clone|fill|"
            r"reduce|sum|mean|add|mul|div|sub|gelu|silu|relu|softplus|exp|index|pad|where|to_copy|triton_",
        ),
    )
)


def categorize(kernel_name: str) -> str:
    """The category of one kernel or operator name (see the module docstring)."""
    for name, pattern in CATEGORIES:
        if pattern.search(kernel_name):
            return name
    return "other"


def kernel_breakdown(prof: profile, device: torch.device, steps: int, top: int = 25) -> dict:
    """Totals per kernel (CUDA) or per operator (CPU) from a finished profiler, per step, ranked and categorized."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # name -> [microseconds, calls]
    if device.type == "cuda":
        for event in prof.events():
            if event.device_type == DeviceType.CUDA:
                totals[event.name][0] += event.time_range.elapsed_us()
                totals[event.name][1] += 1
    else:
        for average in prof.key_averages():
            if average.key.startswith("ProfilerStep"):
                continue
            totals[average.key][0] += average.self_cpu_time_total
            totals[average.key][1] += average.count
    total_us = sum(t for t, _ in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: item[1][0], reverse=True)
    by_category: dict[str, float] = defaultdict(float)
    for name, (us, _) in ranked:
        by_category[categorize(name)] += us
    return {
        "timer": "device kernels" if device.type == "cuda" else "cpu operators (self time)",
        "total_ms_per_step": total_us / 1e3 / steps,
        "categories": [
            {"category": cat, "ms_per_step": us / 1e3 / steps, "percent": 100.0 * us / total_us}
            for cat, us in sorted(by_category.items(), key=lambda item: item[1], reverse=True)
        ],
        "top_kernels": [
            {
                "name": name,
                "category": categorize(name),
                "ms_per_step": us / 1e3 / steps,
                "calls_per_step": calls / steps,
                "percent": 100.0 * us / total_us,
            }
            for name, (us, calls) in ranked[:top]
        ],
    }


def profile_model(
    model: nn.Module,
    batch_size: int,
    img_size: int | Sequence[int],
    *,
    mode: str = "inference",
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
    warmup: int = 5,
    iters: int = 5,
    top: int = 25,
    graph_kernels: bool = False,
) -> dict:
    """Profile `iters` steps of inference or training (after `warmup` unprofiled ones) and return the breakdown.

    Arguments as in `sfmamba.bench.throughput.measure_inference`; `mode` is "inference" or "train".
    `graph_kernels` (train): run the steps eagerly with the ops a CUDA-graph training step captures (inside
    `utils._config.graph_train_kernels()`: the fused training ops unless `SFMAMBA_TRAIN_KERNELS=never`), so the
    kernel table is that of `--cuda-graph` training.
    """
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    if mode == "train" and cuda_graph:
        raise ValueError("cuda_graph must be False for mode='train' (only inference is captured)")
    _check_counts(batch_size, warmup, iters)
    device = torch.device(device)
    was_training = model.training
    kernels = graph_train_kernels() if graph_kernels and mode == "train" else contextlib.nullcontext()
    try:
        with kernels:
            step: Callable[[], object]
            if mode == "inference":
                step = make_inference_step(
                    model, batch_size, img_size, device=device, amp_dtype=amp_dtype, channels_last=channels_last,
                    cuda_graph=cuda_graph,
                )  # fmt: skip
            else:
                step = make_train_step(
                    model, batch_size, img_size, device=device, amp_dtype=amp_dtype, channels_last=channels_last
                )
            for _ in range(warmup):
                step()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            with profile(activities=activities) as prof:
                for _ in range(iters):
                    step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            fused_training_ops = mode == "train" and train_kernels()
    finally:
        model.train(was_training)
    return {
        "mode": mode,
        "fused_training_ops": fused_training_ops,
        "batch_size": batch_size,
        "img_size": list(normalize_img_size(img_size)),
        "device": str(device),
        "cuda_graph": cuda_graph,
        "iters": iters,
        **kernel_breakdown(prof, device, iters, top),
    }
