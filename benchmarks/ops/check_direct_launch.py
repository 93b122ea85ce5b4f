"""GPU check of the direct launch path (`ops/_launch.py::launch`, `SFMAMBA_DIRECT_LAUNCH`): every op below runs with
repeated launches through Triton's `JITFunction.run` and through the recorded compiled kernels, on inputs of several
alignments (a view starting at an odd element) and sizes (1, 16, 17 for lengths and channels); the outputs and
gradients must be bit-identical, and the direct path must have been taken. Then times the host cost per call of small,
launch-bound ops both ways. Prints a table, writes `benchmarks/results/direct_launch_<date>.json`, exits non-zero on
any mismatch or where the direct path was never taken.

    PYTHONPATH=src python benchmarks/ops/check_direct_launch.py [--calls 1000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton
from torch import Tensor

from sfmamba.ops import _launch
from sfmamba.ops.batch_norm import batch_norm_act
from sfmamba.ops.concat import concat_last
from sfmamba.ops.conv1d import depthwise_conv1d
from sfmamba.ops.drop_path import drop_path_add
from sfmamba.ops.layer_norm import layer_norm
from sfmamba.ops.selective_scan import selective_scan

DEV = "cuda"
Case = Callable[[], list[Tensor]]  # runs the op once on fixed inputs; returns outputs and gradients


def randn(*shape: int, offset: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """A contiguous [shape] tensor that starts `offset` elements into its buffer (offset 1: not 16-byte aligned)."""
    n = 1
    for s in shape:
        n *= s
    return torch.randn(n + offset, device=DEV, dtype=dtype)[offset:].view(shape)


def leaf_view(t: Tensor) -> tuple[Tensor, Tensor]:
    """(a fresh leaf copy of t's whole buffer, requiring grad; the view of it at t's offset and strides): the copy
    keeps t's alignment, which a clone of t itself would not."""
    base = t if t._base is None else t._base
    leaf = base.detach().clone().requires_grad_()
    return leaf, leaf.as_strided(t.shape, t.stride(), t.storage_offset())


def with_grads(fn: Callable[..., Tensor | tuple], *inputs: object, **kwargs) -> list[Tensor]:
    """fn's output and the gradients of a fixed weighted sum of it with respect to every float tensor input."""
    pairs = [leaf_view(t) if isinstance(t, Tensor) and t.is_floating_point() else (None, t) for t in inputs]
    out = fn(*(view for _, view in pairs), **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    weight = torch.linspace(-1, 1, out.numel(), device=DEV, dtype=out.dtype).view(out.shape)
    (out * weight).sum().backward()
    return [out.detach(), *(leaf.grad for leaf, _ in pairs if leaf is not None and leaf.grad is not None)]


def scan_case(batch: int, dim: int, length: int, nstate: int, offset: int, resets: str) -> Case:
    torch.manual_seed(dim * 1000 + length)
    u, delta, z = (randn(batch, dim, length, offset=offset) for _ in range(3))
    A = -torch.rand(dim, nstate, device=DEV) - 0.5
    B, C = randn(batch, nstate, length, offset=offset), randn(batch, nstate, length)
    D, bias = torch.randn(dim, device=DEV), torch.randn(dim, device=DEV)
    kwargs: dict = {}
    if resets == "seq_len":
        kwargs["seq_len"] = length // 4
    elif resets == "cu_seqlens":
        kwargs["cu_seqlens"] = torch.tensor([0, 1, length // 2, length], device=DEV, dtype=torch.int32)
    return lambda: with_grads(selective_scan, u, delta, A, B, C, D, z, bias, True, **kwargs)


def conv1d_case(batch: int, length: int, dim: int, offset: int, seq_len: int | None) -> Case:
    x, w, b = randn(batch, length, dim, offset=offset), torch.randn(dim, 4, device=DEV), torch.randn(dim, device=DEV)
    return lambda: with_grads(depthwise_conv1d, x, w, b, activation="silu", seq_len=seq_len)


def layer_norm_case(rows: int, channels: int, offset: int, dtype: torch.dtype) -> Case:
    x = randn(rows, channels, offset=offset, dtype=dtype)
    w, b = torch.randn(channels, device=DEV), torch.randn(channels, device=DEV)
    return lambda: with_grads(layer_norm, x, w, b)


def batch_norm_case(batch: int, channels: int, side: int) -> Case:
    x = torch.randn(batch, channels, side, side, device=DEV).to(memory_format=torch.channels_last)
    w, b = torch.rand(channels, device=DEV) + 0.5, torch.randn(channels, device=DEV)
    mean, var = torch.zeros(channels, device=DEV), torch.ones(channels, device=DEV)

    def run() -> list[Tensor]:
        rm, rv = mean.clone(), var.clone()  # updated in place: fresh for every run
        return [*with_grads(batch_norm_act, x, w, b, running_mean=rm, running_var=rv, activation="relu"), rm, rv]

    return run


def concat_case(rows: int, ca: int, cb: int, offset: int) -> Case:
    a, b = randn(rows, ca, offset=offset), randn(rows, cb)
    return lambda: with_grads(concat_last, a, b)


def drop_path_case(batch: int, per_sample: int, offset: int) -> Case:
    x, y = randn(batch, per_sample, offset=offset), randn(batch, per_sample, offset=offset)
    scale = (torch.rand(batch, device=DEV) > 0.3).float() / 0.7
    return lambda: with_grads(lambda x, y: drop_path_add(x, y, scale), x, y)


def cases() -> Iterator[tuple[str, Case]]:
    for length, offset in ((16, 0), (17, 1), (64, 0), (64, 1)):
        for resets in ("none", "seq_len") if length % 4 == 0 else ("none",):
            yield f"scan L{length} off{offset} {resets}", scan_case(2, 16, length, 8, offset, resets)
    yield "scan L64 cu_seqlens", scan_case(1, 17, 64, 16, 0, "cu_seqlens")
    for length, dim, offset in ((1, 16, 0), (17, 16, 1), (16, 17, 0), (64, 32, 1)):
        yield f"conv1d L{length} D{dim} off{offset}", conv1d_case(2, length, dim, offset, None)
    yield "conv1d L64 seq_len16", conv1d_case(2, 64, 32, 0, 16)
    for rows, channels, offset in ((1, 16, 0), (16, 17, 1), (17, 96, 0), (33, 96, 1)):
        for dtype in (torch.float32, torch.bfloat16):
            name = f"layer_norm {rows}x{channels} off{offset} {str(dtype)[6:]}"
            yield name, layer_norm_case(rows, channels, offset, dtype)
    for batch, channels, side in ((2, 16, 4), (3, 17, 5)):
        yield f"batch_norm {batch}x{channels}x{side}x{side}", batch_norm_case(batch, channels, side)
    for rows, ca, cb, offset in ((1, 16, 16, 0), (17, 16, 17, 1)):
        yield f"concat {rows}x({ca}+{cb}) off{offset}", concat_case(rows, ca, cb, offset)
    for batch, per_sample, offset in ((1, 16, 0), (4, 17, 1)):
        yield f"drop_path {batch}x{per_sample} off{offset}", drop_path_case(batch, per_sample, offset)


def trim_autotuners(most: int) -> int:
    """Every loaded sfmamba autotuner without a config pruner keeps its first `most` configs (at least two, so the
    autotuned path is still exercised): each case compiles every config of every kernel it reaches, minutes in all on
    the full lists. Returns how many autotuners were trimmed."""
    import importlib
    import pkgutil

    from triton.runtime.autotuner import Autotuner

    import sfmamba.ops

    trimmed = 0
    for info in pkgutil.walk_packages(sfmamba.ops.__path__, "sfmamba.ops."):  # kernel modules load lazily: import all
        module = importlib.import_module(info.name)
        for kernel in vars(module).values():
            if isinstance(kernel, Autotuner) and kernel.early_config_prune is None and len(kernel.configs) > most:
                kernel.configs = kernel.configs[:most]
                kernel.cache.clear()
                trimmed += 1
    return trimmed


def bits(t: Tensor) -> Tensor:
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()])


def run_mode(case: Case, direct: bool, repeats: int = 3) -> tuple[list[Tensor], int]:
    """The outputs of the last of `repeats` runs (the first resolves, the second records the kernels) and how many of
    its launches went direct."""
    _launch.set_direct_launch(direct)
    for _ in range(repeats - 1):
        case()
    before = _launch.direct_launches()
    out = case()
    torch.cuda.synchronize()
    return out, _launch.direct_launches() - before


def check_case(name: str, case: Case) -> dict:
    want, _ = run_mode(case, False)
    got, direct = run_mode(case, True)
    same = len(got) == len(want) and all(
        a.shape == b.shape and a.dtype == b.dtype and torch.equal(bits(a), bits(b)) for a, b in zip(got, want)
    )
    return {"case": name, "identical": same, "direct_launches": direct, "tensors": len(got)}


def host_time(fn: Callable[[], object], direct: bool, calls: int) -> dict:
    """Host time per call (the GPU is idle enough to keep up: these ops are launch-bound), and direct launches per call."""
    _launch.set_direct_launch(direct)
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    before = _launch.direct_launches()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    per_call = (_launch.direct_launches() - before) / calls
    return {"host_us_per_call": host / calls * 1e6, "wall_us_per_call": wall / calls * 1e6, "direct_per_call": per_call}


def timings(calls: int) -> list[dict]:
    x, w, b = torch.randn(4, 64, device=DEV), torch.randn(64, device=DEV), torch.randn(64, device=DEV)
    u, delta = torch.randn(1, 16, 64, device=DEV), torch.rand(1, 16, 64, device=DEV)
    A, B, C = -torch.rand(16, 8, device=DEV), torch.randn(1, 8, 64, device=DEV), torch.randn(1, 8, 64, device=DEV)
    xs = torch.randn(2, 64, 16, device=DEV)
    cw = torch.randn(16, 4, device=DEV)
    ops = {
        "layer_norm fwd 4x64": lambda: layer_norm(x, w, b),
        "selective_scan fwd 1x16x64": lambda: selective_scan(u, delta, A, B, C, delta_softplus=True),
        "conv1d fwd 2x64x16": lambda: depthwise_conv1d(xs, cw),
    }
    rows = []
    with torch.no_grad():
        for name, fn in ops.items():
            off, on = host_time(fn, False, calls), host_time(fn, True, calls)
            rows.append({"op": name, "calls": calls, "triton_run": off, "direct": on})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per timing")
    parser.add_argument(
        "--max-configs",
        type=int,
        default=0,
        help="trim every autotuner to its first N configs (N >= 2; 0 = keep them all)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the JSON goes")
    args = parser.parse_args()
    if args.calls < 1:
        raise ValueError(f"--calls must be positive, got {args.calls}")
    if args.max_configs == 1 or args.max_configs < 0:
        raise ValueError(f"--max-configs must be 0 (all) or at least 2, got {args.max_configs}")
    if not torch.cuda.is_available():
        print("check_direct_launch: needs a CUDA GPU")
        return 2
    if not _launch.direct_launch_supported():
        print(f"check_direct_launch: the direct path is off for Triton {triton.__version__} "
              f"(verified: {_launch.DIRECT_TRITON_VERSIONS}) or under TRITON_INTERPRET")  # fmt: skip
        return 2
    # each case compiles (and autotunes) its own specialisations first: minutes in all, so rows print as they finish
    if args.max_configs:
        print(f"trimmed {trim_autotuners(args.max_configs)} autotuners to {args.max_configs} configs", flush=True)
    print(f"{'case':<40} {'identical':>9} {'direct launches':>16}", flush=True)
    results = []
    for name, case in cases():
        results.append(check_case(name, case))
        r = results[-1]
        print(f"{r['case']:<40} {str(r['identical']):>9} {r['direct_launches']:>16}", flush=True)
    times = timings(args.calls)
    print(f"\n{'op (host us per call)':<32} {'JITFunction.run':>16} {'direct':>8} {'saved':>7} {'direct/call':>12}")
    for t in times:
        off, on = t["triton_run"]["host_us_per_call"], t["direct"]["host_us_per_call"]
        print(f"{t['op']:<32} {off:>16.1f} {on:>8.1f} {off - on:>7.1f} {t['direct']['direct_per_call']:>12.1f}")
    failed = [r["case"] for r in results if not r["identical"] or r["direct_launches"] == 0]
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in os.environ.items() if k.startswith(("SFMAMBA_", "TRITON_"))},
        "max_configs": args.max_configs,
        "cases": results,
        "timings": times,
        "failed": failed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"direct_launch_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")
    if failed:
        print(f"FAILED (outputs differ, or the direct path was never taken): {failed}")
        return 1
    print("all outputs bit-identical, direct path taken in every case")
    return 0


if __name__ == "__main__":
    sys.exit(main())
