"""Plain-PyTorch VMeanba scan (mean selective scan): the definition of truth, and the CPU path.

Computes in fp32 and returns the input dtype. Works time-major: the discretised inputs are averaged over the channels
of each B/C group first, so the recurrence loop only carries a (batch, G, N) state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..selective_scan.naive import bc_to_time_major, segment_starts, to_time_major


def mean_selective_scan_naive(
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
    """Reference VMeanba scan; same arguments and result as `sfmamba.ops.vmeanba.mean_selective_scan` (unchecked)."""
    x = to_time_major(u, layout)  # [L, b, D]
    dt = to_time_major(delta, layout)
    length, batch, dim = x.shape
    if delta_bias is not None:
        dt = dt + delta_bias.float()
    if delta_softplus:
        dt = F.softplus(dt)
    Bs, Cs = bc_to_time_major(B, layout), bc_to_time_major(C, layout)  # [L, b, G, N]
    groups, nstate = Bs.shape[2], Bs.shape[3]
    per_group = dim // groups
    # the mean over the channels that share one B/C: dA [L, b, G, N], dt*u [L, b, G]
    dA = torch.exp(dt.unsqueeze(-1) * A.float()).view(length, batch, groups, per_group, nstate).mean(3)
    dtu = (dt * x).view(length, batch, groups, per_group).mean(3)
    dBu = dtu.unsqueeze(-1) * Bs  # [L, b, G, N]

    starts = set(segment_starts(length, seq_len, None))
    h = dBu.new_zeros(batch, groups, nstate)
    states = []
    for t in range(length):
        h = dBu[t] if t in starts else torch.addcmul(dBu[t], dA[t], h)  # reset: nothing crosses a segment start
        states.append(h)
    H = torch.stack(states)  # [L, b, G, N]

    y_group = (H * Cs).sum(-1)  # [L, b, G]
    y = y_group.unsqueeze(-1).expand(length, batch, groups, per_group).reshape(length, batch, dim)
    if D is not None:
        y = y + x * D.float()
    if z is not None:
        y = y * F.silu(to_time_major(z, layout))
    return (y.permute(1, 2, 0) if layout == "BDL" else y.transpose(0, 1)).contiguous().to(u.dtype)
