"""Compile time of the step backward's layouts, without a GPU: each (layout, initial state) variant built for sm_90
with Triton's own toolchain (`compile_for_sm90`), as an H200 launch at (128, 160, 196, 8) bf16 would in training
(16-step chunks, unrolled; D, a delta bias, softplus, periodic resets). `--flags models`: what the models' mixers
launch (no gate, no last-state gradient); `--flags all`: with a gate and a last-state gradient too. The autotuner
builds every config once per key before its pick is cached, so a layout's build time is a cost of its first use.

    python benchmarks/ops/experiments/scan_compile_times.py [--layouts TILES ROWS] [--initial-state 0 1]
        [--flags models all]

Almost all of the time is Triton's TritonGPUCoalesce pass (`MLIR_ENABLE_TIMING=1`: 128 of ROWS' 134 s with `all`):
for each load or store of a tensor of pointers it walks the whole def-use component of the unrolled chunk, so the
time grows with (memory ops) x (ops) -- ROWS, with N loads or stores per state, has the most of both.
Triton 3.8, the 2-core CPU machine, idle: `--flags all` (session 18): TILES 30 s (50 s with an initial state), ROWS
134 s (524 s); `--flags models` (session 19): TILES 16 s, ROWS 54 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # a real build, not the interpreter
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="scan_compile_times_")  # no hit from an earlier build
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))

import triton  # noqa: E402

from sfmamba.ops.selective_scan import chunk  # noqa: E402
from sfmamba.testing import compile_for_sm90, scan_pointer_type  # noqa: E402

TRAINING = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, RESET=1, SUMMARY=False, PREFETCH=1, NEXT_TO_L1=1, CHUNK=16,
                UNROLL=16, BLOCK_D=32, BLOCK_N=8)  # fmt: skip
FLAG_SETS = {"models": dict(HAS_Z=False, HAS_DLAST=False), "all": dict(HAS_Z=True, HAS_DLAST=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", nargs="+", default=["TILES", "ROWS"], choices=["TILES", "ROWS"])
    parser.add_argument("--initial-state", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--flags", nargs="+", default=["models"], choices=list(FLAG_SETS))
    args = parser.parse_args()
    print(f"triton {triton.__version__}, {os.cpu_count()} CPUs")
    for flag_set in args.flags:
        for layout in args.layouts:
            for h0 in args.initial_state:  # an initial state forces masked steps (BRANCHLESS, the kernel's heuristic)
                flags = dict(TRAINING, **FLAG_SETS[flag_set], TILES=int(layout == "TILES"), ROWS=int(layout == "ROWS"),
                             HAS_H0=bool(h0), BRANCHLESS=h0)  # fmt: skip
                began = time.perf_counter()
                compiled = compile_for_sm90(chunk.selective_scan_bwd_kernel, flags, 1, scan_pointer_type(args.dtype))
                built = "cubin" if compiled.asm.get("cubin") else "no cubin"
                print(f"{flag_set:6s} {layout:5s} initial state {h0}: {time.perf_counter() - began:6.1f} s ({built})",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
