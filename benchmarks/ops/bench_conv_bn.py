"""Conv + BatchNorm inference epilogue benchmark: MambaVision-T's stem and conv blocks in eval mode, BN folded into
the conv with one bias/activation/residual pass (`ops.conv_bn`, the default on the GPU) vs the plain modules
(conv, bias add, BN, activation, residual add), bs 128 at 224 px, channels-last, bf16 autocast.

Checks the fused output against the plain modules first (no number for a case that differs), then times the median
of `triton.testing.do_bench_cudagraph` (CUDA graphs: the device time, not Python's launch cost). Writes JSON to
benchmarks/results/ and a table to stdout.

    python benchmarks/ops/bench_conv_bn.py
    python benchmarks/ops/bench_conv_bn.py --batch 8 --dtype fp32
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sfmamba.models.mambavision import ConvBlock, PatchEmbed  # noqa: E402
from sfmamba.testing import randomise_norms, relative_error  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# (label, module builder, input shape without batch): MambaVision-T at 224 px
CASES = [
    ("stem 3->32->80 @224", lambda: PatchEmbed(3, 32, 80), (3, 224, 224)),
    ("conv block 80 @56", lambda: ConvBlock(80), (80, 56, 56)),
    ("conv block 160 @28", lambda: ConvBlock(160), (160, 28, 28)),
]


def timed(module: nn.Module, x: torch.Tensor, backend: str, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    import triton.testing

    def forward() -> torch.Tensor:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            return module(x)

    set_kernel_backend(backend)
    try:
        with torch.no_grad():
            out = forward()
            forward()  # Triton compiles and cuDNN picks its algorithms outside the capture
            return out, triton.testing.do_bench_cudagraph(forward, return_mode="median") * 1e3
    finally:
        set_kernel_backend(None)


def run_case(label: str, build: Callable[[], nn.Module], shape: tuple, batch: int, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    module = randomise_norms(build()).eval().cuda().to(memory_format=torch.channels_last)
    x = torch.randn(batch, *shape, device="cuda").to(memory_format=torch.channels_last)
    plain, plain_us = timed(module, x, "naive", dtype)
    fused, fused_us = timed(module, x, "triton", dtype)
    error = relative_error(plain.float(), fused.float())
    ok = error <= TOLERANCE[dtype] and fused.dtype == plain.dtype
    row = dict(case=label, batch=batch, dtype=str(dtype), ok=ok, rel_error=error, plain_us=plain_us)
    if ok:
        row.update(fused_us=fused_us, speedup=plain_us / fused_us)
    return row


def environment() -> dict:
    import triton

    return dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda, python=platform.python_version(),
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_conv_bn.py times CUDA graphs: it needs a GPU")
    dtype = DTYPES[args.dtype]
    rows = [run_case(label, build, shape, args.batch, dtype) for label, build, shape in CASES]
    print(
        "| case | dtype | plain modules (us) | folded + fused (us) | speed-up | rel. error |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        fused = f"{r['fused_us']:.1f} | {r['speedup']:.2f}x" if r["ok"] else "FAILED check | -"
        print(f"| {r['case']} | {args.dtype} | {r['plain_us']:.1f} | {fused} | {r['rel_error']:.1e} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"conv_bn_{stamp}.json"
    settings = dict(batch=args.batch, dtype=args.dtype, channels_last=True, timer="do_bench_cudagraph median")
    path.write_text(json.dumps(dict(environment=environment(), settings=settings, rows=rows), indent=1))
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
