"""Scan-order variants of the MambaVision mixer for SF-Mamba and its ablations, with batch folding.

`ScanMixer` is the MambaVision mixer (same parameters for one direction) whose inner channels are split into K
groups, one per scan direction; each group reads the window's tokens in its own order (row-major, reversed,
column-major, column-major reversed) and has its own x_proj / dt_proj slice and B/C, and all K groups run in ONE
grouped selective scan (B/C of shape [.., L, K, N]). Because the groups split the channels instead of multiplying
them, parameters and MACs equal the one-direction mixer's for every K (the "channels halved" bidirectional
ablation: two directions of D/4 channels each instead of one of D/2). `SeriesScanMixer` is the other bidirectional
ablation: a forward mixer then a reversed mixer, each of half the inner width.

Batch folding (SPEC section 2): the (windows) sequences of length L are viewed as [windows / f, f * L, C] rows (free:
the tensors are contiguous) and both the depthwise conv and the scan get `seq_len=L`, so nothing crosses an image
boundary. `f` comes from `sfmamba.ops.selective_scan.fold.plan_fold` unless the `fold` attribute fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..ops.selective_scan.fold import plan_fold
from ..utils._config import reject_jit_trace
from .linear import GroupedLinear
from .mamba_mixer import MambaVisionMixer, mixer_concat

__all__ = ["DIRECTIONS", "GroupedLinear", "ScanMixer", "SeriesScanMixer", "direction_order"]

DIRECTIONS = ("row", "row_rev", "col", "col_rev")


def direction_order(direction: str, window_size: int, num_aux: int) -> Tensor:
    """Token order of one scan direction over a window sequence: `order[t]` is the row read at step t.

    The sequence is [head, ws*ws tokens row-major, tail] with `num_aux=2`, or the tokens alone with 0. Column-major
    orders transpose the window's tokens and keep the head first and the tail last; the reversed orders read the
    whole sequence backwards (tail first).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if num_aux not in (0, 2):
        raise ValueError(f"num_aux must be 0 or 2, got {num_aux}")
    ws = window_size
    body = torch.arange(ws * ws, device="cpu")  # index buffers are built on the CPU, also under a meta device context
    if direction.startswith("col"):
        body = body.view(ws, ws).t().flatten()
    if num_aux:
        order = torch.cat((torch.zeros(1, dtype=body.dtype, device="cpu"), body + 1, body.new_full((1,), ws * ws + 1)))
    else:
        order = body
    return order.flip(0) if direction.endswith("_rev") else order


class ScanMixer(MambaVisionMixer):
    """MambaVision mixer with K scan directions (channel groups) in one grouped scan, and batch folding.

    Args:
        d_model, d_state, d_conv, expand, dt_rank: as `MambaVisionMixer`; MambaVision uses (8, 3, 1, auto).
        directions: scan orders, a subset of `DIRECTIONS` in any order; K = len(directions) must divide d_inner / 2.
            ("row",) is the MambaVision / SF-Mamba unidirectional mixer (same parameter names and shapes).
        window_size, num_aux: the window side and the aux tokens per sequence (0 or 2); they define the orders.
        fold: images per folded row; None asks `plan_fold` per call (1 on CPU), 1 turns folding off.

    Attributes:
        vmeanba: see `MambaVisionMixer`.

    Shapes: input and output [windows, ws * ws + num_aux, d_model].
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 8,
        d_conv: int = 3,
        expand: float = 1,
        dt_rank: int | str = "auto",
        directions: Sequence[str] = ("row",),
        window_size: int = 7,
        num_aux: int = 2,
        fold: int | None = None,
        **kwargs,
    ):
        super().__init__(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, **kwargs)
        directions = tuple(directions)
        if not directions or len(set(directions)) != len(directions) or not set(directions) <= set(DIRECTIONS):
            raise ValueError(f"directions must be distinct names among {DIRECTIONS}, got {directions!r}")
        k = len(directions)
        if self.d_half % k:
            raise ValueError(f"{k} directions must divide the scanned channels d_inner / 2 = {self.d_half}")
        if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or fold < 1):
            raise ValueError(f"fold must be None or a positive int, got {fold!r}")
        self.directions = directions
        self.window_size = window_size
        self.num_aux = num_aux
        self.fold = fold
        self.seq_len = window_size * window_size + num_aux
        if k > 1:  # one x_proj / dt_proj slice per direction: block-diagonal, so the parameter count does not change
            dd = {"device": self.A_log.device, "dtype": self.in_proj.weight.dtype}
            self.x_proj = GroupedLinear(self.d_half, k * (self.dt_rank + 2 * d_state), groups=k, bias=False, **dd)
            self.dt_proj = GroupedLinear(k * self.dt_rank, self.d_half, groups=k, bias=True, **dd)
            self.dt_proj.bias._no_reinit = True
            self.reset_ssm_parameters()
        orders = [direction_order(d, window_size, num_aux) for d in directions]
        self.permuted = directions != ("row",)  # "row" alone reads the sequence as stored
        # gather indices [L, K]: step t of group k reads row order[k][t]; the inverse puts results back
        order = torch.stack(orders, dim=1)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", order.argsort(dim=0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """[W, L, d_model] -> [W, L, d_model], W = windows (images x windows per image), L = ws * ws + num_aux."""
        reject_jit_trace("ScanMixer (SF-Mamba)")
        windows, length, _ = x.shape
        if length != self.seq_len:
            raise ValueError(f"x must have {self.seq_len} tokens per window sequence, got {tuple(x.shape)}")
        xz = self.in_proj(x)
        fold = self._fold_factor(windows, xz)
        seq_len = length if fold > 1 else None
        if self.permuted:
            u, z = xz.split(self.d_half, dim=-1)
            u = self._reorder(u, self.order)  # the one copy that multi-direction scans cost
            # fold: [W, L, C] -> [W / f, f * L, C]; a view, as u and z have batch stride L * row stride
            u, z = (t.reshape(windows // fold, fold * length, self.d_half) for t in (u, z))
            u, z = self._conv(u, z, seq_len)
        else:
            u, z = self._conv_both(xz.reshape(windows // fold, fold * length, xz.shape[-1]), seq_len)
        y = self._ssm(u, seq_len).view(windows, length, self.d_half)
        if self.permuted:
            y = self._reorder(y, self.inverse)
        return self.out_proj(mixer_concat(y, z.view(windows, length, self.d_half)))

    def _fold_factor(self, windows: int, u: Tensor) -> int:
        if self.fold is not None:
            if windows % self.fold:
                raise ValueError(f"fold={self.fold} must divide the number of window sequences {windows}")
            return self.fold
        if torch.compiler.is_compiling():
            # the table lookup is a constant only for static shapes, and dynamo makes the batch symbolic after a
            # batch-size change (then `plan_fold` cannot run); compiled models fold only when `fold` is set
            return 1
        return plan_fold(windows, self.d_half, self.seq_len, self.d_state, u.dtype, u.device)

    def _reorder(self, x: Tensor, index: Tensor) -> Tensor:
        """out[:, t, group k] = x[:, index[t, k], group k] for x [W, L, D/2] with K channel groups."""
        k = len(self.directions)
        grouped = x.unflatten(-1, (k, self.d_half // k))  # [W, L, K, c]
        idx = index.view(1, -1, k, 1).expand(x.shape[0], -1, -1, grouped.shape[-1])
        return grouped.gather(1, idx).flatten(-2)

    def _ssm(self, u: Tensor, seq_len: int | None) -> Tensor:
        k = len(self.directions)
        if k == 1:
            return super()._ssm(u, seq_len)
        dt, B, C = self._x_proj_split(u)  # dt [.., L, K, r]; B, C: grouped [.., L, K, N]
        return self._scan(u, self.dt_proj(dt.flatten(-2)), B, C, seq_len)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, directions={self.directions}, seq_len={self.seq_len}, fold={self.fold}"


class SeriesScanMixer(nn.Module):
    """Bidirectional scan in series: a forward `ScanMixer` then a reversed one, each with half the inner width, so
    parameters and MACs equal one full-width unidirectional mixer. Args as `ScanMixer` (without `directions`)."""

    def __init__(self, d_model: int, expand: float = 1, **kwargs):
        super().__init__()
        self.forward_mixer = ScanMixer(d_model, expand=expand / 2, directions=("row",), **kwargs)
        self.backward_mixer = ScanMixer(d_model, expand=expand / 2, directions=("row_rev",), **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.backward_mixer(self.forward_mixer(x))
