"""Launcher pieces shared by the Triton ops: autotuning, the autograd test, device switch, SM count, stride/shape
reading, and the jit helpers softplus and the linear-recurrence combine."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.autotuner import Autotuner, Heuristics

from ..utils._config import fast_math, use_triton

__all__ = [
    "FAST_MATH",
    "LN2",
    "LOG2E",
    "approx",
    "autotune",
    "fast_exp2",
    "in_functorch_transform",
    "last_dim_rows",
    "bc_strides",
    "launch",
    "linear_recurrence",
    "needs_grad",
    "runs_fused",
    "on_device",
    "scan_shape",
    "sm_count",
    "softplus",
    "x_strides",
]


_AUTOTUNE_CACHES = "cache_results" in inspect.signature(triton.autotune).parameters
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# single-MUFU exp2/log2 (`approx`) in the kernels on the GPU unless SFMAMBA_FAST_MATH=0; the interpreter has no inline
# PTX (read at import, as Triton reads TRITON_INTERPRET)
FAST_MATH = tl.constexpr(fast_math())


def autotune(configs: list[triton.Config], key: list[str], **kwargs):
    """`triton.autotune` that keeps its timings in Triton's disk cache where the installed Triton can: a new
    process (each training run, each DDP rank) then reuses them instead of re-benchmarking every config, which
    took about a minute of start-up per process. The cache key holds the GPU target, the kernel source and the
    tuning key, so a changed kernel or another GPU tunes afresh."""
    if _AUTOTUNE_CACHES:
        kwargs.setdefault("cache_results", True)
    return triton.autotune(configs=configs, key=key, **kwargs)


@dataclass(frozen=True)
class _Resolved:
    """What the autotuner and heuristics chose for one launch key: the kernel's meta-parameters (BLOCK sizes,
    num_warps, ...), the config they came from and the config list it was picked from (a list swapped in by a test or a
    benchmark invalidates the entry)."""

    meta: dict
    config: triton.Config | None
    configs: list | None


_RESOLVED: dict[tuple, _Resolved] = {}
_MAX_RESOLVED = 4096  # distinct shapes x kernels; a long run with ever-new shapes starts over instead of growing


def launch(kernel, grid: tuple | Callable[[dict], tuple], *args, **flags) -> dict:
    """`kernel[grid](*args, **flags)` for a `triton.jit` function under sfmamba's `autotune` and/or
    `triton.heuristics`, without their per-call host cost after the first launch with the same scalar arguments,
    tensor dtypes and flags: the autotuner rebuilds its key from every argument and the heuristics re-bind them on
    each call, ~100-150 us per launch of a 60-argument scan kernel on an H200 host (`benchmarks/ops/experiments/
    host_overhead.py`), which made eager models host-bound. The first launch goes through them (autotuning if needed)
    and records what they chose; later ones call the JIT function with it. Returns the meta-parameters used."""
    key = (id(kernel), *(a for a in args if not isinstance(a, Tensor)),
           *(a.dtype for a in args if isinstance(a, Tensor)), *flags.items())  # fmt: skip
    tuner = kernel if isinstance(kernel, Autotuner) else None
    entry = _RESOLVED.get(key)
    if entry is None or (tuner is not None and entry.configs is not tuner.configs):
        kernel[grid](*args, **flags)
        entry = _resolve(kernel, args, flags)
        if len(_RESOLVED) >= _MAX_RESOLVED:
            _RESOLVED.clear()
        if entry.config is None or entry.config.pre_hook is None:
            _RESOLVED[key] = entry
        return entry.meta
    if tuner is not None:
        tuner.best_config = entry.config  # what benchmarks and tests read after a launch
    _innermost(kernel).run(*args, grid=grid, warmup=False, **flags, **entry.meta)
    return entry.meta


def _innermost(kernel):
    while isinstance(kernel, (Autotuner, Heuristics)):
        kernel = kernel.fn
    return kernel


def _resolve(kernel, args: tuple, flags: dict) -> _Resolved:
    """Replay the autotuner's pick (its `best_config`, just set by a launch) and the heuristics on these arguments."""
    meta: dict = {}
    config = configs = None
    while isinstance(kernel, (Autotuner, Heuristics)):
        if isinstance(kernel, Autotuner):
            config, configs = kernel.best_config, kernel.configs
            meta.update(config.all_kwargs())
        else:
            named = {**dict(zip(kernel.arg_names, args)), **flags, **meta}
            for name, heuristic in kernel.values.items():
                meta[name] = named[name] = heuristic(named)
        kernel = kernel.fn
    return _Resolved(meta, config, configs)


def last_dim_rows(x: Tensor) -> Tensor:
    """x [..., C] as a 2-D [rows, C] view with unit channel stride (a copy only when it has none)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def in_functorch_transform() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...) is running: the Triton autograd Functions do not
    support them (no `setup_context`, kernels that take no batched tensors)."""
    return torch._C._are_functorch_transforms_active()


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd will need a backward through an op on these tensors (None entries are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def runs_fused(x: Tensor, *others: Tensor | None) -> bool:
    """Whether an inference-only fused op (`ops.add_norm`, `ops.conv_bn`: Triton forward, no backward) on these
    tensors takes its kernels: no gradient needed, not under torch.compile (inductor fuses the reference itself), and
    Triton usable for x's device. Callers keep their plain modules otherwise, so CPU results stay bit-identical."""
    return not needs_grad(x, *others) and not torch.compiler.is_compiling() and use_triton(x.device)


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Launch on `device`'s GPU (Triton uses the current one); cheaper than a `torch.device` context."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@functools.cache
def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def x_strides(x: Tensor, layout: str) -> tuple[int, int, int]:
    """(batch, L, D) strides of a (batch, D, L) or (batch, L, D) tensor."""
    return (x.stride(0), x.stride(2), x.stride(1)) if layout == "BDL" else (x.stride(0), x.stride(1), x.stride(2))


def bc_strides(x: Tensor, layout: str) -> tuple[int, int, int, int]:
    """(batch, G, N, L) strides of B or C in any accepted form (a shared B/C has group stride 0)."""
    s = x.stride()
    if layout == "BDL":
        return (s[0], 0, s[1], s[2]) if x.dim() == 3 else s
    return (s[0], 0, s[2], s[1]) if x.dim() == 3 else (s[0], s[2], s[3], s[1])


def scan_shape(u: Tensor, A: Tensor, B: Tensor, layout: str) -> tuple[int, int, int, int, int]:
    """(batch, channels, length, state size, groups) of a scan's inputs."""
    batch = u.shape[0]
    dim, length = (u.shape[1], u.shape[2]) if layout == "BDL" else (u.shape[2], u.shape[1])
    groups = 1 if B.dim() == 3 else (B.shape[1] if layout == "BDL" else B.shape[2])
    return batch, dim, length, A.shape[1], groups


@triton.jit
def softplus(x):
    """log(1 + exp(x)), x above 20 passed through, exp(x) below -15. On the GPU two MUFU instructions (base-2, `approx`)
    instead of libdevice's exp and polynomial log (~30 instructions, paid per channel-step by every scan kernel)."""
    if FAST_MATH:
        e = approx(x * LOG2E, "ex2", True)
        return tl.where(x > 20.0, x, tl.where(x < -15.0, e, approx(1.0 + e, "lg2", True) * LN2))
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def fast_exp2(x):
    """exp2 as one MUFU instruction on the GPU (denormal results flush to zero: a decay below 2^-126 is zero for
    the state anyway); tl.exp2's denormal-safe sequence costs 4 instructions per state per step."""
    return approx(x, "ex2", FAST_MATH)


@triton.jit
def approx(x, FUNCTION: tl.constexpr, FAST: tl.constexpr):
    """exp2 (FUNCTION "ex2") or log2 ("lg2") of fp32 x: with FAST one MUFU instruction (PTX `.approx.ftz`, relative
    error ~2^-22, denormals flushed) instead of libdevice's denormal-safe sequence or polynomial; the interpreter has no
    inline PTX, so it runs with FAST off."""
    if FAST:
        return tl.inline_asm_elementwise(FUNCTION + ".approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)  # fmt: skip
    if FUNCTION == "ex2":
        return tl.exp2(x)
    return tl.log2(x)


@triton.jit
def linear_recurrence(a1, b1, a2, b2):
    """`tl.associative_scan` combine of h -> a h + b maps: (a1, b1) then (a2, b2) is h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2
