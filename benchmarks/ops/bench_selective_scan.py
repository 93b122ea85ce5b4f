"""Selective-scan kernel benchmark: sfmamba Triton vs mamba_ssm CUDA vs the PyTorch reference, fwd and fwd+bwd.

Times the median of `triton.testing.do_bench` (L2 flushed before every call), checks every provider against the
fp32 reference first (no number is reported for a provider that fails), and reports effective GB/s against a
device-to-device copy measured in the same run. Writes JSON to benchmarks/results/ and a PNG of time vs length.

    python benchmarks/ops/bench_selective_scan.py                 # default shapes, fp32 + bf16
    python benchmarks/ops/bench_selective_scan.py --quick         # fewer shapes, for a smoke run

`--precompile J` first builds every autotuned config of our kernels for the planned rows in J child processes (each
forces its share of the forward and backward configs and runs every row once, untimed), so that the timed run finds
them in Triton's on-disk cache: building the configs one after another took most of session 20's 250-290 s calls,
which ended after 4-5 rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# time the kernels, not the per-call input-value checks (each costs a device sync; see ENVs.md)
os.environ.setdefault("SFMAMBA_VALUE_CHECKS", "0")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sfmamba.cli import positive_int  # noqa: E402
from sfmamba.ops.selective_scan import selective_scan, selective_scan_naive  # noqa: E402
from sfmamba.testing import relative_error  # noqa: E402
from sfmamba.utils.files import atomic_write_text  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Shape:
    batch: int
    dim: int
    length: int
    nstate: int
    groups: int = 1

    @property
    def name(self) -> str:
        g = f"-G{self.groups}" if self.groups > 1 else ""
        return f"B{self.batch}-D{self.dim}-L{self.length}-N{self.nstate}{g}"


MAIN_SHAPES = [
    Shape(128, 160, 196, 8),  # MambaVision-T stage 3
    Shape(128, 160, 198, 8),  # ... with two aux tokens
    Shape(128, 320, 49, 8),  # MambaVision-T stage 4
    Shape(128, 320, 51, 8),
    Shape(128, 384, 3136, 1, 4),  # VMamba-v2-T stage 1: 4 directions in one scan
]
SWEEP_LENGTHS = [49, 98, 196, 392, 784, 1568, 3136]


def make_inputs(shape: Shape, dtype: torch.dtype, layout: str, requires_grad: bool, seed: int) -> dict:
    """Random inputs shaped like a MambaVision/VMamba mixer's (delta around softplus's useful range)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    b, d, l, n, grp = shape.batch, shape.dim, shape.length, shape.nstate, shape.groups

    def rand(*size, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*size, device="cuda", generator=g) * scale + shift).to(dt)

    seq = (b, d, l) if layout == "BDL" else (b, l, d)
    bc = ((b, n, l) if grp == 1 else (b, grp, n, l)) if layout == "BDL" else ((b, l, n) if grp == 1 else (b, l, grp, n))
    x = dict(
        u=rand(*seq),
        delta=rand(*seq, scale=0.5, shift=-2.0),
        A=-torch.exp(rand(d, n, scale=0.5, dt=torch.float32)),
        B=rand(*bc),
        C=rand(*bc),
        D=rand(d, dt=torch.float32),
        delta_bias=rand(d, scale=0.1, dt=torch.float32),
    )
    for v in x.values():
        v.requires_grad_(requires_grad)
    return x


def scan_bytes(shape: Shape, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes the op must move: u, delta, B, C read and out written (fwd); twice plus grads for fwd+bwd."""
    el = torch.finfo(dtype).bits // 8
    seq = shape.batch * shape.dim * shape.length * el
    bc = 2 * shape.batch * shape.groups * shape.nstate * shape.length * el
    fwd = 3 * seq + bc
    return (
        fwd if mode == "fwd" else fwd + (3 * seq + bc) + (2 * seq + bc)
    )  # bwd: read u, delta, dout, B, C; write du, ddelta, dB, dC


def load_mamba():
    """mamba_ssm's CUDA selective scan if built (.bench_deps/mamba_baseline.py or an installed mamba_ssm)."""
    sys.path.insert(0, str(ROOT / ".bench_deps"))
    for module, attr in (
        ("mamba_baseline", "mamba_selective_scan_fn"),
        ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    ):
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            print(f"# mamba_ssm baseline unavailable via {module}: {err}")
    return None


def providers(mamba_fn) -> dict:
    def ours_bdl(x, **kw):
        return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True, **kw)

    def ours_bld(x, **kw):
        return selective_scan(
            x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True, layout="BLD", **kw
        )

    def naive(x, **kw):
        return selective_scan_naive(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True)

    out = {"sfmamba-BDL": ("BDL", ours_bdl), "sfmamba-BLD": ("BLD", ours_bld), "naive-torch": ("BDL", naive)}
    if mamba_fn is not None:
        out["mamba_ssm"] = (
            "BDL",
            lambda x, **kw: mamba_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True),
        )
    return out


def folded(fn, fold: int):
    """Run `fold` images back to back per row with the state reset between them (BLD layout: a pure view)."""

    def run(x, **kw):
        b, l, d = x["u"].shape
        v = dict(x)
        for k in ("u", "delta", "B", "C"):
            t = x[k]
            v[k] = t.reshape(b // fold, fold * l, *t.shape[2:])
        out = fn(v, seq_len=l, **kw)
        return out.reshape(b, l, d)

    return run


GRAD_KEYS = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def check(fn, shape: Shape, dtype: torch.dtype, layout: str, grads: bool) -> float:
    """Worst relative error of fn's forward (and every gradient) vs the fp32 reference on the same inputs."""
    small = Shape(8, shape.dim, shape.length, shape.nstate, shape.groups)
    x = make_inputs(small, dtype, layout, requires_grad=grads, seed=123)
    ref = selective_scan_naive(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True, layout=layout
    )
    out = fn(x)
    errors = [relative_error(ref.float(), out.float())]
    if grads:
        dout = torch.randn_like(out)
        g_ref = torch.autograd.grad(ref, [x[k] for k in GRAD_KEYS], dout)
        g_out = torch.autograd.grad(out, [x[k] for k in GRAD_KEYS], dout)
        errors += [relative_error(a.float(), b.float()) for a, b in zip(g_ref, g_out)]
    return max(errors)


FLUSH_BYTES = 256 * 2**20  # > the 50 MiB L2 of an H100 / H200


def graph_flushed_us(call, reps: int, replays: int) -> float:
    """Per-call GPU time with L2 flushed before each call: graph(flush + call) - graph(flush), median of replays."""
    flush = torch.empty(FLUSH_BYTES // 4, device="cuda", dtype=torch.int32)

    def capture(with_call: bool) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                flush.zero_()
                if with_call:
                    call()
        return graph

    def median_ms(graph: torch.cuda.CUDAGraph) -> float:
        graph.replay()
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    both, flush_only = capture(True), capture(False)
    return (median_ms(both) - median_ms(flush_only)) / reps * 1e3


def time_provider(
    fn, shape: Shape, dtype: torch.dtype, layout: str, mode: str, args, timer: str
) -> tuple[float, float, float]:
    import triton

    x = make_inputs(shape, dtype, layout, requires_grad=mode != "fwd", seed=0)
    if mode == "fwd":

        def call():
            with torch.no_grad():
                fn(x)

    elif mode == "fwdtrain":  # the forward of a training step: it also stores the backward's checkpoint states

        def call():
            fn(x)
    else:
        dout = torch.randn_like(x["u"])

        def call():
            out = fn(x)
            return torch.autograd.grad(out, [x[k] for k in GRAD_KEYS], dout)

    if timer == "once":  # compile (and autotune) only
        call()
        torch.cuda.synchronize()
        return 0.0, 0.0, 0.0
    if timer == "graph":  # GPU time only: one CUDA graph replayed (no launch overhead, L2 not flushed)
        call()  # autotune and compile outside the capture
        p50, p20, p80 = triton.testing.do_bench_cudagraph(call, rep=args.rep_ms, quantiles=[0.5, 0.2, 0.8])
    elif timer == "graph_flushed":  # GPU time with L2 flushed before each call (median only: p20 = p80 = p50)
        call()
        p50 = p20 = p80 = graph_flushed_us(call, reps=10, replays=10) * 1e-3
    else:  # eager launches, L2 flushed before every call: includes each provider's host overhead
        p50, p20, p80 = triton.testing.do_bench(call, warmup=args.warmup_ms, rep=args.rep_ms, quantiles=[0.5, 0.2, 0.8])
    return p50 * 1e3, p20 * 1e3, p80 * 1e3


def chosen_configs(mode: str) -> str:
    """The autotuner's choice for the last launch of our kernels (what the timing above ran)."""
    from sfmamba.ops.selective_scan import chunk

    kernels = [chunk.selective_scan_fwd_kernel] + ([chunk.selective_scan_bwd_kernel] if mode == "fwdbwd" else [])
    return " | ".join(str(getattr(k, "best_config", None)) for k in kernels)


def copy_bandwidth() -> float:
    """Device-to-device copy rate in GB/s, counting bytes read plus written (1 GiB buffers)."""
    import triton

    src = torch.empty(2**28, device="cuda", dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


@dataclass
class Row:
    shape: str
    timer: str
    length: int
    dtype: str
    provider: str
    mode: str
    median_us: float
    p20_us: float
    p80_us: float
    config: str
    gbps: float
    copy_fraction: float
    rel_err: float


def run(args, on_row=lambda rows, copy_gbps: None) -> tuple[list[Row], float]:
    """Every (shape, timer, dtype, mode, provider) row; `on_row(rows, copy_gbps)` after each."""
    mamba_fn = load_mamba()
    provs = providers(mamba_fn)
    copy_gbps = copy_bandwidth() if args.precompile_share is None else float("nan")
    print(f"# device-to-device copy: {copy_gbps:.0f} GB/s")
    shapes = [] if args.sweep_only else list(MAIN_SHAPES[:3] if args.quick else MAIN_SHAPES)
    if args.shapes is not None:
        shapes = [MAIN_SHAPES[index] for index in args.shapes]
    if args.sweep or args.sweep_only:
        shapes += [Shape(128, 160, length, 8) for length in SWEEP_LENGTHS]
    rows: list[Row] = []
    for shape in shapes:
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            todo = dict(provs)
            if shape.groups == 1:
                for f in args.folds:
                    if shape.batch % f == 0 and f > 1:
                        todo[f"sfmamba-BLD-fold{f}"] = ("BLD", folded(provs["sfmamba-BLD"][1], f))
            for pname, (layout, fn) in todo.items():
                if args.providers and pname not in args.providers:
                    continue
                if pname == "naive-torch" and shape.length > 400:
                    continue  # a Python loop of L launches; not informative at long L
                for mode in args.modes:
                    if args.precompile_share is not None and not pname.startswith("sfmamba"):
                        continue
                    if mode == "fwdbwd" and pname.startswith("naive") and shape.length > 64:
                        continue
                    err = 0.0 if pname.startswith("naive") else check(fn, shape, dtype, layout, grads=mode == "fwdbwd")
                    if args.precompile_share is not None:  # a precompiling child: build what the timed run launches
                        time_provider(fn, shape, dtype, layout, mode, args, "once")
                        print(f"{shape.name} {dname} {mode} {pname}: err {err:.1e}", flush=True)
                        continue
                    tol = 1e-4 if dtype == torch.float32 else 3e-2
                    if err > tol:
                        print(f"!! {pname} {shape.name} {dname}: rel err {err:.2e} > {tol:.0e}; not timed")
                        break
                    for timer in args.timers:
                        if timer == "graph" and pname == "naive-torch":
                            continue
                        med, p20, p80 = time_provider(fn, shape, dtype, layout, mode, args, timer)
                        gbps = scan_bytes(shape, dtype, mode) / (med * 1e-6) / 1e9
                        config = chosen_configs(mode) if pname.startswith("sfmamba") else ""
                        rows.append(
                            Row(
                                shape=shape.name,
                                timer=timer,
                                length=shape.length,
                                dtype=dname,
                                provider=pname,
                                mode=mode,
                                median_us=med,
                                p20_us=p20,
                                p80_us=p80,
                                config=config,
                                gbps=gbps,
                                copy_fraction=gbps / copy_gbps,
                                rel_err=err,
                            )  # fmt: skip
                        )
                        print(
                            f"{shape.name:26s} {timer:5s} {dname:4s} {mode:6s} {pname:20s} {med:8.1f} us [{p20:.1f}, {p80:.1f}] {gbps:6.0f} GB/s ({100 * gbps / copy_gbps:4.1f}% copy) err {err:.1e}",
                            flush=True,
                        )
                        on_row(rows, copy_gbps)
    return rows, copy_gbps


def force_config_share(share: int, shares: int) -> None:
    """Our forward and backward kernels autotune among their configs `share`, `share + shares`, ... only (the first
    config where a share has none), plus another where a share has one: Triton's autotuner prunes only lists of two or
    more, and a lone SPLIT config would otherwise be built where the pruning drops it (N = 1) and fail."""
    from sfmamba.ops.selective_scan import chunk

    for kernel in (chunk.selective_scan_fwd_kernel, chunk.selective_scan_bwd_kernel):
        picked = kernel.configs[share::shares] or kernel.configs[:1]
        others = [c for c in kernel.configs if c not in picked]
        kernel.configs = picked if len(picked) > 1 else picked + others[:1]
        kernel.cache.clear()


def precompile(jobs: int) -> None:
    """Run this command in `jobs` child processes, each building its share of the configs (see the module doc)."""
    run_children([["--precompile-share", str(j), str(jobs)] for j in range(jobs)], "precompiled")


def run_children(extra_args: list[list[str]], what: str) -> None:
    """This command once per entry of `extra_args`, with those arguments added, all at once (output discarded: they
    only fill Triton's on-disk cache for the timed run); prints the wall time and the children that failed."""
    began = time.time()
    procs = [subprocess.Popen([sys.executable, *sys.argv, *extra], stdout=subprocess.DEVNULL) for extra in extra_args]
    failed = [j for j, proc in enumerate(procs) if proc.wait() != 0]
    print(f"# {what} in {len(procs)} processes: {time.time() - began:.0f} s"
          + (f"; processes {failed} failed" if failed else ""), flush=True)  # fmt: skip


def summarize(rows: list[Row]) -> str:
    lines = [
        "| shape | timer | dtype | mode | sfmamba best (us) | provider | mamba_ssm (us) | speed-up | naive (us) | % copy BW |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r.shape, r.timer, r.dtype, r.mode) for r in rows})
    for shape, timer, dname, mode in keys:
        group = [r for r in rows if (r.shape, r.timer, r.dtype, r.mode) == (shape, timer, dname, mode)]
        ours = min((r for r in group if r.provider.startswith("sfmamba")), key=lambda r: r.median_us, default=None)
        base = next((r for r in group if r.provider == "mamba_ssm"), None)
        naive = next(
            (r for r in rows if r.provider == "naive-torch" and (r.shape, r.dtype, r.mode) == (shape, dname, mode)),
            None,
        )
        if ours is None:
            continue
        ratio = f"{base.median_us / ours.median_us:.2f}x" if base else "n/a"
        lines.append(
            f"| {shape} | {timer} | {dname} | {mode} | {ours.median_us:.1f} | {ours.provider} | {base.median_us if base else float('nan'):.1f} | {ratio} | "
            f"{naive.median_us if naive else float('nan'):.1f} | {100 * ours.copy_fraction:.0f}% |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, mode in zip(axes, ("fwd", "fwdbwd")):
        for prov in sorted({r.provider for r in rows}):
            pts = sorted(
                (r.length, r.median_us)
                for r in rows
                if r.provider == prov
                and r.mode == mode
                and r.dtype == "bf16"
                and "D160" in r.shape
                and r.timer == "graph"
            )
            if len(pts) > 1:
                ax.plot(*zip(*pts), marker="o", label=prov)
        ax.set(xscale="log", yscale="log", xlabel="L", ylabel="median time (us)", title=f"B128 D160 N8 bf16 {mode}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    parser.add_argument("--folds", nargs="*", type=int, default=[2, 4])
    parser.add_argument("--timers", nargs="+", default=["graph", "eager"], choices=["graph", "eager"])
    parser.add_argument("--sweep", action="store_true", help="also sweep L at D=160 for the time-vs-length plot")
    parser.add_argument("--sweep-only", action="store_true", help="only the length sweep")
    parser.add_argument("--providers", nargs="*", default=None, help="only these providers (default: all)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shapes", type=int, nargs="+", default=None, help="only these MAIN_SHAPES (indices)")
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="selective_scan")
    parser.add_argument("--precompile", type=positive_int, default=1, help="build every config first in J processes")
    parser.add_argument("--precompile-share", type=int, nargs=2, default=None, help=argparse.SUPPRESS)  # (j, J)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    if args.precompile_share is not None:
        force_config_share(*args.precompile_share)
        run(args)
        return
    if args.precompile > 1:
        precompile(args.precompile)
    import triton

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    meta = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        date=stamp,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        command="python " + " ".join(sys.argv),
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{args.tag}_{stamp}.json"

    def write_json(rows: list[Row], copy_gbps: float) -> None:  # after every row: a run cut short keeps its rows
        atomic_write_text(out, json.dumps(dict(meta=meta | {"copy_gbps": copy_gbps}, rows=[asdict(r) for r in rows]),
                                          indent=1))  # fmt: skip

    rows, copy_gbps = run(args, write_json)
    write_json(rows, copy_gbps)
    table = summarize(rows)
    print(table)
    (args.out_dir / f"{args.tag}_{stamp}.md").write_text(table + "\n")
    if args.sweep or args.sweep_only:
        plot(rows, args.out_dir / f"{args.tag}_{stamp}.png")
    print(f"# wrote {out}")


if __name__ == "__main__":
    main()
