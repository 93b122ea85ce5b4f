"""Launcher pieces shared by the Triton ops (ops/_launch.py)."""

from __future__ import annotations

import inspect

import triton

from sfmamba.ops import _launch


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
