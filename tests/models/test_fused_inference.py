"""Fused GPU inference of whole models == the plain modules: BN folded into the convs (`ops.conv_bn`), the residual
adds fused with the next LayerNorm inside and across token blocks (`ops.add_norm`, `run_token_blocks`). The Triton
kernels run under the interpreter; each fused path is checked to be taken."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import sfmamba.models  # noqa: E402, F401  (registers the models)
from sfmamba.models.mambavision import Block, ConvBlock, run_token_blocks  # noqa: E402
from sfmamba.testing import assert_close, randomise_norms  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

# sf_mamba_nano with 4 blocks in stage 3, so its Mamba and attention halves are 2-block runs (chains)
MODELS = {"mambavision_nano": ({}, 4), "sf_mamba_nano": (dict(depths=(1, 1, 4, 2), fold=2), 4)}


def _randomised(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomise_norms(timm.create_model(name, num_classes=5, **MODELS[name][0])).eval()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("autocast", [False, True])
def test_fused_inference_equals_plain_modules(name, autocast, monkeypatch):
    model = _randomised(name)
    x = torch.randn(2, 3, 64, 64)
    taken = {"chained": 0, "conv_bn": 0}
    chained, conv_fuses = Block.forward_chained, ConvBlock._fuses_conv_bn

    def count_chained(self, *args):
        taken["chained"] += 1
        return chained(self, *args)

    def count_conv(self, x):
        fuses = conv_fuses(self, x)
        taken["conv_bn"] += fuses
        return fuses

    monkeypatch.setattr(Block, "forward_chained", count_chained)
    monkeypatch.setattr(ConvBlock, "_fuses_conv_bn", count_conv)
    outputs = {}
    for backend in ("naive", "triton"):
        set_kernel_backend(backend)
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                outputs[backend] = model(x)
        finally:
            set_kernel_backend(None)
    assert taken["conv_bn"] == 2  # one conv block per conv stage in the nano models
    assert taken["chained"] == MODELS[name][1]  # calls of the blocks in runs of 2 or more
    assert outputs["triton"].dtype == outputs["naive"].dtype
    assert_close(name, outputs["naive"].float(), outputs["triton"].float(), 5e-2 if autocast else 1e-4)


def test_chain_keeps_gradients_of_trainable_blocks(triton_backend):
    """Frozen norms, trained mixers/MLPs, an input without grad (a frozen stem): the chain must not run, or the
    fused kernels (no backward) would cut the earlier blocks off from the loss."""
    torch.manual_seed(0)
    blocks = nn.Sequential(*[Block(16, num_heads=2, use_attention=True) for _ in range(2)])
    for block in blocks:
        block.norm1.requires_grad_(False)
        block.norm2.requires_grad_(False)
    x = torch.randn(2, 9, 16)
    assert not blocks[0].chains(x)
    run_token_blocks(blocks, x).square().sum().backward()
    assert blocks[0].mlp.fc1.weight.grad is not None and blocks[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_fused_paths_step_aside_for_forward_hooks(triton_backend):
    model = _randomised("mambavision_nano")
    calls = []
    hooked = [model.levels[2].blocks[0], model.levels[0].blocks[0].conv1, model.patch_embed.conv_down[1]]
    for module in hooked:
        module.register_forward_hook(lambda m, args, out: calls.append(type(m).__name__))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert sorted(calls) == ["BatchNorm2d", "Block", "Conv2d"]  # each hooked module ran its own forward once
