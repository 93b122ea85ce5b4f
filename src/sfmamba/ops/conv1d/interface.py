"""Public depthwise conv1d: argument checks and dispatch between the Triton kernels and the PyTorch reference."""

from __future__ import annotations

import torch
from torch import Tensor

from ...utils._config import use_triton
from .._checks import check_segments, check_sequence, describe, fail
from .naive import depthwise_conv1d_naive

PADDINGS = ("same", "causal")
ACTIVATIONS = (None, "silu")
MIN_KERNEL, MAX_KERNEL = 2, 4


def _fail(name: str, expected: str, got: object) -> None:
    fail("depthwise_conv1d", name, expected, got)


def _check_param(name: str, p: Tensor | None, ndim: int, x: Tensor) -> None:
    if p is None:
        return
    if not isinstance(p, Tensor) or p.dim() != ndim:
        _fail(name, f"a {ndim}-D tensor", getattr(p, "shape", type(p)))
    dtypes = (torch.float32, x.dtype)
    if p.dtype not in dtypes:
        _fail(name, f"of dtype {' or '.join(str(d) for d in dict.fromkeys(dtypes))}", describe(p))
    if p.device != x.device:
        _fail(name, f"on {x.device} like x", describe(p))


def check_depthwise_conv1d_inputs(x, weight, bias, padding, activation, seq_len, cu_seqlens, layout) -> None:
    """Raise ValueError naming the first argument that is not what `depthwise_conv1d` expects."""
    if not isinstance(padding, str) or padding not in PADDINGS:
        _fail("padding", f"one of {PADDINGS}", repr(padding))
    if activation not in ACTIVATIONS:
        _fail("activation", f"one of {ACTIVATIONS}", repr(activation))
    batch, dim, length = check_sequence("depthwise_conv1d", "x", x, layout)
    if weight is None:
        _fail("weight", f"a (D={dim}, K) tensor", None)
    _check_param("weight", weight, 2, x)
    if weight.shape[0] != dim:
        _fail("weight", f"of shape (D={dim}, K) to match x", tuple(weight.shape))
    if not MIN_KERNEL <= weight.shape[1] <= MAX_KERNEL:
        _fail("the kernel size K = weight.shape[1]", f"in {MIN_KERNEL}..{MAX_KERNEL}", weight.shape[1])
    _check_param("bias", bias, 1, x)
    if bias is not None and bias.shape[0] != dim:
        _fail("bias", f"of shape (D={dim},)", tuple(bias.shape))
    check_segments("depthwise_conv1d", seq_len, cu_seqlens, batch, length, x.device)


def depthwise_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    padding: str = "same",
    activation: str | None = None,
    seq_len: int | None = None,
    cu_seqlens: Tensor | None = None,
    layout: str = "BLD",
) -> Tensor:
    r"""Depthwise 1-D convolution (one K-tap filter per channel) that never mixes folded or packed segments.

    For every position t and channel d, with P zeros of left padding::

        out[t, d] = bias[d] + sum_k weight[d, k] * x[t + k - P, d]     (then out = silu(out) if activation="silu")

    where a term is zero when t + k - P lies outside t's segment. `padding="same"` is exactly PyTorch's
    `F.conv1d(x, w, padding="same", groups=D)` (P = (K-1)//2, the rest on the right, as MambaVision's mixer uses);
    `padding="causal"` is P = K-1, like `causal_conv1d`. Accumulates in fp32.

    Shapes use `layout="BLD"` ([B, L, D], what a Linear layer produces); `layout="BDL"` takes and returns [B, D, L].

    Args:
        x (Tensor): [B, L, D] input, float32/float16/bfloat16. The output has this dtype and layout (contiguous).
        weight (Tensor): [D, K] filters with K in 2..4, float32 or `x.dtype` (`nn.Conv1d.weight[:, 0]`).
        bias (Tensor, Optional): [D], float32 or `x.dtype`. Default: None.
        padding (str): "same" or "causal". Default: "same".
        activation (str, Optional): None or "silu" (fused after the bias). Default: None.
        seq_len (int, Optional): every row is L / seq_len independent segments of `seq_len` positions (a folded
            batch of images), each zero-padded on its own; must divide L. Default: None (one segment per row).
        cu_seqlens (Tensor, Optional): [S + 1] int32/int64 offsets of packed segments in a batch of one row,
            strictly increasing from 0 to L. Default: None.
        layout (str): "BLD" or "BDL". Default: "BLD".

    Returns:
        out ([B, L, D]).

    Examples::
        >>> x = torch.randn(2, 49, 16); w = torch.randn(16, 3); b = torch.randn(16)
        >>> depthwise_conv1d(x, w, b, activation="silu").shape
        torch.Size([2, 49, 16])
        >>> folded = x.reshape(1, 98, 16)  # two images in one row, padded separately
        >>> torch.allclose(depthwise_conv1d(folded, w, b, seq_len=49).view(2, 49, 16), depthwise_conv1d(x, w, b))
        True
    """
    check_depthwise_conv1d_inputs(x, weight, bias, padding, activation, seq_len, cu_seqlens, layout)
    if use_triton(x.device):
        from .chunk import depthwise_conv1d_triton

        return depthwise_conv1d_triton(x, weight, bias, padding, activation, seq_len, cu_seqlens, layout)
    return depthwise_conv1d_naive(
        x, weight, bias, padding=padding, activation=activation, seq_len=seq_len, cu_seqlens=cu_seqlens, layout=layout
    )
