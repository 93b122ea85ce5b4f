"""Scan-backward experiment: every backward config, main pass unrolled vs a loop, fwd+bwd under CUDA graphs.

    python benchmarks/ops/experiments/bwd_configs.py [--shapes 0 2] [--dtypes bfloat16 float32] [--budget-s 300]

Each (config, unroll) setting restricts the backward autotuner to that one config and sets `chunk.MAX_UNROLL`
(0 = the main pass stays a loop); the first setting of each shape/dtype is checked against the fp32 reference.
Prints registers/spills of the compiled backward and writes benchmarks/results/bwd_configs_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import triton

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench_selective_scan import MAIN_SHAPES, check, providers, time_provider  # noqa: E402

from sfmamba.ops.selective_scan import chunk as K  # noqa: E402

BWD = K.selective_scan_bwd_kernel
ALL_CONFIGS = list(BWD.configs)


def jit_of(kernel):
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def compiled_stats() -> list[tuple[int, int]]:
    """(registers, spills) of every compiled variant of the backward kernel so far."""
    jit = jit_of(BWD)
    stats = []
    try:
        for cache in jit.device_caches.values():
            for compiled in cache[0].values():
                stats.append((compiled.n_regs, compiled.n_spills))
    except (AttributeError, IndexError, TypeError):  # the cache layout differs between Triton versions
        pass
    return stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", type=int, nargs="+", default=[0], help="indices into MAIN_SHAPES")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--unroll", type=int, nargs="+", default=[K.MAX_UNROLL, 0])
    parser.add_argument("--rep-ms", type=int, default=60)
    parser.add_argument("--budget-s", type=float, default=300)
    args = parser.parse_args()
    start = time.time()
    bench_args = SimpleNamespace(rep_ms=args.rep_ms, warmup_ms=10)
    layout, fn = providers(None)["sfmamba-BLD"]
    rows = []
    for index in args.shapes:
        shape = MAIN_SHAPES[index]
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for unroll in args.unroll:
                K.MAX_UNROLL = unroll
                for config in ALL_CONFIGS:
                    if time.time() - start > args.budget_s:
                        break
                    BWD.configs = [config]
                    BWD.cache.clear()
                    err = check(fn, shape, dtype, layout, grads=True) if not rows else None
                    us = time_provider(fn, shape, dtype, layout, "fwdbwd", bench_args, "graph")
                    rows.append(dict(shape=shape.name, dtype=dtype_name, unroll=unroll, config=str(config),
                                     us=us, rel_err=err, regs_spills=compiled_stats()[-1:]))  # fmt: skip
                    print(f"{shape.name} {dtype_name} unroll={unroll:2d} {config}: {us[0]:7.1f} us "
                          f"regs/spills {rows[-1]['regs_spills']}", flush=True)  # fmt: skip
    out = HERE.parent.parent / "results" / f"bwd_configs_{datetime.datetime.now():%Y%m%dT%H%M%S}.json"
    meta = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        date=datetime.datetime.now().isoformat(),
        timer="cuda graph median (p20, p80), fwd+bwd",
        rows=rows,
    )
    out.write_text(json.dumps(meta, indent=1))
    print(f"# wrote {out}")


if __name__ == "__main__":
    main()
