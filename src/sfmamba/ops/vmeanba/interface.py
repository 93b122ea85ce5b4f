"""Public VMeanba scan: argument checks and dispatch between the Triton kernels and the PyTorch reference."""

from __future__ import annotations

from torch import Tensor

from ...utils._config import use_triton
from .._checks import ArgumentError
from ..selective_scan.interface import check_selective_scan_inputs
from .naive import mean_selective_scan_naive

OP_NAME = "mean_selective_scan"


def check_mean_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_len, layout) -> None:
    """Raise ValueError naming the first argument that is not what `mean_selective_scan` expects.

    The arguments are those of `selective_scan` (without the state in/out and packed segments), so its checks apply;
    only the op name in the message changes.
    """
    try:
        check_selective_scan_inputs(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, False, seq_len, None, None, layout
        )
    except ArgumentError as error:
        raise ArgumentError(str(error).replace("selective_scan:", f"{OP_NAME}:", 1)) from None


def mean_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    seq_len: int | None = None,
    layout: str = "BDL",
) -> Tensor:
    r"""VMeanba's selective scan: one single-channel scan per B/C group on channel-averaged inputs (SPEC section 4).

    With the arguments of `sfmamba.ops.selective_scan`, for every sequence, group g of channels sharing B/C and state
    n (channel means over the D/G channels of g; all D when B/C are not grouped)::

        dt[t, d] = softplus(delta[t, d] + delta_bias[d])                 (bias/softplus if given)
        a[t, g, n] = mean_{d in g} exp(dt[t, d] * A[d, n])
        s[t, g] = mean_{d in g} dt[t, d] * u[t, d]
        h[t, g, n] = a[t, g, n] * h[t-1, g, n] + B[t, g, n] * s[t, g]
        y[t, d] = sum_n C[t, g, n] * h[t, g, n] + D[d] * u[t, d]         (then y *= silu(z[t, d]) if z is given)

    so the scan carries G * N states instead of D * N; the output is broadcast back to every channel of the group and
    keeps the per-channel skip.

    Args:
        u (Tensor): [B, D, L] input ([B, L, D] with `layout="BLD"`), float32/float16/bfloat16; the output is alike.
        delta (Tensor): step size shaped like `u`, same dtype.
        A (Tensor): [D, N] float32 state matrix, finite.
        B, C (Tensor): [B, N, L] or [B, G, N, L] ("BLD": [B, L, N] or [B, L, G, N]); float32 or `u.dtype`.
        D (Tensor, Optional): [D] float32 skip weight. Default: None.
        z (Tensor, Optional): gate shaped like `u`, same dtype. Default: None.
        delta_bias (Tensor, Optional): [D] float32 bias added to `delta`. Default: None.
        delta_softplus (bool): apply softplus to the step size. Default: False.
        seq_len (int, Optional): reset the state every `seq_len` steps; must divide L. Default: None.
        layout (str): "BDL" or "BLD". Default: "BDL".

    Returns:
        Tensor shaped like `u`, in its dtype.

    Examples::
        >>> u = torch.randn(2, 16, 49); delta = torch.rand(2, 16, 49); A = -torch.rand(16, 1)
        >>> B = torch.randn(2, 4, 1, 49); C = torch.randn(2, 4, 1, 49)
        >>> mean_selective_scan(u, delta, A, B, C).shape
        torch.Size([2, 16, 49])
    """
    check_mean_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_len, layout)
    if use_triton(u.device):
        from .chunk import mean_selective_scan_triton

        return mean_selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_len, layout)
    return mean_selective_scan_naive(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_len=seq_len, layout=layout
    )
