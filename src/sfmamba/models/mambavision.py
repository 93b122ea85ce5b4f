"""MambaVision (Hatamizadeh & Kautz, CVPR 2025) as a timm model, on sfmamba's ops.

Same architecture and parameter names as NVlabs' `mambavision/models/mamba_vision.py`, so the official
`.pth.tar` checkpoints load through `checkpoint_filter_fn`; the only structural difference is timm's stage
convention: a stage *starts* with its downsample (as in timm's `mambaout.py`), so stage i outputs the stride
4 * 2**i map and `features_only` taps stage outputs directly. The official checkpoints keep the downsample at the
*end* of a stage; `checkpoint_filter_fn` moves `levels.{i}.downsample` to `levels.{i+1}.downsample`.

Any input resolution works: the hybrid stages zero-pad the map to a multiple of their window and crop back (what
the official code does), the stride-2 convs take odd sizes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..layers import LayerNorm, MambaVisionMixer, Mlp, conv_bn_act, fused_linear, fuses_conv_bn
from ..layers.conv_bn import conv_bn_act_train, conv_compute_dtype
from ..layers.norm import norm_with_residual
from ..layers.residual import add_drop_path, check_probability, drop_path_rates
from ..ops._launch import needs_grad
from ..ops.add_norm import fused_add_layer_norm, runs_fused
from ..utils.hooks import has_forward_hooks, has_hooks
from ..utils.inference_cache import InferenceCacheMixin, cache_linear_casts
from ._checkpoint import create_with_file_hooks, load_checkpoint_file
from ._features import take_indices as _take_indices

__all__ = ["MambaVision", "checkpoint_filter_fn"]


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """[B, C, H, W] (H, W multiples of the window) -> [B * nH * nW, ws * ws, C], windows and tokens row-major."""
    b, c, h, w = x.shape
    ws = window_size
    x = x.view(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b * (h // ws) * (w // ws), ws * ws, c)


def window_reverse(windows: Tensor, window_size: int, h: int, w: int) -> Tensor:
    """Inverse of `window_partition`: [B * nH * nW, ws * ws, C] -> [B, C, H, W]."""
    ws = window_size
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(-1, c, h, w)


# ----------------------------------------------------------------------------------------------------- blocks


class PatchEmbed(nn.Module):
    """Stem: two stride-2 3x3 convs, each with BatchNorm (eps 1e-4) and ReLU. Stride 4."""

    def __init__(self, in_chans: int = 3, in_dim: int = 64, dim: int = 96):
        super().__init__()
        self.proj = nn.Identity()  # no parameters; kept for the official module layout
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        conv1, bn1, act1, conv2, bn2, act2 = self.conv_down
        fuses = fuses_conv_bn(x, conv1, bn1) and fuses_conv_bn(x, conv2, bn2)
        if fuses and not has_forward_hooks(self.conv_down, act1, act2):  # GPU inference: BN folded into the convs
            return conv_bn_act(conv_bn_act(x, conv1, bn1, "relu"), conv2, bn2, "relu")
        if has_hooks(self.conv_down):  # its forward is bypassed below: its hooks need the module call
            return self.conv_down(x)
        return conv_bn_act_train(conv_bn_act_train(x, conv1, bn1, act1), conv2, bn2, act2)  # training


class Downsample(nn.Module):
    """Stride-2 3x3 conv without bias that doubles the channels."""

    def __init__(self, dim: int, dim_out: int | None = None):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, dim_out or 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(x)


class ConvBlock(nn.Module):
    """Residual block of stages 1-2: conv3x3 - BN - GELU(tanh) - conv3x3 - BN, optional layer scale."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: float | None = None, kernel_size: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim)) if _is_scale(layer_scale) else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self._fuses_conv_bn(x):
            # GPU inference: BN and gamma folded into the convs, bias + GELU and bias + residual one pass each
            y = conv_bn_act(x, self.conv1, self.norm1, "gelu_tanh")
            out_dtype = torch.result_type(x, y)  # the unfused x + gamma * y promotes with gamma
            out_dtype = out_dtype if self.gamma is None else torch.promote_types(out_dtype, self.gamma.dtype)
            return conv_bn_act(y, self.conv2, self.norm2, residual=x, scale=self.gamma, out_dtype=out_dtype)
        y = conv_bn_act_train(conv_bn_act_train(x, self.conv1, self.norm1, self.act1), self.conv2, self.norm2)
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return add_drop_path(x, y, self.drop_path)

    def _fuses_conv_bn(self, x: Tensor) -> bool:
        no_drop = not self.training or isinstance(self.drop_path, nn.Identity)
        # a layer scale folded into an fp16 weight would push small scales (1e-5) into fp16's subnormals
        scale_ok = self.gamma is None or conv_compute_dtype(x, self.conv2) != torch.float16
        conv1_fuses = fuses_conv_bn(x, self.conv1, self.norm1, self.gamma) and not has_forward_hooks(self.act1)
        return no_drop and scale_ok and conv1_fuses and fuses_conv_bn(x, self.conv2, self.norm2)


class Attention(nn.Module):
    """Multi-head self-attention over the tokens of one window (scaled dot product, optional q/k norm)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] = LayerNorm,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = fused_linear(self.qkv, x).view(b, n, 3, self.num_heads, self.head_dim)
        # [B, heads, N, hd] views of qkv; unbinding dim 2 (not a permuted dim 0) makes the backward's stack of dq, dk,
        # dv land in qkv's layout, so the gradient's view back to [B, N, 3C] needs no copy
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(fused_linear(self.proj, x.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm token block: x + g1 * mixer(LN x); x + g2 * MLP(LN x). The mixer is Mamba or attention, or `mixer`
    when given (any [B, L, dim] -> [B, L, dim] module)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        use_attention: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        mixer: nn.Module | None = None,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if mixer is not None:  # a caller-built token mixer (SF-Mamba's scan variants)
            self.mixer = mixer
        elif use_attention:
            self.mixer = Attention(
                dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop,
                proj_drop=proj_drop, norm_layer=norm_layer,
            )  # fmt: skip
        else:
            self.mixer = MambaVisionMixer(d_model=dim, d_state=8, d_conv=3, expand=1)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim)) if _is_scale(layer_scale) else None
        self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim)) if _is_scale(layer_scale) else None

    def forward(self, x: Tensor) -> Tensor:
        x, h = norm_with_residual(self.norm1, x)  # training: the skip's gradient is added in the norm's backward
        y = self.mixer(h)
        if self._fuses_residual_norm(x, y):  # inference on the GPU: the residual add and norm2 in one kernel
            x, h = fused_add_layer_norm(
                x, y, self.gamma_1, self.norm2.weight, self.norm2.bias, self.norm2.eps, _autocast_dtype(x)
            )
        else:
            x = add_drop_path(x, y if self.gamma_1 is None else self.gamma_1 * y, self.drop_path)
            x, h = norm_with_residual(self.norm2, x)
        y = self.mlp(h)
        return add_drop_path(x, y if self.gamma_2 is None else self.gamma_2 * y, self.drop_path)

    def _fuses_residual_norm(self, x: Tensor, y: Tensor) -> bool:
        no_drop = not self.training or isinstance(self.drop_path, nn.Identity)
        plain_norm = type(self.norm2) is LayerNorm and not has_forward_hooks(self.norm2)
        return plain_norm and no_drop and runs_fused(x, y, *self.norm2.parameters(), self.gamma_1)

    def chains(self, x: Tensor) -> bool:
        """Whether `forward_chained` applies: fused inference with no gradient needed by x or any parameter of the
        block (the fused kernels have no backward), both norms plain LayerNorms and no forward hooks on the block or
        its norms (their `forward` is not called)."""
        if torch.is_grad_enabled() and needs_grad(x, *self.parameters()):  # cheap test first: eager hot path
            return False
        plain_norm1 = type(self.norm1) is LayerNorm and not has_forward_hooks(self, self.norm1)
        return plain_norm1 and self._fuses_residual_norm(x, x)  # norm2, drop path, compile, device

    def forward_chained(
        self, x: Tensor, normed: Tensor | None, next_norm: nn.Module | None
    ) -> tuple[Tensor, Tensor | None]:
        """`forward` for a run of blocks in fused inference (`chains`): `normed` is norm1(x) when the previous block
        already computed it, and with `next_norm` (the next block's norm1) the last residual add and that norm run
        as one kernel. Returns (output, next_norm(output) or None)."""
        norm_dtype = _autocast_dtype(x)
        y = self.mixer(self.norm1(x) if normed is None else normed)
        x, h = fused_add_layer_norm(x, y, self.gamma_1, self.norm2.weight, self.norm2.bias, self.norm2.eps, norm_dtype)
        y = self.mlp(h)
        if next_norm is None:
            return x + (y if self.gamma_2 is None else self.gamma_2 * y), None
        return fused_add_layer_norm(x, y, self.gamma_2, next_norm.weight, next_norm.bias, next_norm.eps, norm_dtype)


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None


def run_token_blocks(blocks: nn.Sequential, x: Tensor, grad_checkpointing: bool = False) -> Tensor:
    """`blocks(x)` for a run of token blocks [B, L, C]; in fused GPU inference each block's last residual add runs
    with the next block's norm1 as one kernel (`Block.forward_chained`), one full pass over x fewer per block."""
    if grad_checkpointing and not torch.jit.is_scripting():
        return checkpoint_seq(blocks, x)
    if len(blocks) < 2 or not all(isinstance(b, Block) and b.chains(x) for b in blocks):
        return blocks(x)
    normed = None
    for i, block in enumerate(blocks):
        next_norm = blocks[i + 1].norm1 if i + 1 < len(blocks) else None
        x, normed = block.forward_chained(x, normed, next_norm)
    return x


def _is_scale(layer_scale) -> bool:
    return layer_scale is not None and not isinstance(layer_scale, bool) and isinstance(layer_scale, (int, float))


# ------------------------------------------------------------------------------------------------------ stage


class MambaVisionStage(nn.Module):
    """Downsample (none for the first stage), then residual conv blocks or, in a hybrid stage, token blocks
    over windows: the first ceil(depth / 2) use the Mamba mixer, the rest self-attention."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        conv: bool,
        in_dim: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        layer_scale: float | None = None,
        layer_scale_conv: float | None = None,
    ):
        super().__init__()
        self.conv = conv
        self.window_size = window_size
        self.grad_checkpointing = False
        self.downsample = nn.Identity() if in_dim is None else Downsample(in_dim, dim)
        dpr = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        if conv:
            blocks = [ConvBlock(dim, drop_path=dpr[i], layer_scale=layer_scale_conv) for i in range(depth)]
        else:
            first_attn = depth // 2 + 1 if depth % 2 else depth // 2
            blocks = [
                Block(
                    dim,
                    num_heads,
                    use_attention=i >= first_attn,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_norm=qk_norm,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=dpr[i],
                    layer_scale=layer_scale,
                )  # fmt: skip
                for i in range(depth)
            ]
        self.blocks = nn.Sequential(*blocks)

    def _blocks(self, x: Tensor) -> Tensor:
        if self.conv:
            return checkpoint_seq(self.blocks, x) if self.grad_checkpointing else self.blocks(x)
        return run_token_blocks(self.blocks, x, self.grad_checkpointing)

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.conv:
            return self._blocks(x)
        _, _, h, w = x.shape
        ws = self.window_size
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        x = window_reverse(self._blocks(window_partition(x, ws)), ws, hp, wp)
        if pad_b or pad_r:
            x = x[:, :, :h, :w].contiguous()
        return x


# ------------------------------------------------------------------------------------------------------ model


class MambaVision(InferenceCacheMixin, nn.Module):
    """MambaVision: conv stem (stride 4), two conv stages, two hybrid Mamba/attention stages, BN + pool + linear.

    Args:
        dim: channels of the first stage (doubled by every later stage).
        in_dim: channels after the first stem conv.
        depths, num_heads, window_size: per stage (num_heads and window_size matter for stages 3-4 only).
        mlp_ratio: hidden/channels of the token blocks' MLP.
        drop_path_rate: stochastic depth, linear over all blocks.
        layer_scale, layer_scale_conv: initial layer-scale value of token blocks / conv blocks (None: off).
        in_chans, num_classes, global_pool, drop_rate: timm's usual meaning (drop_rate is the head dropout);
            proj_drop_rate and attn_drop_rate: dropouts inside the token blocks.
    """

    def __init__(
        self,
        dim: int = 80,
        in_dim: int = 32,
        depths: Sequence[int] = (1, 3, 8, 4),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        window_size: Sequence[int] = (8, 8, 14, 7),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        qkv_bias: bool = True,
        qk_norm: bool = False,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        layer_scale: float | None = None,
        layer_scale_conv: float | None = None,
    ):
        super().__init__()
        if not len(depths) == len(num_heads) == len(window_size) == 4:
            raise ValueError("depths, num_heads and window_size need one entry per stage (4)")
        check_probability("drop_rate", drop_rate)
        self.num_classes = num_classes
        self.global_pool_type = global_pool
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.output_fmt = "NCHW"
        dims = [int(dim * 2**i) for i in range(len(depths))]
        self.num_features = self.head_hidden_size = dims[-1]

        self.patch_embed = PatchEmbed(in_chans=in_chans, in_dim=in_dim, dim=dim)
        dpr = drop_path_rates(drop_path_rate, depths)
        stages, self.feature_info = [], []
        for i, depth in enumerate(depths):
            stages.append(
                self._make_stage(
                    dim=dims[i],
                    depth=depth,
                    num_heads=num_heads[i],
                    window_size=window_size[i],
                    conv=i < 2,
                    in_dim=dims[i - 1] if i else None,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_norm=qk_norm,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    layer_scale=layer_scale,
                    layer_scale_conv=layer_scale_conv,
                )  # fmt: skip
            )
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2**i, module=f"levels.{i}"))
        self.levels = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(self.num_features)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        cache_linear_casts(self)

    def _make_stage(self, **stage_kwargs) -> nn.Module:
        """One stage from `MambaVisionStage`'s arguments; subclasses (SF-Mamba) build their hybrid stages here."""
        return MambaVisionStage(**stage_kwargs)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The official init, applied to every module (it also overrides the mixers' dt_proj init).
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^levels\.(\d+)"
            if coarse
            else [
                (r"^levels\.(\d+)\.downsample", (0,)),
                (r"^levels\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.levels:
            stage.grad_checkpointing = enable

    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's hook for `pretrained=True` files and URLs (`custom_load` in the cfg): safe read, official key map."""
        load_checkpoint_file(self, checkpoint_path, checkpoint_filter_fn)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool_type = global_pool
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head = cache_linear_casts(nn.Linear(self.num_features, num_classes)) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (strides 4, 8, 16, 32) and, unless `intermediates_only`, the `forward_features` output.

        `indices`: an int n takes the last n stages, a sequence picks stages (negative counts from the end).
        `norm` applies the final BatchNorm to the last stage's intermediate.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = _take_indices(len(self.levels), indices)
        last = len(self.levels) - 1
        intermediates = []
        x = self.patch_embed(x)
        stages = self.levels if torch.jit.is_scripting() or not stop_early else self.levels[: max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.levels):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last one in `indices` (and the norm/head if asked); returns the indices."""
        take_indices, max_index = _take_indices(len(self.levels), indices)
        self.levels = self.levels[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = self.levels(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------------ checkpoint loading

_OFFICIAL_DOWNSAMPLE = re.compile(r"^levels\.(\d+)\.downsample\.")


def checkpoint_filter_fn(state_dict: dict, model: MambaVision) -> dict[str, Tensor]:
    """Map an official MambaVision checkpoint (or one of ours) onto `model`'s keys; raise on any mismatch.

    Accepts the raw `torch.load` result of an official `.pth.tar` (the weights under `state_dict` or `model`),
    DataParallel `module.` prefixes, and our own state dicts. The official layout keeps each downsample at the end
    of stage i; ours starts stage i + 1 with it. Raises `RuntimeError` listing the missing and unexpected keys
    and the shape mismatches when the file does not fit the model (a different variant, a corrupt file).
    """
    if not isinstance(state_dict, dict):
        raise RuntimeError(f"checkpoint is a {type(state_dict).__name__}, expected a dict of tensors")
    for key in ("state_dict", "model"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    official = "levels.0.downsample.reduction.0.weight" in {k.removeprefix("module.") for k in state_dict}
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.")
        if official:
            k = _OFFICIAL_DOWNSAMPLE.sub(lambda m: f"levels.{int(m.group(1)) + 1}.downsample.", k)
        out[k] = v

    expected = model.state_dict()
    if not any(k.startswith("head.") for k in expected):  # num_classes=0: timm would drop the classifier anyway
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    # a classifier of another size is fine: timm's loader adapts or drops it after this filter
    head = {k for k in expected if k.startswith("head.")}
    wrong_shape = sorted(
        f"{k}: file {tuple(out[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(out) & set(expected)
        if k not in head and (not isinstance(out[k], Tensor) or out[k].shape != expected[k].shape)
    )
    if missing or unexpected or wrong_shape:
        lines = [f"checkpoint does not match {type(model).__name__} ({model.num_features} features):"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {', '.join(keys)}")
        raise RuntimeError("\n".join(lines))
    return out


# ---------------------------------------------------------------------------------------------------- create


def _create_mambavision(variant: str, pretrained: bool = False, **kwargs) -> MambaVision:
    build = partial(
        build_model_with_cfg,
        MambaVision,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
    )
    return create_with_file_hooks(build, pretrained, kwargs)


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "crop_mode": "center",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv_down.0",
        "classifier": "head",
        "license": "other",  # NVIDIA Source Code License-NC for the official weights
        "custom_load": True,  # files load through `load_pretrained` (weights_only, `state_dict` over EMA)
        **kwargs,
    }


_HF = "https://huggingface.co/nvidia"
default_cfgs = generate_default_cfgs(
    {
        "mambavision_tiny.in1k": _cfg(url=f"{_HF}/MambaVision-T-1K/resolve/main/mambavision_tiny_1k.pth.tar"),
        "mambavision_tiny2.in1k": _cfg(
            url=f"{_HF}/MambaVision-T2-1K/resolve/main/mambavision_tiny2_1k.pth.tar", crop_pct=0.98
        ),
        "mambavision_small.in1k": _cfg(
            url=f"{_HF}/MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar", crop_pct=0.93
        ),
        "mambavision_base.in1k": _cfg(url=f"{_HF}/MambaVision-B-1K/resolve/main/mambavision_base_1k.pth.tar"),
        "mambavision_large.in1k": _cfg(url=f"{_HF}/MambaVision-L-1K/resolve/main/mambavision_large_1k.pth.tar"),
        "mambavision_nano.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license="apache-2.0"),
    }
)


@register_model
def mambavision_tiny(pretrained: bool = False, **kwargs) -> MambaVision:
    args = dict(dim=80, in_dim=32, depths=(1, 3, 8, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_mambavision("mambavision_tiny", pretrained, **dict(args, **kwargs))


@register_model
def mambavision_tiny2(pretrained: bool = False, **kwargs) -> MambaVision:
    args = dict(dim=80, in_dim=32, depths=(1, 3, 11, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_mambavision("mambavision_tiny2", pretrained, **dict(args, **kwargs))


@register_model
def mambavision_small(pretrained: bool = False, **kwargs) -> MambaVision:
    args = dict(dim=96, in_dim=64, depths=(3, 3, 7, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_mambavision("mambavision_small", pretrained, **dict(args, **kwargs))


@register_model
def mambavision_base(pretrained: bool = False, **kwargs) -> MambaVision:
    args = dict(dim=128, in_dim=64, depths=(3, 3, 10, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.3, layer_scale=1e-5)
    return _create_mambavision("mambavision_base", pretrained, **dict(args, **kwargs))


@register_model
def mambavision_large(pretrained: bool = False, **kwargs) -> MambaVision:
    args = dict(
        dim=196, in_dim=64, depths=(3, 3, 10, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.3, layer_scale=1e-5
    )
    return _create_mambavision("mambavision_large", pretrained, **dict(args, **kwargs))


@register_model
def mambavision_nano(pretrained: bool = False, **kwargs) -> MambaVision:
    """A CPU-sized MambaVision for small images (Fashion-MNIST resized to 64 px; 32 px also works).

    At 64 px the stage maps are 16, 8, 4 and 2, so windows (8, 8, 4, 2) make each hybrid stage map one window, as the
    full models do at 224 px (14 and 7): stage 3 scans 16 tokens, stage 4 four. At 32 px stage 3 pads 2x2 to 4x4.
    """
    args = dict(
        dim=32, in_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 4, 8), window_size=(8, 8, 4, 2), drop_path_rate=0.1
    )
    return _create_mambavision("mambavision_nano", pretrained, **dict(args, **kwargs))
