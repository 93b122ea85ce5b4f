"""Scan-kernel experiment: the tiled forward (tiled.py) vs the step forward (chunk.py), and with `--backward` the tiled
backward (tiled_bwd.py) vs the step backward (chunk.py), both layouts, one process.

    python benchmarks/ops/experiments/scan_tiled_vs_step.py [--dtypes bf16 fp32] [--layouts BLD BDL] [--train]
    python benchmarks/ops/experiments/scan_tiled_vs_step.py --backward [--kernels step tiled] [--bwd-kernels ...]
    TRITON_INTERPRET=1 SFMAMBA_KERNEL=triton python benchmarks/ops/experiments/scan_tiled_vs_step.py --smoke  # CPU

`SFMAMBA_SCAN_FWD` (and `SFMAMBA_SCAN_BWD`) are switched between the calls. Every (shape, dtype, layout, kernel) is first checked against the
fp32 reference on 8 images of the shape (no number is reported for a kernel that fails), then timed two ways:
  graph:         `triton.testing.do_bench_cudagraph` median (one call per replay, L2 warm from the previous replay);
  graph_flushed: a CUDA graph of `reps` x (zero a 256 MiB buffer, call) minus a graph of `reps` x (zero the buffer),
                 median over replays, per call: GPU time with the L2 flushed before every call.
`--train` also times the forward that stores the backward's checkpoints (inputs requiring grad).
`--backward` times forward + backward instead (autograd.grad of every input under a random upstream gradient) for
every (forward kernel in --kernels) x (backward kernel in --bwd-kernels), each checked first: output and every
gradient against the fp32 reference's autograd on 8 images.
Writes benchmarks/results/scan_tiled_vs_step[_bwd]_<date>.json (device, versions, date, the autotuner's choices),
rewritten after every row so that a run cut short keeps its rows (`complete` is true only at the end).
`--chunk-lens 0 3136 1568 ...` repeats every forward row with the chunk length forced (0: the planner's choice,
`chunk.plan_chunks`), to find where the narrow tiled kernel should split a row.
`--smoke`: one tiny shape, a few eager calls timed on the host -- a check that the script runs, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("SFMAMBA_VALUE_CHECKS", "0")  # time the kernels, not the value checks' device syncs
ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks" / "ops")]

import torch  # noqa: E402
import triton  # noqa: E402
from bench_selective_scan import graph_flushed_us  # noqa: E402

from sfmamba.ops.selective_scan import chunk, selective_scan, selective_scan_naive, tiled, tiled_bwd  # noqa: E402
from sfmamba.testing import relative_error  # noqa: E402
from sfmamba.utils._config import SCAN_BWD_ENV, SCAN_FWD_ENV  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# batch, D, L, N, G: MambaVision-T stage 3 and 4, VMamba-v2-T stage 1 (4 directions in one grouped scan), and the
# VMeanba reduced scans of VMamba-v2-T stages 1 and 2 (one channel per direction: the narrow tiled kernel's case)
SHAPES = [
    (128, 160, 196, 8, 1),
    (128, 320, 49, 8, 1),
    (128, 384, 3136, 1, 4),
    (128, 4, 3136, 1, 4),
    (128, 4, 784, 1, 4),
]
SMOKE_SHAPES = [(2, 20, 19, 4, 2)]
KERNELS = {"step": chunk.selective_scan_fwd_kernel, "tiled": tiled.selective_scan_fwd_tiled_kernel}
BWD_KERNELS = {"step": chunk.selective_scan_bwd_kernel, "tiled": tiled_bwd.selective_scan_bwd_tiled_kernel}
GRAD_KEYS = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def shape_name(shape: tuple[int, ...]) -> str:
    b, d, length, n, g = shape
    return f"B{b}-D{d}-L{length}-N{n}" + (f"-G{g}" if g > 1 else "")


def make_inputs(shape, dtype, layout, device, requires_grad, seed) -> dict:
    """Inputs like a mixer's: u, delta (softplus'd around 0.1), B, C in `dtype`; A, D, delta_bias fp32."""
    b, d, length, n, g = shape
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*size, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*size, device=device, generator=gen) * scale + shift).to(dt).requires_grad_(requires_grad)

    seq = (b, d, length) if layout == "BDL" else (b, length, d)
    if layout == "BDL":
        bc = (b, n, length) if g == 1 else (b, g, n, length)
    else:
        bc = (b, length, n) if g == 1 else (b, length, g, n)
    A = (-torch.exp(torch.randn(d, n, device=device, generator=gen) * 0.5)).requires_grad_(requires_grad)
    return dict(u=rand(*seq), delta=rand(*seq, scale=0.5, shift=-2.0), A=A, B=rand(*bc), C=rand(*bc),
                D=rand(d, dt=torch.float32), delta_bias=rand(d, scale=0.1, dt=torch.float32))  # fmt: skip


def scan(x: dict, layout: str, naive: bool = False) -> torch.Tensor:
    fn = selective_scan_naive if naive else selective_scan
    return fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True, layout=layout)


def check(shape, dtype, layout, device, train: bool) -> float:
    """Relative error of the current forward vs the fp32 reference on 8 images of the shape (same rounded inputs);
    `train`: inputs requiring grad, so the variant that stores checkpoints is the one checked."""
    small = (min(8, shape[0]), *shape[1:])
    x = make_inputs(small, dtype, layout, device, requires_grad=train, seed=123)
    with torch.no_grad():
        ref = scan({k: v.float() for k, v in x.items()}, layout, naive=True)
    return relative_error(ref, scan(x, layout).detach().float())


def check_backward(shape, dtype, layout, device) -> float:
    """Worst relative error of the output and every gradient (current forward + backward kernels) vs the fp32
    reference's autograd on 8 images of the shape, same rounded inputs, same random upstream gradient."""
    small = (min(8, shape[0]), *shape[1:])
    x = make_inputs(small, dtype, layout, device, requires_grad=True, seed=123)
    ref = scan({k: v.float() for k, v in x.items()}, layout, naive=True)
    out = scan(x, layout)
    upstream = torch.randn_like(out)
    leaves = [x[k] for k in GRAD_KEYS]
    want = torch.autograd.grad(ref, leaves, upstream.float())
    got = torch.autograd.grad(out, leaves, upstream)
    errors = [relative_error(ref.detach(), out.detach().float())]
    errors += [relative_error(w.float(), g.float()) for w, g in zip(want, got)]
    return max(errors)


def time_call(call, device, args) -> dict[str, float]:
    if device.type != "cuda":  # --smoke on the CPU: host time of a few interpreted calls, not a measurement
        start = time.perf_counter()
        for _ in range(2):
            call()
        return {"host_interpreted": (time.perf_counter() - start) / 2 * 1e6}
    call()  # autotune and compile outside the captures
    p50, p20, p80 = triton.testing.do_bench_cudagraph(call, rep=args.rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"graph": p50 * 1e3, "graph_p20": p20 * 1e3, "graph_p80": p80 * 1e3,
            "graph_flushed": graph_flushed_us(call, args.flush_reps, args.flush_replays)}  # fmt: skip


def run_one(shape, dname, layout, kernel, train, chunk_len, device, args) -> dict | None:
    chunk.forced_chunk_len = chunk_len or None
    try:
        return _run_one(shape, dname, layout, kernel, train, chunk_len, device, args)
    finally:
        chunk.forced_chunk_len = None


def _run_one(shape, dname, layout, kernel, train, chunk_len, device, args) -> dict | None:
    os.environ[SCAN_FWD_ENV] = kernel
    dtype = DTYPES[dname]
    err = check(shape, dtype, layout, device, train)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    row = dict(shape=shape_name(shape), dtype=dname, layout=layout, kernel=kernel,
               mode="fwd+ckpt" if train else "fwd", forced_chunk_len=chunk_len, rel_err=err)  # fmt: skip
    if not err <= tol:  # also catches NaN
        print(f"!! {row}: rel err {err:.2e} > {tol:.0e}; not timed", flush=True)
        return None
    x = make_inputs(shape, dtype, layout, device, requires_grad=train, seed=0)

    def call():
        with torch.set_grad_enabled(train):
            return scan(x, layout)

    row.update(time_call(call, device, args))
    b, d, length, n, g = shape
    row["chunks"] = chunk.plan_chunks(b, g, d // g, length, device, kernel)
    row["config"] = str(getattr(KERNELS[kernel], "best_config", None))
    return row


def run_backward(shape, dname, layout, fwd_kernel, bwd_kernel, device, args) -> dict | None:
    """One (forward, backward) kernel pair: checked, then forward + backward timed."""
    os.environ[SCAN_FWD_ENV], os.environ[SCAN_BWD_ENV] = fwd_kernel, bwd_kernel
    dtype = DTYPES[dname]
    err = check_backward(shape, dtype, layout, device)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    row = dict(shape=shape_name(shape), dtype=dname, layout=layout, kernel=f"fwd:{fwd_kernel}+bwd:{bwd_kernel}",
               mode="fwd+bwd", rel_err=err)  # fmt: skip
    if not err <= tol:  # also catches NaN
        print(f"!! {row}: rel err {err:.2e} > {tol:.0e}; not timed", flush=True)
        return None
    x = make_inputs(shape, dtype, layout, device, requires_grad=True, seed=0)
    upstream = torch.randn_like(x["u"])
    leaves = [x[k] for k in GRAD_KEYS]

    def call():
        return torch.autograd.grad(scan(x, layout), leaves, upstream)

    row.update(time_call(call, device, args))
    b, d, length, n, g = shape
    row["chunks"] = chunk.plan_chunks(b, g, d // g, length, device)
    row["bwd_chunk"] = chunk.bwd_chunk_for(n, dtype)
    kernels = (KERNELS[fwd_kernel], BWD_KERNELS[bwd_kernel])
    row["config"] = " | ".join(str(getattr(k, "best_config", None)) for k in kernels)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--layouts", nargs="+", choices=["BLD", "BDL"], default=["BLD", "BDL"])
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument(
        "--shapes", type=int, nargs="+", default=None, choices=range(len(SHAPES)), help="indices into SHAPES"
    )
    parser.add_argument("--train", action="store_true", help="also time the forward that stores checkpoints")
    parser.add_argument("--chunk-lens", type=int, nargs="+", default=[0], help="forced chunk lengths (0: planner)")
    parser.add_argument("--backward", action="store_true", help="time forward + backward (kernel pairs)")
    parser.add_argument("--bwd-kernels", nargs="+", choices=list(BWD_KERNELS), default=list(BWD_KERNELS))
    parser.add_argument("--rep-ms", type=int, default=200)
    parser.add_argument("--flush-reps", type=int, default=20, help="calls per flushed graph")
    parser.add_argument("--flush-replays", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="one tiny shape (runs on the CPU under the interpreter)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not (args.smoke and os.environ.get("TRITON_INTERPRET") == "1"):
        parser.error("no CUDA device: only --smoke under TRITON_INTERPRET=1 SFMAMBA_KERNEL=triton runs on the CPU")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES if args.shapes is None else [SHAPES[i] for i in args.shapes]
    stamp = datetime.datetime.now(datetime.timezone.utc)
    name = "scan_tiled_vs_step_bwd" if args.backward else "scan_tiled_vs_step"
    out = args.out or ROOT / "benchmarks" / "results" / f"{name}_{stamp:%Y%m%dT%H%M%SZ}.json"
    meta = dict(
        device=torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor()}), interpreter",
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
        date=stamp.isoformat(), smoke=args.smoke, units="us per call", complete=False, rows=[],
    )  # fmt: skip
    for shape in shapes:
        for dname in args.dtypes:
            for layout in args.layouts:
                if args.backward:
                    runs = [(run_backward, (fwd, bwd)) for fwd in args.kernels for bwd in args.bwd_kernels]
                else:
                    trains = (False, True) if args.train else (False,)
                    runs = [(run_one, (kernel, train, chunk_len)) for train in trains for kernel in args.kernels
                            for chunk_len in args.chunk_lens]  # fmt: skip
                for run, variant in runs:
                    row = run(shape, dname, layout, *variant, device, args)
                    if row is not None:
                        meta["rows"].append(row)
                        print({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()}, flush=True)
                        write_json(out, meta)  # after every row: a run cut short by a time limit keeps its rows
    meta["complete"] = True
    write_json(out, meta)
    print("wrote", out)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
