"""The MambaVision token mixer, computed in (batch, L, channels) layout end to end.

Numerically the same function as NVlabs' `MambaVisionMixer` (same parameters, same names, so official checkpoints
load 1:1), but the projections, the depthwise conv and the selective scan all work on [B, L, D] tensors, so no
transpose copy is made between them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ops import depthwise_conv1d, selective_scan
from ..ops._launch import needs_grad
from ..ops.concat import concat_last, split_last
from ..utils._config import train_kernels, use_triton
from ..utils.hooks import has_hooks
from ..utils.inference_cache import reused
from .linear import PLAIN_LINEARS, GroupedLinear, fused_linear, grouped_linear

__all__ = ["MambaVisionMixer"]

_PADDED_X_PROJ_TYPES = (*PLAIN_LINEARS, GroupedLinear)  # x_proj modules whose map `grouped_linear` may stand in for


def mixer_concat(a: Tensor, b: Tensor) -> Tensor:
    """cat((a, b), -1) through `ops.concat_last`, except in a training step without the fused training ops
    (`utils._config.train_kernels`: an eager step, where its Python autograd Function costs more host time than
    `torch.cat`'s C++ backward)."""
    if needs_grad(a, b) and not train_kernels():
        return torch.cat((a, b), dim=-1)
    return concat_last(a, b)


def mixer_split(x: Tensor, first: int) -> tuple[Tensor, Tensor]:
    """(x[..., :first], x[..., first:]) through `ops.split_last` (a Triton concat of the gradients), except in a
    training step without the fused training ops (as `mixer_concat`)."""
    if needs_grad(x) and not train_kernels():
        return x[..., :first], x[..., first:]
    return split_last(x, first)


class MambaVisionMixer(nn.Module):
    """MambaVision mixer: in_proj -> x|z -> conv1d + SiLU on each -> S6 scan on x -> concat(y, z) -> out_proj.

    Args:
        d_model: channels in and out.
        d_state: state size N per channel. MambaVision uses 8.
        d_conv: depthwise conv taps ('same' padding). MambaVision uses 3.
        expand: inner width factor; the inner width is split in half between the scanned branch x and the
            ungated branch z. MambaVision uses 1.
        dt_rank: rank of the step-size projection, "auto" = ceil(d_model / 16).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: step-size initialisation (Mamba's).
        conv_bias: kept for signature parity. The official module passes `bias=conv_bias // 2` to its convs,
            which is 0 for `conv_bias=True`, so the convs never have a bias; we reproduce that.
        bias: bias of in_proj and out_proj.
        device, dtype: factory kwargs.

    Attributes:
        vmeanba: False by default; when True, `forward` calls `sfmamba.ops.vmeanba.mean_selective_scan` (the channels
            sharing one B/C averaged, SPEC section 4) instead of `selective_scan`, with the same arguments.

    Shapes: input and output [B, L, d_model].
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.d_half = self.d_inner // 2
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.dt_min, self.dt_max, self.dt_init, self.dt_scale, self.dt_init_floor = (
            dt_min, dt_max, dt_init, dt_scale, dt_init_floor,
        )  # fmt: skip
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")

        self.in_proj = nn.Linear(d_model, self.d_inner, bias=bias, **dd)
        self.x_proj = nn.Linear(self.d_half, self.dt_rank + 2 * d_state, bias=False, **dd)
        # zero rows `_x_proj_split` puts after dt's where the scan runs in Triton, so that B and C start on 16-byte
        # boundaries in 16-byte multiples (rows of R + pad + 2N values, R + pad a multiple of 8; N a multiple of 4)
        self.dt_pad = -self.dt_rank % 8 if d_state % 4 == 0 else 0
        self.dt_proj = nn.Linear(self.dt_rank, self.d_half, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(self.d_half, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.d_half, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **dd)
        conv_has_bias = bool(int(conv_bias) // 2)  # the official `bias=conv_bias // 2`: False for True
        self.conv1d_x = nn.Conv1d(
            self.d_half, self.d_half, d_conv, groups=self.d_half, bias=conv_has_bias, **dd
        )  # fmt: skip
        self.conv1d_z = nn.Conv1d(
            self.d_half, self.d_half, d_conv, groups=self.d_half, bias=conv_has_bias, **dd
        )  # fmt: skip
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.dt_proj.bias._no_reinit = True
        self.vmeanba = False  # True: scan with VMeanba's channel means (sfmamba.ops.vmeanba), see `_scan`
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's init of dt_proj (weight and inverse-softplus bias), A_log = log(1..N) and D = 1."""
        if self.A_log.is_meta:
            return
        std = self.dt_rank**-0.5 * self.dt_scale
        if self.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand_like(self.dt_proj.bias, dtype=torch.float32) * (hi - lo) + lo)
        dt = dt.clamp(min=self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(a).expand(self.d_half, -1))
        self.D.fill_(1.0)

    def forward(self, x: Tensor, seq_len: int | None = None) -> Tensor:
        """[B, L, d_model] -> [B, L, d_model]. `seq_len` (a divisor of L): every row holds L / seq_len independent
        sequences (a folded batch); the conv and the scan reset at their boundaries, so none leaks into the next."""
        u, z = self._conv_both(self.in_proj(x), seq_len)
        return self.out_proj(mixer_concat(self._ssm(u, seq_len), z))

    def _conv_both(self, xz: Tensor, seq_len: int | None) -> tuple[Tensor, Tensor]:
        """`_conv` of both halves of the in_proj output [B, L, D] in one call (the two convs' weights side by side:
        one launch instead of two, forward and backward); returns strided views [B, L, D/2] each."""
        weight, bias = self._conv_weights()
        out = depthwise_conv1d(xz, weight, bias, padding="same", activation="silu", seq_len=seq_len)
        return mixer_split(out, self.d_half)  # its backward: one Triton concat of the two gradients

    def _conv_weights(self) -> tuple[Tensor, Tensor | None]:
        """The x and z convs' weights [D, K] and biases [D] (or None) concatenated (kept between inference calls)."""
        x_conv, z_conv = self.conv1d_x, self.conv1d_z

        def make() -> tuple[Tensor, Tensor | None]:
            weight = torch.cat((x_conv.weight.view(self.d_half, -1), z_conv.weight.view(self.d_half, -1)))
            return weight, torch.cat((x_conv.bias, z_conv.bias)) if x_conv.bias is not None else None

        sources = (x_conv.weight, z_conv.weight, x_conv.bias, z_conv.bias)
        return reused(self, "_conv_cache", sources, make)

    def _conv(self, u: Tensor, z: Tensor, seq_len: int | None) -> tuple[Tensor, Tensor]:
        """Depthwise 'same' conv + SiLU on both branches, [B, L, D/2] each."""
        k = self.d_conv
        u = depthwise_conv1d(
            u, self.conv1d_x.weight.view(self.d_half, k), self.conv1d_x.bias, padding="same", activation="silu",
            seq_len=seq_len,
        )  # fmt: skip
        z = depthwise_conv1d(
            z, self.conv1d_z.weight.view(self.d_half, k), self.conv1d_z.bias, padding="same", activation="silu",
            seq_len=seq_len,
        )  # fmt: skip
        return u, z

    def _ssm(self, u: Tensor, seq_len: int | None) -> Tensor:
        """x_proj -> (dt, B, C) -> dt_proj -> selective scan of u, [B, L, D/2]."""
        dt, B, C = self._x_proj_split(u)
        # The official mixer applies dt_proj *with* its bias and then passes the same bias again as the scan's
        # delta_bias, so the bias counts twice. Reproduced on purpose: official checkpoints were trained that way.
        return self._scan(u, fused_linear(self.dt_proj, dt), B, C, seq_len)

    def _x_proj_split(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_proj(u) split into dt [.., R], B and C [.., N] (with K grouped directions: [.., K, R], [.., K, N]),
        strided views of one output. Where the scan runs in Triton, x_proj runs with `dt_pad` zero rows after dt's (a
        padded copy of the weight; the parameter and its checkpoint key stay as they are): B and C then start on
        16-byte boundaries in rows of 16-byte multiples, and the scan reads B_t/C_t by 16-byte loads
        (`chunk.vector_bc`). H200, (128, 160, 196, 8) bf16 forward: 33.9 us with them, 38.7 with the scalar loads that
        MambaVision-T's stage 3 (R = 20) took before (session 17)."""
        linear, rank, n = self.x_proj, self.dt_rank, self.d_state
        groups = getattr(linear, "groups", 1)
        paddable = self.dt_pad and type(linear) in _PADDED_X_PROJ_TYPES and not has_hooks(linear)
        pad = self.dt_pad if paddable and use_triton(u.device) else 0
        if pad:
            device_type = u.device.type
            dtype = linear.weight.dtype
            if torch.is_autocast_enabled(device_type) and dtype != torch.float64:  # cast once here (and cached in
                dtype = torch.get_autocast_dtype(device_type)  # inference), not by autocast on every call
            weight = reused(
                self, "_x_proj_cache", (linear.weight,), lambda: self._padded_x_proj_weight(dtype, groups), dtype
            )
            proj = grouped_linear(u, weight, groups)
        else:
            proj = linear(u)
        if groups > 1:
            proj = proj.unflatten(-1, (groups, rank + pad + 2 * n))
        dt, _, B, C = proj.split((rank, pad, n, n), dim=-1)
        return dt, B, C

    def _padded_x_proj_weight(self, dtype: torch.dtype, groups: int) -> Tensor:
        """x_proj's weight with `dt_pad` zero rows between each group's dt rows and its B rows, in `dtype`."""
        weight = self.x_proj.weight
        rows = weight.view(groups, -1, weight.shape[1])  # [K, R + 2N, in]
        dt_rows, bc_rows = rows.split((self.dt_rank, 2 * self.d_state), dim=1)
        zeros = rows.new_zeros(rows.shape[0], self.dt_pad, rows.shape[2])
        return torch.cat((dt_rows, zeros, bc_rows), dim=1).flatten(0, 1).to(dtype)

    def _scan(self, u: Tensor, dt: Tensor, B: Tensor, C: Tensor, seq_len: int | None) -> Tensor:
        """The selective scan in (B, L, D) layout, or VMeanba's channel-mean scan when `self.vmeanba` is set."""
        A = reused(self, "_A_cache", (self.A_log,), self._A)
        args = (u, dt, A, B, C, self.D.float(), None, self.dt_proj.bias.float(), True)
        if self.vmeanba:
            from ..ops.vmeanba import mean_selective_scan  # lazy: layers must import without the VMeanba op

            return mean_selective_scan(*args, seq_len=seq_len, layout="BLD")
        return selective_scan(*args, seq_len=seq_len, layout="BLD")

    def _A(self) -> Tensor:
        return -torch.exp(self.A_log.float())

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, dt_rank={self.dt_rank}"
