"""torchrun / DDP set-up: the same command runs on one process or many (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..utils._config import check_device

_cpu_group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class DistributedInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None) -> DistributedInfo:
    """Read torchrun's RANK/LOCAL_RANK/WORLD_SIZE; start the process group when there is more than one process."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        check_device(device)
    except ValueError as err:
        raise ValueError(f"device {err}") from None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world_size > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None
        )
    if world_size > 1:
        cpu_group()  # made here, at the same point on every rank
    return DistributedInfo(rank, local_rank, world_size, dev)


def cleanup_distributed() -> None:
    global _cpu_group
    _cpu_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def cpu_group() -> dist.ProcessGroup:
    """A gloo group over all ranks for the loop's small exchanges of host values (time-limit decision, logged loss,
    RNG states). Over NCCL they would need device tensors, and reading the result back makes the host wait for
    everything queued on the GPU. Every rank must call this at the same point the first time (it makes the group)."""
    global _cpu_group
    if _cpu_group is None:
        _cpu_group = dist.new_group(backend="gloo")
    return _cpu_group


def all_gather_objects(obj: object) -> list[object]:
    """[obj of rank 0, obj of rank 1, ...]; [obj] without a process group."""
    if not _initialized():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=cpu_group())
    return gathered


def broadcast_from_rank0(value: float) -> float:
    """Rank 0's `value` on every rank; `value` without a process group."""
    if not _initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(tensor, src=0, group=cpu_group())
    return float(tensor)


def mean_over_ranks(value: float) -> float:
    if not _initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, group=cpu_group())
    return float(tensor) / dist.get_world_size()


def average_gradients(parameters: list[torch.Tensor]) -> None:
    """Average the gradients over the ranks in place: one all-reduce per dtype over a flat copy of the gradients.

    What DDP's bucketed all-reduce does, for steps whose backward replays a CUDA graph (`--cuda-graph` under
    torchrun), where DDP's autograd hooks cannot run. Every rank must hold gradients for the same parameters.
    """
    if not _initialized():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)  # a sum: gloo has no AVG
        flat.div_(dist.get_world_size())
        torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)])


def fill_missing_gradients(parameters: list[torch.Tensor]) -> None:
    """Zero gradients where this rank has none but another rank has one (e.g. a detector head that got no target in
    this rank's images), so that `average_gradients` sums the same tensors everywhere; a parameter no rank used keeps
    None, as under DDP. One small all-reduce over the gloo group."""
    if not _initialized():
        return
    has = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32)
    dist.all_reduce(has, op=dist.ReduceOp.MAX, group=cpu_group())
    for p, anywhere in zip(parameters, has.tolist()):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)


def broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Copy rank 0's values into `tensors` on every rank (initial weights, or buffers before a step as DDP does)."""
    if not _initialized():
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)
