"""Launcher pieces shared by the Triton ops (ops/_launch.py)."""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest
import torch
import triton
import triton.language as tl
from triton.compiler import CompiledKernel
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from sfmamba.ops import _launch
from sfmamba.testing import run_without_interpreter
from sfmamba.utils._config import (
    BUILD_THREADS_ENV,
    DIRECT_LAUNCH_ENV,
    FAST_MATH_ENV,
    KERNEL_ENV,
    build_threads,
    direct_launch,
    fast_math,
    kernel_backend,
    set_kernel_backend,
    use_triton,
)


@pytest.mark.parametrize("has_do_bench", [True, False])
def test_autotune_warm_l2_times_configs_in_a_cuda_graph(monkeypatch, has_do_bench):
    """`warm_l2=True` hands Triton the graph-replay benchmark (no L2 flush) through `do_bench`, or through the
    older `use_cuda_graph` where Triton has no `do_bench`; without it Triton's default benchmark stays."""
    seen = {}

    def fake_autotune(configs, key, **kwargs):
        seen.clear()
        seen.update(kwargs)
        return lambda fn: fn

    monkeypatch.setattr(triton, "autotune", fake_autotune)
    monkeypatch.setattr(_launch, "_AUTOTUNE_DO_BENCH", has_do_bench)
    _launch.autotune([triton.Config({})], ["N"], warm_l2=True)(lambda: None)
    assert seen.get("do_bench") is (_launch.bench_l2_warm if has_do_bench else None)
    assert seen.get("use_cuda_graph", False) is (not has_do_bench)
    _launch.autotune([triton.Config({})], ["N"])(lambda: None)
    assert "do_bench" not in seen and "use_cuda_graph" not in seen


def test_bench_l2_warm_replays_a_thread_local_graph_ordered_after_the_caller(monkeypatch):
    """No GPU here: CUDA's stream, event and graph objects are fakes that log what the benchmark does with them. It
    must order its side stream after the caller's stream (and the caller's after it), capture thread-locally on that
    stream, never flush L2, and return per-call times in ms at the requested quantiles."""
    log = []

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def wait_stream(self, other):
            log.append(f"{self.name} waits for {other.name}")

    class Event:
        def __init__(self, enable_timing):
            self.stamp = 0.0

        def record(self):
            self.stamp = len(log) * 1.0

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 10.0  # ms: 5 eager calls -> 2 ms per call -> 10 calls captured; a replay -> 1 ms per call

    class Graph:
        def replay(self):
            log.append("replay")

    @contextlib.contextmanager
    def graph(g, stream, capture_error_mode):
        log.append(f"capture on {stream.name} ({capture_error_mode})")
        yield
        log.append("end capture")

    caller = Stream("caller")
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: caller)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    times = _launch.bench_l2_warm(lambda: log.append("call"), quantiles=(0.5, 0.2, 0.8), rep_ms=20.0, replays=3)
    assert log[0] == "side waits for caller" and log[-1] == "caller waits for side"
    capture = log.index("capture on side (thread_local)")
    assert log[1:capture] == ["call"] * 6  # warm-up + the 5-call estimate, all on the side stream
    assert log[capture + 1 : log.index("end capture")] == ["call"] * 10
    assert log.count("replay") == 3 and "flush" not in " ".join(log)
    assert times == [1.0, 1.0, 1.0]


def test_scan_forward_is_tuned_on_warm_l2():
    from sfmamba.ops.selective_scan import chunk

    if _launch._AUTOTUNE_DO_BENCH:
        assert chunk.selective_scan_fwd_kernel.do_bench is _launch.bench_l2_warm
    else:
        assert chunk.selective_scan_fwd_kernel.use_cuda_graph


def test_autotune_keeps_timings_on_disk_where_triton_can(monkeypatch):
    seen = {}

    def fake_autotune(configs, key, **kwargs):
        seen.update(configs=configs, key=key, **kwargs)
        return lambda fn: fn

    monkeypatch.setattr(triton, "autotune", fake_autotune)
    configs = [triton.Config({"BLOCK": 16})]
    _launch.autotune(configs, ["N"], prune_configs_by=None)(lambda: None)
    assert seen["configs"] is configs and seen["key"] == ["N"] and seen["prune_configs_by"] is None
    # cache_results exists in the installed Triton (3.3+): every process after the first reuses the tuned configs
    has_cache = "cache_results" in inspect.signature(triton.runtime.autotuner.autotune).parameters
    assert has_cache == _launch._AUTOTUNE_CACHES
    assert seen.get("cache_results") is (True if _launch._AUTOTUNE_CACHES else None)


def test_autotune_lets_a_caller_turn_the_disk_cache_off(monkeypatch):
    seen = {}
    monkeypatch.setattr(triton, "autotune", lambda configs, key, **kwargs: seen.update(kwargs) or (lambda fn: fn))
    _launch.autotune([], ["N"], cache_results=False)
    assert seen["cache_results"] is False


@triton.jit
def _tiny_kernel(x_ptr, n, BLOCK: tl.constexpr, FLAG: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.zeros([BLOCK], tl.float32) + FLAG, mask=offs < n)


LAUNCH_ONLY = ("grid", "warmup")  # what `kernel[grid](...)` adds to every launch's keywords


class _BuildLog:
    """Stands in for a JIT function under `ParallelBuildAutotuner`: a run with `warmup=True` hands its build to the
    active AsyncCompileMode exactly as Triton's `JITFunction._do_compile` does (the build runs in the executor, the
    finalize step records it in the caller's thread); any other run logs a launch. `failing`: a BLOCK whose build
    raises."""

    def __init__(self, failing: int | None = None):
        self.events, self.threads, self.running, self.most_at_once = [], set(), 0, 0
        self.lock, self.failing = threading.Lock(), failing

    def build(self, kwargs: dict) -> dict:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.threads.add(threading.current_thread().name)
        time.sleep(0.05)  # long enough for the other builds to start
        with self.lock:
            self.running -= 1
        if kwargs["BLOCK"] == self.failing:
            raise RuntimeError("ptxas failed")
        return kwargs

    def run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            self.events.append(("launched", kwargs))
            return None
        mode = _launch.active_mode.get()
        assert mode is not None, "configs must be built under an AsyncCompileMode"
        key = tuple(sorted(kwargs.items()))
        return mode.submit(key, lambda: self.build(kwargs), lambda built: self.events.append(("built", built)))


CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b in (16, 32) for w in (1, 2)]


def _log_tuner(monkeypatch, timings: list, failing: int | None = None):
    """A `ParallelBuildAutotuner` of CONFIGS whose JIT function is a `_BuildLog` and whose timing of a config is
    logged instead of run (no GPU here)."""
    tuner = _launch.autotune(CONFIGS, ["n"], cache_results=False)(_tiny_kernel)
    assert isinstance(tuner, _launch.ParallelBuildAutotuner)
    tuner.fn = log = _BuildLog(failing)

    def timed(self, *args, config, **meta):
        launch = {k: v for k, v in meta.items() if k not in LAUNCH_ONLY}
        log.events.append(("timed", {**launch, **config.all_kwargs()}))
        return timings.pop(0)

    monkeypatch.setattr(Autotuner, "_bench", timed)
    return tuner, log


def _as_keys(kwargs_list) -> list:
    return sorted(tuple(sorted(kw.items())) for kw in kwargs_list)


@pytest.mark.skipif(_launch.AsyncCompileMode is None, reason="Triton < 3.4 has no AsyncCompileMode")
def test_autotune_builds_every_config_of_a_new_key_in_threads_before_timing(monkeypatch):
    """Launched as the ops launch (`kernel[grid](...)`): every config of a new key built at once, in the build
    threads, with the launch's own keywords, before the first is timed; the fastest launched; a tuned key builds and
    times nothing."""
    monkeypatch.setenv(BUILD_THREADS_ENV, "4")
    monkeypatch.setattr(_launch, "triton_interpret", lambda: False)
    tuner, log = _log_tuner(monkeypatch, [[3.0] * 3, [1.0] * 3, [2.0] * 3, [4.0] * 3])
    x = torch.empty(32)
    tuner[(1,)](x, 7, FLAG=True)
    kinds = [kind for kind, _ in log.events]
    assert kinds == ["built"] * 4 + ["timed"] * 4 + ["launched"]
    wanted = [{"FLAG": True, **c.all_kwargs()} for c in CONFIGS]
    assert _as_keys(kw for _, kw in log.events[:4]) == _as_keys(wanted)
    assert [kw for _, kw in log.events[4:8]] == wanted
    assert log.events[-1][1] == {"FLAG": True, **CONFIGS[1].all_kwargs()}  # the fastest
    assert log.threads and all(name.startswith("sfmamba-build") for name in log.threads)
    assert log.most_at_once > 1
    log.events.clear()
    tuner[(1,)](x, 7, FLAG=True)
    assert [kind for kind, _ in log.events] == ["launched"]


@pytest.mark.skipif(_launch.AsyncCompileMode is None, reason="Triton < 3.4 has no AsyncCompileMode")
def test_a_config_that_fails_to_build_is_left_to_the_timing(monkeypatch):
    """A build error in a thread is not raised there: the config is timed (and, on a GPU, built again and reported
    or skipped) as without the threads."""
    monkeypatch.setenv(BUILD_THREADS_ENV, "4")
    monkeypatch.setattr(_launch, "triton_interpret", lambda: False)
    tuner, log = _log_tuner(monkeypatch, [[float(i + 1)] * 3 for i in range(4)], failing=32)
    tuner[(1,)](torch.empty(32), 7, FLAG=False)
    built = [kw for kind, kw in log.events if kind == "built"]
    assert _as_keys(built) == _as_keys({"FLAG": False, **c.all_kwargs()} for c in CONFIGS if c.kwargs["BLOCK"] == 16)
    assert [kind for kind, _ in log.events].count("timed") == 4


@pytest.mark.skipif(_launch.AsyncCompileMode is None, reason="Triton < 3.4 has no AsyncCompileMode")
def test_failed_builds_leave_the_kernel_cache(monkeypatch):
    """Triton 3.8 caches a build's future when it is submitted: a failed one is dropped, so that the next run builds
    the config again instead of re-raising the thread's error; finished builds and plain kernels stay."""
    with ThreadPoolExecutor(2) as pool:
        failed = _launch.FutureKernel(lambda kernel: None, pool.submit(lambda: 1 / 0))
        finished = _launch.FutureKernel(lambda kernel: None, pool.submit(lambda: "kernel"))
        failed.future.exception(), finished.future.result()
    kernels = {"failed": failed, "finished": finished, "plain": "compiled"}
    jit = mock.Mock(device_caches={0: (kernels, None, None, None, None)})
    _launch._forget_failed_builds(jit)
    assert sorted(kernels) == ["finished", "plain"]


@pytest.mark.skipif(_launch.AsyncCompileMode is None, reason="Triton < 3.4 has no AsyncCompileMode")
@pytest.mark.parametrize("case", ["one thread", "disk cache hit", "interpreter", "another async mode"])
def test_autotune_builds_one_after_another_where_it_must(monkeypatch, case):
    """One thread asked for, a key whose timings come from the disk cache (only the pick is built, at launch), the
    interpreter, or another AsyncCompileMode (torch.compile's): Triton's own path, each config built as it is timed."""
    monkeypatch.setenv(BUILD_THREADS_ENV, "1" if case == "one thread" else "4")
    monkeypatch.setattr(_launch, "triton_interpret", lambda: case == "interpreter")
    tuner, log = _log_tuner(monkeypatch, [[1.0] * 3 for _ in range(4)])
    if case == "disk cache hit":
        tuner.cache_results = True

        def hit(tuning_key, pruned, bench):
            tuner.cache[tuning_key] = pruned[2]
            return True

        monkeypatch.setattr(tuner, "check_disk_cache", hit)
    pool = ThreadPoolExecutor(1)
    with pool, _launch.AsyncCompileMode(pool) if case == "another async mode" else contextlib.nullcontext():
        tuner[(1,)](torch.empty(32), 7, FLAG=False)
    kinds = [kind for kind, _ in log.events]
    assert kinds == (["launched"] if case == "disk cache hit" else ["timed"] * 4 + ["launched"])


@pytest.mark.skipif(
    not torch.cuda.is_available() or _launch.AsyncCompileMode is None, reason="builds and runs a kernel on a GPU"
)
def test_threaded_builds_are_the_kernels_the_autotuner_runs(monkeypatch):
    """On a GPU: each config compiled once, in a build thread, and the tuned kernel runs (a fresh JIT function, so no
    kernel is in its cache already)."""
    monkeypatch.setenv(BUILD_THREADS_ENV, "4")
    tuner = _launch.autotune(CONFIGS, ["n"], cache_results=False)(triton.jit(_tiny_kernel.fn))
    compiles, compile_fn = [], tuner.fn.compile

    def counted(*args, **kwargs):
        compiles.append(threading.current_thread().name)
        return compile_fn(*args, **kwargs)

    monkeypatch.setattr(tuner.fn, "compile", counted)
    x = torch.full((32,), 5.0, device="cuda")
    tuner[(1,)](x, 7, FLAG=True)
    torch.cuda.synchronize()
    assert len(compiles) == 4 and all(name.startswith("sfmamba-build") for name in compiles)
    assert x[:7].eq(1).all() and x[7:].eq(5).all()


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5", "²"])
def test_build_threads_checks_its_value(monkeypatch, value):
    monkeypatch.setenv(BUILD_THREADS_ENV, value)
    with pytest.raises(ValueError, match=f"{BUILD_THREADS_ENV} must be a positive integer or 'auto'"):
        build_threads()


def test_build_threads_reads_its_setting(monkeypatch):
    """One after another (Triton's way) unless asked: the threads are not yet checked on a GPU host."""
    monkeypatch.delenv(BUILD_THREADS_ENV, raising=False)
    assert build_threads() == 1
    monkeypatch.setenv(BUILD_THREADS_ENV, "AUTO")
    assert build_threads() == min(16, len(os.sched_getaffinity(0)))
    monkeypatch.setenv(BUILD_THREADS_ENV, " 12 ")
    assert build_threads() == 12


FAST_MATH_PTX = """
import triton
import triton.language as tl
from sfmamba.ops import _launch
from sfmamba.testing import compile_for_sm90

@triton.jit
def kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(y_ptr + offs, _launch.fast_exp2(x) + _launch.softplus(x))

ptx = compile_for_sm90(kernel, {"BLOCK": 128}, 4, lambda name: "*fp32").asm["ptx"]
print(bool(_launch.FAST_MATH.value), "ex2.approx.f32" not in ptx, "lg2.approx.ftz.f32" in ptx)
"""


@pytest.mark.parametrize("setting, single_mufu", [(None, True), ("1", True), ("0", False)])
def test_fast_math_switch_reaches_the_kernels(tmp_path, setting, single_mufu):
    """In an sm_90 build, exp2 and softplus use single ex2/lg2.approx.ftz instructions (no denormal-safe
    `ex2.approx.f32` sequence, a MUFU log2) unless SFMAMBA_FAST_MATH=0 (then tl.exp2 and libdevice's log)."""
    script = tmp_path / "fast_math_ptx.py"  # @triton.jit needs its source in a file
    script.write_text(FAST_MATH_PTX)
    env = {} if setting is None else {FAST_MATH_ENV: setting}
    result = run_without_interpreter(f"import runpy; runpy.run_path({str(script)!r})", env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == [str(single_mufu), str(single_mufu), str(single_mufu)]


def test_fast_math_is_off_under_the_interpreter_and_checks_its_value(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(FAST_MATH_ENV, raising=False)
    assert not fast_math()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert fast_math()
    monkeypatch.setenv(FAST_MATH_ENV, "yes")
    with pytest.raises(ValueError, match=FAST_MATH_ENV):
        fast_math()


# ---- direct launches (ops/_launch.py::launch skipping Triton's binder) ----

SPECIALISATION_VALUES = [0, 1, 2, 15, 16, 17, 32, -16, -1, 2**31 - 1, 2**31, 2**31 + 16, -(2**31) - 1, 2**63 - 16,
                         2**63, 2**64 - 16, True, False, 1.0, 16.0, 0.5, None]  # fmt: skip


def _tensors() -> list[torch.Tensor]:
    base = torch.zeros(64)  # CPU allocations are 64-byte aligned
    assert base.data_ptr() % 64 == 0
    return [base, base[1:], base[4:], base[5:], base.to(torch.float16), base.to(torch.float16)[8:], base.double()]


def test_signature_separates_alignment_dtype_and_int_classes():
    base = torch.zeros(64)
    sig = lambda *args: _launch.signature(args)  # noqa: E731
    assert sig(base) == sig(base[4:]) == sig(torch.ones(8))  # 0 and 16 bytes in: both 16-byte aligned
    assert sig(base) != sig(base[1:]) and sig(base[1:]) == sig(base[5:])  # 4 and 20 bytes in: neither
    assert sig(base) != sig(base.double())
    # an int's value fixes == 1, % 16 and the i32/i64/u64 range; its type keeps True, 1 and 1.0 apart
    for a, b in [(1, 2), (16, 17), (16, 32), (2**31 - 1, 2**31), (2**63 - 1, 2**63), (1, True), (1, 1.0), (0, None)]:
        assert sig(a) != sig(b), (a, b)
    assert sig(base, 17, None, 0.5) == sig(torch.ones(3), 17, None, 0.5)
    assert sig(base, 17) != sig(17, base)


@pytest.mark.skipif(not hasattr(triton.runtime.jit, "native_specialize_impl"), reason="no native specializer")
@pytest.mark.parametrize("specialize, align", [(True, True), (True, False), (False, True), (False, False)])
def test_signature_is_never_coarser_than_tritons_specialisation(specialize, align):
    """Whenever two arguments have the same `signature`, the installed Triton's specializer (what its binder calls for
    each argument, under each do_not_specialize / do_not_specialize_on_alignment setting) treats them alike too."""
    from triton.backends.compiler import BaseBackend

    def triton_key(arg):
        return triton.runtime.jit.native_specialize_impl(BaseBackend, arg, False, specialize, align)

    values = SPECIALISATION_VALUES + _tensors()
    for a in values:
        for b in values:
            if _launch.signature([a]) == _launch.signature([b]):
                assert triton_key(a) == triton_key(b), (a, b)
    if specialize:  # what Triton's specialised args distinguish, which the signature must too
        assert triton_key(1) != triton_key(2) and triton_key(1)[0] == "constexpr"
        assert (triton_key(16) != triton_key(17)) == align
        assert triton_key(2**31)[0] == "i64" and triton_key(2**63)[0] == "u64" and triton_key(17)[0] == "i32"
        base = torch.zeros(64)
        assert (triton_key(base) != triton_key(base[1:])) == align


def test_direct_launch_needs_a_verified_triton_and_no_interpreter(monkeypatch):
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _launch.direct_launch_supported()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not _launch.direct_launch_supported()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for version in ("3.5.1", "3.8.0", "4.6.0", "unknown"):
        monkeypatch.setattr(triton, "__version__", version)
        assert not _launch.direct_launch_supported(), version
    # these tests run under the interpreter: the switch cannot turn it on
    monkeypatch.setattr(_launch, "_direct", False)
    _launch.set_direct_launch(True)
    assert not _launch.direct_launch_enabled()


READ_AT_IMPORT = """
import triton
triton.__version__ = "3.6.0"
from sfmamba.ops import _launch
print(_launch.direct_launch_enabled())
_launch.set_direct_launch(False)
print(_launch.direct_launch_enabled())
"""


@pytest.mark.parametrize("setting, enabled", [(None, True), ("1", True), ("0", False)])
def test_direct_launch_switch_is_read_at_import(setting, enabled):
    env = {} if setting is None else {DIRECT_LAUNCH_ENV: setting}
    result = run_without_interpreter(READ_AT_IMPORT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == [str(enabled), "False"]


def test_direct_launch_switch_checks_its_value(monkeypatch):
    monkeypatch.setenv(DIRECT_LAUNCH_ENV, "on")
    with pytest.raises(ValueError, match=DIRECT_LAUNCH_ENV):
        direct_launch()
    monkeypatch.setenv(DIRECT_LAUNCH_ENV, "0")
    assert not direct_launch()


def test_on_device_switches_only_to_another_device(monkeypatch):
    switched = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda device: switched.append(device) or contextlib.nullcontext())
    for device in (torch.device("cuda", 0), torch.device("cuda"), torch.device("cpu")):
        with _launch.on_device(device):
            pass
    assert switched == []
    with _launch.on_device(torch.device("cuda", 1)):
        pass
    assert switched == [torch.device("cuda", 1)]


def test_kernel_backend_follows_the_override_and_env_changes(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(KERNEL_ENV, "naive")
    assert kernel_backend() == "naive" and not use_triton(cpu)
    monkeypatch.setenv(KERNEL_ENV, "triton")
    assert kernel_backend() == "triton" and use_triton(cpu)  # the tests run under the interpreter
    try:
        set_kernel_backend("naive")
        assert kernel_backend() == "naive" and not use_triton(cpu)
    finally:
        set_kernel_backend(None)
    assert kernel_backend() == "triton"
    monkeypatch.delenv(KERNEL_ENV)
    assert kernel_backend() == "auto" and not use_triton(cpu)
    monkeypatch.setenv(KERNEL_ENV, " Naive ")
    assert kernel_backend() == "naive"
    monkeypatch.setenv(KERNEL_ENV, "fast")
    for _ in range(2):  # a bad value is not cached as a good one
        with pytest.raises(ValueError, match=KERNEL_ENV):
            kernel_backend()


def _fake_kernel(x_ptr, n, BLOCK: tl.constexpr, FLAG: tl.constexpr = 3):
    pass


class FakeCompiled(CompiledKernel):
    """A compiled kernel that records its launches (no GPU here)."""

    def __init__(self, log: list):
        self.log, self.function, self.packed_metadata, self.module = log, "function", "packed", None

    def launch_metadata(self, grid, stream, *args):
        return ("metadata", grid, stream)

    def run(self, *args):
        self.log.append(args)


@pytest.fixture
def direct_fake(monkeypatch):
    """A real JITFunction whose `run` (Triton's binder path) is faked, the direct path on, CUDA faked: returns the
    kernel and the logs of binder-path runs and direct launches."""
    kernel = JITFunction(_fake_kernel)
    runs, launches = [], []
    compiled = FakeCompiled(launches)

    def run(*args, grid, warmup, **kwargs):
        runs.append((args, kwargs))
        return compiled

    monkeypatch.setattr(kernel, "run", run)
    monkeypatch.setattr(_launch, "_RESOLVED", {})
    monkeypatch.setattr(_launch, "_direct", True)
    monkeypatch.setattr(_launch, "_stream_getter", lambda: lambda device: 1000 + device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    return kernel, runs, launches


def test_repeated_launch_takes_the_recorded_kernel(direct_fake):
    kernel, runs, launches = direct_fake
    x = torch.zeros(64)
    before = _launch.direct_launches()
    for _ in range(4):
        _launch.launch(kernel, lambda meta: (meta["n"] // meta["BLOCK"], 2), x, 96, BLOCK=32, num_warps=4)
    assert len(runs) == 2  # resolve, then record the compiled kernel
    assert runs[1] == ((x, 96), {"BLOCK": 32, "num_warps": 4})
    assert _launch.direct_launches() - before == 2 and len(launches) == 2
    # grid from the bound arguments, device 0's stream, launch metadata and Triton's hooks, every bound value in
    # signature order (the default FLAG included)
    hooks = triton.knobs.runtime
    expected = (3, 2, 1, 1000, "function", "packed", ("metadata", (3, 2), 1000), hooks.launch_enter_hook,
                hooks.launch_exit_hook, x, 96, 32, 3)  # fmt: skip
    assert launches[0] == expected and launches[1] == expected


@pytest.mark.parametrize(
    "change",
    ["misaligned", "dtype", "int_is_one", "int_div16", "int64", "bool", "flag", "device", "knob", "pre_run_hook"],
)
def test_a_changed_specialisation_falls_back_to_triton(direct_fake, monkeypatch, change):
    kernel, runs, launches = direct_fake
    x = torch.zeros(64)
    args, flags = [x, 17], {"BLOCK": 32}
    for _ in range(3):
        _launch.launch(kernel, (1,), *args, **flags)
    assert len(runs) == 2 and len(launches) == 1
    if change == "misaligned":
        args[0] = x[1:]
    elif change == "dtype":
        args[0] = x.half()
    elif change == "int_is_one":
        args[1] = 1
    elif change == "int_div16":
        args[1] = 32
    elif change == "int64":
        args[1] = 2**31 + 17
    elif change == "bool":
        args[1] = True
    elif change == "flag":
        flags["FLAG"] = 4
    elif change == "device":
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    elif change == "knob":
        monkeypatch.setattr(triton.knobs.runtime, "debug", True)
    else:
        kernel.pre_run_hooks.append(lambda *args, **kwargs: None)
    _launch.launch(kernel, (1,), *args, **flags)
    assert len(runs) == 3 and len(launches) == 1  # through Triton's path, not the recorded kernel
    assert runs[-1][0] == tuple(args)
