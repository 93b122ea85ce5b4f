"""Launcher pieces shared by the Triton ops (ops/_launch.py)."""

from __future__ import annotations

import inspect

import pytest
import triton

from sfmamba.ops import _launch
from sfmamba.testing import run_without_interpreter
from sfmamba.utils._config import FAST_MATH_ENV, fast_math


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
