"""NaN-poison fresh allocations made by sfmamba, so an output element a kernel forgets to write fails the tests."""

from __future__ import annotations

import inspect
import math
import os

# Without a GPU the Triton kernels run under the interpreter. The variable must be set before triton is first
# imported (torch._dynamo imports it during collection), so it is set here, once, for every test module.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from sfmamba.testing import speed_up_triton_interpreter

if os.environ.get("TRITON_INTERPRET") == "1":
    speed_up_triton_interpreter()

_ALLOCATORS = ("empty", "empty_like", "empty_strided")


def _called_from_sfmamba() -> bool:
    frame = inspect.currentframe()
    try:
        caller = frame.f_back.f_back if frame and frame.f_back else None
        module = caller.f_globals.get("__name__", "") if caller else ""
        return module.startswith("sfmamba.")
    finally:
        del frame


def _poisoned(original):
    def allocate(*args, **kwargs):
        out = original(*args, **kwargs)
        if _called_from_sfmamba():
            if out.is_floating_point():
                out.fill_(math.nan)
            elif out.dtype in (torch.int32, torch.int64):
                out.fill_(-(2**30))
        return out

    return allocate


@pytest.fixture(autouse=True)
def poison_sfmamba_allocations(monkeypatch):
    for name in _ALLOCATORS:
        monkeypatch.setattr(torch, name, _poisoned(getattr(torch, name)))
    original_new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned(original_new_empty))
    yield


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: `pytest -n 2` on a 2-core runner with two threads per worker oversubscribes the
    cores (model tests ran 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def triton_backend():
    """Ops run their Triton kernels (under the interpreter on a CPU machine) for the test, eager training steps
    included (the fused training ops, which `SFMAMBA_TRAIN_KERNELS=auto` keeps for CUDA-graph capture), then the
    defaults again."""
    from sfmamba.utils._config import graph_train_kernels, set_kernel_backend

    set_kernel_backend("triton")
    with graph_train_kernels():
        yield
    set_kernel_backend(None)
