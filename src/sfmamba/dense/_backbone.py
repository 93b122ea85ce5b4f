"""A timm backbone's feature maps at chosen strides, for the dense heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MultiScaleBackbone(nn.Module):
    """The maps of a `features_only` timm model at `strides` (ours give strides 4, 8, 16, 32; a ResNet also 2).

    Args:
        backbone: a timm model name, or a `features_only` module with `feature_info`.
        strides: the maps' reductions, increasing.
        **backbone_kwargs: to `timm.create_model` (e.g. `pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`).
    """

    def __init__(self, backbone: str | nn.Module, strides: Sequence[int], **backbone_kwargs):
        super().__init__()
        if isinstance(backbone, str):
            import timm

            backbone = timm.create_model(backbone, features_only=True, **backbone_kwargs)
        elif backbone_kwargs:
            raise ValueError(f"backbone_kwargs apply to a backbone name only, got {sorted(backbone_kwargs)}")
        if not hasattr(getattr(backbone, "feature_info", None), "reduction"):  # (a classifier's is a list of dicts)
            raise ValueError("backbone must be a timm model name or a features_only module with feature_info")
        if not strides or list(strides) != sorted(set(strides)):
            raise ValueError(f"strides must be distinct and increasing, got {list(strides)}")
        reductions = backbone.feature_info.reduction()
        missing = [s for s in strides if s not in reductions]
        if missing:
            raise ValueError(f"the backbone gives maps at strides {reductions}, not {missing}")
        self.body = backbone
        self.take = [reductions.index(s) for s in strides]
        self.channels = [backbone.feature_info.channels()[i] for i in self.take]
        self.strides = list(strides)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.body(x)
        return [maps[i] for i in self.take]
