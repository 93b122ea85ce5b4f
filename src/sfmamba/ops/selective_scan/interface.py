"""Public selective scan: argument checks and dispatch between the Triton kernels and the PyTorch reference."""

from __future__ import annotations

import torch
from torch import Tensor

from ...utils._config import use_triton
from .._checks import check_finite, check_segments, check_sequence, describe, fail
from .naive import selective_scan_naive


def _fail(name: str, expected: str, got: object) -> None:
    fail("selective_scan", name, expected, got)


def _check_tensor(name: str, x: Tensor | None, shape: tuple[int, ...], dtypes: tuple, device: torch.device) -> None:
    if x is None:
        return
    if not isinstance(x, Tensor):
        _fail(name, "a torch.Tensor", type(x).__name__)
    if tuple(x.shape) != shape:
        _fail(name, f"of shape {shape}", describe(x))
    if x.dtype not in dtypes:
        _fail(name, f"of dtype {' or '.join(map(str, dict.fromkeys(dtypes)))}", describe(x))
    if x.device != device:
        _fail(name, f"on {device} like u", describe(x))


def _bc_shapes(batch: int, groups: int, nstate: int, length: int, layout: str) -> tuple[tuple[int, ...], ...]:
    if layout == "BDL":
        return (batch, nstate, length), (batch, groups, nstate, length)
    return (batch, length, nstate), (batch, length, groups, nstate)


def _check_bc(name: str, x: Tensor, ref: Tensor, batch: int, dim: int, nstate: int, length: int, layout: str) -> None:
    if not isinstance(x, Tensor) or x.dim() not in (3, 4):
        _fail(name, "a 3-D (batch, N, L) / (batch, L, N) or grouped 4-D tensor", getattr(x, "shape", type(x)))
    groups = 1 if x.dim() == 3 else (x.shape[1] if layout == "BDL" else x.shape[2])
    if groups < 1 or dim % groups:
        _fail(f"the number of groups of {name}", f"a divisor of the channel count {dim}", groups)
    shape = _bc_shapes(batch, groups, nstate, length, layout)[x.dim() - 3]
    _check_tensor(name, x, shape, (torch.float32, ref.dtype), ref.device)


def check_selective_scan_inputs(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, seq_len, cu_seqlens, initial_state, layout
) -> None:
    """Raise ValueError naming the first argument that is not what `selective_scan` expects."""
    batch, dim, length = check_sequence("selective_scan", "u", u, layout)
    _check_tensor("delta", delta, tuple(u.shape), (u.dtype,), u.device)
    if not isinstance(A, Tensor) or A.dim() != 2:
        _fail("A", f"a 2-D (D={dim}, N) tensor", getattr(A, "shape", type(A)))
    nstate = A.shape[1]
    if A.shape[0] != dim:  # often u in the other layout: say how u was read
        other = "BLD" if layout == "BDL" else "BDL"
        _fail("A", f"of shape ({dim}, N): layout={layout!r} reads u {tuple(u.shape)} as D={dim} (is u {other}?)",
              describe(A))  # fmt: skip
    _check_tensor("A", A, (dim, nstate), (torch.float32,), u.device)
    _check_bc("B", B, u, batch, dim, nstate, length, layout)
    _check_bc("C", C, u, batch, dim, nstate, length, layout)
    if B.dim() != C.dim() or B.shape != C.shape:
        _fail("C", f"the same shape as B {tuple(B.shape)}", tuple(C.shape))
    _check_tensor("D", D, (dim,), (torch.float32,), u.device)
    _check_tensor("z", z, tuple(u.shape), (u.dtype,), u.device)
    _check_tensor("delta_bias", delta_bias, (dim,), (torch.float32,), u.device)
    for name, flag in (("delta_softplus", delta_softplus), ("return_last_state", return_last_state)):
        if not isinstance(flag, bool):
            _fail(name, "a bool", repr(flag))
    check_segments("selective_scan", seq_len, cu_seqlens, batch, length, u.device)
    segments = cu_seqlens.numel() - 1 if cu_seqlens is not None else batch * (length // (seq_len or length))
    _check_tensor("initial_state", initial_state, (segments, dim, nstate), (torch.float32,), u.device)
    check_finite("selective_scan", "A", A)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool | None = False,
    *,
    seq_len: int | None = None,
    cu_seqlens: Tensor | None = None,
    initial_state: Tensor | None = None,
    layout: str = "BDL",
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Selective scan (Mamba's S6), a drop-in for `mamba_ssm`'s `selective_scan_fn` with resets and layouts.

    For every sequence, channel d and state n::

        dt[t, d] = softplus(delta[t, d] + delta_bias[d])          (bias/softplus if given)
        h[t, d, n] = exp(dt[t, d] * A[d, n]) * h[t-1, d, n] + dt[t, d] * B[t, n] * u[t, d]
        y[t, d] = sum_n C[t, n] * h[t, d, n] + D[d] * u[t, d]      (then y *= silu(z[t, d]) if z is given)

    Shapes below use `layout="BDL"` ([B, D, L], mamba_ssm's); with `layout="BLD"` every sequence tensor is
    [B, L, D], B/C are [B, L, N] or [B, L, G, N], and no transpose is needed after a Linear layer.

    Args:
        u (Tensor): [B, D, L] input, float32/float16/bfloat16. The output has this dtype and layout.
        delta (Tensor): [B, D, L] step size, same dtype as `u`.
        A (Tensor): [D, N] float32 state matrix (diagonal per channel), finite.
        B, C (Tensor): [B, N, L], or [B, G, N, L] with G groups of D/G channels sharing them; float32 or `u.dtype`.
        D (Tensor, Optional): [D] float32 skip weight. Default: None.
        z (Tensor, Optional): [B, D, L] gate, same dtype as `u`. Default: None.
        delta_bias (Tensor, Optional): [D] float32 bias added to `delta`. Default: None.
        delta_softplus (bool): apply softplus to the step size. Default: False.
        return_last_state (bool): also return the fp32 state at the end of every segment, [S, D, N]; None means
            False (as in mamba_ssm). Default: False.
        seq_len (int, Optional): reset the state every `seq_len` steps (a folded batch of images); must divide L.
            Segments are numbered batch-major: S = B * L / seq_len. Default: None (one segment per row).
        cu_seqlens (Tensor, Optional): [S + 1] int32/int64 offsets of packed segments in a batch of one row,
            strictly increasing from 0 to L. Default: None.
        initial_state (Tensor, Optional): [S, D, N] float32 state before every segment. Default: None (zeros).
        layout (str): "BDL" or "BLD". Default: "BDL".

    Returns:
        out ([B, D, L]), and with `return_last_state` also the last states ([S, D, N], float32).

    Examples::
        >>> u = torch.randn(2, 16, 49); delta = torch.rand(2, 16, 49); A = -torch.rand(16, 8)
        >>> B = torch.randn(2, 8, 49); C = torch.randn(2, 8, 49)
        >>> selective_scan(u, delta, A, B, C).shape
        torch.Size([2, 16, 49])
    """
    if return_last_state is None:  # mamba_ssm treats None as False, and the official MambaVision passes None
        return_last_state = False
    check_selective_scan_inputs(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, seq_len, cu_seqlens, initial_state,
        layout,
    )  # fmt: skip
    if use_triton(u.device):
        from .chunk import selective_scan_triton

        return selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, seq_len, cu_seqlens,
            initial_state, layout,
        )  # fmt: skip
    return selective_scan_naive(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
        seq_len=seq_len, cu_seqlens=cu_seqlens, initial_state=initial_state, layout=layout,
    )  # fmt: skip


selective_scan_fn = selective_scan
