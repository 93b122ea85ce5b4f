"""Launcher pieces shared by the Triton ops: autotuning, the autograd test, device switch, SM count, stride/shape
reading, and the jit helpers softplus and the linear-recurrence combine."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.compiler import CompiledKernel
from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.jit import JITFunction

from ..utils._config import build_threads, direct_launch, fast_math, triton_interpret, use_triton

try:  # Triton >= 3.4: JITFunction builds hand their work to an executor while this mode is active
    from triton.runtime._async_compile import AsyncCompileMode, FutureKernel, active_mode
except ImportError:
    AsyncCompileMode = FutureKernel = active_mode = None

__all__ = [
    "FAST_MATH",
    "LN2",
    "LOG2E",
    "approx",
    "autotune",
    "bench_l2_warm",
    "fast_exp2",
    "in_functorch_transform",
    "last_dim_rows",
    "bc_strides",
    "direct_launches",
    "launch",
    "linear_recurrence",
    "needs_grad",
    "runs_fused",
    "on_device",
    "ParallelBuildAutotuner",
    "scan_shape",
    "set_direct_launch",
    "sm_count",
    "softplus",
    "x_strides",
]


_AUTOTUNE_CACHES = "cache_results" in inspect.signature(triton.autotune).parameters
_AUTOTUNE_DO_BENCH = "do_bench" in inspect.signature(triton.autotune).parameters  # else the older use_cuda_graph
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# single-MUFU exp2/log2 (`approx`) in the kernels on the GPU unless SFMAMBA_FAST_MATH=0; the interpreter has no inline
# PTX (read at import, as Triton reads TRITON_INTERPRET)
FAST_MATH = tl.constexpr(fast_math())


def bench_l2_warm(kernel_call: Callable[[], object], quantiles, rep_ms: float = 20.0, replays: int = 10) -> list[float]:
    """Times a config by replaying `kernel_call` from a CUDA graph, with L2 left as the previous call left it
    (Triton's default benchmark flushes L2 before each call). Returns the `quantiles` of the per-call time in ms.

    Unlike `triton.testing.do_bench_cudagraph`: the side stream waits for the caller's stream (the tuning calls
    write buffers the caching allocator may have just freed from kernels still queued there) and the caller's stream
    waits for it afterwards; and the capture is thread-local, so another thread's CUDA calls (the device loader's
    prefetch thread, `data/prefetch.py`) neither fail nor spoil it (see `utils/cuda_graph.py`)."""
    caller = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(caller)
    with torch.cuda.stream(side):
        kernel_call()  # compiled and warm before the estimate
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            kernel_call()
        end.record()
        end.synchronize()
        calls = max(1, min(1000, int(rep_ms / max(start.elapsed_time(end) / 5, 1e-3))))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            for _ in range(calls):
                kernel_call()
        times = []
        for _ in range(replays):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
    caller.wait_stream(side)
    ordered = torch.tensor(times)
    return [float(ordered.quantile(q)) for q in quantiles]


def autotune(configs: list[triton.Config], key: list[str], warm_l2: bool = False, **kwargs):
    """`triton.autotune` that keeps its timings in Triton's disk cache where the installed Triton can: a new
    process (each training run, each DDP rank) then reuses them instead of re-benchmarking every config, which
    took about a minute of start-up per process. The cache key holds the GPU target, the kernel source and the
    tuning key, so a changed kernel or another GPU tunes afresh.

    `warm_l2`: time the configs on L2-resident inputs (`bench_l2_warm`), for kernels whose inputs the layer before
    has just written. Triton's flushed timing favours configs that wait on DRAM well, and those are not the fastest
    on L2-resident inputs (the step scan forward, H200 2026-12-03, (128, 160, 196, 8) bf16: its flushed pick took
    51.6 us where the best config took 43.8; benchmarks/results/s12_20261203/call2-3)."""
    if _AUTOTUNE_CACHES:
        kwargs.setdefault("cache_results", True)
    if warm_l2:
        kwargs.update({"do_bench": bench_l2_warm} if _AUTOTUNE_DO_BENCH else {"use_cuda_graph": True})
    tune = triton.autotune(configs=configs, key=key, **kwargs)

    def decorator(fn) -> ParallelBuildAutotuner:
        tuner = tune(fn)
        if type(tuner) is Autotuner:  # the same object and state, whatever the installed Triton's constructor takes
            tuner.__class__ = ParallelBuildAutotuner
        return tuner

    return decorator


class ParallelBuildAutotuner(Autotuner):
    """Triton's Autotuner, except that the configs of a new tuning key are all built at once, in `build_threads()`
    threads (`SFMAMBA_BUILD_THREADS`), before it times them one by one. Triton builds each config as it times it,
    one after another: 14-30 s per scan forward key on 2 cores, minutes per model on a fresh GPU host. Its build
    releases the GIL for most of that time (four scan forward configs for sm_90: 10.2 s one after another, 5.3 s in
    two threads on 2 cores). Not on a disk-cache hit (no config is timed then, only the pick is built), nor with
    Triton < 3.4 (no AsyncCompileMode), the interpreter, or another AsyncCompileMode active (torch.compile's)."""

    _unbuilt: list | None = None  # the configs `prune_configs` just chose, until the first of them is timed

    def prune_configs(self, kwargs: dict, *rest) -> list:
        self._unbuilt = super().prune_configs(kwargs, *rest)
        return self._unbuilt

    def _bench(self, *args, config, **meta):
        unbuilt, self._unbuilt = self._unbuilt, None
        if unbuilt is not None:
            build_configs(self.fn, args, meta, unbuilt)
        return super()._bench(*args, config=config, **meta)


def build_configs(fn, args: tuple, meta: dict, configs: list) -> None:
    """Build `fn` (a JIT function, under heuristics or not) for each config on these arguments, in threads, exactly
    as `Autotuner._bench` will run it (`meta`: the launch's keywords, `grid` and `warmup` among them when launched as
    `kernel[grid](...)`), so that its runs find them built. A config that fails to build is left to those runs, which
    report or skip it as Triton does."""
    if AsyncCompileMode is None or triton_interpret() or active_mode.get() is not None or len(configs) < 2:
        return
    threads = min(build_threads(), len(configs))
    if threads < 2:
        return
    keywords = {k: v for k, v in meta.items() if k not in ("grid", "warmup")}
    with (
        ThreadPoolExecutor(threads, thread_name_prefix="sfmamba-build") as pool,
        AsyncCompileMode(pool, ignore_errors=True),
    ):
        for config in configs:
            fn.run(*args, grid=None, warmup=True, **{**keywords, **config.all_kwargs()})
    _forget_failed_builds(_innermost(fn))


def _forget_failed_builds(jit) -> None:
    """Drop the builds that failed from a JIT function's kernel caches: Triton 3.8 caches a build's future when it is
    submitted, failed or not, and a later run would re-raise its error instead of building the config again."""
    for caches in getattr(jit, "device_caches", {}).values():
        kernels = caches[0]
        for key, kernel in list(kernels.items()):
            if isinstance(kernel, FutureKernel) and kernel.future.done() and kernel.future.exception() is not None:
                del kernels[key]


@dataclass
class _Resolved:
    """What the autotuner and heuristics chose for one launch key: the kernel's meta-parameters (BLOCK sizes,
    num_warps, ...), the config they came from and the config list it was picked from (a list swapped in by a test or a
    benchmark invalidates the entry), and, once known, the compiled kernel Triton picked for it (`_Direct`). Holds the
    kernel, so that the id in its key cannot be reused by another kernel while the entry lives."""

    kernel: object
    meta: dict
    config: triton.Config | None
    configs: list | None
    direct: _Direct | None = None


@dataclass(frozen=True)
class _Direct:
    """A Triton 3.6 `CompiledKernel` and what its launch needs besides the positional arguments: the bound values of
    the parameters after them (flags, meta-parameters, defaults; in signature order), and the compile knobs and stream
    getter `JITFunction.run` used."""

    compiled: object
    fn: object
    tail: tuple
    knobs: tuple
    stream: Callable[[int], int]


_RESOLVED: dict[tuple, _Resolved] = {}
_MAX_RESOLVED = 4096  # distinct shapes x kernels; a long run with ever-new shapes starts over instead of growing
# Triton versions whose `JITFunction.run` launch sequence `_run_direct` repeats (read from 3.6.0's runtime/jit.py,
# compiler/compiler.py and backends/nvidia/driver.py); any other version launches through `JITFunction.run`
DIRECT_TRITON_VERSIONS = ((3, 6),)
_direct_launches = 0


def triton_version() -> tuple[int, ...]:
    """(major, minor) of the installed Triton; () when it cannot be read."""
    try:
        return tuple(int(part) for part in triton.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return ()


def direct_launch_supported() -> bool:
    """Whether launches may skip Triton's binder: a verified Triton version and compiled kernels (no interpreter)."""
    return triton_version() in DIRECT_TRITON_VERSIONS and not triton_interpret()


_direct = direct_launch() and direct_launch_supported()  # SFMAMBA_DIRECT_LAUNCH, read once


def set_direct_launch(enabled: bool) -> None:
    """Turn the direct launch path on (where `direct_launch_supported`) or off for this process; recorded kernels
    stay, so turning it back on reuses them."""
    global _direct
    _direct = bool(enabled) and direct_launch_supported()


def direct_launch_enabled() -> bool:
    return _direct


def direct_launches() -> int:
    """How many launches so far took the direct path (for checks that it is taken)."""
    return _direct_launches


def signature(args: tuple, aligned: bool = True) -> list:
    """What a launch's compiled kernel depends on, per positional argument: a tensor's dtype and 16-byte alignment,
    any other value's type and value. Triton 3.6 specialises a tensor on its dtype and `data_ptr() % 16 == 0`, an
    int on `== 1` (then a constexpr), `% 16 == 0` and its i32/i64/u64 range, a bool (u1) and a float (fp32) on their
    type, None as a constexpr: all fixed by these. Finer than Triton where `do_not_specialize` drops a property (the
    same compiled kernel is then recorded under each value), never coarser: the type keeps 1, 1.0 and True apart.
    `aligned=False` leaves the alignment out (a tensor is its dtype): enough when Triton's own binder specialises
    each launch, as the autotuner's and heuristics' choices do not depend on it."""
    if not aligned:
        return [a.dtype if isinstance(a, Tensor) else (type(a), a) for a in args]
    return [(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, Tensor) else (type(a), a) for a in args]


def launch(kernel, grid: tuple | Callable[[dict], tuple], *args, **flags) -> dict:
    """`kernel[grid](*args, **flags)` for a `triton.jit` function, plain or under sfmamba's `autotune` and/or
    `triton.heuristics`, without their per-call host cost after the first launch with the same `signature` (scalar
    values, tensor dtypes and alignments) and flags: the autotuner rebuilds its key from every argument and the
    heuristics re-bind them on each call, ~100-150 us per launch of a 60-argument scan kernel on an H200 host
    (`benchmarks/ops/experiments/host_overhead.py`), which made eager models host-bound. The first launch goes through
    them (autotuning if needed) and records what they chose; the second calls the JIT function with it and records the
    compiled kernel Triton picked; later ones launch that kernel directly (`_run_direct`, Triton 3.6 on a GPU), skipping
    Triton's argument binder and cache lookup too. Returns the meta-parameters used."""
    global _direct_launches
    key = (id(kernel), *signature(args, aligned=_direct), *flags.items())
    if _direct:
        key += (torch.cuda.current_device(),)  # the device whose kernel cache Triton used
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
    if _direct and entry.direct is not None and _run_direct(entry.direct, grid, args, key[-1]):
        _direct_launches += 1
        return entry.meta
    fn = _innermost(kernel)
    compiled = fn.run(*args, grid=grid, warmup=False, **flags, **entry.meta)
    if _direct:
        entry.direct = _record_direct(fn, compiled, args, {**flags, **entry.meta})
    return entry.meta


def _record_direct(fn, compiled, args: tuple, kwargs: dict) -> _Direct | None:
    """What `_run_direct` needs to launch `compiled` (what `fn.run` just launched for `args` and `kwargs`) again;
    None where it must not: no compiled kernel (the interpreter), pre-run hooks, tensors off the GPU."""
    if not (isinstance(fn, JITFunction) and isinstance(compiled, CompiledKernel)) or fn.pre_run_hooks:
        return None
    if not all(a.is_cuda for a in args if isinstance(a, Tensor)) or any(isinstance(v, Tensor) for v in kwargs.values()):
        return None
    tail = []
    for param in fn.params[len(args) :]:
        if param.name in kwargs:
            tail.append(kwargs[param.name])
        elif param.has_default:
            tail.append(param.default)
        else:
            return None
    return _Direct(compiled, fn, tuple(tail), _compile_knobs(), _stream_getter())


def _stream_getter() -> Callable[[int], int]:
    """Triton's current-stream function (torch's raw CUDA stream of a device index), as `JITFunction.run` calls it."""
    return triton.runtime.driver.active.get_current_stream


def _compile_knobs() -> tuple:
    """The global knobs Triton 3.6's `JITFunction.run` adds to a launch's compile options (and so its cache key)."""
    knobs = triton.knobs
    return knobs.runtime.debug, knobs.compilation.instrumentation_mode


def _run_direct(direct: _Direct, grid: tuple | Callable[[dict], tuple], args: tuple, device: int) -> bool:
    """Launch the recorded kernel as Triton 3.6's `JITFunction.run` does after its cache lookup: grid from the bound
    arguments, the current stream, the changed-global check, launch metadata and hooks, every bound value in signature
    order (the launcher skips constexprs). False, launching nothing, where its inputs changed (pre-run hooks added,
    debug or instrumentation knobs flipped): the caller then takes Triton's path."""
    fn, compiled = direct.fn, direct.compiled
    if fn.pre_run_hooks or _compile_knobs() != direct.knobs:
        return False
    bound = (*args, *direct.tail)
    for (name, _), (value, globals_dict) in fn.used_global_vals.items():
        if globals_dict.get(name, _MISSING) != value:
            return False  # Triton raises for this; let it
    if callable(grid):
        grid = grid(dict(zip(fn.arg_names, bound)))
    stream = direct.stream(device)
    grid_y, grid_z = (grid[1] if len(grid) > 1 else 1), (grid[2] if len(grid) > 2 else 1)
    hooks = triton.knobs.runtime
    metadata = compiled.launch_metadata(grid, stream, *bound)
    compiled.run(grid[0], grid_y, grid_z, stream, compiled.function, compiled.packed_metadata, metadata,
                 hooks.launch_enter_hook, hooks.launch_exit_hook, *bound)  # fmt: skip
    return True


_MISSING = object()


def _innermost(kernel):
    while isinstance(kernel, (Autotuner, Heuristics)):
        kernel = kernel.fn
    return kernel


def _resolve(launched, args: tuple, flags: dict) -> _Resolved:
    """Replay the autotuner's pick (its `best_config`, just set by a launch) and the heuristics on these arguments."""
    meta: dict = {}
    config = configs = None
    kernel = launched
    while isinstance(kernel, (Autotuner, Heuristics)):
        if isinstance(kernel, Autotuner):
            config, configs = kernel.best_config, kernel.configs
            meta.update(config.all_kwargs())
        else:
            named = {**dict(zip(kernel.arg_names, args)), **flags, **meta}
            for name, heuristic in kernel.values.items():
                meta[name] = named[name] = heuristic(named)
        kernel = kernel.fn
    return _Resolved(launched, meta, config, configs)


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


_NO_SWITCH = contextlib.nullcontext()


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Launch on `device`'s GPU (Triton uses the current one): a `torch.cuda.device` context only when that is not
    already the current device (entering and leaving one costs two device switches' worth of host time)."""
    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return _NO_SWITCH
    return torch.cuda.device(device)


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
def prefetch_l1(ptrs, mask):
    """A hint: start pulling the lines at `ptrs` (where `mask`) into L1, without waiting and without holding registers
    (PTX `prefetch.global.L1`), so that loads issued later hit L1 instead of waiting out an L2 or DRAM round trip.
    The interpreter has no inline PTX: there it does nothing."""
    _prefetch(ptrs, mask, "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L1 [$1]; mov.u32 $0, 0; }")


@triton.jit
def prefetch_l2(ptrs, mask):
    """`prefetch_l1`, into L2 only (PTX `prefetch.global.L2`): a DRAM round trip started far ahead of the loads."""
    _prefetch(ptrs, mask, "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }")


@triton.jit
def _prefetch(ptrs, mask, ASM: tl.constexpr):
    if FAST_MATH:
        tl.inline_asm_elementwise(ASM, "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def linear_recurrence(a1, b1, a2, b2):
    """`tl.associative_scan` combine of h -> a h + b maps: (a1, b1) then (a2, b2) is h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2
