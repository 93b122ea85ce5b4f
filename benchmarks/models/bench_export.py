"""torch.export programs of the models on a GPU: each model exported with the Triton kernels as `sfmamba::` custom
ops (`sfmamba.export.export_program`, batch dynamic), checked against eager at another batch size, then eager and the
program timed (CUDA graphs, `triton.testing.do_bench_cudagraph`, median over --repeats runs with min and max).

Writes JSON to benchmarks/results/ and a table to stdout.

    python benchmarks/models/bench_export.py [--models sf_mamba_tiny ...] [--batch 64] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks" / "ops"))

from bench_bc_alignment import timed_us  # noqa: E402
from bench_conv_bn import environment  # noqa: E402

import sfmamba.models  # noqa: E402, F401
from sfmamba.export import check_program, export_program  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sf_mamba_tiny", "mambavision_tiny", "vmamba_v2_tiny"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_export.py exports with the Triton kernels: it needs a GPU")
    dtype = DTYPES[args.dtype]
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name).cuda().to(dtype).eval()
        x = torch.randn(args.batch, 3, args.img_size, args.img_size, device="cuda", dtype=dtype)
        start = time.perf_counter()
        program = export_program(model, x)
        export_s = time.perf_counter() - start
        custom_ops = sorted({str(n.target) for n in program.graph.nodes if "sfmamba" in str(n.target)})
        difference = check_program(program, model, x)
        exported = program.module()
        with torch.no_grad():
            eager_ms = {k: v / 1e3 for k, v in timed_us(lambda: model(x), args.repeats).items()}
            program_ms = {k: v / 1e3 for k, v in timed_us(lambda: exported(x), args.repeats).items()}
        rows.append(dict(model=name, export_s=export_s, custom_ops=custom_ops, rel_difference=difference,
                         eager_ms=eager_ms, program_ms=program_ms))  # fmt: skip
        print(f"# {name}: exported in {export_s:.1f} s, difference {difference:.1e}, eager {eager_ms['median']:.2f} "
              f"ms, program {program_ms['median']:.2f} ms", flush=True)  # fmt: skip
    print("| model | export (s) | rel. difference | eager ms [min, max] | program ms [min, max] | custom ops |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        e, p = r["eager_ms"], r["program_ms"]
        print(f"| {r['model']} | {r['export_s']:.1f} | {r['rel_difference']:.1e} | {e['median']:.2f} [{e['min']:.2f}, "
              f"{e['max']:.2f}] | {p['median']:.2f} [{p['min']:.2f}, {p['max']:.2f}] | {', '.join(r['custom_ops'])} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"export_{stamp}.json"
    settings = dict(batch=args.batch, img_size=args.img_size, dtype=args.dtype, repeats=args.repeats,
                    timer="do_bench_cudagraph median per repeat, eval, no autocast")  # fmt: skip
    path.write_text(json.dumps(dict(environment=environment(), settings=settings, rows=rows), indent=1))
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
