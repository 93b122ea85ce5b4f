"""VMeanba kernel benchmark: the fused VMeanba op vs our full selective scan, and the scan alone on reduced inputs.

Providers, each timed as the median of `triton.testing.do_bench` (L2 flushed before every call) on fresh random
inputs, after a correctness check against the fp32 reference on the first two images:
  full        `selective_scan` on the (b, D, L) inputs -- what an unconverted block runs;
  vmeanba     `mean_selective_scan` on the same inputs -- the channel mean, discretisation, scan, broadcast, skip:
              everything a converted block runs instead of `full`;
  scan_only   `selective_scan` on the reduced inputs (b, G, L), one channel per group -- the paper's Table 2 measure
              (the scan without the mean and broadcast);
  scan_only_fused  `mean_selective_scan` on the same reduced inputs (one channel per group: no mean to take);
  copy        a device-to-device copy of u, for effective bandwidth.
Ratios printed: full / vmeanba (target >= 1.5 at the VMamba-T shape) and full / best scan-only (target >= 50).
Writes JSON (device, versions, settings, date, every time) to benchmarks/results/.

    python benchmarks/ops/bench_vmeanba.py                  # VMamba-T stages + MambaVision shapes, fp32 + bf16
    python benchmarks/ops/bench_vmeanba.py --backward       # also forward+backward
    python benchmarks/ops/bench_vmeanba.py --cuda-graph     # time under CUDA graphs (no host launch cost)
    python benchmarks/ops/bench_vmeanba.py --model vmamba_v2_tiny --skip-ops   # model forward vs K, bs 128, 224 px
    TRITON_INTERPRET=1 python benchmarks/ops/bench_vmeanba.py --smoke    # tiny shape, runs on a CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

os.environ.setdefault("SFMAMBA_VALUE_CHECKS", "0")  # time the kernels, not the input-value checks (device syncs)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sfmamba.ops import mean_selective_scan, selective_scan  # noqa: E402
from sfmamba.ops.vmeanba import mean_selective_scan_naive  # noqa: E402
from sfmamba.testing import relative_error  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
TIMER = "triton.testing.do_bench median, L2 flushed"


@dataclass(frozen=True)
class Shape:
    label: str
    batch: int
    dim: int
    length: int
    nstate: int
    groups: int

    @property
    def name(self) -> str:
        return f"B{self.batch}-D{self.dim}-L{self.length}-N{self.nstate}-G{self.groups}"


SHAPES = [
    Shape("VMamba-T stage 1 (target)", 128, 384, 3136, 1, 4),  # 96 channels x 4 directions in one scan
    Shape("VMamba-T stage 2", 128, 768, 784, 1, 4),
    Shape("VMamba-T stage 3", 128, 1536, 196, 1, 4),
    Shape("VMamba-T stage 4", 128, 3072, 49, 1, 4),
    Shape("MambaVision-T stage 3", 128, 160, 196, 8, 1),
    Shape("MambaVision-T stage 4", 128, 320, 49, 8, 1),
]
SMOKE_SHAPES = [Shape("smoke", 2, 16, 20, 1, 4)]


def make_inputs(shape: Shape, dtype: torch.dtype, layout: str, device: str, grad: bool, seed: int) -> dict:
    """Random inputs shaped like a VMamba/MambaVision mixer's (softplus steps around 0.1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    b, d, n, g, length = shape.batch, shape.dim, shape.nstate, shape.groups, shape.length

    def rand(*size, scale=1.0, shift=0.0, dtype_=dtype):
        return (torch.randn(*size, device=device, generator=gen) * scale + shift).to(dtype_)

    seq = (b, d, length) if layout == "BDL" else (b, length, d)
    if layout == "BDL":
        bc = (b, n, length) if g == 1 else (b, g, n, length)
    else:
        bc = (b, length, n) if g == 1 else (b, length, g, n)
    inputs = dict(
        u=rand(*seq), delta=rand(*seq, scale=0.5, shift=-2.0), A=-torch.exp(rand(d, n, scale=0.5, dtype_=torch.float32)),
        B=rand(*bc), C=rand(*bc), D=rand(d, dtype_=torch.float32), delta_bias=rand(d, scale=0.1, dtype_=torch.float32),
    )  # fmt: skip
    return {name: x.requires_grad_(grad) for name, x in inputs.items()}  # leaves


def reduced(shape: Shape) -> Shape:
    """The scan-only problem: one channel per group, B/C grouped so each channel has its own."""
    return Shape(shape.label + " reduced", shape.batch, shape.groups, shape.length, shape.nstate, shape.groups)


def median_time_us(fn: Callable[[], object], cuda_graph: bool) -> float:
    if torch.cuda.is_available():
        import triton.testing

        bench = triton.testing.do_bench_cudagraph if cuda_graph else triton.testing.do_bench
        return bench(fn, return_mode="median") * 1e3
    times = []
    for _ in range(3):  # the interpreter smoke run: a rough wall time
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def check_vmeanba(inputs: dict, dtype: torch.dtype, layout: str) -> float:
    """Relative error of the fused op against the fp32 reference on the first two images."""
    first = {k: (v[:2] if k in ("u", "delta", "B", "C") else v).detach() for k, v in inputs.items()}
    out = mean_selective_scan(**first, delta_softplus=True, layout=layout)
    ref = mean_selective_scan_naive(**{k: v.float() for k, v in first.items()}, delta_softplus=True, layout=layout)
    err = relative_error(ref, out)
    if not err <= TOLERANCE[dtype]:
        raise RuntimeError(f"mean_selective_scan differs from the reference: relative error {err:.2e}")
    return err


def providers(shape: Shape, dtype: torch.dtype, layout: str, device: str, backward: bool) -> dict[str, Callable]:
    full = make_inputs(shape, dtype, layout, device, backward, seed=0)
    small = make_inputs(reduced(shape), dtype, layout, device, backward, seed=1)
    flags = dict(delta_softplus=True, layout=layout)

    def timed(op, inputs):
        if not backward:
            return lambda: op(**inputs, **flags)
        upstream = torch.randn_like(inputs["u"])

        def step():
            out = op(**inputs, **flags)
            torch.autograd.backward(out, upstream)

        return step

    return {
        "full": timed(selective_scan, full),
        "vmeanba": timed(mean_selective_scan, full),
        "scan_only": timed(selective_scan, small),
        "scan_only_fused": timed(mean_selective_scan, small),
        "copy": lambda: full["u"].detach().clone(),
    }, full


def run_case(shape: Shape, dtype_name: str, layout: str, device: str, backward: bool, cuda_graph: bool) -> dict:
    dtype = DTYPES[dtype_name]
    fns, full = providers(shape, dtype, layout, device, backward)
    error = check_vmeanba(full, dtype, layout)
    times = {}
    for name, fn in fns.items():
        with torch.no_grad() if not backward else torch.enable_grad():
            fn()  # compile / autotune outside the timing
            times[name] = median_time_us(fn, cuda_graph and not backward)
    best_scan_only = min(times["scan_only"], times["scan_only_fused"])
    row = dict(
        shape=asdict(shape), dtype=dtype_name, layout=layout, mode="fwd+bwd" if backward else "fwd", us=times,
        speedup_vmeanba_vs_full=times["full"] / times["vmeanba"], speedup_scan_only_vs_full=times["full"] / best_scan_only,
        vmeanba_rel_error=error,
    )  # fmt: skip
    bytes_moved = 2 * full["u"].numel() * full["u"].element_size()
    row["copy_GBps"] = bytes_moved / times["copy"] / 1e3
    return row


def model_speed_vs_k(args: argparse.Namespace, device: str) -> list[dict]:
    """Forward time of `args.model` (random weights, eval, inference_mode, bf16 autocast on a GPU) with K blocks
    converted, in model order (the long early-stage scans first: the best case) and in reverse (the worst case)."""
    import timm

    import sfmamba.models  # noqa: F401  (registers the models)
    from sfmamba.compress import vmeanba as V

    model = timm.create_model(args.model).to(device).eval()
    blocks = V.find_blocks(model)
    images = torch.randn(args.model_batch, 3, args.img_size, args.img_size, device=device)
    ks = sorted({k for k in args.ks if k <= len(blocks)} | {0})
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    rows = []
    paths = {"fast": True, "generic": False}  # SS2D's reduced VMeanba path vs mean_selective_scan in the cross-scan
    for path in args.vmeanba_paths:
        for module in model.modules():
            if hasattr(module, "vmeanba_fast_path"):
                module.vmeanba_fast_path = paths[path]
        for order, ranking in (("model order", blocks), ("reversed", blocks[::-1])):
            for k in ks:
                V.apply(model, ranking[:k])
                with torch.inference_mode(), autocast:
                    model(images)
                    ms = median_time_us(lambda: model(images), args.cuda_graph) / 1e3
                rows.append(dict(model=args.model, path=path, order=order, k=k, blocks=ranking[:k], ms=ms,
                                 img_per_s=args.model_batch / ms * 1e3))  # fmt: skip
    base = {(r["path"], r["order"]): r["ms"] for r in rows if r["k"] == 0}
    for r in rows:
        r["speedup"] = base[r["path"], r["order"]] / r["ms"]
        print(f"{r['model']} {r['path']:7s} {r['order']:12s} K={r['k']:2d}: {r['ms']:8.2f} ms/batch  "
              f"{r['img_per_s']:9.0f} img/s  x{r['speedup']:.3f}")  # fmt: skip
    V.apply(model, [])
    return rows


def versions() -> dict:
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return dict(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                sfmamba_commit=commit)  # fmt: skip


def print_table(rows: list[dict]) -> None:
    print(f"{'shape':44s} {'dtype':5s} {'lay':4s} {'mode':8s} {'full':>9s} {'vmeanba':>9s} {'scan1':>8s} "
          f"{'scan1f':>8s} {'x fused':>8s} {'x scan':>8s}")  # fmt: skip
    for r in rows:
        us = r["us"]
        label = f"{r['shape']['label']} {Shape(**r['shape']).name}"
        print(f"{label[:44]:44s} {r['dtype']:5s} {r['layout']:4s} {r['mode']:8s} {us['full']:9.1f} {us['vmeanba']:9.1f} "
              f"{us['scan_only']:8.1f} {us['scan_only_fused']:8.1f} {r['speedup_vmeanba_vs_full']:8.2f} "
              f"{r['speedup_scan_only_vs_full']:8.1f}")  # fmt: skip
    print("times in us (median); x fused = full / vmeanba (target >= 1.5 at VMamba-T stage 1); "
          "x scan = full / min(scan-only) (target >= 50)")  # fmt: skip


def write_json(rows: list[dict], args: argparse.Namespace, path: Path, model_rows: list[dict]) -> None:
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')})"
    )
    record = dict(
        benchmark="vmeanba", date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), device=device,
        versions=versions(), settings=dict(dtypes=args.dtypes, layouts=args.layouts, backward=args.backward,
                                           cuda_graph=args.cuda_graph, timer=TIMER if torch.cuda.is_available() else "perf_counter median of 3 (interpreter)",
                                           delta_softplus=True, value_checks=os.environ.get("SFMAMBA_VALUE_CHECKS")),
        results=rows, model_results=model_rows,
        model_settings=dict(model=args.model, batch=args.model_batch, img_size=args.img_size, autocast="bf16 on cuda")
        if args.model else None,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--layouts", nargs="+", default=["BLD", "BDL"], choices=["BDL", "BLD"],
                        help="BLD: what our SS2D and Mamba mixers pass (default: both)")  # fmt: skip
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--cuda-graph", action="store_true", help="time the forward under CUDA graphs")
    parser.add_argument("--smoke", action="store_true", help="one tiny shape (runs on a CPU under TRITON_INTERPRET=1)")
    parser.add_argument(
        "--shapes",
        type=int,
        nargs="+",
        default=None,
        choices=range(len(SHAPES)),
        help="indices into SHAPES (default: all)",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument("--model", default=None, help="also time this model's forward versus K (e.g. vmamba_v2_tiny)")
    parser.add_argument("--model-batch", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4, 8, 14], help="K values for --model")
    parser.add_argument("--skip-ops", action="store_true", help="only the --model timing")
    parser.add_argument("--vmeanba-paths", nargs="+", default=["fast", "generic"], choices=["fast", "generic"],
                        help="SS2D's VMeanba implementations to time with --model (fast: ops/vmeanba/cross.py)")  # fmt: skip
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if not args.smoke:
            parser.error("no GPU: only --smoke runs on a CPU (with TRITON_INTERPRET=1)")
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("on a CPU set TRITON_INTERPRET=1 so the Triton kernels run in the interpreter")
    set_kernel_backend("triton")  # never time a silent fallback to the PyTorch reference
    shapes = SMOKE_SHAPES if args.smoke else SHAPES if args.shapes is None else [SHAPES[i] for i in args.shapes]
    rows = []
    modes = [False, True] if args.backward else [False]
    for shape in [] if args.skip_ops else shapes:
        for dtype_name in args.dtypes:
            for layout in args.layouts:
                for backward in modes:
                    rows.append(run_case(shape, dtype_name, layout, device, backward, args.cuda_graph))
                    print_table(rows[-1:])
    if rows:
        print()
        print_table(rows)
    model_rows = model_speed_vs_k(args, device) if args.model else []
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if args.output is not None or not args.smoke:
        write_json(rows, args, args.output or ROOT / "benchmarks" / "results" / f"vmeanba_{stamp}.json", model_rows)


if __name__ == "__main__":
    main()
