"""sfmamba.layers.LayerNorm: nn.LayerNorm outside autocast, the autocast dtype inside it."""

import torch
from torch import nn

from sfmamba.layers import LayerNorm
from sfmamba.testing import autograd_node_names


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


def _names(t: torch.Tensor) -> str:
    return type(t.grad_fn).__name__ if t.grad_fn is not None else ""


def test_norm_with_residual_takes_the_kernel_only_where_it_applies(triton_backend):
    """Training, our LayerNorm, x in the compute dtype, no hooks: the fused residual gradient; anything else: the
    skip is x itself and the norm runs as before."""
    from sfmamba.layers.norm import norm_with_residual

    _, ours = _pair()
    x = torch.randn(2, 5, 24, requires_grad=True)
    skip, out = norm_with_residual(ours, x)
    assert _names(out) == "LayerNormResidualFunctionBackward" and torch.equal(skip, x)
    plain = nn.LayerNorm(24)
    assert norm_with_residual(plain, x)[0] is x  # not our LayerNorm
    with torch.no_grad():
        skip, out = norm_with_residual(ours, x)
        assert skip is x and torch.equal(out, ours(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 x under bf16 autocast: a cast sits in between
        skip, out = norm_with_residual(ours, x)
        assert skip is x and out.dtype == torch.bfloat16
    handle = ours.register_forward_hook(lambda *a: None)
    assert norm_with_residual(ours, x)[0] is x
    handle.remove()


def test_block_training_gradients_unchanged_by_the_fused_residual(triton_backend):
    from sfmamba.models.mambavision import Block
    from sfmamba.utils._config import set_kernel_backend

    torch.manual_seed(0)
    block = Block(32, num_heads=2, use_attention=True)
    x = torch.randn(2, 9, 32, requires_grad=True)
    out = block(x)
    nodes = autograd_node_names(out)
    assert "LayerNormResidualFunctionBackward" in nodes and "LayerNormFunctionBackward" not in nodes
    grads = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
    set_kernel_backend("naive")
    ref = block(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *block.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
