"""VMamba v2 (Liu et al., NeurIPS 2024) as a timm model, on sfmamba's ops: the `vmambav2v` configurations.

The configurations of MzeroMiko/VMamba's `classification/configs/vssm/vmambav2v_{tiny,small,base}_224.yaml`
(`forward_type="v05_noz"`: d_state 1, ssm_ratio 1, no gate, 3x3 depthwise conv without bias, 4-direction
cross-scan; `patchembed_version="v2"`, `downsample_version="v3"`, LayerNorm, MLP ratio 4), which are the models
VMeanba was evaluated on. Parameter names follow the official model, so its checkpoints load through
`checkpoint_filter_fn`. Differences from the official code are in data movement only: the whole network runs
channels-last ([B, H, W, C]: Linear layers instead of 1x1 convs, LayerNorm on the last dim, convs on channels-last
views, no permute copies), and timm's stage convention: a stage *starts* with its downsample, so stage i outputs the
stride 4 * 2**i map (`checkpoint_filter_fn` moves the official `layers.{i}.downsample` to `layers.{i+1}`).
Any input resolution works (stride-2 convs with padding 1 take odd sizes; the scans take any H x W).
Model outputs (`forward_features`, intermediates, features) are NCHW-shaped views of the channels-last maps.
"""

from __future__ import annotations

import collections
import contextlib
import re
from collections.abc import Sequence
from functools import partial

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..layers.linear import Mlp
from ..layers.residual import add_drop_path, check_probability, drop_path_rates
from ..layers.ss2d import SS2D
from ..utils.inference_cache import InferenceCacheMixin, cache_linear_casts
from ._checkpoint import create_with_file_hooks, load_checkpoint_file
from ._features import take_indices as _take_indices

__all__ = ["VMamba", "checkpoint_filter_fn"]


def to_nchw(x: Tensor) -> Tensor:
    """[B, H, W, C] -> a [B, C, H, W] view (channels-last memory): no copy."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------------------------------- blocks


class PatchEmbed(nn.Module):
    """The v2 stem: conv3x3/2 -> LN -> GELU -> conv3x3/2 -> LN, [B, C_in, H, W] -> [B, H/4, W/4, dim]."""

    def __init__(self, in_chans: int = 3, dim: int = 96, **dd):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1, **dd)
        self.norm1 = nn.LayerNorm(dim // 2, **dd)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # one copy of the image: every conv after runs NHWC
        x = self.act(self.norm1(to_nhwc(self.conv1(x))))
        return self.norm2(to_nhwc(self.conv2(to_nchw(x))))


class Downsample(nn.Module):
    """The v3 downsample: conv3x3/2 (with bias) -> LN, [B, H, W, dim] -> [B, H/2, W/2, dim_out]."""

    def __init__(self, dim: int, dim_out: int, **dd):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, kernel_size=3, stride=2, padding=1, **dd)
        self.norm = nn.LayerNorm(dim_out, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(to_nhwc(self.conv(to_nchw(x))))


class VSSBlock(nn.Module):
    """x + drop_path(SS2D(LN x)); x + drop_path(MLP(LN x)), on [B, H, W, C]."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        mlp_ratio: float = 4.0,
        mlp_drop: float = 0.0,
        **dd,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim, **dd)
        self.op = SS2D(
            dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias, **dd
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=mlp_drop, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = add_drop_path(x, self.op(self.norm(x)), self.drop_path)
        return add_drop_path(x, self.mlp(self.norm2(x)), self.drop_path)


# ------------------------------------------------------------------------------------------------------ stage


class VMambaStage(nn.Module):
    """Downsample (none for the first stage), then `depth` VSS blocks."""

    def __init__(
        self, dim: int, depth: int, in_dim: int | None = None, drop_path: Sequence[float] | float = 0.0, **block_kwargs
    ):
        super().__init__()
        dd = {k: block_kwargs[k] for k in ("device", "dtype") if k in block_kwargs}
        self.grad_checkpointing = False
        self.downsample = nn.Identity() if in_dim is None else Downsample(in_dim, dim, **dd)
        dpr = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.blocks = nn.Sequential(*[VSSBlock(dim, drop_path=dpr[i], **block_kwargs) for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


# ------------------------------------------------------------------------------------------------------ model


class VMamba(InferenceCacheMixin, nn.Module):
    """VMamba v2: v2 stem (stride 4), four stages of VSS blocks with conv downsamples, LN + pool + linear.

    Args:
        dims: channels of the first stage (doubled by every later stage), or one value per stage.
        depths: blocks per stage.
        d_state, ssm_ratio, dt_rank, d_conv, conv_bias: the SS2D mixer's (official `ssm_*` options).
        mlp_ratio: hidden/channels of the MLP.
        drop_path_rate: stochastic depth, linear over all blocks.
        in_chans, num_classes, global_pool, drop_rate: timm's usual meaning (drop_rate is the head dropout);
            mlp_drop_rate: dropout inside the MLPs.
        device, dtype: factory kwargs.
    """

    def __init__(
        self,
        dims: int | Sequence[int] = 96,
        depths: Sequence[int] = (2, 2, 8, 2),
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        mlp_drop_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        dims = [int(dims * 2**i) for i in range(len(depths))] if isinstance(dims, int) else list(dims)
        if len(dims) != len(depths):
            raise ValueError(f"dims ({len(dims)} entries) and depths ({len(depths)}) need one entry per stage")
        check_probability("drop_rate", drop_rate)
        self.num_classes = num_classes
        self.global_pool_type = global_pool
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.output_fmt = "NCHW"
        self.num_features = self.head_hidden_size = dims[-1]
        block_kwargs = dict(
            d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
            mlp_ratio=mlp_ratio, mlp_drop=mlp_drop_rate, **dd,
        )  # fmt: skip

        self.patch_embed = PatchEmbed(in_chans, dims[0], **dd)
        dpr = drop_path_rates(drop_path_rate, depths)
        stages, self.feature_info = [], []
        for i, depth in enumerate(depths):
            in_dim = dims[i - 1] if i else None
            stages.append(VMambaStage(dims[i], depth, in_dim=in_dim, drop_path=dpr[i], **block_kwargs))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2**i, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features, **dd)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        cache_linear_casts(self)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The official init: Linear layers (not the SS2D parameter tensors) and LayerNorms.
        if isinstance(m, nn.Linear) and not m.weight.is_meta:
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and not m.weight.is_meta:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)"
            if coarse
            else [
                (r"^layers\.(\d+)\.downsample", (0,)),
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's hook for `pretrained=True` files and URLs (`custom_load` in the cfg): `weights_only` read that
        also accepts the official training files (their pickled yacs `config` is read as plain dicts), the `model`
        weights (not `model_ema`), the official key map."""
        with _official_config_as_dicts():
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
        `norm` applies the final LayerNorm to the last stage's intermediate. `output_fmt`: "NCHW" (views of the
        channels-last maps) or "NHWC".
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        fmt = to_nchw if output_fmt == "NCHW" else (lambda t: t)
        take_indices, max_index = _take_indices(len(self.layers), indices)
        last = len(self.layers) - 1
        intermediates = []
        x = self.patch_embed(x)
        stages = self.layers if torch.jit.is_scripting() or not stop_early else self.layers[: max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(fmt(self.norm(x) if norm and i == last else x))
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.layers):
            x = self.norm(x)
        return to_nchw(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last one in `indices` (and the norm/head if asked); returns the indices."""
        take_indices, max_index = _take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> [B, C, H/32, W/32] (an NCHW view of the channels-last map)."""
        x = self.layers(self.patch_embed(x))
        return to_nchw(self.norm(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------------ checkpoint loading

# official key -> ours (the official stem and downsample are nn.Sequential with Permute/Identity slots; its
# classifier is a Sequential(norm, permute, avgpool, flatten, head))
_OFFICIAL_RENAMES = (
    (re.compile(r"^patch_embed\.0\."), "patch_embed.conv1."),
    (re.compile(r"^patch_embed\.2\."), "patch_embed.norm1."),
    (re.compile(r"^patch_embed\.5\."), "patch_embed.conv2."),
    (re.compile(r"^patch_embed\.7\."), "patch_embed.norm2."),
    (re.compile(r"^layers\.(\d+)\.downsample\.1\."), lambda m: f"layers.{int(m.group(1)) + 1}.downsample.conv."),
    (re.compile(r"^layers\.(\d+)\.downsample\.3\."), lambda m: f"layers.{int(m.group(1)) + 1}.downsample.norm."),
    (re.compile(r"^classifier\.norm\."), "norm."),
    (re.compile(r"^classifier\.head\."), "head."),
)


class _YacsConfigAsDict:
    """Stand-in for `yacs.config.CfgNode` under `torch.load(weights_only=True)`: the unpickler builds a plain
    OrderedDict instead (the official training files pickle their yacs config next to the weights); no code runs."""

    def __new__(cls, *args, **kwargs):
        return collections.OrderedDict()


def _official_config_as_dicts():
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; (object, name) pairs: 2.6
    if safe_globals is None:
        return contextlib.nullcontext()
    return safe_globals([(_YacsConfigAsDict, "yacs.config.CfgNode")])


def _rename_official(key: str) -> str:
    for pattern, replacement in _OFFICIAL_RENAMES:
        new, count = pattern.subn(replacement, key)
        if count:
            return new
    return key


def checkpoint_filter_fn(state_dict: dict, model: VMamba) -> dict[str, Tensor]:
    """Map an official VMamba v2 checkpoint (or one of ours) onto `model`'s keys; raise on any mismatch.

    Accepts the raw `torch.load` result of an official `.pth` (weights under `model`, or `state_dict`),
    DataParallel `module.` prefixes, and our own state dicts. Official 1x1-conv weights ([out, in, 1, 1], the
    `Linear2d` layers of the channel-first model) become Linear weights. Raises `RuntimeError` listing the missing
    and unexpected keys and the shape mismatches when the file does not fit the model (another variant, a v0/v1
    VMamba, a corrupt file). A classifier of another size passes (timm adapts or drops it after this filter).
    """
    if not isinstance(state_dict, dict):
        raise RuntimeError(f"checkpoint is a {type(state_dict).__name__}, expected a dict of tensors")
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    expected = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        k = _rename_official(k.removeprefix("module."))
        if isinstance(v, Tensor) and k in expected and v.dim() == 4 and expected[k].dim() == 2:
            v = v.flatten(1)  # Linear2d stored as a 1x1 conv
        out[k] = v
    if not any(k.startswith("head.") for k in expected):  # num_classes=0: timm would drop the classifier anyway
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    _raise_on_mismatch(out, expected, model)
    return out


def _raise_on_mismatch(state: dict, expected: dict, model: VMamba) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    head = {k for k in expected if k.startswith("head.")}
    wrong_shape = sorted(
        f"{k}: file {tuple(getattr(state[k], 'shape', ()))} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if k not in head and (not isinstance(state[k], Tensor) or state[k].shape != expected[k].shape)
    )
    if missing or unexpected or wrong_shape:
        lines = [
            f"checkpoint does not match {type(model).__name__} (dims {[f['num_chs'] for f in model.feature_info]}):"
        ]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {', '.join(keys)}")
        raise RuntimeError("\n".join(lines))


# ---------------------------------------------------------------------------------------------------- create


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    build = partial(
        build_model_with_cfg,
        VMamba,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
    )
    return create_with_file_hooks(build, pretrained, kwargs)


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "crop_mode": "center",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv1",
        "classifier": "head",
        "license": "mit",
        "custom_load": True,  # files load through `load_pretrained` (weights_only, `model` over EMA)
        **kwargs,
    }


_RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download"
default_cfgs = generate_default_cfgs(
    {
        "vmamba_v2_nano.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license="apache-2.0"),
        "vmamba_v2_tiny.in1k": _cfg(url=f"{_RELEASES}/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth"),
        "vmamba_v2_small.in1k": _cfg(url=f"{_RELEASES}/%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth"),
        "vmamba_v2_base.in1k": _cfg(url=f"{_RELEASES}/%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth"),
    }
)


@register_model
def vmamba_v2_nano(pretrained: bool = False, **kwargs) -> VMamba:
    """A CPU-sized VMamba v2 for tests and 32-64 px images (no official weights)."""
    args = dict(dims=32, depths=(1, 1, 2, 1), drop_path_rate=0.0)
    return _create_vmamba("vmamba_v2_nano", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_v2_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """Official `vmambav2v_tiny_224` (VMamba-T s1l8, 30 M parameters)."""
    args = dict(dims=96, depths=(2, 2, 8, 2), drop_path_rate=0.2)
    return _create_vmamba("vmamba_v2_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_v2_small(pretrained: bool = False, **kwargs) -> VMamba:
    """Official `vmambav2v_small_224` (s1l20, 49 M parameters)."""
    args = dict(dims=96, depths=(2, 2, 20, 2), drop_path_rate=0.3)
    return _create_vmamba("vmamba_v2_small", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_v2_base(pretrained: bool = False, **kwargs) -> VMamba:
    """Official `vmambav2v_base_224` (s1l20, 87 M parameters)."""
    args = dict(dims=128, depths=(2, 2, 20, 2), drop_path_rate=0.5)
    return _create_vmamba("vmamba_v2_base", pretrained, **dict(args, **kwargs))
