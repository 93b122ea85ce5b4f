"""sfmamba.testing's interpreter speed-up (tests/conftest.py applies it under TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl

from sfmamba.testing import speed_up_triton_interpreter

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter runs on CPU only")


@triton.jit
def _inner(x):
    return x * 2.0 + 1.0


@triton.jit
def _outer(x):
    return _inner(x) + _inner(x * 3.0)


@triton.jit
def _nested_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, _outer(tl.load(x_ptr + offsets, mask=mask)), mask=mask)


def test_interpreter_speed_up_keeps_results_and_restores_the_language():
    """A kernel whose jit helpers nest two deep gives the eager result on two launches (the second launch patches the
    language again, since the first restored it); after a launch tl.load is Triton's builtin again; applying the
    speed-up twice changes nothing."""
    from triton.runtime import interpreter

    assert getattr(interpreter._patch_lang, "once_per_launch", False), "conftest applies the speed-up"
    assert speed_up_triton_interpreter() is False
    assert interpreter.interpreter_builder.options.sanitize_overflow is False
    for n in (37, 5):
        x = torch.randn(n)
        out = torch.full_like(x, float("nan"))
        _nested_kernel[(triton.cdiv(n, 16),)](x, out, n, BLOCK=16)
        torch.testing.assert_close(out, (x * 2 + 1) + (x * 6 + 1))
        assert tl.core.is_builtin(tl.load) and tl.core.is_builtin(tl.core.tensor.__add__)
