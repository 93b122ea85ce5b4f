"""GraphedTrainForward's CPU-side contract and the `cuda_graph` option of the trainer config and the bench.

The graphed path itself needs CUDA: benchmarks/train/check_cuda_graph_train.py checks it against eager training."""

import pytest
from torch import nn

from sfmamba.bench.throughput import measure_train
from sfmamba.train.config import TrainConfig
from sfmamba.utils.cuda_graph import GraphedTrainForward


def test_graphed_forward_needs_a_cuda_model():
    with pytest.raises(ValueError, match="cuda_graph needs the model on a CUDA device, got cpu"):
        GraphedTrainForward(nn.Linear(4, 2))


def test_graphed_forward_needs_warmup():
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedTrainForward(nn.Linear(4, 2), warmup=0)


@pytest.mark.parametrize("other", [dict(torchcompile="inductor"), dict(grad_checkpointing=True)])
def test_config_rejects_cuda_graph_with_compile_or_checkpointing(other):
    with pytest.raises(ValueError, match="cuda_graph cannot be combined with torchcompile or grad_checkpointing"):
        TrainConfig(cuda_graph=True, **other)


def test_bench_train_with_cuda_graph_on_cpu_names_the_option():
    with pytest.raises(ValueError, match="cuda_graph"):
        measure_train(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), 2, 8, warmup=0, iters=1, cuda_graph=True)
