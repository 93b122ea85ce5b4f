"""Scan-kernel experiment: chunks over L (programs per SM, longest chunk) x load prefetch depth (0-2 steps), forward or
forward+backward, vs mamba_ssm in the same run.

    PYTHONPATH=.bench_deps/ext:.bench_deps python benchmarks/ops/experiments/scan_settings.py \
        [--mode fwd|fwdbwd] [--targets 16 64] [--max-chunks 128 256] [--prefetch 1 2]

Each setting gives both autotuners one PREFETCH value (the forward's 2 = loads two steps ahead; the backward's
capped at 1) and sets `chunk.TARGET_PROGRAMS_PER_SM` and
`chunk.MAX_CHUNK_LEN` (since 2026-12-05 the backward's longest span only: the forward keeps long rows whole); every setting is checked against the fp32 reference (gradients too for fwdbwd) before it is
timed (CUDA-graph medians). Writes benchmarks/results/scan_settings_<mode>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import triton

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench_selective_scan import MAIN_SHAPES, check, load_mamba, providers, time_provider  # noqa: E402

from sfmamba.ops.selective_scan import chunk as K  # noqa: E402

KERNELS = (K.selective_scan_fwd_kernel, K.selective_scan_bwd_kernel)
ALL_CONFIGS = [list(k.configs) for k in KERNELS]
MAX_PREFETCH = (2, 1)  # the forward loads up to two steps ahead, the backward one


def restrict(prefetch: int) -> None:
    """Both autotuners get their default configs with PREFETCH set to `prefetch` (capped per kernel)."""
    for kernel, configs, most in zip(KERNELS, ALL_CONFIGS, MAX_PREFETCH):
        kernel.configs = [
            triton.Config({**c.kwargs, "PREFETCH": min(prefetch, most)}, num_warps=c.num_warps) for c in configs
        ]
        kernel.cache.clear()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["fwd", "fwdbwd"], default="fwd")
    parser.add_argument("--shapes", type=int, nargs="+", default=None, help="indices into MAIN_SHAPES")
    parser.add_argument("--targets", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--max-chunks", type=int, nargs="+", default=[K.MAX_CHUNK_LEN])
    parser.add_argument("--prefetch", type=int, nargs="+", default=[1, 2], choices=[0, 1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--rep-ms", type=int, default=200)
    args = parser.parse_args()
    bench_args = SimpleNamespace(rep_ms=args.rep_ms, warmup_ms=25)
    provs = providers(load_mamba())
    rows = []
    shapes = MAIN_SHAPES if args.shapes is None else [MAIN_SHAPES[i] for i in args.shapes]
    for shape in shapes:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            if "mamba_ssm" in provs:
                _, fn = provs["mamba_ssm"]
                us = time_provider(fn, shape, dtype, "BDL", args.mode, bench_args, "graph")
                rows.append(dict(shape=shape.name, dtype=dtype_name, provider="mamba_ssm", us=us))
                print(rows[-1], flush=True)
            layout, fn = provs["sfmamba-BLD"]
            for target in args.targets:
                for max_chunk in args.max_chunks:
                    K.TARGET_PROGRAMS_PER_SM, K.MAX_CHUNK_LEN = target, max_chunk
                    for prefetch in args.prefetch:
                        restrict(prefetch)
                        err = check(fn, shape, dtype, layout, grads=args.mode == "fwdbwd")
                        us = time_provider(fn, shape, dtype, layout, args.mode, bench_args, "graph")
                        chunks = K.plan_chunks(shape.batch, shape.groups, shape.dim // shape.groups, shape.length,
                                               torch.device("cuda"))  # fmt: skip
                        configs = " | ".join(str(getattr(k, "best_config", None)) for k in KERNELS)
                        rows.append(dict(shape=shape.name, dtype=dtype_name, provider=f"ours-T{target}-M{max_chunk}-P{prefetch}",
                                         us=us, rel_err=err, chunks=chunks, config=configs))  # fmt: skip
                        print({k: v for k, v in rows[-1].items() if k != "config"}, flush=True)
    out = HERE.parent.parent / "results" / f"scan_settings_{args.mode}_{datetime.datetime.now():%Y%m%dT%H%M%S}.json"
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now().isoformat(), timer="cuda graph median (p20, p80)", mode=args.mode,
                rows=rows)  # fmt: skip
    out.write_text(json.dumps(meta, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
