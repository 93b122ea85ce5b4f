"""Which code issues the small PyTorch ops of a training step: every aten call of one step (after warm-up) that
launches a PyTorch kernel of a chosen kind (sums, copies, cats, adds, casts, ...), grouped by where it comes from
(forward: the innermost sfmamba/timm source line; backward: the autograd node being run) with its shapes and the
bytes it writes. The profiler's kernel table says *that* 112 fp32 reductions run per step; this says *which*.

    python benchmarks/models/op_census.py --model sf_mamba_tiny --batch 128 [--out FILE.txt]
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import sfmamba.models  # noqa: E402, F401  (registers the models)

KINDS = ("sum", "copy_", "cat", "add", "add_", "mul", "mul_", "_to_copy", "clone", "gelu", "fill_", "zero_",
         "addcmul", "div", "div_", "neg", "flip", "where", "bernoulli_", "constant_pad_nd", "slice_backward",
         "select_backward", "mean", "sub", "silu", "softplus", "exp", "gelu_backward", "silu_backward", "threshold_backward")  # fmt: skip


def origin() -> str:
    """Backward: the autograd node being run; forward: the innermost line of sfmamba or timm code."""
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"bw {node.name()}"
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/sfmamba/" in frame.filename or "/timm/" in frame.filename:
            return f"fw {Path(frame.filename).name}:{frame.lineno} {frame.name}"
    return "fw ?"


class Census(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()
        self.bytes: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in KINDS:
            shapes = " ".join("x".join(map(str, a.shape)) for a in args if isinstance(a, torch.Tensor))
            key = (name, origin(), shapes)
            self.calls[key] += 1
            if isinstance(out, torch.Tensor):
                self.bytes[key] += out.numel() * out.element_size()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sf_mamba_tiny")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model(args.model).train().to(device, memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device).to(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (args.batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with Census() as census:
        step()
    rows = sorted(census.calls.items(), key=lambda kv: -census.bytes[kv[0]])
    lines = [
        f"{args.model} training step bs {args.batch} {args.img_size}px on {device}: {sum(census.calls.values())} "
        f"calls, {sum(census.bytes.values()) / 2**20:.0f} MiB written",
        "calls  MiB  op  origin  shapes",
    ]
    lines += [f"{n:4d} {census.bytes[k] / 2**20:7.1f}  {k[0]}  {k[1]}  {k[2]}" for k, n in rows]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
