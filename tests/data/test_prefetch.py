"""The worker-thread prefetcher (data/prefetch.py) and the device loader with it (CPU: the thread, order, errors)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from sfmamba.data import AugmentConfig, create_dataset, make_synthetic_fashion_mnist
from sfmamba.data.device_loader import DeviceBatchLoader
from sfmamba.data.prefetch import prefetched

CPU = torch.device("cpu")


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sfmamba-prefetch"]


def _numbered(count: int):
    def make():
        for i in range(count):
            yield (torch.full((2,), float(i)), torch.tensor([i]))

    return make


def test_prefetched_yields_every_batch_in_order_and_ends_its_worker():
    got = [int(labels) for _, labels in prefetched(_numbered(7), CPU, depth=2)]
    assert got == list(range(7))
    assert not _workers()


def test_stopping_early_ends_the_worker():
    batches = prefetched(_numbered(100), CPU, depth=2)
    for _, labels in batches:
        if int(labels) == 3:
            break
    batches.close()
    assert not _workers()


def test_an_error_in_the_worker_reaches_the_consumer():
    def failing():
        yield (torch.zeros(1),)
        raise RuntimeError("bad batch 1")

    batches = prefetched(failing, CPU)
    next(batches)
    with pytest.raises(RuntimeError, match="bad batch 1"):
        next(batches)
    assert not _workers()


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        next(prefetched(_numbered(1), CPU, depth=0))


def test_device_loader_batches_are_the_same_with_and_without_prefetch(tmp_path):
    root = make_synthetic_fashion_mnist(tmp_path / "fmnist", n_train=24, n_test=8)
    train_set = create_dataset("fashion_mnist", root, "train")
    aug = AugmentConfig(scale=[0.6, 1.0], hflip=0.5, reprob=0.5)
    plain, ahead = (DeviceBatchLoader(train_set, 4, True, 16, "cpu", aug, seed=3, prefetch=p) for p in (False, True))
    assert DeviceBatchLoader(train_set, 4, True, 16, "cpu", aug).prefetch is False  # default: on CUDA only
    for loader in (plain, ahead):
        loader.sampler.set_epoch(2)
    for (images, labels), (images_ahead, labels_ahead) in zip(plain, ahead, strict=True):
        assert torch.equal(images, images_ahead) and torch.equal(labels, labels_ahead)


def test_an_error_in_the_loop_body_ends_the_worker_without_an_explicit_close():
    """The training loop raising (no break, no close): the dropped generator still stops and joins its worker."""

    def train_until_step_2():
        for _, labels in prefetched(_numbered(100), CPU, depth=2):
            if int(labels) == 2:
                raise RuntimeError("step 2 failed")

    with pytest.raises(RuntimeError, match="step 2 failed"):
        train_until_step_2()
    assert not _workers()


def test_closing_while_the_worker_waits_on_a_full_queue_returns_promptly():
    built = threading.Event()

    def make():
        for i in range(100):
            if i == 2:  # batch 0 consumed, batch 1 queued (depth 1): batch 2 waits for room
                built.set()
            yield (torch.tensor([i]),)

    batches = prefetched(make, CPU, depth=1)
    next(batches)
    assert built.wait(timeout=10)
    started = time.perf_counter()
    batches.close()
    assert not _workers() and time.perf_counter() - started < 5
