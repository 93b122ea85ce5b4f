"""Conv + BatchNorm inference epilogue: the Triton kernels (interpreter, NaN-poisoned outputs from conftest) against
the reference, the folding identity itself, the dispatch rules, bad arguments, and the blocks that use it (fused ==
unfused)."""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from sfmamba.layers import conv_bn_act, fuses_conv_bn  # noqa: E402
from sfmamba.models.mambavision import ConvBlock, PatchEmbed  # noqa: E402
from sfmamba.ops.conv_bn import bias_act, bias_act_naive, fold_batch_norm, fold_batch_norm_naive, runs_fused  # noqa: E402
from sfmamba.ops.conv_bn.chunk import bias_act_fwd, fold_batch_norm_fwd  # noqa: E402
from sfmamba.testing import assert_close, randomise_norms  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402


def _random_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    torch.manual_seed(seed)
    return randomise_norms(nn.BatchNorm2d(channels, eps=1e-4)).eval()


@pytest.mark.parametrize(("out_ch", "in_ch", "kernel"), [(5, 3, 3), (16, 7, 1), (9, 40, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("with_bias", "with_scale"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_fold_kernel_matches_reference(out_ch, in_ch, kernel, channels_last, with_bias, with_scale, out_dtype):
    bn = _random_bn(out_ch, out_ch * in_ch)
    weight = torch.randn(out_ch, in_ch, kernel, kernel)
    if channels_last:
        weight = weight.to(memory_format=torch.channels_last)
    bias = torch.randn(out_ch) if with_bias else None
    scale = torch.rand(out_ch) + 0.5 if with_scale else None
    args = (weight, bias, bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var, bn.eps, scale, out_dtype)
    want_w, want_b = fold_batch_norm_naive(*args)
    got_w, got_b = fold_batch_norm_fwd(*args)
    assert got_w.dtype == out_dtype and got_b.dtype == torch.float32
    assert got_w.stride() == weight.stride()  # the conv reads the folded weight in the weight's memory format
    tolerance = 1e-6 if out_dtype == torch.float32 else 1e-2  # the interpreter rounds bf16 its own way
    assert_close("weight", want_w.float(), got_w.float(), tolerance)
    assert_close("bias", want_b, got_b, 1e-6)


@pytest.mark.parametrize("with_scale", [False, True])
def test_folded_conv_equals_conv_then_batch_norm(with_scale):
    conv, bn = nn.Conv2d(6, 10, 3, padding=1).double(), _random_bn(10, 3).double()
    scale = torch.rand(10, dtype=torch.float64) + 0.5 if with_scale else None
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        want = bn(conv(x)) * (scale.view(1, -1, 1, 1) if with_scale else 1.0)
        weight, bias = fold_batch_norm_naive(
            conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, scale
        )
        got = F.conv2d(x, weight, None, padding=1) + bias.view(1, -1, 1, 1).double()
    assert_close("folded", want, got, 1e-6)  # fp32 bias: ~1e-7 relative


LAYOUTS = {
    "nchw": lambda t: t.contiguous(),
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
}


@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("dtype", "with_residual"), [(torch.float32, False), (torch.bfloat16, True)])
def test_bias_act_kernel_matches_reference(activation, layout, dtype, with_residual):
    torch.manual_seed(len(activation))
    y = LAYOUTS[layout](torch.randn(3, 7, 5, 11) * 3).to(dtype)
    residual = LAYOUTS[layout](torch.randn(3, 7, 5, 11)).to(dtype) if with_residual else None
    bias = torch.randn(7)
    want = bias_act_naive(y, bias, activation, residual)
    inner = 1 if layout == "channels_last" else 55
    got = bias_act_fwd(y, bias, activation, residual, inner, want.dtype)
    assert got.dtype == want.dtype and got.stride() == y.stride()
    assert_close(activation, want.float(), got.float(), 1e-6 if dtype == torch.float32 else 8e-3)


def test_bias_act_dispatch_three_dims_and_fallbacks(triton_backend):
    y, bias = torch.randn(2, 5, 13), torch.randn(5)  # a conv1d's [B, C, L]
    with torch.no_grad():
        assert_close("3d", bias_act_naive(y, bias, "gelu"), bias_act(y, bias, "gelu"), 1e-6)
        # a residual in another layout than y: the reference runs, same result
        y4 = torch.randn(2, 5, 3, 4).contiguous(memory_format=torch.channels_last)
        residual = torch.randn(2, 5, 3, 4)
        assert_close("mixed", bias_act_naive(y4, bias, "relu", residual), bias_act(y4, bias, "relu", residual), 1e-6)
        out = bias_act(y4, bias, residual=y4, out_dtype=torch.float64)
        assert out.dtype == torch.float64
    w = torch.randn(5, requires_grad=True)
    assert not runs_fused(y, w)  # autograd needs the reference's graph
    assert bias_act(y, w).requires_grad


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bias_act(torch.randn(2, 4, 3), torch.randn(5)), r"bias_act: bias must have shape \(4,\)"),
        (lambda: bias_act(torch.randn(2, 4, 3), torch.randn(4), "silu"), "activation must be one of"),
        (lambda: bias_act(torch.randn(4), torch.randn(4)), r"y must be \[batch, channels, ...\]"),
        (lambda: bias_act(torch.randn(2, 4, 3), torch.randn(4), residual=torch.randn(2, 4)), "residual must have"),
        (
            lambda: fold_batch_norm(
                torch.randn(4, 2, 3, 3), None, *[torch.randn(4)] * 2, torch.randn(3), torch.rand(4), 1e-5
            ),  # fmt: skip
            r"running_mean must have shape \(4,\)",
        ),
        (
            lambda: fold_batch_norm(torch.randn(4, 2, 3, 3), None, *[torch.randn(4)] * 3, torch.rand(4), -1.0),
            "eps must be >= 0",
        ),
    ],
)
def test_bad_arguments_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _run_both_backends(module: nn.Module, x: torch.Tensor, autocast: bool, fused_probe) -> dict:
    outputs = {}
    for backend in ("naive", "triton"):
        set_kernel_backend(backend)
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                assert fused_probe() == (backend == "triton")
                outputs[backend] = module(x)
        finally:
            set_kernel_backend(None)
    return outputs


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_conv_block_fused_equals_unfused(autocast, layer_scale):
    block = ConvBlock(8, layer_scale=layer_scale).eval().to(memory_format=torch.channels_last)
    randomise_norms(block)
    x = torch.randn(2, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    outputs = _run_both_backends(block, x, autocast, lambda: block._fuses_conv_bn(x))
    assert outputs["triton"].dtype == outputs["naive"].dtype
    assert_close("block", outputs["naive"].float(), outputs["triton"].float(), 2e-2 if autocast else 1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_patch_embed_fused_equals_unfused(autocast):
    stem = PatchEmbed(in_chans=3, in_dim=8, dim=12).eval()
    randomise_norms(stem)
    x = torch.randn(2, 3, 17, 16)  # odd size: the stride-2 convs pad
    conv1, bn1 = stem.conv_down[0], stem.conv_down[1]
    outputs = _run_both_backends(stem, x, autocast, lambda: fuses_conv_bn(x, conv1, bn1))
    assert outputs["triton"].dtype == outputs["naive"].dtype
    assert_close("stem", outputs["naive"].float(), outputs["triton"].float(), 2e-2 if autocast else 1e-5)


def test_training_and_gradients_keep_the_plain_modules(triton_backend):
    block = ConvBlock(4).train()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert not block._fuses_conv_bn(x)  # batch statistics in training
    block.eval()
    assert not block._fuses_conv_bn(x)  # parameters need a gradient
    with torch.no_grad():
        assert block._fuses_conv_bn(x)
        conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        assert not fuses_conv_bn(x, conv, block.norm1)  # only zero padding folds into F.conv2d's call
        assert conv_bn_act(x, block.conv1, block.norm1, "relu").min() >= 0


def test_layer_scale_in_fp16_and_fp64_models_keep_the_plain_path(triton_backend):
    block = randomise_norms(ConvBlock(8, layer_scale=1e-5)).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        assert not block._fuses_conv_bn(x)  # a 1e-5 scale folded into an fp16 weight lands in its subnormals
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert block._fuses_conv_bn(x)
    double = randomise_norms(ConvBlock(8)).eval().double()
    x64 = x.double()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast leaves fp64 alone, so must the fold
        fused = double(x64)
    set_kernel_backend("naive")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = double(x64)
    assert fused.dtype == plain.dtype == torch.float64
    assert_close("fp64", plain, fused, 1e-10)
