"""Training tests: one intra-op thread per pytest worker, and a tiny dataset in Fashion-MNIST's file layout."""

from __future__ import annotations

import pytest

from sfmamba.data import make_synthetic_fashion_mnist


@pytest.fixture
def fake_fmnist(tmp_path):
    return make_synthetic_fashion_mnist(tmp_path / "fmnist")
