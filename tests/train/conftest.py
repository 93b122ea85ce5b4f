"""Training tests: one intra-op thread per pytest worker, and a tiny dataset in Fashion-MNIST's file layout."""

from __future__ import annotations

import pytest
import torch

from sfmamba.data import make_synthetic_fashion_mnist


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_fmnist(tmp_path):
    return make_synthetic_fashion_mnist(tmp_path / "fmnist")
