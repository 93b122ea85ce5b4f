"""Forward-kernel experiment: chunks over L (programs per SM) x one-step load prefetch, vs mamba_ssm, same run.

    PYTHONPATH=.bench_deps/ext:.bench_deps python benchmarks/ops/experiments/fwd_prefetch_chunks.py

Each setting restricts the autotuner to one PREFETCH value and sets `chunk.TARGET_PROGRAMS_PER_SM`; every setting
is checked against the fp32 reference before it is timed (CUDA-graph medians). Writes
benchmarks/results/fwd_prefetch_chunks_<date>.json.
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


def restrict(prefetch: int, all_configs: list) -> None:
    kernel = K.selective_scan_fwd_kernel
    kernel.configs = [c for c in all_configs if c.kwargs["PREFETCH"] == prefetch]
    kernel.cache.clear()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--prefetch", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--rep-ms", type=int, default=200)
    args = parser.parse_args()
    bench_args = SimpleNamespace(rep_ms=args.rep_ms, warmup_ms=25)
    provs = providers(load_mamba())
    all_configs = list(K.selective_scan_fwd_kernel.configs)
    rows = []
    for shape in MAIN_SHAPES:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            if "mamba_ssm" in provs:
                _, fn = provs["mamba_ssm"]
                us = time_provider(fn, shape, dtype, "BDL", "fwd", bench_args, "graph")
                rows.append(dict(shape=shape.name, dtype=dtype_name, provider="mamba_ssm", us=us))
                print(rows[-1], flush=True)
            layout, fn = provs["sfmamba-BLD"]
            for target in args.targets:
                K.TARGET_PROGRAMS_PER_SM = target
                for prefetch in args.prefetch:
                    restrict(prefetch, all_configs)
                    err = check(fn, shape, dtype, layout, grads=False)
                    us = time_provider(fn, shape, dtype, layout, "fwd", bench_args, "graph")
                    chunks = K.plan_chunks(shape.batch, shape.groups, shape.dim // shape.groups, shape.length,
                                           torch.device("cuda"))  # fmt: skip
                    rows.append(dict(shape=shape.name, dtype=dtype_name, provider=f"ours-T{target}-P{prefetch}",
                                     us=us, rel_err=err, chunks=chunks,
                                     config=str(K.selective_scan_fwd_kernel.best_config)))  # fmt: skip
                    print(rows[-1], flush=True)
    out = HERE.parent.parent / "results" / f"fwd_prefetch_chunks_{datetime.datetime.now():%Y%m%dT%H%M%S}.json"
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=datetime.datetime.now().isoformat(), timer="cuda graph median (p20, p80)", rows=rows)  # fmt: skip
    out.write_text(json.dumps(meta, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
