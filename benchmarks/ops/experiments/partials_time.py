"""Where the scan backward's partial-sum launch (`partials.sum_partials`) spends its time: 13.1 us of a (128, 160,
196, 8) bf16 fwd+bwd and 14.1 us in fp32 (session 27's `scan-fb-profile`, both summing ten channel blocks of dB/dC
partials: 16 MB, ~5.5 us at copy bandwidth; fp32 adds into one block by atomics since session 28). Times the launch
alone (CUDA graphs, median of `do_bench_cudagraph` runs) at issue #2's MambaVision-T shapes, whole and with either
half made tiny (dB/dC rows or dA/dD/dbias rows), for each tile size and warp count given; every variant is checked
against torch sums first.

    python benchmarks/ops/experiments/partials_time.py [--tiles 4096 1024] [--warps 4 8] [--runs 5]
        [--out benchmarks/results/partials_time_<date>.json]

`--ncu`: run each case (whole) once per tile and warp count given, for `ncu --kernel-name partials_kernel` (no
timing, no table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "src"))

from sfmamba.ops.selective_scan import partials  # noqa: E402
from sfmamba.utils.files import atomic_write_text  # noqa: E402

# (name, batch, dim, length, nstate, dB/dC blocks summed): bf16 writes one block per 16 channels (SPLIT 2), fp32 adds
# into one block by atomics (`chunk.atomic_bc_sums`)
CASES = [
    ("L196 bf16 (10 blocks)", 128, 160, 196, 8, 10),
    ("L196 fp32 (1 block)", 128, 160, 196, 8, 1),
    ("L49 bf16 (20 blocks)", 128, 320, 49, 8, 20),
    ("L49 fp32 (1 block)", 128, 320, 49, 8, 1),
]
PARTS = ("whole", "dB/dC only", "dA/dD/dbias only")


def make_case(batch: int, dim: int, length: int, nstate: int, blocks: int, part: str):
    """sum_partials' arguments; `part` shrinks the other half to one image of one step (dB/dC) or one row (params)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    bc_batch, bc_len = (1, 1) if part == "dA/dD/dbias only" else (batch, length)
    p_batch = 1 if part == "dB/dC only" else batch
    dtype = torch.bfloat16 if blocks > 1 else torch.float32
    bc = torch.randn(2, blocks, bc_batch, 1, bc_len, nstate, device="cuda", generator=g)
    B = torch.empty(bc_batch, bc_len, nstate, device="cuda", dtype=dtype)
    dA = torch.randn(p_batch, 1, nstate, dim, device="cuda", generator=g)
    dD = torch.randn(p_batch, 1, dim, device="cuda", generator=g)
    dbias = torch.randn(p_batch, 1, dim, device="cuda", generator=g)
    return (bc, blocks, B, B, bc_len, 1, "BLD", dA, dD, dbias)


def check(args) -> None:
    bc, blocks, B, _, _, _, _, dA_part, dD_part, dbias_part = args
    dB, dC, dA, dD, dbias = partials.sum_partials(*args)
    sums = bc[:, :blocks].sum(1).reshape(2, *B.shape)
    for got, want in ((dB, sums[0]), (dC, sums[1]), (dA, dA_part.sum((0, 1)).t()), (dD, dD_part.sum((0, 1))),
                      (dbias, dbias_part.sum((0, 1)))):  # fmt: skip
        torch.testing.assert_close(got.float(), want.to(got.dtype).float(), rtol=1e-2, atol=1e-2)


def main() -> None:
    import triton

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    parser.add_argument("--tiles", type=int, nargs="+", default=[partials.TILE_ELEMENTS])
    parser.add_argument("--warps", type=int, nargs="+", default=[partials.NUM_WARPS])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ncu", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"partials_time_{stamp}.json")
    args = parser.parse_args()
    meta = dict(date=stamp, device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                timer="do_bench_cudagraph median of --runs, each rep=100")  # fmt: skip
    rows = []
    if not args.ncu:  # (ncu's CSV goes to stdout)
        print(f"{'case':24s} {'part':18s} {'tile':>5s} {'warps':>5s} {'us':>8s} {'spread':>16s}")
    for name, *shape in CASES:
        for part in PARTS[:1] if args.ncu else PARTS:
            call_args = make_case(*shape, part)
            for tile in args.tiles:
                for warps in args.warps:
                    partials.TILE_ELEMENTS, partials.NUM_WARPS = tile, warps
                    check(call_args)
                    if args.ncu:
                        torch.cuda.synchronize()
                        continue
                    times = [triton.testing.do_bench_cudagraph(lambda: partials.sum_partials(*call_args), rep=100)
                             * 1e3 for _ in range(args.runs)]  # fmt: skip
                    median = statistics.median(times)
                    rows.append(dict(case=name, part=part, tile=tile, warps=warps, us=median, runs=times))
                    print(f"{name:24s} {part:18s} {tile:5d} {warps:5d} {median:8.2f} [{min(times):6.2f}, "
                          f"{max(times):6.2f}]", flush=True)  # fmt: skip
    if not args.ncu:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(dict(meta=meta, rows=rows), indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
