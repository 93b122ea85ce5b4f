"""Training tests: one intra-op thread per pytest worker, and a tiny Fashion-MNIST-format dataset on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfmamba.data import write_idx


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_fake_fashion_mnist(root, n_train: int = 32, n_test: int = 16, size: int = 28) -> None:
    """Random images whose class decides their mean brightness, so a few steps of training can learn something."""
    rng = np.random.default_rng(0)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, size, size)) + labels[:, None, None].astype(np.int64) * 20
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)


@pytest.fixture
def fake_fmnist(tmp_path):
    root = tmp_path / "fmnist"
    root.mkdir()
    make_fake_fashion_mnist(root)
    return root
