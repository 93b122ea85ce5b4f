"""Plain-PyTorch selective scan: the definition of truth, and the CPU path.

Computes in fp32 and returns the input dtype. Works time-major, (L, batch, D, N), vectorised over batch, channels
and state; the only loop is the one-FMA-per-step recurrence over L, so it is also the fast path on CPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_starts(length: int, seq_len: int | None, cu_seqlens: Tensor | None) -> list[int]:
    """Start of every segment of one row; with `cu_seqlens` the row is the whole (single) packed batch row."""
    if cu_seqlens is not None:
        return [int(s) for s in cu_seqlens[:-1].tolist()]
    return list(range(0, length, seq_len or length))


def to_time_major(x: Tensor, layout: str) -> Tensor:
    """(batch, D, L) or (batch, L, D) -> contiguous fp32 (L, batch, D): every per-step slice is then dense."""
    return (x.permute(2, 0, 1) if layout == "BDL" else x.transpose(0, 1)).float().contiguous()


def bc_to_time_major(x: Tensor, layout: str) -> Tensor:
    """B or C as (b, N, L), (b, G, N, L), (b, L, N) or (b, L, G, N) -> fp32 (L, b, G, N)."""
    if layout == "BDL":
        x = x.unsqueeze(1) if x.dim() == 3 else x
        return x.permute(3, 0, 1, 2).float().contiguous()
    x = x.unsqueeze(2) if x.dim() == 3 else x
    return x.transpose(0, 1).float().contiguous()


def selective_scan_naive(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    seq_len: int | None = None,
    cu_seqlens: Tensor | None = None,
    initial_state: Tensor | None = None,
    layout: str = "BDL",
) -> Tensor | tuple[Tensor, Tensor]:
    """Reference selective scan; same arguments and results as `sfmamba.ops.selective_scan` (inputs unchecked)."""
    x = to_time_major(u, layout)  # [L, b, D]
    dt = to_time_major(delta, layout)
    length, batch, dim = x.shape
    if delta_bias is not None:
        dt = dt + delta_bias.float()
    if delta_softplus:
        dt = F.softplus(dt)
    Bs, Cs = bc_to_time_major(B, layout), bc_to_time_major(C, layout)  # [L, b, G, N]
    groups, nstate = Bs.shape[2], Bs.shape[3]
    dA = torch.exp(dt.unsqueeze(-1) * A.float())  # [L, b, D, N]
    # channels of one group share B/C
    dBu = ((dt * x).view(length, batch, groups, dim // groups, 1) * Bs.unsqueeze(3)).view(length, batch, dim, nstate)

    starts = segment_starts(length, seq_len, cu_seqlens)
    h0 = None if initial_state is None else initial_state.float().view(batch, len(starts), dim, nstate)
    segment_of_start = {t: j for j, t in enumerate(starts)}
    h = dBu.new_zeros(batch, dim, nstate)
    states = []
    for t in range(length):
        j = segment_of_start.get(t)
        if j is None:
            h = torch.addcmul(dBu[t], dA[t], h)
        elif h0 is None:  # reset: nothing flows across a segment start
            h = dBu[t]
        else:
            h = torch.addcmul(dBu[t], dA[t], h0[:, j])
        states.append(h)
    H = torch.stack(states)  # [L, b, D, N]

    y = (H.view(length, batch, groups, dim // groups, nstate) * Cs.unsqueeze(3)).sum(-1).view(length, batch, dim)
    if D is not None:
        y = y + x * D.float()
    if z is not None:
        y = y * F.silu(to_time_major(z, layout))
    out = (y.permute(1, 2, 0) if layout == "BDL" else y.transpose(0, 1)).contiguous().to(u.dtype)
    if not return_last_state:
        return out
    ends = [s - 1 for s in starts[1:]] + [length - 1]
    last = H[ends].transpose(0, 1).reshape(batch * len(starts), dim, nstate)  # segment order: batch, then time
    return out, last
