"""Build the next batches on a worker thread (and, on CUDA, a side stream) while the training step runs.

A batch built on the GPU costs ~120 small kernel launches of host time; a training step that replays CUDA graphs
costs only a few, so building the batch in line would make the step host-bound again. PyTorch releases the GIL while
it dispatches an operator, so a worker thread's launches overlap the main thread's.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator

import torch

__all__ = ["prefetched"]

_END = object()


def prefetched(
    make_batches: Callable[[], Iterator[tuple[torch.Tensor, ...]]], device: torch.device, depth: int = 2
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield the tuples of tensors `make_batches()` yields, in order, built up to `depth` batches ahead on a thread.

    On CUDA the worker enqueues on its own stream; each batch is handed over with an event the consumer's current
    stream waits on, and its tensors are marked as used there (`record_stream`) so the allocator does not reuse them
    early. An exception in the worker is raised in the consumer; stopping early (break, close) ends the worker.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            on_device = torch.cuda.device(device) if stream is not None else contextlib.nullcontext()
            on_stream = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
            with on_device, on_stream:
                for batch in make_batches():
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not put((batch, event)):
                        return
            put(_END)
        except BaseException as error:  # handed to the consumer, raised there
            put(error)

    worker = threading.Thread(target=work, name="sfmamba-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            batch, event = item
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for tensor in batch:
                    tensor.record_stream(current)
            yield batch
    finally:
        stop.set()
        worker.join()
