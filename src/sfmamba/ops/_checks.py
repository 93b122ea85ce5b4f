"""Argument checks shared by the ops' public functions: one wording for every ValueError."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import NoReturn

import torch
from torch import Tensor

from ..utils._config import value_checks_enabled

LAYOUTS = ("BDL", "BLD")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ArgumentError(ValueError):
    """A bad argument to an sfmamba op; the message names the op, the argument and what was expected."""


def fail(op: str, name: str, expected: str, got: object) -> NoReturn:
    raise ArgumentError(f"{op}: {name} must be {expected}, got {got}")


def check_value(op: str, name: str, ok: Tensor, expected: str, got: Callable[[], object]) -> None:
    """A check of input *values* (`ok`: a 0-d bool tensor). On the CPU a failure raises the usual `ValueError`; on a
    GPU the check is queued as an asynchronous device assertion carrying the same message, so it never stalls the
    host (a blocking `.item()` per call made eager models host-bound). Skipped when value checks are off."""
    if not value_checks_enabled():
        return
    if ok.device.type == "cpu":
        if not bool(ok):
            fail(op, name, expected, got())
    else:
        torch._assert_async(ok, f"{op}: {name} must be {expected}")


_CHECKED_FINITE: dict[int, tuple[weakref.ref, int]] = {}  # id -> (the tensor, its version when found finite)


def check_finite(op: str, name: str, x: Tensor) -> None:
    """`check_value` that `x` is finite, done once per tensor and version: a layer passing the same tensor every call
    (A cached between eager inference calls, `utils.inference_cache`) pays its launches once. On a GPU the check is
    asynchronous, so a tensor is remembered as checked once its check is queued: a failure still surfaces."""
    if not value_checks_enabled():
        return
    remembers = not x.is_inference()  # inference tensors keep no version counter
    entry = _CHECKED_FINITE.get(id(x)) if remembers else None
    if entry is not None and entry[0]() is x and entry[1] == x._version:
        return
    check_value(op, name, torch.isfinite(x).all(), "finite everywhere", lambda: "non-finite values")
    if remembers:
        key = id(x)
        _CHECKED_FINITE[key] = (weakref.ref(x, lambda _, key=key: _CHECKED_FINITE.pop(key, None)), x._version)


def describe(x: Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"


def check_sequence(op: str, name: str, x: object, layout: object) -> tuple[int, int, int]:
    """The main sequence input: a non-empty float tensor in `layout`; returns (batch, channels, length)."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        fail(op, "layout", f"one of {LAYOUTS}", repr(layout))
    dims = "(batch, D, L)" if layout == "BDL" else "(batch, L, D)"
    if not isinstance(x, Tensor) or x.dim() != 3:
        fail(op, name, f"a 3-D tensor {dims}", getattr(x, "shape", type(x)))
    if x.dtype not in FLOAT_DTYPES:
        fail(op, name, "float32, float16 or bfloat16", x.dtype)
    batch = x.shape[0]
    dim, length = (x.shape[1], x.shape[2]) if layout == "BDL" else (x.shape[2], x.shape[1])
    if batch == 0 or dim == 0 or length == 0:
        fail(op, name, "non-empty in every dimension", tuple(x.shape))
    return batch, dim, length


def check_cu_seqlens(op: str, cu_seqlens: object, batch: int, length: int, device: torch.device) -> None:
    """Packed-segment offsets: one row, a 1-D int tensor on the data's device, strictly increasing from 0 to L."""
    if batch != 1:
        fail(op, "the batch size with cu_seqlens", "1 (segments packed into one row)", batch)
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        fail(op, "cu_seqlens", "a 1-D tensor of at least 2 offsets", getattr(cu_seqlens, "shape", type(cu_seqlens)))
    if cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.device != device:
        fail(op, "cu_seqlens", f"int32 or int64 on {device}", describe(cu_seqlens))
    cu = cu_seqlens
    ok = (cu[0] == 0) & (cu[-1] == length) & (cu.diff().min() > 0)
    check_value(op, "cu_seqlens", ok, f"strictly increasing offsets from 0 to L={length}", cu.tolist)


def check_segments(op: str, seq_len: object, cu_seqlens: object, batch: int, length: int, device: torch.device) -> None:
    """The two ways to mark segments: `seq_len` dividing L (periodic) or packed `cu_seqlens`, never both."""
    if seq_len is not None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int):
            fail(op, "seq_len", "a Python int", f"{type(seq_len).__name__} {seq_len}")
        if seq_len <= 0 or length % seq_len:
            fail(op, "seq_len", f"a positive int that divides L={length}", repr(seq_len))
        if cu_seqlens is not None:
            fail(op, "seq_len", "None when cu_seqlens is given (choose one way to mark segments)", seq_len)
    if cu_seqlens is not None:
        check_cu_seqlens(op, cu_seqlens, batch, length, device)
