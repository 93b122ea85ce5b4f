"""Experiment: where the time of one SS2D (VMamba v2) block goes, unconverted and VMeanba-converted.

One `sfmamba.layers.ss2d.SS2D` per VMamba-T stage shape (batch 128; (H, W, d_model) = (56, 56, 96), (28, 28, 192),
(14, 14, 384), (7, 7, 768); d_state 1, ssm_ratio 1, dt_rank auto, d_conv 3), bf16 autocast (or bf16 weights with
--precision bf16), no grad. Every time is the median over >= 20 samples of CUDA-graph replays timed with
torch.cuda.Event (each sample = --inner replays between two events, divided; L2 not flushed):
  block modes  off      vmeanba False: the full selective scan between cross_scan and cross_merge;
               generic  vmeanba True, vmeanba_fast_path False: mean_selective_scan in the same pipeline;
               fast     vmeanba True, fast path True: ops.vmeanba.cross.vmeanba_cross_merged, no cross-scan;
               skip_only  not an SS2D mode: prologue, out_proj(out_norm(x * sum_k D_k)); the same output as fast
                        (see skip_only below), timed as what dropping the scan term from SS2D would give.
  pieces       the fast path's steps on the same x (x_proj GEMM, cross_mean_inputs, directional_scan,
               merged_output), the generic path's (cross_scan, x_proj GEMM, dt_proj GEMM, mean_selective_scan,
               cross_merge), the block's prologue (in_proj, conv, SiLU) and epilogue (out_norm, out_proj), and
               skip_only = out_norm(x * sum_k D_k): what a converted block equals after its LayerNorm (the
               broadcast scan term is constant over the channels of a position, so the LayerNorm removes it).
Before timing, the fast path's merged output is checked against the fp32 torch reference on two images.
For the stage-1 shape a torch.profiler table of the top-10 kernels (self device time) is printed per mode.

    python benchmarks/ops/experiments/vmeanba_block_profile.py --out benchmarks/results/vmeanba_block_profile.json
    TRITON_INTERPRET=1 SFMAMBA_KERNEL=triton python benchmarks/ops/experiments/vmeanba_block_profile.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("SFMAMBA_VALUE_CHECKS", "0")  # time the kernels, not the input-value checks (device syncs)
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "src"))

from sfmamba.layers.ss2d import SS2D  # noqa: E402
from sfmamba.ops import cross_merge, cross_scan  # noqa: E402
from sfmamba.ops.vmeanba import mean_selective_scan  # noqa: E402
from sfmamba.ops.vmeanba.cross import (  # noqa: E402
    cross_mean_inputs,
    directional_scan,
    merged_output,
    vmeanba_cross_merged,
)
from sfmamba.testing import relative_error  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

DIRECTIONS = 4
MODES = {"off": (False, True), "generic": (True, False), "fast": (True, True)}  # (vmeanba, vmeanba_fast_path)
TOLERANCE = 3e-2  # bf16 inputs against the fp32 reference


@dataclass(frozen=True)
class Stage:
    label: str
    batch: int
    height: int
    width: int
    d_model: int


STAGES = [
    Stage("stage 1", 128, 56, 56, 96),
    Stage("stage 2", 128, 28, 28, 192),
    Stage("stage 3", 128, 14, 14, 384),
    Stage("stage 4", 128, 7, 7, 768),
]
SMOKE_STAGES = [Stage("smoke 1", 2, 6, 5, 16), Stage("smoke 2", 2, 3, 3, 32)]


# ------------------------------------------------------------------------------------------------ timing


def _capture(fn: Callable[[], object]) -> Callable[[], None]:
    """A CUDA graph of `fn` (warm-up calls on a side stream first: Triton compiles, autotuners); returns replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_us(fn: Callable[[], object], samples: int, inner: int, cuda_graph: bool) -> dict:
    """Median (and p10/p90) microseconds per call: CUDA-graph replays between events on a GPU, wall time on a CPU."""
    times = []
    if torch.cuda.is_available():
        run = _capture(fn) if cuda_graph else fn
        if not cuda_graph:
            fn()
        for _ in range(3):
            run()
        for _ in range(samples):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / inner)
    else:  # the smoke run: eager wall time
        fn()
        for _ in range(samples):
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e6)
    times.sort()
    return dict(median=statistics.median(times), p10=times[len(times) // 10], p90=times[(len(times) * 9) // 10])


# ------------------------------------------------------------------------------------------------ the block


def build_block(stage: Stage, device: torch.device, precision: str) -> SS2D:
    torch.manual_seed(0)
    block = SS2D(stage.d_model, d_state=1, ssm_ratio=1.0, dt_rank="auto", d_conv=3).to(device).eval()
    with torch.no_grad():  # steps away from the init's tiny values, so the reduced scan's values are not trivial
        block.dt_projs_bias.normal_(0, 0.5)
    return block.to(torch.bfloat16) if precision == "bf16" else block


def _contexts(device: torch.device, precision: str) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    if precision == "autocast":
        # no cast cache: the casts must be part of every captured graph (and of every eager call, as in a model)
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False))
    return stack


def _set_mode(block: SS2D, mode: str) -> None:
    block.vmeanba, block.vmeanba_fast_path = MODES[mode]


def block_inputs(block: SS2D, stage: Stage, device: torch.device, precision: str) -> dict:
    """The block input and every intermediate the pieces start from (computed once, outside the timing)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    k, r, n, d = DIRECTIONS, block.dt_rank, block.d_state, block.d_inner
    inputs = {"image": torch.randn(stage.batch, stage.height, stage.width, stage.d_model, device=device, dtype=dtype)}
    with _contexts(device, precision):
        x = block.in_proj(inputs["image"])
        x = F.silu(block.conv2d(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        A = -torch.exp(block.A_logs.float())
        proj = F.linear(x, block.x_proj_weight.reshape(k * (r + 2 * n), d).to(x.dtype)).view(*x.shape[:3], k, r + 2 * n)
        decay, dtu = cross_mean_inputs(
            x.reshape(-1, d), proj[..., :r].reshape(-1, k, r), block.dt_projs_weight, block.dt_projs_bias, A
        )  # fmt: skip
        decay, dtu = decay.view(*x.shape[:3], k, n), dtu.view(*x.shape[:3], k)
        y = directional_scan(decay, dtu, proj, r)
        skip = block.Ds.float().view(k, d).sum(0)
        merged = merged_output(y, x, skip)
        xs = cross_scan(x, layout="BHWC", scan_layout="BLD").view(x.shape[0], -1, k * d)
        x_proj, dt_proj = block._projection_weights()
        proj_g = F.linear(xs, x_proj.to(xs.dtype))
        dts_g, Bs_g, Cs_g = proj_g.split((k * r, k * n, k * n), dim=-1)
        delta = F.linear(dts_g, dt_proj.to(dts_g.dtype))
        Bs_g, Cs_g = Bs_g.unflatten(-1, (k, n)), Cs_g.unflatten(-1, (k, n))
        y_g = mean_selective_scan(
            xs, delta, A, Bs_g, Cs_g, block.Ds.float(), None, block.dt_projs_bias.reshape(-1).float(), True,
            layout="BLD",
        )  # fmt: skip
    inputs.update(x=x, A=A, proj=proj, decay=decay, dtu=dtu, y=y, skip=skip, merged=merged, xs=xs, x_proj=x_proj,
                  dt_proj=dt_proj, proj_g=proj_g, dts_g=dts_g, delta=delta, Bs_g=Bs_g, Cs_g=Cs_g, y_g=y_g)  # fmt: skip
    return inputs


def _reference(fn: Callable[[], object]):
    set_kernel_backend("naive")
    try:
        return fn()
    finally:
        set_kernel_backend(None)


def check_fast_path(block: SS2D, inputs: dict) -> dict[str, float]:
    """Relative errors on two images against the fp32 torch reference: the whole fast path on the benchmark's x
    (bf16 under autocast), and each of its three kernels on fp32 inputs (tight: 1e-4), which checks the GPU-only
    code (lg2.approx, the block sizes) that the interpreter tests cannot reach."""
    k, r, n, d = DIRECTIONS, block.dt_rank, block.d_state, block.d_inner
    x, A, Ds = inputs["x"][:2], inputs["A"], block.Ds
    weights = (block.x_proj_weight, block.dt_projs_weight, block.dt_projs_bias)
    x32, (xw, dw, db) = x.float(), (w.detach().float() for w in weights)
    proj = F.linear(x32, xw.reshape(k * (r + 2 * n), d)).view(*x.shape[:3], k, r + 2 * n)
    args = (x32.reshape(-1, d), proj[..., :r].reshape(-1, k, r), dw, db, A)
    decay, dtu = cross_mean_inputs(*args)
    decay, dtu = decay.view(*x.shape[:3], k, n), dtu.view(*x.shape[:3], k)
    y, skip = directional_scan(decay, dtu, proj, r), Ds.float().view(k, d).sum(0)
    with torch.no_grad():
        pairs = {
            "fast_path": (_reference(lambda: vmeanba_cross_merged(x32, xw, dw, db, A, Ds)),
                          vmeanba_cross_merged(x, *weights, A, Ds)),
            "cross_mean_inputs_decay_fp32": (_reference(lambda: cross_mean_inputs(*args)[0]), decay),
            "cross_mean_inputs_dtu_fp32": (_reference(lambda: cross_mean_inputs(*args)[1]), dtu),
            "directional_scan_fp32": (_reference(lambda: directional_scan(decay, dtu, proj, r)), y),
            "merged_output_fp32": (_reference(lambda: merged_output(y, x32, skip)), merged_output(y, x32, skip)),
        }  # fmt: skip
    errors = {}
    for name, (want, got) in pairs.items():
        errors[name] = relative_error(want.reshape(got.shape).float(), got.float())
        limit = TOLERANCE if name == "fast_path" else 1e-4
        if not errors[name] <= limit:
            raise RuntimeError(f"{name} differs from the fp32 reference: relative error {errors[name]:.2e}")
    return errors


def piece_fns(block: SS2D, inputs: dict, device: torch.device, precision: str) -> dict[str, Callable[[], object]]:
    """Each step of the fast and generic paths, and the block's prologue/epilogue, as a no-argument call."""
    k, r, n, d = DIRECTIONS, block.dt_rank, block.d_state, block.d_inner
    i = inputs
    x, height, width = i["x"], i["x"].shape[1], i["x"].shape[2]

    def wrap(fn: Callable[[], object]) -> Callable[[], object]:
        def call():
            with _contexts(device, precision):
                return fn()

        return call

    fns = {
        "prologue (in_proj, conv, silu)": lambda: F.silu(
            block.conv2d(block.in_proj(i["image"]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        ),
        "fast: x_proj linear": lambda: F.linear(x, block.x_proj_weight.reshape(k * (r + 2 * n), d).to(x.dtype)),
        "fast: cross_mean_inputs": lambda: cross_mean_inputs(
            x.reshape(-1, d), i["proj"][..., :r].reshape(-1, k, r), block.dt_projs_weight, block.dt_projs_bias, i["A"]
        ),
        "fast: directional_scan": lambda: directional_scan(i["decay"], i["dtu"], i["proj"], r),
        "fast: merged_output": lambda: merged_output(i["y"], x, i["skip"]),
        "fast: whole vmeanba_cross_merged": lambda: vmeanba_cross_merged(
            x, block.x_proj_weight, block.dt_projs_weight, block.dt_projs_bias, i["A"], block.Ds
        ),
        "generic: cross_scan": lambda: cross_scan(x, layout="BHWC", scan_layout="BLD"),
        "generic: x_proj linear": lambda: F.linear(i["xs"], i["x_proj"].to(x.dtype)),
        "generic: dt_proj linear": lambda: F.linear(i["dts_g"], i["dt_proj"].to(x.dtype)),
        "generic: mean_selective_scan": lambda: mean_selective_scan(
            i["xs"],
            i["delta"],
            i["A"],
            i["Bs_g"],
            i["Cs_g"],
            block.Ds.float(),
            None,
            block.dt_projs_bias.reshape(-1).float(),
            True,
            layout="BLD",
        ),  # fmt: skip
        "generic: cross_merge": lambda: cross_merge(
            i["y_g"].view(x.shape[0], height * width, k, d), height, width, scan_layout="BLD", layout="BHWC"
        ),
        "epilogue (out_norm, out_proj)": lambda: block.out_proj(block.out_norm(i["merged"])),
        "skip_only: out_norm(x * sum_k D_k)": lambda: block.out_norm(x * i["skip"].to(x.dtype)),
    }
    return {name: wrap(fn) for name, fn in fns.items()}


def skip_only_block(block: SS2D, inputs: dict, device: torch.device, precision: str) -> Callable[[], object]:
    """A converted block as out_proj(out_norm(x * sum_k D_k)) after the prologue: equal to the fast path (the
    LayerNorm removes the per-position scan term), not what SS2D runs; timed as what that change would give."""
    skip = inputs["skip"]

    def forward():
        with _contexts(device, precision):
            x = F.silu(block.conv2d(block.in_proj(inputs["image"]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
            return block.out_proj(block.out_norm(x * skip.to(x.dtype)))

    return forward


def profile_table(fn: Callable[[], object], device: torch.device, calls: int) -> str:
    """torch.profiler top-10 by self device time (self CPU time on a CPU) over `calls` eager calls."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cpu_time_total"
    if device.type == "cuda":
        averages = prof.key_averages()
        key = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=10, max_name_column_width=70)


def run_stage(stage: Stage, args: argparse.Namespace, device: torch.device) -> dict:
    block = build_block(stage, device, args.precision)
    inputs = block_inputs(block, stage, device, args.precision)
    with torch.no_grad():
        errors = check_fast_path(block, inputs)
    cuda_graph = device.type == "cuda" and not args.no_cuda_graph
    row = dict(stage=asdict(stage), dt_rank=block.dt_rank, d_inner=block.d_inner, rel_errors=errors)
    row["modes_us"], profiles = {}, {}
    for mode in MODES:
        _set_mode(block, mode)

        def forward(block=block):
            with _contexts(device, args.precision):
                return block(inputs["image"])

        row["modes_us"][mode] = time_us(forward, args.samples, args.inner, cuda_graph)
        if args.profile and stage == args.stages[0]:
            profiles[mode] = profile_table(forward, device, calls=3)
    skip_only = skip_only_block(block, inputs, device, args.precision)
    _set_mode(block, "fast")
    with _contexts(device, args.precision):
        row["skip_only_vs_fast_rel_error"] = relative_error(block(inputs["image"]).float(), skip_only().float())
    row["modes_us"]["skip_only"] = time_us(skip_only, args.samples, args.inner, cuda_graph)
    row["pieces_us"] = {
        name: time_us(fn, args.samples, args.inner, cuda_graph)
        for name, fn in piece_fns(block, inputs, device, args.precision).items()
    }
    row["profiles"] = profiles
    for mode, table in profiles.items():
        print(f"\n--- {stage.label} top-10 kernels, mode {mode} ---\n{table}")
    return row


# ------------------------------------------------------------------------------------------------ output


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        s = r["stage"]
        modes = r["modes_us"]
        print(
            f"\n{s['label']}: B={s['batch']} H={s['height']} W={s['width']} d_inner={r['d_inner']} "
            f"dt_rank={r['dt_rank']}  skip_only vs fast rel. error {r['skip_only_vs_fast_rel_error']:.1e}"
        )
        print("  rel. errors vs the fp32 reference: " + ", ".join(f"{k} {v:.1e}" for k, v in r["rel_errors"].items()))
        for mode, t in modes.items():
            ratio = modes["off"]["median"] / t["median"]
            print(f"  block {mode:9s} {t['median']:10.1f} us  (p10 {t['p10']:.1f}, p90 {t['p90']:.1f})  "
                  f"off/this x{ratio:.2f}")  # fmt: skip
        fast_sum = sum(
            t["median"] for name, t in r["pieces_us"].items() if name.startswith("fast: ") and "whole" not in name
        )
        for name, t in r["pieces_us"].items():
            print(f"  piece {name:42s} {t['median']:10.1f} us")
        print(f"  sum of the 4 fast pieces {fast_sum:.1f} us")


def versions() -> dict:
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return dict(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), sfmamba_commit=commit)  # fmt: skip


def write_json(path: Path, rows: list[dict], args: argparse.Namespace, device: torch.device) -> None:
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')})"
    )
    cuda_graph = device.type == "cuda" and not args.no_cuda_graph
    timer = (
        f"median of {args.samples} samples of {args.inner} {'CUDA-graph replays' if cuda_graph else 'eager calls'} "
        "between torch.cuda.Event pairs, L2 not flushed"
        if device.type == "cuda"
        else f"perf_counter median of {args.samples} eager calls"
    )
    record = dict(
        benchmark="vmeanba_block_profile", date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        device=name, versions=versions(),
        settings=dict(precision=args.precision, cuda_graph=cuda_graph, timer=timer, smoke=args.smoke, d_state=1,
                      ssm_ratio=1.0, dt_rank="auto", d_conv=3, kernel_backend=os.environ.get("SFMAMBA_KERNEL", "auto"),
                      value_checks=os.environ.get("SFMAMBA_VALUE_CHECKS")),
        results=rows,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(temp, path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, eager, runs on a CPU")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument("--precision", choices=["autocast", "bf16"], default="autocast",
                        help="autocast: fp32 weights under bf16 autocast (as the model benchmark); bf16: bf16 weights")  # fmt: skip
    parser.add_argument("--samples", type=int, default=25, help="timed samples per case (>= 20 on a GPU)")
    parser.add_argument("--inner", type=int, default=5, help="graph replays per timed sample")
    parser.add_argument("--no-cuda-graph", action="store_true", help="time eager calls")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the torch.profiler tables")
    parser.add_argument("--stage", type=int, nargs="+", default=None, help="stage numbers (1..4) to run")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.smoke:
        args.samples, args.inner = min(args.samples, 3), 1
    elif not cuda:
        raise SystemExit("no CUDA device: run with --smoke on a CPU")
    elif args.samples < 20:
        raise ValueError(f"--samples must be >= 20 on a GPU, got {args.samples}")
    if args.inner < 1:
        raise ValueError(f"--inner must be >= 1, got {args.inner}")
    device = torch.device("cuda" if cuda else "cpu")
    stages = SMOKE_STAGES if args.smoke else STAGES
    if args.stage:
        if any(s < 1 or s > len(stages) for s in args.stage):
            raise ValueError(f"--stage must be in 1..{len(stages)}, got {args.stage}")
        stages = [stages[s - 1] for s in args.stage]
    args.stages = stages
    rows = []
    for stage in stages:
        rows.append(run_stage(stage, args, device))
        if args.out:  # rewritten after every stage: a run cut off by a time limit keeps what it measured
            write_json(args.out, rows, args, device)
    print_rows(rows)


if __name__ == "__main__":
    main()
