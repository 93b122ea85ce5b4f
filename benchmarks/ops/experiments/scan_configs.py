"""Scan-kernel experiment: every config of one kernel timed where it runs (CUDA graphs, L2 as the call leaves it),
and with L2 flushed before every call (a model's backward reads inputs its forward wrote long before), to check
the autotuner's pick (the backward's autotuner times the kernel alone with L2 flushed; the forward's, since session
12, by graph replay on L2-resident inputs).

    python benchmarks/ops/experiments/scan_configs.py --kernel bwd [--all-configs] [--shapes 0 2] [--extra-shapes 128,160,196,16]
        [--dtypes bfloat16 float32] [--unroll 16 0] [--bwd-spans 0 1 4] [--budget-s 300] [--precompile 12] [--out-dir DIR]
    python benchmarks/ops/experiments/scan_configs.py --kernel fwd --prefetch 1 2 [--fwd-unroll 1 2 4]
        [--blocks 16 32 64 128] [--warps 1] [--chunks 0 1 2] [--fwd-configs JSON ...]

`--kernel bwd`: each (config, unroll) setting restricts the backward autotuner to that one config and sets
`chunk.MAX_UNROLL` (0 = the main pass stays a loop), timing forward+backward, at each `--bwd-spans` value (chunks
per backward program, `chunk.forced_bwd_span`; 0 = `plan_bwd_spans`', 1 = one chunk per program as before session
13). `--kernel fwd`: each forward config
(BLOCK_D x warps x UNROLL) at each `--prefetch` depth and each `--chunks` count (0 = the planner's), timing the
inference forward, or with `--train` the training forward (which also stores the backward's checkpoint states; checked
through a backward of the one config `--bwd-configs`, TILES by default; `--ckpt-block-lens 4 8 16` walks those
checkpoint lengths in whole blocks). Every setting is checked against the
fp32 reference (`rel_err`; forward and every gradient for bwd). Prints registers/spills of the last compiled variant and the autotuner's own pick (timed the
same way; its JSON is rewritten after every row), and writes benchmarks/results/scan_configs_<kernel>_<date>.json (the backward's first run, 2026-12-02,
was written as bwd_configs_<date>.json).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import triton

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench_selective_scan import MAIN_SHAPES, Shape, check, providers, run_children, time_provider  # noqa: E402

from sfmamba.ops.selective_scan import chunk as K  # noqa: E402
from sfmamba.testing import jit_function  # noqa: E402

KERNELS = {"fwd": K.selective_scan_fwd_kernel, "bwd": K.selective_scan_bwd_kernel}
DEFAULT_CONFIGS = {name: list(kernel.configs) for name, kernel in KERNELS.items()}  # before any setting replaces them
DEFAULT_UNROLL = K.MAX_UNROLL
BWD_DEFAULTS = {"BLOCK_D": 32, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": 0, "TILES": 1}  # of --bwd-configs


def compiled_stats(kernel) -> list[tuple[int, int]]:
    """(registers, spills) of every compiled variant of `kernel` so far."""
    jit = jit_function(kernel)
    stats = []
    try:
        for cache in jit.device_caches.values():
            for compiled in cache[0].values():
                stats.append((compiled.n_regs, compiled.n_spills))
    except (AttributeError, IndexError, TypeError):  # the cache layout differs between Triton versions
        pass
    return stats


def json_configs(texts: list[str], defaults: dict) -> list[triton.Config]:
    """Configs from JSON kwargs over `defaults` (num_warps 1 and no register cap unless given)."""
    configs = []
    for text in texts:
        kwargs = {**defaults, **json.loads(text)}
        warps, maxnreg = kwargs.pop("num_warps", 1), kwargs.pop("maxnreg", None)
        configs.append(triton.Config(kwargs, num_warps=warps, maxnreg=maxnreg))
    return configs


def fwd_configs(args) -> list[triton.Config]:
    """`--fwd-configs`: forward configs from JSON kwargs (BLOCK_D 64, PREFETCH 4, UNROLL 4 unless given)."""
    return json_configs(args.fwd_configs, {"BLOCK_D": 64, "PREFETCH": 4, "UNROLL": 4})


def settings(args) -> list[tuple[str, int, list]]:
    """(label, MAX_UNROLL, [one config]) per timed setting; label "autotuned" = the default configs."""
    base = DEFAULT_CONFIGS[args.kernel]
    autotuned = [] if args.no_autotuned else [("autotuned", DEFAULT_UNROLL, base)]
    if args.kernel == "fwd" and args.fwd_configs:
        return [(str(c), DEFAULT_UNROLL, [c]) for c in fwd_configs(args)] + autotuned
    if args.kernel == "fwd":
        configs = K.sweep_fwd_configs(
            tuple(args.prefetch), tuple(args.fwd_unroll), tuple(args.blocks), tuple(args.warps)
        )
        return [(str(c), DEFAULT_UNROLL, [c]) for c in configs] + autotuned
    if args.bwd_configs:  # e.g. '{"BLOCK_D": 32, "TILES": 1, "LANES": 1}' (num_warps 1 unless given)
        base = json_configs(args.bwd_configs, BWD_DEFAULTS)
    elif args.all_configs:  # the backward's configs before 2026-12-02 (also PREFETCH 0 and two warps)
        base = [triton.Config({"BLOCK_D": bd, "PREFETCH": p}, num_warps=w)
                for bd in (32, 64) for w in (1, 2) for p in (0, 1) if bd >= 32 * w]  # fmt: skip
    return [(str(c), u, [c]) for u in args.unroll for c in base] + autotuned


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", choices=list(KERNELS), default="bwd")
    parser.add_argument("--shapes", type=int, nargs="*", default=[0], help="indices into MAIN_SHAPES")
    parser.add_argument(
        "--extra-shapes", nargs="+", default=[], help="more shapes as B,D,L,N[,G] (e.g. 128,160,196,16)"
    )
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--unroll", type=int, nargs="+", default=[DEFAULT_UNROLL, 0], help="bwd: MAX_UNROLL values")
    parser.add_argument(
        "--prefetch", type=int, nargs="+", default=[1], choices=[0, 1, 2, 4, 8], help="fwd: load depths (steps ahead)"
    )
    parser.add_argument(
        "--fwd-unroll", type=int, nargs="+", default=[1], help="fwd: UNROLL values (steps per loop body)"
    )
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128], help="fwd: BLOCK_D values")
    parser.add_argument("--warps", type=int, nargs="+", default=[1, 2, 4], help="fwd: num_warps values")
    parser.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=[0],
        help="chunks over L per row (0 = the planner's; 1 = no summary pass)",
    )
    parser.add_argument(
        "--bwd-spans", type=int, nargs="+", default=[0], help="bwd: chunks per backward program (0 = the planner's)"
    )
    parser.add_argument("--all-configs", action="store_true", help="bwd: also PREFETCH 0 and two-warp configs")
    parser.add_argument("--bwd-configs", nargs="+", default=None, help="bwd: these configs (JSON kwargs) instead")
    parser.add_argument(
        "--fwd-configs",
        nargs="+",
        default=None,
        help="fwd: these configs (JSON kwargs, e.g. '{\"STATE_TUPLE\": 1}'); bwd: the forward autotunes among them",
    )
    parser.add_argument("--no-vector-bc", action="store_true", help="fwd: B_t/C_t by scalar loads (no VECTOR_BC)")
    strides = parser.add_mutually_exclusive_group()
    strides.add_argument(
        "--runtime-strides", action="store_true", help="read the step strides at run time (no L_STRIDE binding)"
    )
    strides.add_argument(
        "--bound-strides", nargs="*", default=None, choices=K.STEP_STRIDES, metavar="NAME",
        help="fwd: bind only these step strides in fp32 (all when none is named, the default since session 29)",
    )  # fmt: skip
    parser.add_argument("--train", action="store_true", help="fwd: time the training forward (checkpoints stored)")
    parser.add_argument("--no-autotuned", action="store_true", help="time only the given configs, not the autotuner")
    parser.add_argument(
        "--bwd-chunk-len",
        type=int,
        default=None,
        help="steps per checkpoint chunk (chunk.forced_bwd_chunk; default bwd_chunk_for's, 8 at N = 8), walked in "
        "whole blocks by the training forward",
    )
    parser.add_argument(
        "--ckpt-block-lens",
        type=int,
        nargs="+",
        default=None,
        help="fwd --train: the checkpoint lengths walked in whole blocks (chunk.CKPT_BLOCK_LENS; others store per step)",
    )
    parser.add_argument("--out-dir", type=Path, default=HERE.parent.parent / "results")
    parser.add_argument("--rep-ms", type=int, default=60)
    parser.add_argument("--budget-s", type=float, default=300)
    parser.add_argument(
        "--precompile", type=int, default=1, help="compile every setting first in this many processes at once"
    )
    parser.add_argument("--items", type=int, nargs="+", default=None, help=argparse.SUPPRESS)  # a precompiling child
    args = parser.parse_args()
    if args.train and args.kernel != "fwd":
        parser.error(f"--train times the training forward: it needs --kernel fwd, got --kernel {args.kernel}")
    start = time.time()
    bench_args = SimpleNamespace(rep_ms=args.rep_ms, warmup_ms=10)
    layout, fn = providers(None)["sfmamba-BLD"]
    kernel = KERNELS[args.kernel]
    if args.ckpt_block_lens is not None:
        K.CKPT_BLOCK_LENS = tuple(args.ckpt_block_lens)
    if args.bwd_chunk_len is not None:
        K.forced_bwd_chunk = args.bwd_chunk_len
        K.CKPT_BLOCK_LENS = tuple(sorted({*K.CKPT_BLOCK_LENS, args.bwd_chunk_len}))
    if args.no_vector_bc:
        K.vector_bc = lambda *_: False
    if args.runtime_strides:
        K.BIND_STEP_STRIDES = False
    if args.bound_strides is not None:
        K.FWD_BOUND_STRIDES = {**K.FWD_BOUND_STRIDES, torch.float32: tuple(args.bound_strides or K.STEP_STRIDES)}
    if args.kernel == "bwd" and args.fwd_configs:
        KERNELS["fwd"].configs = fwd_configs(args)
    mode = "fwdbwd" if args.kernel == "bwd" else "fwdtrain" if args.train else "fwd"
    if args.train:  # checked through one backward config (compiling every one would take minutes)
        KERNELS["bwd"].configs = json_configs(args.bwd_configs or ['{"TILES": 1}'], BWD_DEFAULTS)
    shapes = [MAIN_SHAPES[index] for index in args.shapes]
    shapes += [Shape(*map(int, text.split(","))) for text in args.extra_shapes]
    items, skipped = [], []
    for item in itertools.product(shapes, args.dtypes, args.chunks, args.bwd_spans, settings(args)):
        (items if builds(item[0], item[-1]) else skipped).append(item)
    if args.items is None:  # (the parent: precompiling children skip the same items silently)
        for shape, dtype_name, _, _, (label, _, _) in skipped:
            print(f"# skipped at {shape.name} {dtype_name}: {label} (SPLIT needs N >= SPLIT)", flush=True)
    if args.items is not None:
        items = [items[i] for i in args.items]
    elif args.precompile > 1:
        precompile(len(items), args.precompile)
        start = time.time()  # --budget-s bounds the timed settings
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"scan_configs_{args.kernel}_{stamp}.json"
    rows = []
    for shape, dtype_name, nchunks, span, (label, unroll, configs) in items:
        if time.time() - start > args.budget_s:
            break
        dtype = getattr(torch, dtype_name)
        K.forced_chunk_len = triton.cdiv(shape.length, nchunks) if nchunks else None
        K.forced_bwd_span = span or None
        K.MAX_UNROLL = unroll
        kernel.configs = configs
        kernel.cache.clear()
        err = check(fn, shape, dtype, layout, grads=mode != "fwd")  # every setting: a wrong one shows
        if args.items is not None:  # a precompiling child: checked (so compiled), not timed
            print(f"{shape.name} {dtype_name} {label}: rel_err {err:.2e}", flush=True)
            continue
        us = time_provider(fn, shape, dtype, layout, mode, bench_args, "graph")
        flushed = time_provider(fn, shape, dtype, layout, mode, bench_args, "graph_flushed")[0]
        picked = str(kernel.best_config) if label == "autotuned" else label
        rows.append(dict(shape=shape.name, dtype=dtype_name, kernel=args.kernel, unroll=unroll, chunks=nchunks,
                         vector_bc=not args.no_vector_bc, bwd_chunk_len=args.bwd_chunk_len,
                         bwd_span=span, setting=label, config=picked, us=us, flushed_us=flushed, rel_err=err,
                         regs_spills=compiled_stats(kernel)[-1:]))  # fmt: skip
        print(f"{shape.name} {dtype_name} chunks={nchunks} span={span} unroll={unroll:2d} "
              f"ckpt={K.bwd_chunk_for(shape.nstate, dtype)} {label}: {us[0]:7.1f} us (L2 flushed {flushed:7.1f}) "
              f"rel_err {err:.2e} regs/spills {rows[-1]['regs_spills']}" + (f" picked {picked}" if label == "autotuned" else ""),
              flush=True)  # fmt: skip
        write_report(out, mode, rows)  # after every row: a run cut by its time limit keeps what it timed
    K.MAX_UNROLL = DEFAULT_UNROLL
    K.forced_chunk_len = None
    K.forced_bwd_span = None
    if args.items is None:
        write_report(out, mode, rows)
        print(f"# wrote {out}")


def builds(shape: Shape, setting: tuple[str, int, list]) -> bool:
    """Whether a forced setting builds at `shape`: a SPLIT config needs a state row per lane (the autotuner prunes it
    where it does not; a list of one is built as given and fails, costing a precompiling child and the device time its
    compile takes)."""
    label, _, configs = setting
    return label == "autotuned" or all(K.split_fits(c, shape.nstate) for c in configs)


def precompile(count: int, jobs: int) -> None:
    """Every setting checked once in `jobs` child processes (round-robin shares), so that the timed run below finds
    its kernels in Triton's on-disk cache: compiling the unrolled backward takes tens of seconds per variant."""
    shares = [["--items", *map(str, range(j, count, jobs))] for j in range(min(jobs, count))]
    run_children(shares, f"precompiled {count} settings")


def write_report(out: Path, mode: str, rows: list[dict]) -> None:
    meta = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        date=datetime.datetime.now().isoformat(),
        timer=f"cuda graph median (p20, p80), {mode}",
        rows=rows,
    )
    out.write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
