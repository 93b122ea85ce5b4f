"""First-use time of the selective scan with its configs built in threads (`SFMAMBA_BUILD_THREADS`) or one after
another: each setting runs in a fresh process with an empty Triton cache, so every config of every tuning key is
built, timed and picked as on a new machine. Per process: the first inference forward at (128, 160, 196, 8) bf16
(the models' flags: D, delta bias, softplus; (batch, L, D) layout), then the first training forward+backward, then
`bench_selective_scan.check` (forward and every gradient against the fp32 reference), and how many kernels each JIT
function holds afterwards (all the configs, when they were built).

    python benchmarks/ops/experiments/first_use_build.py [--threads 16 1] [--child-timeout 200]

Prints a table and writes benchmarks/results/first_use_build_<date>.json (device, versions, settings).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE.parent))

from bench_conv_bn import environment  # noqa: E402
from bench_selective_scan import MAIN_SHAPES, check, make_inputs, providers  # noqa: E402


def kernels_built() -> dict[str, int]:
    """Compiled kernels held by each scan JIT function on the current device."""
    from sfmamba.ops.selective_scan import chunk
    from sfmamba.testing import jit_function

    counts = {}
    for name in ("selective_scan_fwd_kernel", "selective_scan_bwd_kernel"):
        cache = jit_function(getattr(chunk, name)).device_caches.get(torch.cuda.current_device())
        counts[name] = len(cache[0]) if cache else 0
    return counts


def last_result(stdout: str) -> dict:
    """The child's last JSON result line ({} if none): each stage prints one, other output is skipped."""
    for line in reversed(stdout.splitlines()):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict):
            return result
    return {}


def child() -> None:
    from sfmamba.ops.selective_scan import chunk

    shape, dtype = MAIN_SHAPES[0], torch.bfloat16
    layout, fn = providers(None)["sfmamba-BLD"]
    result = {}
    x = make_inputs(shape, dtype, layout, requires_grad=False, seed=0)
    began = time.perf_counter()
    with torch.no_grad():
        fn(x)
    torch.cuda.synchronize()
    result["first_fwd_s"] = time.perf_counter() - began
    result["fwd_kernels"] = kernels_built()
    print(json.dumps(result), flush=True)  # each stage's line: a process cut by its time limit keeps what it timed
    x = make_inputs(shape, dtype, layout, requires_grad=True, seed=1)
    began = time.perf_counter()
    fn(x).float().square().mean().backward()
    torch.cuda.synchronize()
    result["first_fwdbwd_s"] = time.perf_counter() - began
    result["kernels"] = kernels_built()
    print(json.dumps(result), flush=True)
    result["rel_error"] = check(fn, shape, dtype, layout, grads=True)
    result["picks"] = {k: str(getattr(chunk, k).best_config) for k in ("selective_scan_fwd_kernel",
                                                                         "selective_scan_bwd_kernel")}  # fmt: skip
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--child-timeout", type=float, default=200.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("first_use_build.py builds for and runs on a GPU")
    if args.child:
        return child()
    rows = []
    for threads in args.threads:
        cache = tempfile.mkdtemp(prefix="first_use_build_")
        env = dict(os.environ, SFMAMBA_BUILD_THREADS=str(threads), TRITON_CACHE_DIR=cache)
        env.pop("TRITON_INTERPRET", None)
        began = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                                  timeout=args.child_timeout)  # fmt: skip
            stdout, error = done.stdout, (done.stderr[-2000:] if done.returncode else None)
        except subprocess.TimeoutExpired as cut:
            stdout, error = cut.stdout or "", f"timed out after {args.child_timeout:.0f} s"
        if isinstance(stdout, bytes):
            stdout = stdout.decode(errors="replace")
        shutil.rmtree(cache, ignore_errors=True)
        row = last_result(stdout)
        if error:
            row["error"] = error
        row.update(threads=threads, wall_s=time.perf_counter() - began)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| build threads | first fwd (s) | first fwd+bwd (s) | process (s) | kernels fwd / bwd | rel. error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        k = r.get("kernels", {})
        print(f"| {r['threads']} | {r.get('first_fwd_s', float('nan')):.1f} | {r.get('first_fwdbwd_s', float('nan')):.1f} "
              f"| {r['wall_s']:.1f} | {k.get('selective_scan_fwd_kernel', '-')} / "
              f"{k.get('selective_scan_bwd_kernel', '-')} | {r.get('rel_error', float('nan')):.1e} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"first_use_build_{stamp}.json"
    settings = dict(shape=str(MAIN_SHAPES[0]), dtype="bf16", layout="BLD", fresh_triton_cache=True)
    path.write_text(json.dumps(dict(environment=environment(), settings=settings, rows=rows), indent=1))
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
