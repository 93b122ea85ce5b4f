"""GPU check of `GraphedTrainForward` (sfmamba.utils.cuda_graph): graphed training steps equal eager ones.

For each model: two copies with the same weights (drop-path off, so both are deterministic), three AdamW steps on
fixed random batches, eager vs graphed forward+backward; compares every step's loss, every parameter gradient and
the final weights and buffers (capture must leave the BatchNorm statistics as they were), and that eval mode
and another batch size run eagerly. Exits non-zero on a mismatch. Needs CUDA.

    python benchmarks/train/check_cuda_graph_train.py [--models sf_mamba_nano:dim=64,in_dim=32 mambavision_tiny ...]
"""

from __future__ import annotations

import argparse
import copy
import sys

import timm
import torch
import torch.nn.functional as F

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba.cli.bench import split_spec
from sfmamba.testing import max_relative_error
from sfmamba.utils._config import graph_train_kernels
from sfmamba.utils.cuda_graph import GraphedTrainForward


def check(spec: str, batch: int, size: int, amp_dtype: torch.dtype, steps: int = 3, tol: float = 2e-2) -> list[str]:
    name, kwargs = split_spec(spec)
    torch.manual_seed(0)
    eager = timm.create_model(name, num_classes=10, drop_path_rate=0.0, **kwargs).cuda().train()
    graphed_model = copy.deepcopy(eager)
    graphed = GraphedTrainForward(graphed_model, amp_dtype)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (eager, graphed_model)]
    problems = []
    for step in range(steps):
        images = torch.randn(batch, 3, size, size, device="cuda")
        labels = torch.randint(0, 10, (batch,), device="cuda")
        losses, grads = [], []
        for model, runner, opt in ((eager, eager, opts[0]), (graphed_model, graphed, opts[1])):
            # the eager copy runs the ops the graphs captured (the fused training ops): the same kernels both ways
            with graph_train_kernels(), torch.autocast("cuda", dtype=amp_dtype):
                loss = F.cross_entropy(runner(images).float(), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            losses.append(loss.detach())
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
        # both copies ran one training forward per step: capture's warm-up calls must have left no trace
        buffer_err = max((max_relative_error(b, a) for a, b in zip(graphed_model.buffers(), eager.buffers())
                          if a.is_floating_point()), default=0.0)  # fmt: skip
        if buffer_err > tol:
            problems.append(f"{spec} step {step}: buffers (BatchNorm statistics) differ by {buffer_err:.1e}")
        err = max_relative_error(losses[0], losses[1])
        grad_err = max(max_relative_error(e, g) for g, e in zip(grads[1], grads[0]))
        print(f"{spec:40s} step {step}: loss {losses[0].item():.5f} vs {losses[1].item():.5f} (rel {err:.1e}), "
              f"max grad rel err {grad_err:.1e}")  # fmt: skip
        if err > tol or grad_err > tol:
            problems.append(f"{spec} step {step}: loss rel {err:.1e}, grad rel {grad_err:.1e} > {tol}")
    weight_err = max(max_relative_error(b, a) for a, b in zip(graphed_model.parameters(), eager.parameters()))
    print(f"{spec:40s} weights after {steps} steps: max rel err {weight_err:.1e}; captured {graphed.captured_shape}")
    if weight_err > tol:
        problems.append(f"{spec}: weights differ by {weight_err:.1e}")
    with torch.autocast("cuda", dtype=amp_dtype):
        other = graphed(torch.randn(batch // 2, 3, size, size, device="cuda"))  # another shape: eager
        graphed.eval()
        with torch.no_grad():
            evaluated = graphed(torch.randn(batch, 3, size, size, device="cuda"))
    if other.shape[0] != batch // 2 or evaluated.shape[0] != batch:
        problems.append(f"{spec}: eager fallbacks returned wrong shapes")
    return problems


def check_capture_beside_prefetch() -> list[str]:
    """Capture while the prefetch thread (data/prefetch.py) allocates new device memory for every batch: the capture
    must be confined to its own thread (capture_error_mode="thread_local")."""
    import time

    from torch import nn

    from sfmamba.data.prefetch import prefetched

    device = torch.device("cuda", torch.cuda.current_device())

    def batches():
        for _ in range(2000):  # a fresh 2 MiB block per batch, all kept queued: a cudaMalloc each
            time.sleep(0.001)
            yield (torch.ones(512 * 1024, device=device),)

    model = nn.Sequential(nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 10)).to(device)
    graphed = GraphedTrainForward(model)
    stream = prefetched(batches, device, depth=2000)
    try:
        next(stream)
        for _ in range(5):
            graphed(torch.randn(64, 256, device=device)).sum().backward()
        next(stream)
    except Exception as error:  # reported, not raised: the other checks still run
        return [f"capture beside the prefetch thread failed: {error!r}"]
    finally:
        stream.close()
    torch.cuda.synchronize()
    print(f"captured {graphed.captured_shape} while the prefetch thread allocated")
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sf_mamba_nano:dim=64,in_dim=32", "mambavision_tiny"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 2
    problems = check_capture_beside_prefetch()
    for spec in args.models:
        problems += check(spec, args.batch, args.img_size, torch.bfloat16)
    print("\n".join(problems) if problems else "all graphed training steps match the eager ones")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
