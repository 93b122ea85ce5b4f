"""GraphedTrainForward's CPU-side contract and the `cuda_graph` option of the trainer config and the bench.

The graphed path itself needs CUDA: benchmarks/train/check_cuda_graph_train.py checks it against eager training. Here
capture runs a stand-in for torch.cuda.make_graphed_callables on the CPU: what the wrapper does around it."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sfmamba.bench.throughput import measure_train
from sfmamba.train.config import TrainConfig
from sfmamba.utils._config import train_kernels
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


class _Net(nn.Module):
    """BatchNorm (buffers the warm-up changes) and dropout (RNG the warm-up draws from)."""

    def __init__(self):
        super().__init__()
        self.norm, self.drop, self.head = nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.drop(self.norm(x)))


def _fake_make_graphed_callables(calls: list[dict]):
    """torch's make_graphed_callables as far as the wrapper sees it: warm-up forwards and backwards (buffers and RNG
    change), then the module's forward replaced on the instance by the "graphed" one (here: the eager forward,
    counted)."""

    def make(module, sample_args, num_warmup_iters=3, allow_unused_input=False, **kwargs):
        assert not (torch.is_autocast_enabled("cuda") and torch.is_autocast_cache_enabled())
        calls.append(dict(kwargs, warmup=num_warmup_iters, sample=sample_args[0], replays=0,
                          train_kernels=train_kernels()))  # fmt: skip
        for _ in range(num_warmup_iters):
            module(*sample_args).sum().backward()
        eager = module.forward

        def replay(*args):
            calls[-1]["replays"] += 1
            return eager(*args)

        module.forward = replay
        return module

    return make


def _wrapped_on_cpu(model: nn.Module, monkeypatch) -> GraphedTrainForward:
    """A GraphedTrainForward around a CPU model: the constructor's CUDA check sees a CUDA parameter, capture runs the
    fake above and CPU stand-ins for the CUDA RNG calls."""
    model.parameters = lambda recurse=True: iter([SimpleNamespace(device=torch.device("cuda"))])
    try:
        wrapper = GraphedTrainForward(model, warmup=2)
    finally:
        del model.parameters
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.tensor([7]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: None)
    return wrapper


def test_capture_restores_buffers_and_rng_and_replays_only_the_captured_shape(monkeypatch):
    monkeypatch.delenv("SFMAMBA_TRAIN_KERNELS", raising=False)
    calls: list[dict] = []
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", _fake_make_graphed_callables(calls))
    model = _Net()
    wrapper = _wrapped_on_cpu(model, monkeypatch)
    torch.manual_seed(0)
    images = torch.randn(8, 4)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state()

    first = wrapper(images)
    first.sum().backward()
    (call,) = calls
    # the prefetch thread keeps launching while the graph is captured: only this thread may be checked
    assert call["capture_error_mode"] == "thread_local" and call["warmup"] == 2 and call["replays"] == 1
    # warm-up and capture with the fused training ops (auto: only there), eager steps without
    assert call["train_kernels"] and not train_kernels()
    assert torch.equal(call["sample"], images) and call["sample"] is not images
    # the warm-up's two BatchNorm updates are undone, the captured step's own is kept
    assert int(model.norm.num_batches_tracked) == 1
    mean = images.mean(0)
    torch.testing.assert_close(model.norm.running_mean, buffers["norm.running_mean"] * 0.9 + 0.1 * mean)
    torch.set_rng_state(rng)
    assert torch.equal(wrapper(images), first)  # the same dropout mask: the warm-up's draws were undone
    assert wrapper.captured_shape == (8, 4) and call["replays"] == 2
    assert "forward" not in vars(model)  # the module keeps its own forward: eval, other shapes, checkpoints

    wrapper(torch.randn(5, 4))  # another shape: eager
    wrapper.eval()
    wrapper(images)  # eval mode: eager
    assert call["replays"] == 2 and len(calls) == 1
