"""Model tests run one intra-op thread per pytest worker."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """pytest -n 2 on a 2-core runner: two intra-op threads per worker oversubscribe the cores (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
