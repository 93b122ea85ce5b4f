"""A model's training forward and backward replayed from CUDA graphs (`torch.cuda.make_graphed_callables`).

Small vision models train host-bound: enqueueing a step's ~600 kernels takes longer than running them (H100,
`sf_mamba_nano` at 64 px: 23 ms of host time for a 28 ms step). Replaying the captured forward and backward costs
two launches, so the step becomes GPU-bound. The loss, optimizer, clipping and EMA stay eager.

The graphs are captured at the first training call, for that batch's shape; calls of any other shape, and every call
in eval mode, run the model eagerly. Capture runs a few warm-up forwards and backwards (Triton autotuning, cuDNN
algorithm search, lazy initialisation must happen outside the graph), all with the fused training ops on
(`utils._config.train_kernels`: their device-time savings count once the host cost is gone); the model's buffers
(BatchNorm statistics) and the RNG states are restored afterwards, so capturing leaves no trace in the training run
(a resumed run stays on the same path). Dropout and drop-path draw from the default CUDA generator's graph-safe stream.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._config import graph_train_kernels

__all__ = ["GraphedTrainForward"]

# Capture in "thread_local" mode: the default ("global") makes CUDA refuse every potentially unsafe call (cudaMalloc,
# synchronising copies) from *any* thread while the graph is captured, so the device loader's prefetch thread
# (data/prefetch.py), which keeps building batches on its own stream during capture, would fail or invalidate the
# capture. Work on other threads' streams is not captured either way. (Older torch has no such argument.)
_CAPTURE_KWARGS = (
    {"capture_error_mode": "thread_local"}
    if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters
    else {}
)


class GraphedTrainForward(nn.Module):
    """Wraps `model`; in train mode, calls with the captured input shape replay CUDA graphs of forward and backward.

    Args:
        model: a module on a CUDA device taking one image tensor; its trainable tensors must be parameters.
        amp_dtype: the autocast dtype the training loop uses (the cast kernels are captured; None: no autocast).
        warmup: eager forward+backward calls before capture.

    The training loop must call it with a fixed batch shape, run `backward()` on a loss of its output once per call,
    and keep the parameters' storage (optimizers update in place; `zero_grad(set_to_none=True)` is fine).
    """

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None = None, warmup: int = 3):
        super().__init__()
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (autotuning must run before capture), got {warmup}")
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"cuda_graph needs the model on a CUDA device, got {device}")
        self.model, self.amp_dtype, self.warmup = model, amp_dtype, warmup
        self._graphed: Callable[[Tensor], Tensor] | None = None
        self._shape: tuple[int, ...] | None = None
        self._memory_format: torch.memory_format | None = None

    @property
    def captured_shape(self) -> tuple[int, ...] | None:
        return self._shape

    def forward(self, images: Tensor) -> Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return self.model(images)
        if self._graphed is None:
            self._capture(images)
        if tuple(images.shape) != self._shape or not images.is_contiguous(memory_format=self._memory_format):
            return self.model(images)
        return self._graphed(images)

    def _capture(self, images: Tensor) -> None:
        device = images.device
        buffers = [b for b in self.model.buffers() if b.is_floating_point() or b.dtype in (torch.int64, torch.int32)]
        saved_buffers = [b.clone() for b in buffers]
        cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state(device)
        sample = images.detach().clone(memory_format=torch.preserve_format)
        autocast = torch.autocast(
            "cuda", dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None, cache_enabled=False
        )
        with graph_train_kernels(), autocast:
            torch.cuda.make_graphed_callables(
                self.model, (sample,), num_warmup_iters=self.warmup, allow_unused_input=True, **_CAPTURE_KWARGS
            )
        # make_graphed_callables puts the graphed forward on the instance; keep it here and give the module back its
        # own forward, so eval mode, other shapes and checkpoint code see the plain model
        self._graphed = self.model.forward
        del self.model.forward
        with torch.no_grad():
            for buffer, saved in zip(buffers, saved_buffers):
                buffer.copy_(saved)
        torch.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state(cuda_rng, device)
        self._shape = tuple(images.shape)
        self._memory_format = (
            torch.channels_last
            if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
            and not images.is_contiguous()
            else torch.contiguous_format
        )  # fmt: skip
