"""VMamba's SS2D token mixer (v2, `forward_type="v05_noz"`), channels-last end to end on sfmamba's ops.

Same parameters and names as `SS2D` in MzeroMiko/VMamba's `classification/models/vmamba.py` (so official checkpoints
load 1:1), same function, different data movement: the map stays [B, H, W, C] (Linear layers and LayerNorm on the
last dim, the depthwise conv on a channels-last view), one cross-scan writes the four direction sequences as
[B, L, 4, D], the per-direction projections run as single GEMMs with block-diagonal weights straight on that tensor,
and ONE selective scan covers the 4 * D channels with B/C grouped per direction, in the (B, L, D) layout that needs
no transpose. One cross-merge sums the directions back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import cross_merge, cross_scan, selective_scan
from ..ops._launch import needs_grad
from ..utils._config import reject_jit_trace

__all__ = ["SS2D"]

DIRECTIONS = 4


def block_diagonal(weights: Tensor) -> Tensor:
    """[K, O, I] per-direction weights -> the [K * O, K * I] block-diagonal matrix (one GEMM for all directions)."""
    k, o, i = weights.shape
    eye = torch.eye(k, device=weights.device, dtype=weights.dtype)
    return (eye[:, None, :, None] * weights[:, :, None, :]).reshape(k * o, k * i)


class SS2D(nn.Module):
    """2-D selective scan: in_proj -> depthwise conv + SiLU -> 4-direction cross-scan -> S6 -> cross-merge ->
    LayerNorm -> out_proj.

    Args:
        d_model: channels in and out.
        d_state: state size N per channel. VMamba v2 uses 1.
        ssm_ratio: inner width / d_model. VMamba v2 uses 1.0.
        dt_rank: rank of the step-size projection, "auto" = ceil(d_model / 16).
        d_conv: depthwise conv kernel size ('same' padding); < 2 means no conv (the official convention).
        conv_bias: bias of the depthwise conv. VMamba v2 uses False.
        bias: bias of in_proj and out_proj.
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: step-size initialisation (Mamba's), per direction.
        device, dtype: factory kwargs.

    Attributes:
        vmeanba: when True, the scan is VMeanba's `mean_selective_scan` (inputs averaged over the channels of each
            direction, one single-channel scan per direction) instead of the full selective scan.

    Shapes: input and output [B, H, W, d_model].
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        device=None,
        dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max, self.dt_init, self.dt_scale, self.dt_init_floor = (
            dt_min, dt_max, dt_init, dt_scale, dt_init_floor,
        )  # fmt: skip
        self.vmeanba = False
        # VMeanba without gradients: out_norm removes the channel-constant scan term, so only the skip path runs;
        # False: the generic mean_selective_scan between cross_scan and cross_merge (also what runs with a gradient)
        self.vmeanba_fast_path = True
        k, di, n, r = DIRECTIONS, self.d_inner, d_state, self.dt_rank
        f32 = {"device": device, "dtype": torch.float32}

        self.in_proj = nn.Linear(d_model, di, bias=bias, **dd)
        self.conv2d = (
            nn.Conv2d(di, di, d_conv, padding=(d_conv - 1) // 2, groups=di, bias=conv_bias, **dd)
            if d_conv > 1
            else None
        )
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, di, **dd))  # per direction: dt | B | C
        self.dt_projs_weight = nn.Parameter(torch.empty(k, di, r, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, di, **dd))
        self.A_logs = nn.Parameter(torch.empty(k * di, n, **f32))
        self.Ds = nn.Parameter(torch.empty(k * di, **f32))
        self.out_norm = nn.LayerNorm(di, **dd)
        self.out_proj = nn.Linear(di, d_model, bias=bias, **dd)
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """The official init: x_proj as nn.Linear's default, Mamba's dt init per direction, A = -(1..N), D = 1."""
        if self.A_logs.is_meta:
            return
        bound = self.d_inner**-0.5  # nn.Linear's default (kaiming_uniform, a = sqrt(5)) for fan_in = d_inner
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = self.dt_rank**-0.5 * self.dt_scale
        if self.dt_init == "constant":
            nn.init.constant_(self.dt_projs_weight, std)
        else:
            nn.init.uniform_(self.dt_projs_weight, -std, std)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias, dtype=torch.float32) * (hi - lo) + lo)
        dt = dt.clamp(min=self.dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(a).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def _projection_weights(self) -> tuple[Tensor, Tensor]:
        """Block-diagonal x_proj with rows grouped [dt of all directions | B of all | C of all], and dt_proj."""
        r, n = self.dt_rank, self.d_state
        dt_w, b_w, c_w = self.x_proj_weight.split((r, n, n), dim=1)
        x_proj = torch.cat((block_diagonal(dt_w), block_diagonal(b_w), block_diagonal(c_w)))
        return x_proj, block_diagonal(self.dt_projs_weight)

    def forward(self, x: Tensor) -> Tensor:
        """[B, H, W, d_model] -> [B, H, W, d_model]."""
        reject_jit_trace("SS2D (VMamba)")
        batch, height, width, _ = x.shape
        length, k, n, r = height * width, DIRECTIONS, self.d_state, self.dt_rank
        x = self.in_proj(x)
        if self.conv2d is not None:  # on the channels-last NCHW view: no copy in or out
            x = self.conv2d(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = F.silu(x)
        if self.vmeanba and self.vmeanba_fast_path and not self._needs_grad(x):
            # VMeanba's scan term is one value per position broadcast over the channels (plus x * sum_k D_k, see
            # ops/vmeanba/cross.py): out_norm, a LayerNorm over the channels, subtracts it exactly. A converted block
            # is its skip path; the scan never has to run.
            skip = self.Ds.view(DIRECTIONS, self.d_inner).sum(0).to(x.dtype)
            return self.out_proj(self.out_norm(x * skip))
        xs = cross_scan(x, layout="BHWC", scan_layout="BLD").view(batch, length, k * self.d_inner)
        x_proj, dt_proj = self._projection_weights()
        proj = F.linear(xs, x_proj.to(xs.dtype))  # [B, L, K*R | K*N | K*N]
        dts, Bs, Cs = proj.split((k * r, k * n, k * n), dim=-1)
        delta = F.linear(dts, dt_proj.to(dts.dtype))  # [B, L, K * d_inner], direction-major like xs
        Bs, Cs = Bs.unflatten(-1, (k, n)), Cs.unflatten(-1, (k, n))  # [B, L, G=K, N], strided views
        A = -torch.exp(self.A_logs.float())
        scan = selective_scan
        if self.vmeanba:
            from ..ops.vmeanba import mean_selective_scan as scan
        y = scan(
            xs, delta, A, Bs, Cs, self.Ds.float(), None, self.dt_projs_bias.reshape(-1).float(), True, layout="BLD"
        )  # fmt: skip
        y = cross_merge(y.view(batch, length, k, self.d_inner), height, width, scan_layout="BLD", layout="BHWC")
        return self.out_proj(self.out_norm(y))

    def _needs_grad(self, x: Tensor) -> bool:
        return needs_grad(x, *self.parameters())

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}"
