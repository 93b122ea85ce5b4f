"""Cross-scan / cross-merge benchmark: sfmamba Triton vs the PyTorch reference, at the VMamba-v2-T stage shapes.

Checks every provider against the reference first (no number for a provider that fails), times the median of
`triton.testing.do_bench`, and reports effective GB/s against a device-to-device copy of the same bytes measured in
the same run (the ops are pure data movement: a scan reads L*C and writes 4*L*C elements, a merge the reverse).
With `--mixer` it also times the whole SS2D mixer forward (bf16 autocast) per stage, to show the ops' share.
Writes JSON to benchmarks/results/ and a table to stdout.

    python benchmarks/ops/bench_cross_scan.py                 # batch 128, bf16 + fp32, channels-last maps
    python benchmarks/ops/bench_cross_scan.py --batch 8 --dtypes fp32 --mixer
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sfmamba.layers.ss2d import SS2D  # noqa: E402
from sfmamba.ops.cross_scan import cross_merge_naive, cross_scan_naive  # noqa: E402
from sfmamba.ops.cross_scan.chunk import cross_merge_fwd, cross_scan_fwd  # noqa: E402
from sfmamba.testing import relative_error  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STAGES = [(56, 56, 96), (28, 28, 192), (14, 14, 384), (7, 7, 768)]  # VMamba-v2-T at 224 px: (H, W, d_inner)


def do_bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3  # µs


def providers(layout: str) -> dict:
    return {
        "sfmamba": (
            lambda x: cross_scan_fwd(x, layout, "BLD"),
            lambda y, h, w: cross_merge_fwd(y, h, w, "BLD", layout),
        ),
        "torch": (
            lambda x: cross_scan_naive(x, layout=layout, scan_layout="BLD"),
            lambda y, h, w: cross_merge_naive(y, h, w, scan_layout="BLD", layout=layout),
        ),
    }


def bench_shape(batch: int, height: int, width: int, channels: int, dtype: torch.dtype, layout: str) -> list[dict]:
    shape = (batch, height, width, channels) if layout == "BHWC" else (batch, channels, height, width)
    x = torch.randn(shape, device="cuda", dtype=dtype)
    ref_scan = cross_scan_naive(x, layout=layout)
    y = torch.randn_like(ref_scan)
    ref_merge = cross_merge_naive(y, height, width, layout=layout)
    big = torch.empty(ref_scan.numel() + x.numel(), device="cuda", dtype=dtype)
    copy_us = do_bench(lambda: big.clone())  # same bytes as one scan or one merge: read + write 5 * L * C
    gbytes = big.numel() * big.element_size() * 2 / 1e9
    rows = []
    for name, (scan, merge) in providers(layout).items():
        tol = 1e-5 if dtype == torch.float32 else 1e-2  # the merge sums in another order: one rounding apart
        merged = merge(y, height, width).float()
        ok = torch.equal(scan(x), ref_scan) and torch.allclose(merged, ref_merge.float(), rtol=tol, atol=tol)
        row = dict(provider=name, batch=batch, H=height, W=width, C=channels, dtype=str(dtype), layout=layout, ok=ok)
        if ok:
            row["scan_us"] = do_bench(lambda: scan(x))
            row["merge_us"] = do_bench(lambda: merge(y, height, width))
            row["scan_GBps"] = gbytes / (row["scan_us"] * 1e-6)
            row["merge_GBps"] = gbytes / (row["merge_us"] * 1e-6)
        row["copy_us"], row["copy_GBps"] = copy_us, gbytes / (copy_us * 1e-6)
        rows.append(row)
    return rows


def bench_mixer(batch: int, height: int, width: int, channels: int) -> dict:
    """SS2D forward: the Triton path checked against the naive path (fp32, 2 images), then timed in bf16."""
    mixer = SS2D(channels).cuda()
    small = torch.randn(2, height, width, channels, device="cuda")
    with torch.inference_mode():
        set_kernel_backend("naive")
        ref = mixer(small)
        set_kernel_backend("triton")
        err = relative_error(ref, mixer(small))
        set_kernel_backend(None)
    x = torch.randn(batch, height, width, channels, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.inference_mode():
        mixer_us = do_bench(lambda: mixer(x))
    row = dict(provider="SS2D-fwd-bf16", batch=batch, H=height, W=width, C=channels, rel_err_vs_naive=err)
    return dict(row, ok=err < 1e-4, mixer_us=mixer_us)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    parser.add_argument("--layouts", nargs="+", default=["BHWC"], choices=["BHWC", "BCHW"])
    parser.add_argument("--mixer", action="store_true", help="also time the SS2D mixer forward per stage")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    rows = []
    for dtype in args.dtypes:
        for layout in args.layouts:
            for height, width, channels in STAGES:
                rows += bench_shape(args.batch, height, width, channels, DTYPES[dtype], layout)
    if args.mixer:
        rows += [bench_mixer(args.batch, *stage[:2], stage[2]) for stage in STAGES]
    for r in rows:
        times = " ".join(f"{k}={r[k]:.1f}" for k in ("scan_us", "merge_us", "copy_us", "mixer_us") if k in r)
        status = "" if r.get("ok", True) else "FAILED CHECK"
        print(
            f"{r['provider']:>14} {r['H']}x{r['W']}x{r['C']} {r.get('dtype', '')} {r.get('layout', '')} {times} {status}"
        )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cross_scan_{stamp}.json"
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, batch=args.batch)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    tmp.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
