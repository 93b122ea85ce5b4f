import pytest
import torch
from torch import nn

from sfmamba.bench import measure_inference, measure_train
from sfmamba.bench.throughput import OPTIMIZERS, summarize, time_steps


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 5, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = {"input_size": (in_chans, 16, 16)}
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)
        self.calls = 0
        self.grad_enabled_in_forward = []

    def forward(self, x):
        self.calls += 1
        self.grad_enabled_in_forward.append(torch.is_grad_enabled())
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_inference_counts_times_and_leaves_model_unchanged():
    model = TinyNet().train()
    before = _state(model)
    result = measure_inference(model, 3, (12, 20), warmup=2, iters=5)
    assert model.calls == 7 and not any(model.grad_enabled_in_forward)
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # eval: BN stats untouched
    assert result["mode"] == "inference" and result["img_size"] == [12, 20] and result["iters"] == 5
    assert result["img_per_sec_median"] > 0 and result["img_per_sec_std"] >= 0
    assert result["img_per_sec_median"] == pytest.approx(3e3 / result["step_ms_median"])
    assert result["peak_memory_mib"] is None  # CPU


def test_inference_channels_last_and_autocast_reach_the_model():
    seen = {}

    class Probe(TinyNet):
        def forward(self, x):
            seen["channels_last"] = x.is_contiguous(memory_format=torch.channels_last)
            seen["autocast"] = torch.is_autocast_enabled("cpu")
            seen["in_chans"] = x.shape[1]
            return super().forward(x)

    measure_inference(Probe(in_chans=4), 2, 8, channels_last=True, amp_dtype=torch.bfloat16, warmup=0, iters=1)
    assert seen == {"channels_last": True, "autocast": True, "in_chans": 4}


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_train_step_updates_weights_and_restores_mode(opt):
    model = TinyNet().eval()
    before = _state(model)
    result = measure_train(model, 4, 8, warmup=1, iters=2, lr=1e-2, opt=opt)
    assert result["mode"] == "train" and result["optimizer"] == opt
    assert not model.training
    assert not torch.equal(before["conv.weight"], model.conv.weight)
    assert not torch.equal(before["norm.running_mean"], model.norm.running_mean)
    assert all(model.grad_enabled_in_forward)
    assert model.calls == 3


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="opt must be one of"):
        measure_train(TinyNet(), 2, 8, warmup=0, iters=1, opt="adam")


def test_train_infers_num_classes_from_output():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 7))
    result = measure_train(model, 2, 4, warmup=0, iters=1)
    assert result["img_per_sec_median"] > 0


def test_time_steps_and_summary():
    calls = []
    times = time_steps(lambda: calls.append(1), torch.device("cpu"), warmup=3, iters=4)
    assert len(calls) == 7 and len(times["step_s"]) == 4
    summary = summarize([0.5, 1.0, 2.0], batch_size=4)
    assert summary["img_per_sec_median"] == 4.0 and summary["step_ms_median"] == 1000.0
    assert summary["img_per_sec_mean"] == pytest.approx((8 + 4 + 2) / 3)
    assert summarize([0.5], 1)["img_per_sec_std"] == 0.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(img_size=(8, 0)), "img_size"),
        (dict(img_size=(8, 8, 8)), "img_size"),
        (dict(iters=0), "iters"),
        (dict(warmup=-1), "warmup"),
        (dict(amp_dtype=torch.float64), "amp_dtype"),
        (dict(cuda_graph=True), "cuda_graph"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = dict(batch_size=2, img_size=8, warmup=0, iters=1) | kwargs
    with pytest.raises(ValueError, match=name):
        measure_inference(TinyNet(), args.pop("batch_size"), args.pop("img_size"), **args)


class KernelSwitchProbe(TinyNet):
    """Records, per forward, whether the layers would take the fused training ops (`train_kernels`)."""

    def forward(self, x):
        from sfmamba.utils._config import train_kernels

        self.seen = getattr(self, "seen", []) + [train_kernels()]
        return super().forward(x)


@pytest.mark.parametrize("env, graph_kernels, fused", [("auto", False, False), ("auto", True, True),
                                                       ("never", True, False)])  # fmt: skip
def test_train_profile_runs_the_ops_a_graphed_step_captures(env, graph_kernels, fused, monkeypatch):
    """`bench --bench profile --profile-mode train --cuda-graph` profiles eager steps with the ops the CUDA-graph
    training step captures (`graph_train_kernels()`): the fused training ops under `auto`, none under `never`."""
    from sfmamba.bench.profile import profile_model

    monkeypatch.setenv("SFMAMBA_TRAIN_KERNELS", env)
    model = KernelSwitchProbe()
    row = profile_model(model, 2, 16, mode="train", warmup=1, iters=1, top=3, graph_kernels=graph_kernels)
    assert model.seen == [fused, fused] and row["fused_training_ops"] is fused
