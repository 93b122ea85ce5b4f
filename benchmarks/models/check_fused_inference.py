"""GPU check that fused inference (BN folded into the convs, residual adds fused with the next LayerNorm, Triton ops)
gives the plain modules' output: each model's logits with the Triton kernels vs the PyTorch reference path
(`SFMAMBA_KERNEL=naive` semantics), eval mode, channels-last, random non-trivial norm statistics. Prints the relative
error per model and dtype and exits non-zero above the tolerance. The CPU tests check the same on small models
under the Triton interpreter (tests/models/test_fused_inference.py); this runs the real shapes on the GPU.

    python benchmarks/models/check_fused_inference.py [--models sf_mamba_tiny mambavision_tiny] [--batch 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import sfmamba.models  # noqa: E402, F401  (registers the models)
from sfmamba.testing import randomise_norms, relative_error  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

TOLERANCE = {"fp32": 1e-2, "bf16": 5e-2}  # fp32: cuDNN/cuBLAS use TF32 in both paths, in different orders


def logits(model: nn.Module, x: torch.Tensor, backend: str, dtype: str) -> torch.Tensor:
    set_kernel_backend(backend)
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            return model(x).float()
    finally:
        set_kernel_backend(None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mambavision_tiny", "sf_mamba_tiny"])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    failed = False
    for name in args.models:
        torch.manual_seed(0)
        model = randomise_norms(timm.create_model(name)).eval().cuda().to(memory_format=torch.channels_last)
        x = torch.randn(args.batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
        for dtype in ("fp32", "bf16"):
            error = relative_error(logits(model, x, "naive", dtype), logits(model, x, "triton", dtype))
            ok = error <= TOLERANCE[dtype]
            failed |= not ok
            print(f"{name:20s} {dtype}: fused vs plain relative error {error:.2e} {'ok' if ok else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
