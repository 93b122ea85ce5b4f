"""Batch folding for short scans (SPEC §2): run `f` images back to back in one row, resetting the state between them.

A vision scan is short (MambaVision at 224 px: L = 196 and 49), so a kernel that gives every (image, channel block)
one sequential program spends much of its time on per-program set-up. Folding reshapes a batch of `batch` images of
length L into `batch / f` rows of length `f * L` and calls `selective_scan(..., seq_len=L)`, which zeroes the state
at every image boundary, so the result equals the unfolded scan. Whether it pays depends on the kernel and the GPU;
`plan_fold` picks `f` from, in order:

1. the user table `fold_table.json` in the cache dir (`sfmamba.utils._config.cache_dir()`), written by `sfmamba tune`;
2. the shipped defaults `fold_defaults.json` next to this file;
3. `heuristic_fold`, which needs no measurement (always 1 on CPU): it folds only rows shorter than 16 steps, as no
   fold has won at a measured shape with these kernels (H100, CUDA graphs and eager, batch 128-512 at L = 49 and 196;
   benchmarks/results/s25_20261206 and s28_20261206).

Both tables have the same format::

    {"version": 1,
     "devices": {"<torch.cuda.get_device_name() or 'cpu'>": {
         "source": "how the entries were measured",
         "entries": [{"dtype": "bfloat16", "batch": 128, "length": 196, "dim": 160, "d_state": 8, "fold": 1,
                      ...optional extras such as "us" (timings per candidate), "mode", "groups"}]}}}

Within a table the exact key (dtype, batch, length, dim, d_state) wins; otherwise the entry with the same
(dtype, length, dim, d_state) and the nearest batch is used, its `f` reduced to the largest divisor of the actual
batch not above it. A table that cannot be read or does not match this format is ignored with a warning naming the
file: a bad cache file must never break a model's forward.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...utils._config import CACHE_DIR_INPUTS, cache_dir
from ...utils.files import atomic_write_text
from .._checks import LAYOUTS
from .interface import check_selective_scan_inputs, selective_scan

__all__ = [
    "TABLE_VERSION",
    "device_name",
    "fold_scan",
    "heuristic_fold",
    "largest_divisor_at_most",
    "plan_fold",
    "update_fold_table",
    "user_table_path",
]

TABLE_VERSION = 1
USER_TABLE_NAME = "fold_table.json"
SHIPPED_TABLE_PATH = Path(__file__).with_name("fold_defaults.json")

# Heuristic constants (see `heuristic_fold`).
SHORT_ROW_STEPS = 16  # two of the forward's 8-step load rings: shorter rows are mostly set-up (A, D, the ring's fill)
FOLDED_ROW_STEPS = 64  # the longest folded row the heuristic makes
CHANNELS_PER_PROGRAM = 16  # the forward's picks at MambaVision's shapes: BLOCK_D 16, two lanes per channel
MIN_PROGRAMS_PER_SM = 8  # a fold must leave the grid this full (each program runs f times longer)

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_KEY_FIELDS = ("batch", "length", "dim", "d_state")

# A parsed table: device name -> {(dtype, length, dim, d_state): {batch: fold}}
_Index = dict[str, dict[tuple[str, int, int, int], dict[int, int]]]
# path -> (file identity at load time, parsed table); a new identity (os.replace, edit) triggers a reload
_TABLE_CACHE: dict[Path, tuple[tuple[int, int, int], _Index]] = {}


def user_table_path() -> Path:
    """The per-user table that `sfmamba tune` writes: `<cache dir>/fold_table.json`."""
    return _user_table_path(*(os.environ.get(name) for name in CACHE_DIR_INPUTS))


@functools.lru_cache(maxsize=8)
def _user_table_path(*_environment: str | None) -> Path:
    # keyed on the variables `cache_dir` reads: building the path from them cost 2/3 of a `plan_fold` call (~25 us,
    # paid by every mixer forward)
    return cache_dir() / USER_TABLE_NAME


def device_name(device: torch.device | str) -> str:
    """The table key of a device: `torch.cuda.get_device_name` for CUDA, else the device type (`'cpu'`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"fold tables cover {tuple(_DTYPE_NAMES.values())}, got {dtype}")
    return _DTYPE_NAMES[dtype]


def largest_divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of `n` that is <= `cap` (at least 1)."""
    return next(d for d in range(min(n, max(cap, 1)), 0, -1) if n % d == 0)


def heuristic_fold(batch: int, dim: int, length: int, sm_count: int) -> int:
    """Fold factor for a GPU with `sm_count` SMs when no table has the shape.

    Folding `f` images into one row divides the programs by `f` and multiplies each one's steps by `f`; it saves only
    per-row set-up (loading A and D, filling the load ring), which the current kernels keep small: every fold of 2-16
    measured on the H100 lost, at L = 49 and 196, batch 128-512 (e.g. (512, 320, 49, 8) eager forward 71.4 us
    unfolded against 122-134 folded; benchmarks/results/s28_20261206). So only rows shorter than `SHORT_ROW_STEPS`
    fold: by the largest power of two dividing `batch` that keeps a folded row within `FOLDED_ROW_STEPS` and the grid
    at least `MIN_PROGRAMS_PER_SM` programs per SM. `sfmamba tune` measures the real answer on a device.
    """
    if length >= SHORT_ROW_STEPS:
        return 1
    blocks = math.ceil(dim / CHANNELS_PER_PROGRAM)
    fold = 1
    while (
        batch % (fold * 2) == 0
        and fold * 2 * length <= FOLDED_ROW_STEPS
        and batch // (fold * 2) * blocks >= MIN_PROGRAMS_PER_SM * sm_count
    ):
        fold *= 2
    return fold


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _positive_int(entry: dict, field: str) -> int:
    value = entry.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"entry {entry!r}: {field!r} must be a positive int")
    return value


def _parse_table(data: Any) -> _Index:
    """Validate a decoded table and index it; ValueError says what is wrong."""
    if not isinstance(data, dict) or data.get("version") != TABLE_VERSION:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"expected an object with version {TABLE_VERSION}, found version {found!r}")
    devices = data.get("devices")
    if not isinstance(devices, dict):
        raise ValueError("'devices' must be an object keyed by device name")
    index: _Index = {}
    for name, block in devices.items():
        entries = block.get("entries") if isinstance(block, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"device {name!r}: 'entries' must be a list")
        by_shape = index.setdefault(name, {})
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPE_NAMES.values():
                raise ValueError(f"device {name!r}: entry {entry!r} needs a dtype among {tuple(_DTYPE_NAMES.values())}")
            batch, length, dim, d_state = (_positive_int(entry, field) for field in _KEY_FIELDS)
            fold = _positive_int(entry, "fold")
            if batch % fold:
                raise ValueError(f"device {name!r}: entry {entry!r}: fold does not divide batch")
            by_shape.setdefault((entry["dtype"], length, dim, d_state), {})[batch] = fold
    return index


def _load_index(path: Path) -> _Index:
    """The parsed table at `path` (empty when missing or invalid), cached until the file changes."""
    identity = _file_identity(path)
    if identity is None:
        _TABLE_CACHE.pop(path, None)
        return {}
    cached = _TABLE_CACHE.get(path)
    if cached is not None and cached[0] == identity:
        return cached[1]
    try:
        index = _parse_table(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        warnings.warn(f"sfmamba: ignoring fold table {path}: {err}", RuntimeWarning, stacklevel=4)
        index = {}
    _TABLE_CACHE[path] = (identity, index)  # a bad file warns once per version of it
    return index


def _lookup(index: _Index, device: str, dtype: str, batch: int, length: int, dim: int, d_state: int) -> int | None:
    folds = index.get(device, {}).get((dtype, length, dim, d_state))
    if not folds:
        return None
    if batch in folds:
        return folds[batch]
    nearest = min(folds, key=lambda b: (abs(b - batch), b))  # ties: the smaller batch, which folds less
    return largest_divisor_at_most(batch, folds[nearest])


@torch.compiler.assume_constant_result  # table I/O cannot be traced; the answer is a constant of the shapes
def plan_fold(batch: int, dim: int, length: int, d_state: int, dtype: torch.dtype, device: torch.device) -> int:
    """Fold factor `f` (a divisor of `batch`; 1 = no folding) for a scan of `batch` sequences of `length` steps.

    Looks up the user table (`sfmamba tune`), then the shipped defaults, then falls back to `heuristic_fold`
    (always 1 on CPU). See the module docstring for the table format and the nearest-batch rule.

    Args:
        batch (int): number of images (rows before folding).
        dim (int): channels D.
        length (int): steps per image L.
        d_state (int): state size N.
        dtype (torch.dtype): dtype of `u`.
        device (torch.device): where the scan runs; its name selects the table entries.
    """
    for name, value in (("batch", batch), ("dim", dim), ("length", length), ("d_state", d_state)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"plan_fold: {name} must be a positive int, got {value!r}")
    device = torch.device(device)
    key = (device_name(device), dtype_name(dtype), batch, length, dim, d_state)
    for path in (user_table_path(), SHIPPED_TABLE_PATH):
        fold = _lookup(_load_index(path), *key)
        if fold is not None:
            return fold
    if device.type != "cuda":
        return 1
    return heuristic_fold(batch, dim, length, torch.cuda.get_device_properties(device).multi_processor_count)


def dumps_table(data: dict) -> str:
    """JSON text of a table with one entry per line (readable, and diffs show one line per changed entry)."""
    lines = ["{", f' "version": {json.dumps(data["version"])},', ' "devices": {']
    for i, (name, block) in enumerate(data["devices"].items()):
        lines.append(f"  {json.dumps(name)}: {{")
        extras = [f"   {json.dumps(k)}: {json.dumps(v)}," for k, v in block.items() if k != "entries"]
        entries = [",\n".join(f"    {json.dumps(e)}" for e in block["entries"])] if block["entries"] else []
        lines += [*extras, '   "entries": [', *entries, "   ]", "  }" + ("," if i + 1 < len(data["devices"]) else "")]
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def _read_table_for_update(path: Path) -> dict:
    if not path.exists():
        return {"version": TABLE_VERSION, "devices": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        _parse_table(data)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot update fold table {path}: {err}; move it away or fix it") from err
    return data


def update_fold_table(path: Path | str, device: str, entries: Iterable[dict], source: str) -> Path:
    """Merge `entries` (dicts with dtype, batch, length, dim, d_state, fold and any extras) into the table at `path`
    under `device`, replacing entries with the same key, and write it atomically (temp file + os.replace).

    Concurrent updates of one file do not corrupt it, but the last writer wins. Raises ValueError when the existing
    file is not a valid table (it is left untouched).
    """
    path = Path(path)
    data = _read_table_for_update(path)
    block = data["devices"].setdefault(device, {"entries": []})
    block["source"] = source
    merged = {tuple(e[f] for f in ("dtype", *_KEY_FIELDS)): e for e in block["entries"]}
    merged.update({tuple(e[f] for f in ("dtype", *_KEY_FIELDS)): dict(e) for e in entries})
    block["entries"] = [merged[k] for k in sorted(merged)]
    _parse_table(data)  # never write a table that plan_fold would reject
    atomic_write_text(path, dumps_table(data))
    return path


def _fold_rows(x: Tensor | None, fold: int, layout: str) -> Tensor | None:
    """(b, L, ...) -> (b/f, f*L, ...) for "BLD" (a view when contiguous); (b, ..., L) -> (b/f, ..., f*L) for "BDL"
    (a copy: the images of a row must become adjacent along the last axis)."""
    if x is None:
        return None
    rows = x.unflatten(0, (x.shape[0] // fold, fold))  # [b/f, f, ...]
    if layout == "BLD":
        return rows.flatten(1, 2)
    return rows.movedim(1, -2).flatten(-2)


def _unfold_rows(y: Tensor, fold: int, layout: str) -> Tensor:
    if layout == "BLD":
        return y.unflatten(1, (fold, y.shape[1] // fold)).flatten(0, 1)
    return y.unflatten(-1, (fold, y.shape[-1] // fold)).movedim(-2, 1).flatten(0, 1)


def fold_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    seq_len: int | None = None,
    initial_state: Tensor | None = None,
    fold: int | None = None,
    layout: str = "BLD",
) -> Tensor | tuple[Tensor, Tensor]:
    r"""`selective_scan` of a batch, computed with `fold` images back to back in each row.

    Same arguments and results as `sfmamba.ops.selective_scan` (without `cu_seqlens`); the output equals the
    unfolded scan. With `layout="BLD"` and contiguous inputs folding is free: every [B, L, ...] tensor is viewed as
    [B/f, f*L, ...]. With `layout="BDL"` the images of a row must become adjacent along L, so `u`, `delta`, `z`, `B`,
    `C` and the output are copied (a transpose each way); prefer "BLD" when folding.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state, layout:
            as in `selective_scan`, with the unfolded shapes. `layout` defaults to "BLD" here.
        seq_len (int, Optional): segments within each image, as in `selective_scan`. Default: None (the image).
        fold (int, Optional): images per row; must divide the batch. Default: None (`plan_fold` decides; under
            `torch.compile` its answer is baked into the graph as a constant of the static shapes, so pass `fold`
            explicitly when compiling with dynamic sizes, which `plan_fold` cannot take).

    Returns:
        out with the shape of `u`, and with `return_last_state` the last states [S, D, N] in the unfolded order.

    Examples::
        >>> u = torch.randn(8, 49, 16); delta = torch.rand(8, 49, 16); A = -torch.rand(16, 4)
        >>> B = torch.randn(8, 49, 4); C = torch.randn(8, 49, 4)
        >>> fold_scan(u, delta, A, B, C, fold=4).shape
        torch.Size([8, 49, 16])
    """
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if layout not in LAYOUTS or not isinstance(u, Tensor) or u.dim() != 3 or not isinstance(A, Tensor) or A.dim() != 2:
        # let selective_scan name the bad argument
        return selective_scan(*args, seq_len=seq_len, initial_state=initial_state, layout=layout)
    batch = u.shape[0]
    dim, length = (u.shape[1], u.shape[2]) if layout == "BDL" else (u.shape[2], u.shape[1])
    if fold is None:
        fold = plan_fold(batch, dim, length, A.shape[1], u.dtype, u.device)
    if isinstance(fold, bool) or not isinstance(fold, int) or fold <= 0 or batch % fold:
        raise ValueError(f"fold_scan: fold must be a positive int that divides the batch size {batch}, got {fold!r}")
    if fold == 1:
        return selective_scan(*args, seq_len=seq_len, initial_state=initial_state, layout=layout)
    # check the caller's (unfolded) shapes, so errors name them and not the folded ones
    check_selective_scan_inputs(*args, seq_len, None, initial_state, layout)
    u_f, delta_f, B_f, C_f, z_f = (_fold_rows(x, fold, layout) for x in (u, delta, B, C, z))
    out = selective_scan(
        u_f, delta_f, A, B_f, C_f, D, z_f, delta_bias, delta_softplus, return_last_state,
        seq_len=seq_len or length, initial_state=initial_state, layout=layout,
    )  # fmt: skip
    # segments are numbered batch-major, so last states are already in the unfolded order
    if return_last_state:
        return _unfold_rows(out[0], fold, layout), out[1]
    return _unfold_rows(out, fold, layout)
