"""GPU check of the training kernels inside whole models: one training step (forward, backward) of each model with
the Triton kernels (`SFMAMBA_KERNEL=auto`) against the same step through the PyTorch reference paths
(`set_kernel_backend("naive")`), same weights and the same stochastic-depth masks (the RNG is reseeded before each
step). fp32 with TF32 off, and bf16 autocast; compares the loss, every parameter gradient and the BatchNorm running
statistics. The CPU tests run these kernels only under the interpreter; this runs the sm_90 builds. Exits non-zero on
a mismatch.

    python benchmarks/train/check_train_kernels.py [--models sf_mamba_tiny mambavision_tiny] [--batch 8]
"""

from __future__ import annotations

import argparse
import copy
import sys

import timm
import torch
import torch.nn.functional as F

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba.testing import max_relative_error
from sfmamba.utils._config import graph_train_kernels, set_kernel_backend

TOLERANCE = {torch.float32: 2e-3, torch.bfloat16: 1e-1}  # max |a - b| / max |b| per tensor
# A conv bias before a training BatchNorm has a zero gradient (BN removes any per-channel constant): the kernels leave
# it out of the conv (`conv_bn_act_train`) and return exactly zero; the reference returns rounding noise. Such a
# gradient passes when the reference's is below this fraction of the model's largest gradient.
ZERO_BY_CONSTRUCTION = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype, backend: str | None):
    set_kernel_backend(backend)
    try:
        torch.manual_seed(1)  # the same drop-path masks for both backends
        # the fused training ops in this eager step, as a CUDA-graph step captures them
        with graph_train_kernels(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
    finally:
        set_kernel_backend(None)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b for n, b in model.named_buffers() if "running" in n}
    return loss.detach(), grads, buffers


def check(name: str, batch: int, dtype: torch.dtype) -> list[str]:
    torch.manual_seed(0)
    kernels = timm.create_model(name).cuda().train().to(memory_format=torch.channels_last)
    reference = copy.deepcopy(kernels)
    x = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (batch,), device="cuda")
    got = train_step(kernels, x, target, dtype, None)
    want = train_step(reference, x, target, dtype, "naive")
    tol = TOLERANCE[dtype]
    largest = max(float(g.abs().max()) for g in want[1].values())
    zero = {n for n, g in got[1].items() if not g.any()}
    noise = max((float(want[1][n].abs().max()) / largest for n in zero), default=0.0)
    print(
        f"{name} {str(dtype)[6:]}: {len(zero)} gradients exactly zero here (conv biases before BatchNorm), the "
        f"reference's largest of them {noise:.1e} of the model's largest gradient"
    )
    errors = {"loss": max_relative_error(want[0], got[0])}
    errors |= {f"grad {n}": max_relative_error(want[1][n], g) for n, g in got[1].items() if n not in zero}
    errors |= {f"buffer {n}": max_relative_error(want[2][n], b) for n, b in got[2].items()}
    missing = set(want[1]) ^ set(got[1])
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    print(f"{name} {str(dtype)[6:]}: {len(errors)} tensors, worst " + ", ".join(f"{k} {v:.1e}" for k, v in worst))
    failures = [f"{name} {dtype}: {k} rel. error {v:.2e} > {tol}" for k, v in errors.items() if not v <= tol]
    failures += [f"{name} {dtype}: gradient only on one side: {sorted(missing)}"] * bool(missing)
    if noise > ZERO_BY_CONSTRUCTION[dtype]:
        failures.append(f"{name} {dtype}: the reference's zero-by-construction gradients reach {noise:.1e}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sf_mamba_tiny", "mambavision_tiny"])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    failures = [f for name in args.models for dtype in TOLERANCE for f in check(name, args.batch, dtype)]
    print("\n".join(failures) or "all match")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
