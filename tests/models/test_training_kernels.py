"""Whole-model training with the Triton training kernels == the PyTorch reference paths, under the interpreter: one
training step of the nano models (stochastic depth on, the same masks for both) gives the same loss, gradients and
BatchNorm running statistics; the kernels' autograd nodes are in the graph; gradient checkpointing leaves the
gradients unchanged. The GPU version of this check: benchmarks/train/check_train_kernels.py."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import contextlib  # noqa: E402
import copy  # noqa: E402

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import sfmamba.models  # noqa: E402, F401  (registers the models)
from sfmamba.testing import (  # noqa: E402
    assert_close,
    autograd_node_names,
    randomise_norms,
    randomise_scan_parameters,
)
from sfmamba.utils._config import graph_train_kernels, set_kernel_backend, set_train_kernels  # noqa: E402

MODELS = {"mambavision_nano": {}, "sf_mamba_nano": dict(fold=2)}
KERNEL_NODES = {"LayerNormResidualFunctionBackward", "LinearActFunctionBackward", "BatchNormActFunctionBackward",
                "DropPathAddFunctionBackward", "ConcatLastFunctionBackward", "SplitLastFunctionBackward",
                "SelectiveScanFunctionBackward", "DepthwiseConv1dFunctionBackward"}  # fmt: skip


def _train_step(model, x, target, backend: str | None, checkpointing: bool = False):
    model.set_grad_checkpointing(checkpointing)
    set_kernel_backend(backend)
    try:
        with graph_train_kernels():  # the fused training ops in this eager step, as CUDA-graph capture runs them
            torch.manual_seed(1)  # the same drop-path masks on both paths
            loss = F.cross_entropy(model(x), target)
            nodes = autograd_node_names(loss)
            loss.backward()
    finally:
        set_kernel_backend(None)
    grads = {n: p.grad for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    return loss.detach(), grads, stats, nodes


@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_with_kernels_equals_reference(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, drop_path_rate=0.3, **MODELS[name])
    model = randomise_scan_parameters(randomise_norms(model)).train()
    model = model.to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    target = torch.tensor([1, 3])
    loss, grads, stats, nodes = _train_step(model, x, target, "triton")
    ref_loss, ref_grads, ref_stats, ref_nodes = _train_step(reference, x, target, "naive")
    assert nodes >= KERNEL_NODES, KERNEL_NODES - nodes
    assert not KERNEL_NODES & ref_nodes
    assert_close("loss", ref_loss, loss, 1e-5)
    last_block = f"levels.{len(model.levels) - 1}.blocks.{len(model.levels[-1].blocks) - 1}."
    for n, g in grads.items():
        if n.endswith(("conv1.bias", "conv2.bias")) and "levels" in n:  # before a training BN: zero by construction
            assert not g.any() and ref_grads[n].abs().max() < 1e-6, n
            continue
        if n == last_block + "mlp.fc2.bias":  # adds a constant per channel before the final training BN: zero
            assert g.abs().max() < 1e-6 and ref_grads[n].abs().max() < 1e-6, n
            continue
        # relative only (the scan's gradients are ~1e-6 even with randomised scan parameters)
        assert_close(n, ref_grads[n], g, 1e-4, atol=0)
    for n, s in stats.items():
        assert_close(n, ref_stats[n], s, 1e-5)


def test_gradient_checkpointing_keeps_kernel_gradients():
    torch.manual_seed(0)
    model = timm.create_model("sf_mamba_nano", num_classes=5, drop_path_rate=0.3, fold=2).train()
    again = copy.deepcopy(model)
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([0, 4])
    _, grads, _, _ = _train_step(model, x, target, "triton")
    _, checkpointed, _, _ = _train_step(again, x, target, "triton", checkpointing=True)
    for n, g in grads.items():
        assert_close(n, g, checkpointed[n], 1e-5)


SCAN_NODES = {"SelectiveScanFunctionBackward", "DepthwiseConv1dFunctionBackward"}


@pytest.mark.parametrize(
    "env, in_capture, fused",
    [("auto", False, False), ("auto", True, True), ("never", True, False), ("always", False, True)],
)
def test_train_kernels_switch_picks_the_step_ops(env, in_capture, fused, monkeypatch):
    """SFMAMBA_TRAIN_KERNELS: `auto` (the default) keeps PyTorch's modules in an eager training step (their backward
    runs in C++; an eager step is bound by host time) and takes the fused training ops inside
    `graph_train_kernels()` (what CUDA-graph capture runs); `never`/`always` everywhere. The scan and conv1d kernels
    run either way."""
    monkeypatch.setenv("SFMAMBA_TRAIN_KERNELS", env)
    torch.manual_seed(0)
    model = timm.create_model("sf_mamba_nano", num_classes=5, drop_path_rate=0.3, fold=2).train()
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    set_kernel_backend("triton")
    try:
        with graph_train_kernels() if in_capture else contextlib.nullcontext():
            nodes = autograd_node_names(model(x).sum())
    finally:
        set_kernel_backend(None)
    assert nodes >= SCAN_NODES
    assert (nodes >= KERNEL_NODES - SCAN_NODES) if fused else not (KERNEL_NODES - SCAN_NODES) & nodes


def test_train_kernels_off_keeps_the_inference_kernels(monkeypatch):
    """With the fused training ops off (an eager step under `auto`), inference still takes the Triton LayerNorm and
    concat (no autograd node to build); with a gradient the norm is PyTorch's."""
    from sfmamba.layers import LayerNorm
    from sfmamba.ops.concat import chunk as concat_chunk
    from sfmamba.ops.concat import concat_last
    from sfmamba.ops.layer_norm import chunk as norm_chunk

    calls = []
    real_fwd, real_rows = norm_chunk.layer_norm_fwd, concat_chunk.concat_rows
    monkeypatch.setattr(norm_chunk, "layer_norm_fwd", lambda *a: calls.append("norm") or real_fwd(*a))
    monkeypatch.setattr(concat_chunk, "concat_rows", lambda *a: calls.append("concat") or real_rows(*a))
    norm, x = LayerNorm(16), torch.randn(3, 16)
    set_kernel_backend("triton")
    set_train_kernels(False)
    try:
        with torch.no_grad():
            norm(x)
            concat_last(x, x)
        assert calls == ["norm", "concat"]
        assert "NativeLayerNormBackward0" in autograd_node_names(norm(x).sum())
    finally:
        set_kernel_backend(None)
        set_train_kernels(None)


def test_train_kernels_rejects_an_unknown_value(monkeypatch):
    from sfmamba.utils._config import train_kernels

    monkeypatch.setenv("SFMAMBA_TRAIN_KERNELS", "sometimes")
    with pytest.raises(ValueError, match="SFMAMBA_TRAIN_KERNELS must be one of"):
        train_kernels()
