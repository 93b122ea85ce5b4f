"""Time every batch-fold factor of the selective scan on this machine and record the fastest in the fold table.

For each shape and dtype, `fold_scan` runs with every candidate f that divides the batch (f=1 is always timed, as
the baseline); a candidate whose output differs from f=1's is reported and never chosen. The fastest f is chosen
when it beats f=1 by at least --min-gain, and the choices are merged into the user table for this device
(`<cache dir>/fold_table.json`, see ENVs.md), which `plan_fold` reads. Times are medians: triton.testing.do_bench
on CUDA, time.perf_counter on CPU.

examples:
  sfmamba tune                                    # on a GPU: MambaVision-T/S/B + VMamba-v2 shapes, bf16 and fp32
  sfmamba tune --shapes 64,160,196,8 --dtype bf16 --mode fwdbwd          # on a GPU (minutes per shape on a CPU)
  sfmamba tune --device cpu --shapes 4,8,16,2 --candidates 1 2 4 --output /tmp/fold_table.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..ops.selective_scan.fold import device_name, dtype_name, fold_scan, update_fold_table, user_table_path
from ..testing import relative_error
from ..utils._config import KERNEL_CHOICES, set_kernel_backend, triton_interpret
from . import UsageError, device_arg, positive_int, resolve_device

HELP = "time batch-fold factors of the selective scan and record the fastest per shape"
_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanShape:
    """One scan: `batch` images of `length` steps, `dim` channels, state size `d_state`, B/C shared by `groups`."""

    batch: int
    dim: int
    length: int
    d_state: int
    groups: int = 1

    def __str__(self) -> str:
        fields = (self.batch, self.dim, self.length, self.d_state) + ((self.groups,) if self.groups > 1 else ())
        return ",".join(map(str, fields))


def _mambavision_shapes(batch: int = 128) -> list[ScanShape]:
    # T/S/B at 224 px: stage 3 runs windows of 14x14 (L=196), stage 4 of 7x7 (L=49), each +2 aux tokens in SF-Mamba;
    # the mixer scans half of the stage's channels (4*dim and 8*dim) with N=8.
    return [
        ScanShape(batch, channels // 2, length + aux, 8)
        for dim in (80, 96, 128)
        for channels, length in ((4 * dim, 196), (8 * dim, 49))
        for aux in (0, 2)
    ]


# VMamba-v2-T stage 1: 56x56 tokens, 4 scan directions x 96 channels, N=1, one B/C per direction (G=4)
DEFAULT_SHAPES = (*_mambavision_shapes(), ScanShape(128, 384, 3136, 1, 4))
DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}  # fmt: skip
SHORT_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# a fold must reproduce f=1's output to this relative error to be eligible
MATCH_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def parse_shape(text: str) -> ScanShape:
    """`B,D,L,N` or `B,D,L,N,G` -> ScanShape (argparse type)."""
    parts = text.split(",")
    if len(parts) not in (4, 5):
        raise argparse.ArgumentTypeError(f"shape {text!r} must be B,D,L,N or B,D,L,N,G (comma-separated ints)")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} must contain only integers") from None
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"shape {text!r} must contain only positive integers")
    shape = ScanShape(*values)
    if shape.dim % shape.groups:
        raise argparse.ArgumentTypeError(f"shape {text!r}: the group count G must divide the channels D")
    return shape


def parse_dtype(text: str) -> torch.dtype:
    if text.lower() not in DTYPES:
        raise argparse.ArgumentTypeError(f"dtype {text!r} must be one of {', '.join(DTYPES)}")
    return DTYPES[text.lower()]


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to time")
    what.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=list(DEFAULT_SHAPES),
        metavar="B,D,L,N[,G]",
        help="scan shapes; G = groups sharing B/C (default: MambaVision-T/S/B at 224 px with and "
        "without 2 aux tokens, and VMamba-v2 128,384,3136,1,4; all at batch 128)",
    )
    what.add_argument(
        "--dtype",
        nargs="+",
        type=parse_dtype,
        default=[torch.bfloat16, torch.float32],
        metavar="DTYPE",
        help="bf16, fp16 and/or fp32 (default: bf16 fp32)",
    )
    what.add_argument(
        "--candidates",
        nargs="+",
        type=positive_int,
        default=[1, 2, 4, 8, 16],
        metavar="F",
        help="fold factors to try; those not dividing B are skipped, 1 is always timed",
    )
    what.add_argument("--mode", choices=("fwd", "fwdbwd"), default="fwd", help="time the forward or forward+backward")
    what.add_argument(
        "--layout",
        choices=("BLD", "BDL"),
        default="BLD",
        help="tensor layout (BDL folding includes its transpose copies; default: BLD)",
    )
    how = parser.add_argument_group("how to time")
    how.add_argument("--device", type=device_arg, default=None, help="default: cuda if available, else cpu")
    how.add_argument("--kernel", choices=KERNEL_CHOICES, default=None, help="force a backend (default: SFMAMBA_KERNEL)")
    how.add_argument("--warmup-ms", type=non_negative_float, default=25.0, help="warm-up time per candidate")
    how.add_argument("--rep-ms", type=non_negative_float, default=100.0, help="measuring time per candidate")
    how.add_argument(
        "--min-gain",
        type=non_negative_float,
        default=0.03,
        help="choose f>1 only when it beats f=1 by this fraction (default: 0.03; guards against noise)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output",
        type=Path,
        default=None,
        help="table to merge the results into (default: the user table, <cache dir>/fold_table.json)",
    )
    out.add_argument("--dry-run", action="store_true", help="print the results without writing the table")


def make_inputs(shape: ScanShape, dtype: torch.dtype, device: torch.device, layout: str, grad: bool) -> dict:
    """Random `fold_scan` arguments in the range a trained mixer sees (softplus step, negative A, D skip)."""
    b, d, length, n, g = shape.batch, shape.dim, shape.length, shape.d_state, shape.groups
    seq = (b, d, length) if layout == "BDL" else (b, length, d)
    bc = (b, n, length) if layout == "BDL" else (b, length, n)
    if g > 1:
        bc = (b, g, n, length) if layout == "BDL" else (b, length, g, n)
    inputs = {
        "u": torch.randn(seq, device=device, dtype=dtype),
        "delta": (torch.rand(seq, device=device) * 0.5 - 2.0).to(dtype),  # softplus(~-2..-1.5) ~ 0.15
        "A": -torch.exp(torch.rand(d, n, device=device) * 2.0),
        "B": torch.randn(bc, device=device, dtype=dtype),
        "C": torch.randn(bc, device=device, dtype=dtype),
        "D": torch.randn(d, device=device),
        "delta_bias": torch.rand(d, device=device) * 0.1,
    }
    for x in inputs.values():
        x.requires_grad_(grad)
    return inputs


def _median_us_cpu(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> float:
    fn()
    end = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < end:
        fn()
    times: list[float] = []
    end = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def median_us(fn: Callable[[], object], device: torch.device, warmup_ms: float, rep_ms: float, grads: list) -> float:
    """Median time of `fn` in microseconds; `grads` are the tensors whose .grad is reset before every call."""
    if device.type == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grads, return_mode="median")
        return ms * 1e3

    def call() -> None:
        for x in grads:
            x.grad = None
        fn()

    return _median_us_cpu(call, warmup_ms, rep_ms)


def time_candidates(shape: ScanShape, dtype: torch.dtype, args: argparse.Namespace) -> dict[int, float | str]:
    """{fold: median µs, or 'wrong' / 'oom'} for every candidate dividing the batch, 1 included."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    inputs = make_inputs(shape, dtype, device, args.layout, grad=args.mode == "fwdbwd")
    grads = [x for x in inputs.values() if x.requires_grad]
    with torch.no_grad():
        reference = fold_scan(**inputs, delta_softplus=True, fold=1, layout=args.layout)
    dout = torch.randn_like(reference)
    results: dict[int, float | str] = {}
    for fold in sorted({1, *args.candidates}):
        if shape.batch % fold:
            continue
        with torch.no_grad():
            out = fold_scan(**inputs, delta_softplus=True, fold=fold, layout=args.layout)
        if relative_error(reference, out) > MATCH_TOLERANCE[dtype]:
            _logger.warning("%s %s: f=%d does not reproduce f=1's output; not eligible", shape, dtype, fold)
            results[fold] = "wrong"
            continue

        def step(fold: int = fold) -> None:
            out = fold_scan(**inputs, delta_softplus=True, fold=fold, layout=args.layout)
            if args.mode == "fwdbwd":
                out.backward(dout)

        try:
            with torch.enable_grad() if args.mode == "fwdbwd" else torch.no_grad():
                results[fold] = median_us(step, device, args.warmup_ms, args.rep_ms, grads)
        except torch.cuda.OutOfMemoryError:
            _logger.warning("%s %s: f=%d ran out of memory", shape, dtype, fold)
            results[fold] = "oom"
        _logger.info("%s %s f=%d: %s us", shape, dtype, fold, results[fold])  # (progress: a CPU run is slow)
    return results


def choose_fold(times: dict[int, float | str], min_gain: float) -> int:
    """The fastest valid fold, if it beats f=1 by `min_gain`; else 1."""
    valid = {f: t for f, t in times.items() if isinstance(t, float)}
    if not isinstance(times.get(1), float):
        return min(valid, key=valid.get) if valid else 1
    best = min(valid, key=valid.get)
    return best if valid[best] * (1.0 + min_gain) <= times[1] else 1


def format_table(rows: list[tuple[ScanShape, torch.dtype, dict[int, float | str], int]]) -> str:
    folds = sorted({f for _, _, times, _ in rows for f in times})
    header = ["shape (B,D,L,N[,G])", "dtype", *(f"f={f} us" for f in folds), "best f", "speedup"]
    lines = [header]
    for shape, dtype, times, chosen in rows:
        cells = [f"{times[f]:.1f}" if isinstance(times.get(f), float) else str(times.get(f, "-")) for f in folds]
        base, best = times.get(1), times.get(chosen)
        speedup = f"{base / best:.2f}x" if isinstance(base, float) and isinstance(best, float) else "-"
        lines.append([str(shape), SHORT_DTYPE[dtype], *cells, str(chosen), speedup])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _entry(shape: ScanShape, dtype: torch.dtype, times: dict, chosen: int, args: argparse.Namespace) -> dict:
    return {
        "dtype": dtype_name(dtype), "batch": shape.batch, "length": shape.length, "dim": shape.dim,
        "d_state": shape.d_state, "fold": chosen, "groups": shape.groups, "mode": args.mode, "layout": args.layout,
        "us": {str(f): round(t, 2) if isinstance(t, float) else t for f, t in times.items()},
    }  # fmt: skip


def _source(args: argparse.Namespace) -> str:
    timer = "triton.testing.do_bench median" if args.device.startswith("cuda") else "time.perf_counter median"
    return (
        f"sfmamba tune {__version__} ({timer}, warmup {args.warmup_ms:g} ms, rep {args.rep_ms:g} ms, "
        f"min gain {args.min_gain:g}, kernel {args.kernel or 'default'}, torch {torch.__version__}), "
        f"last run {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}"
    )


def _resolve_device(args: argparse.Namespace) -> None:
    args.device = str(resolve_device(args.device))  # (argparse checked a given one: device_arg)
    if args.kernel == "triton" and not args.device.startswith("cuda") and not triton_interpret():
        raise UsageError("--kernel triton needs a CUDA device (or TRITON_INTERPRET=1 for the interpreter)")


def run(args: argparse.Namespace) -> int:
    _resolve_device(args)
    set_kernel_backend(args.kernel)
    try:
        rows = []
        for shape in args.shapes:
            for dtype in args.dtype:
                times = time_candidates(shape, dtype, args)
                rows.append((shape, dtype, times, choose_fold(times, args.min_gain)))
    finally:
        set_kernel_backend(None)
    name = device_name(args.device)
    print(f"device: {name}, mode: {args.mode}, layout: {args.layout}")
    print(format_table(rows))
    if args.dry_run:
        return 0
    path = args.output or user_table_path()
    try:
        update_fold_table(path, name, [_entry(*row, args) for row in rows], _source(args))
    except ValueError as err:
        raise UsageError(str(err)) from err
    _logger.info("recorded %d fold choices for %r in %s", len(rows), name, path)
    return 0
