"""UperNet semantic segmentation on any timm backbone with multi-scale features (ours included).

UperNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018) as the MambaVision, VMamba and
Swin papers use it for ADE20K: a pyramid pooling module on the last stage, a feature pyramid built top-down from the
other stages, every level upsampled to stride 4 and fused by a 3x3 conv, a 1x1 classifier; plus an auxiliary FCN
head on the third stage (loss weight 0.4) for training.

    model = UperNet("sf_mamba_tiny", num_classes=150)         # backbone kwargs: pretrained, drop_path_rate, ...
    out = model(images)                                       # {"out": [B, 150, H, W], "aux": [B, 150, H, W]}
    loss = segmentation_loss(out, labels)                     # labels [B, H, W], 255 = ignored

The outputs follow torchvision's segmentation models (a dict with "out" and, with the auxiliary head, "aux"), at the
input resolution. Any input size works: the backbones pad to their window size and crop back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._backbone import MultiScaleBackbone

__all__ = ["FCNHead", "PyramidPooling", "UperNet", "UperNetHead", "segmentation_loss"]


class ConvNormAct(nn.Sequential):
    """k x k conv (no bias) -> norm -> activation."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, norm_layer: type[nn.Module],
                 act_layer: type[nn.Module]):  # fmt: skip
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False),
            norm_layer(out_chs),
            act_layer(),
        )


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: the map average-pooled to each `scales` x `scales` grid, projected, upsampled back,
    concatenated with the map and fused by a 3x3 conv: [B, in_chs, h, w] -> [B, channels, h, w]."""

    def __init__(self, in_chs: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6),
                 norm_layer: type[nn.Module] = nn.BatchNorm2d, act_layer: type[nn.Module] = nn.ReLU):  # fmt: skip
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(in_chs, channels, 1, norm_layer, act_layer))
            for s in scales
        )
        self.bottleneck = ConvNormAct(in_chs + len(scales) * channels, channels, 3, norm_layer, act_layer)

    def forward(self, x: Tensor) -> Tensor:
        pooled = [_resize(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UperNetHead(nn.Module):
    """The UperNet decoder: feature maps [B, C_i, H / s_i, W / s_i] (strides increasing) -> logits at the first map's
    resolution [B, num_classes, H / s_0, W / s_0]."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"in_channels must name at least 2 feature maps, got {list(in_channels)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales, norm_layer, act_layer)
        self.lateral = nn.ModuleList(ConvNormAct(c, channels, 1, norm_layer, act_layer) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvNormAct(channels, channels, 3, norm_layer, act_layer) for _ in in_channels[:-1])
        self.fuse = ConvNormAct(len(in_channels) * channels, channels, 3, norm_layer, act_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.in_channels = tuple(in_channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(features)}")
        levels = [lateral(f) for lateral, f in zip(self.lateral, features)] + [self.ppm(features[-1])]
        for i in range(len(levels) - 1, 0, -1):  # top-down: each level adds the coarser one, upsampled
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[-2:])
        outs = [fpn(level) for fpn, level in zip(self.fpn, levels)] + [levels[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0], *(_resize(o, size) for o in outs[1:])], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """The auxiliary head: a 3x3 conv block and a 1x1 classifier on one feature map."""

    def __init__(self, in_chs: int, num_classes: int, channels: int = 256, dropout: float = 0.1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d, act_layer: type[nn.Module] = nn.ReLU):  # fmt: skip
        super().__init__()
        self.conv = ConvNormAct(in_chs, channels, 3, norm_layer, act_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class UperNet(nn.Module):
    """A timm backbone's maps at strides 4, 8, 16 and 32 + `UperNetHead` (+ `FCNHead` on the stride-16 map).

    Args:
        backbone: a timm model name (ours: sf_mamba_*, mambavision_*, vmamba_v2_*; any timm model with
            `features_only` maps at those strides, e.g. resnet50) or a `features_only` module with `feature_info`.
        num_classes: segmentation classes (ADE20K: 150).
        channels: the decoder's width (512 in the papers' ADE20K configs).
        aux_channels: the auxiliary head's width; 0 leaves it out.
        dropout: before each classifier.
        **backbone_kwargs: to `timm.create_model` (e.g. `pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`
            to start from a classification checkpoint, `drop_path_rate`).

    Training needs batches of 2 or more per process, as mmseg's: the pyramid pooling's 1 x 1 branch has one value
    per channel and image for its BatchNorm (use SyncBatchNorm across processes).
    """

    def __init__(self, backbone: str | nn.Module, num_classes: int, channels: int = 512, aux_channels: int = 256,
                 dropout: float = 0.1, **backbone_kwargs):  # fmt: skip
        super().__init__()
        if aux_channels < 0:
            raise ValueError(f"aux_channels must be >= 0 (0: no auxiliary head), got {aux_channels}")
        self.backbone = MultiScaleBackbone(backbone, (4, 8, 16, 32), **backbone_kwargs)
        in_channels = self.backbone.channels
        self.decode_head = UperNetHead(in_channels, num_classes, channels, dropout=dropout)
        self.aux_head = FCNHead(in_channels[2], num_classes, aux_channels, dropout) if aux_channels else None
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {"out": [B, num_classes, H, W], "aux": the auxiliary head's, same shape}."""
        features = self.backbone(x)
        out = {"out": _resize(self.decode_head(features), x.shape[-2:])}
        if self.aux_head is not None:
            out["aux"] = _resize(self.aux_head(features[2]), x.shape[-2:])
        return out


def segmentation_loss(outputs: dict[str, Tensor], target: Tensor, aux_weight: float = 0.4,
                      ignore_index: int = 255) -> Tensor:  # fmt: skip
    """Pixel cross-entropy of "out" plus `aux_weight` times that of "aux" (when present), each averaged over the
    pixels not marked `ignore_index` (0, not NaN, when every pixel is ignored); `target` [B, H, W] class indices."""
    if target.dim() != 3 or target.shape[-2:] != outputs["out"].shape[-2:]:
        raise ValueError(f"target must be [B, H, W] = {tuple(outputs['out'].shape[:1] + outputs['out'].shape[2:])} "
                         f"class indices, got {tuple(target.shape)}")  # fmt: skip
    kept = (target != ignore_index).sum().clamp_min(1)

    def pixel_mean(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum") / kept

    loss = pixel_mean(outputs["out"])
    if "aux" in outputs:
        loss = loss + aux_weight * pixel_mean(outputs["aux"])
    return loss
