"""Runtime switches. Every environment variable the library reads is here (see ENVs.md)."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

KERNEL_ENV = "SFMAMBA_KERNEL"
KERNEL_CHOICES = ("auto", "triton", "naive")
_kernel_override: str | None = None


def set_kernel_backend(backend: str | None) -> None:
    """Force `'triton'`, `'naive'` or `'auto'` for every op; `None` returns control to `SFMAMBA_KERNEL`."""
    global _kernel_override
    if backend is not None and backend not in KERNEL_CHOICES:
        raise ValueError(f"backend must be one of {KERNEL_CHOICES} or None, got {backend!r}")
    _kernel_override = backend


@contextmanager
def kernels_forced(kernels: str | None):
    """Every op runs `kernels` ('auto', 'triton' or 'naive') inside the block, or as configured for None
    (`SFMAMBA_KERNEL`, `set_kernel_backend`); the previous setting after it."""
    if kernels is not None and kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES} or None, got {kernels!r}")
    if kernels is None:
        yield
        return
    before = _kernel_override
    set_kernel_backend(kernels)
    try:
        yield
    finally:
        set_kernel_backend(before)


_parsed_env: dict[tuple, str] = {}  # (name, raw value, choices, default) -> the parsed value


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """The value of environment variable `name`, lower-cased, `default` when unset or empty; ValueError otherwise.
    Ops ask on every call (backend, scan kernels), so a raw value is parsed once; a bad one raises every time."""
    raw = os.environ.get(name)
    key = (name, raw, choices, default)
    value = _parsed_env.get(key)
    if value is None:
        value = (raw or default).strip().lower() or default
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        _parsed_env[key] = value
    return value


def kernel_backend() -> str:
    """The requested backend: the override if set, else `SFMAMBA_KERNEL`, else `'auto'`."""
    if _kernel_override is not None:
        return _kernel_override
    return _env_choice(KERNEL_ENV, KERNEL_CHOICES, "auto")


SCAN_FWD_ENV = "SFMAMBA_SCAN_FWD"
SCAN_FWD_CHOICES = ("auto", "step", "tiled")
SCAN_BWD_ENV = "SFMAMBA_SCAN_BWD"
SCAN_BWD_CHOICES = ("step", "tiled")


def scan_fwd_kernel() -> str:
    """Which Triton forward kernel the selective scan runs, from `SFMAMBA_SCAN_FWD`: `'auto'` (the default: chunk.py's
    step kernel, tiled.py's for one channel per group over long sequences; `chunk.fwd_kernel_choice`), `'step'` or
    `'tiled'` everywhere; read on every call so one process can compare them."""
    return _env_choice(SCAN_FWD_ENV, SCAN_FWD_CHOICES, "auto")


def scan_bwd_kernel() -> str:
    """Which Triton backward kernel the selective scan runs: `'step'` (chunk.py's, the default) or `'tiled'` (the
    experimental tiled_bwd.py), from `SFMAMBA_SCAN_BWD`; read on every call so one process can compare both."""
    return _env_choice(SCAN_BWD_ENV, SCAN_BWD_CHOICES, "step")


SCAN_BC_SUM_ENV = "SFMAMBA_SCAN_BC_SUM"
SCAN_BC_SUM_CHOICES = ("auto", "partials", "atomic")


def scan_bc_sum() -> str:
    """How the selective scan's step backward sums dB and dC over its channel blocks, from `SFMAMBA_SCAN_BC_SUM`:
    `'partials'` (each block writes its own sums, added in a fixed order by one kernel afterwards; deterministic),
    `'atomic'` (fp32 atomic adds into one zeroed block: the bits of dB and dC vary from run to run) or `'auto'` (the
    default: atomic for fp32 inputs, where they won on the H100, partials for 16-bit ones: they lost at L = 196 in
    bf16; fp16 assumed alike); `torch.use_deterministic_algorithms(True)` keeps `'partials'`. Read on every call."""
    return _env_choice(SCAN_BC_SUM_ENV, SCAN_BC_SUM_CHOICES, "auto")


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


FAST_MATH_ENV = "SFMAMBA_FAST_MATH"


def fast_math() -> bool:
    """Whether the Triton kernels use single-MUFU exp2/log2 (`ops._launch.approx`): `SFMAMBA_FAST_MATH` (`1`, the
    default, or `0`), never under the interpreter. Read once, when `sfmamba.ops` is imported (as Triton reads
    TRITON_INTERPRET)."""
    return _env_choice(FAST_MATH_ENV, ("0", "1"), "1") == "1" and not triton_interpret()


DIRECT_LAUNCH_ENV = "SFMAMBA_DIRECT_LAUNCH"


def direct_launch() -> bool:
    """Whether repeated kernel launches may skip Triton's argument binder (`ops._launch.launch`):
    `SFMAMBA_DIRECT_LAUNCH` (`1`, the default, or `0`). On by default since `benchmarks/ops/check_direct_launch.py`
    passed on an H200 with Triton 3.6 (2026-12-03, `--max-configs 2`: 27 cases bit-identical, the direct path taken
    in each; 20-27 % less host time per launch-bound op call). Read once, when `sfmamba.ops` is imported; only ever
    on for the Triton versions `ops._launch` lists, and never under the interpreter."""
    return _env_choice(DIRECT_LAUNCH_ENV, ("0", "1"), "1") == "1"


BUILD_THREADS_ENV = "SFMAMBA_BUILD_THREADS"


def build_threads() -> int:
    """How many threads build the configs of a new autotuning key at once before they are timed
    (`ops._launch.autotune`): `SFMAMBA_BUILD_THREADS`, a positive integer or `auto` (the CPUs this process may use,
    at most 16). The default, 1, builds them one after another, as Triton does, until
    `benchmarks/ops/experiments/first_use_build.py` has checked the threads on a GPU host. Read on every new key."""
    raw = os.environ.get(BUILD_THREADS_ENV, "").strip().lower() or "1"
    if raw == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(16, cpus)
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"{BUILD_THREADS_ENV} must be a positive integer or 'auto', got {raw!r}")
    return int(raw)


@cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def use_triton(device: torch.device) -> bool:
    """Whether an op called on tensors of `device` runs its Triton kernels.

    `auto`: Triton on CUDA, the naive path elsewhere. `triton`: Triton on CUDA, and on the CPU under
    `TRITON_INTERPRET=1` (how CI tests the kernels). `naive`: always the PyTorch reference.
    """
    backend = kernel_backend()
    if backend == "naive":
        return False
    if backend == "auto":
        if device.type == "cuda" and not triton_available():
            _warn_once("triton is not installed: sfmamba ops fall back to the slow PyTorch reference")
            return False
        return device.type == "cuda"
    if not triton_available():
        raise RuntimeError(f"{KERNEL_ENV}=triton but triton is not installed")
    if not (device.type == "cuda" or (device.type == "cpu" and triton_interpret())):
        raise RuntimeError(
            f"{KERNEL_ENV}=triton needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors; got device {device}"
        )
    return True


TRAIN_KERNELS_ENV = "SFMAMBA_TRAIN_KERNELS"
TRAIN_KERNELS_CHOICES = ("auto", "always", "never")
_train_kernels_override: bool | None = None


def train_kernels() -> bool:
    """Whether the layers' training-only fused ops (`ops.linear_act`, `ops.batch_norm_act`, `ops.drop_path_add`, the
    Triton LayerNorm and the mixers' last-dim concat/split with a gradient) replace PyTorch's modules in a training
    step (the ops themselves, called directly, always run their kernels), from `SFMAMBA_TRAIN_KERNELS`: `always`,
    `never`, or `auto` (the default): inside `graph_train_kernels()` (what `utils.cuda_graph.GraphedTrainForward`
    wraps its warm-up and capture in), not in eager steps.

    Why not in eager steps: each fused op is a Python autograd Function whose forward and backward cost host time
    (0.12-0.51 ms per call on the H200 host, `benchmarks/results/s16_20261204/call1/ops_train.txt`), where PyTorch's
    modules backward in C++; an eager training step of these models is bound by that host time, not by the GPU. Under
    a CUDA graph the host cost is paid once, at capture, and the fused ops' device-time savings count."""
    if _train_kernels_override is not None:
        return _train_kernels_override
    choice = _env_choice(TRAIN_KERNELS_ENV, TRAIN_KERNELS_CHOICES, "auto")
    return choice == "always" or (choice == "auto" and _graph_train_depth > 0)


_graph_train_depth = 0


@contextmanager
def graph_train_kernels():
    """Where `SFMAMBA_TRAIN_KERNELS=auto` turns the fused training ops on: a step that will be captured into a CUDA
    graph (its eager warm-up steps too, so that autotuning happens before capture), or an eager step that should run
    what capture runs (the kernel checks, benchmarks and tests of the fused ops)."""
    global _graph_train_depth
    _graph_train_depth += 1
    try:
        yield
    finally:
        _graph_train_depth -= 1


def set_train_kernels(enabled: bool | None) -> None:
    """Force the fused training ops on or off in code; `None` returns control to `SFMAMBA_TRAIN_KERNELS`."""
    global _train_kernels_override
    _train_kernels_override = enabled


VALUE_CHECKS_ENV = "SFMAMBA_VALUE_CHECKS"


def check_device(name: str) -> torch.device:
    """`name` as a device: cpu, cuda or cuda:N, where CUDA is available and N names a visible GPU; ValueError
    otherwise (the command line's --device and the training config's `device` both go through here)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name!r}: no CUDA device is available (use --device cpu)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def value_checks_enabled() -> bool:
    """Whether ops check input *values* (finite A, monotonic cu_seqlens): on the CPU a raise, on a GPU an asynchronous
    device assertion. Off while torch.compile traces or a CUDA graph is being captured, and when
    `SFMAMBA_VALUE_CHECKS=0` (any value but 0 or 1 is an error, not silently "on")."""
    if _env_choice(VALUE_CHECKS_ENV, ("0", "1"), "1") == "0" or torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def reject_jit_trace(what: str) -> None:
    """Raise under `torch.jit.trace` (and the TorchScript ONNX exporter, which traces with it): its sizes are tensors,
    and `what` needs them as ints (fold planning, cross-merge); torch.export keeps them symbolic ints."""
    if torch.jit.is_tracing():
        raise RuntimeError(
            f"{what} cannot be traced by torch.jit.trace or the TorchScript ONNX exporter (torch.onnx.export with "
            "dynamo=False, timm's onnx_export default): export with torch.export instead (sfmamba.export, "
            "`sfmamba export`, torch.onnx.export(..., dynamo=True), timm's onnx_export(..., use_dynamo=True))"
        )


CACHE_DIR_ENV = "SFMAMBA_CACHE_DIR"
CACHE_DIR_INPUTS = (CACHE_DIR_ENV, "XDG_CACHE_HOME", "HOME")  # every variable `cache_dir` depends on


def cache_dir() -> Path:
    """Where sfmamba keeps per-machine files (the tuned fold table): `$SFMAMBA_CACHE_DIR`, else
    `$XDG_CACHE_HOME/sfmamba`, else `~/.cache/sfmamba`. Not created here; writers create it."""
    value = os.environ.get(CACHE_DIR_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sfmamba"
