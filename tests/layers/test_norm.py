"""sfmamba.layers.LayerNorm: nn.LayerNorm outside autocast, the autocast dtype inside it."""

import torch
from torch import nn

from sfmamba.layers import LayerNorm


def _pair(dim: int = 24) -> tuple[nn.LayerNorm, LayerNorm]:
    torch.manual_seed(0)
    ref = nn.LayerNorm(dim)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours = LayerNorm(dim)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def test_equals_nn_layernorm_without_autocast():
    ref, ours = _pair()
    x = torch.randn(3, 5, 24, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    assert list(ours.state_dict()) == ["weight", "bias"]


def test_autocast_keeps_the_autocast_dtype_and_matches_fp32_statistics():
    ref, ours = _pair()
    x = torch.randn(4, 7, 24).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x)
    expected = ref(x.float())  # what CUDA autocast computes: the fp32 norm of the same values
    assert out.dtype == torch.bfloat16
    # the same normalisation up to bf16 rounding of the affine parameters and of the output
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=4e-2)
    out.float().sum().backward()
    assert x.grad is not None and ours.weight.grad is not None and ours.weight.grad.dtype == torch.float32
