"""SF-Mamba (arXiv 2603.16423, ICML 2026) as a timm model on sfmamba's ops, with the paper's ablation variants.

Neither the paper nor its poster has public code; this file is our reading of them (SPEC section 3).

Architecture: MambaVision's hierarchy, parameter for parameter outside the hybrid stages (conv stem, two residual
conv stages, two hybrid stages of windowed Mamba-then-attention blocks, BN + pool + linear head); the conv stages,
the blocks (`Block` with a caller-built mixer), the downsample and the stem are MambaVision's modules, reused.

Auxiliary token swapping (the paper's first proposal): each hybrid stage owns two learnable tokens ([2, C], shared
by all windows). Every window sequence becomes [head, x1..xT, tail] (T + 2 tokens instead of the 2T of a
bidirectional scan). Every scan is unidirectional. After each Mamba block the head and tail swap places, so the
tail, which has read the whole window, starts the next block's scan: every token can then read "future" context,
one block later. The tokens are dropped when the stage ends.

How the swap stays O(1): a block's output is a fresh tensor (the residual add allocates it), so the swap writes its
rows 0 and T+1 in place (`swap_aux_tokens_`: 2 rows read, 2 written per window, autograd-safe because no op saves
the add's output). The T patch rows are never copied or moved, the conv and the scan read the sequence as stored,
and folding stays a free view. Adding the tokens costs no extra copy either: the window partition is written
straight into a [windows, T + 2, C] buffer whose end rows hold the tokens (`AuxTokens.attach`).

Batch folding (the second proposal): the mixer views the (images x windows) sequences of length T + 2 as rows of
f sequences and passes `seq_len=T + 2` to the depthwise conv and to the scan, which reset at every boundary; f comes
from the fold planner (`plan_fold`, 1 on CPU) unless the `fold` kwarg fixes it.

Options (model kwargs; defaults are the SF-Mamba model):
    aux_tokens (True): the two tokens per hybrid stage; False is the "no aux tokens" ablation.
    aux_init ("learnable"): "learnable" tokens or "mean" (both start as the window's mean token, no parameters).
    aux_discard ("stage_exit"): drop the tokens at the stage exit, so the attention blocks see them, or
        "before_attention": drop them after the last Mamba block. The attention blocks come after every Mamba
        block of a stage, so this one option is also "whether attention blocks see them".
    scan ("uni"): "uni" (one forward scan); "parallel" (forward and reversed scans side by side in one grouped scan,
        each over half the scanned channels, outputs concatenated); "series" (a forward mixer then a reversed one,
        each of half the inner width); "cross" (4 directions: row-major, column-major and their reverses, a quarter
        of the channels each). All variants have the parameters and MACs of "uni" (see `layers/scan_mixers.py`).
    flip (False): Adventurer-style: reverse the token order between consecutive Mamba blocks (a full copy each time;
        the order is restored at the stage exit). A flip also moves the tail token first, so with aux tokens a
        flipping block does not swap them as well.
    attention (True): False replaces the attention blocks by Mamba blocks.
    fold (None): images per folded scan row; None = the planner (skipped under torch.compile, where the batch may be
        symbolic: unfolded), 1 = no folding.

What the seeds state and what we chose. Stated (poster and paper summary): two learnable auxiliary tokens
prepended/appended to the sequence, T + 2 tokens and an O(1) permutation against the 2T tokens and O(n) permutation
of a bidirectional scan, swapping between Mamba blocks for future-to-past flow under a unidirectional scan, batch
folding with periodic state reset, T/S/B sizes compared with multi-scan baselines. Our choices, where the seeds are
silent: the MambaVision hierarchy and configs (SPEC section 3); one token pair per hybrid stage, shared by its
windows and blocks (+2C parameters per stage: 31.80 M for T against MambaVision-T's 31.79 M); the swap after the
whole block (after the MLP, which acts per token, so the same as right after the mixer), also after the last Mamba
block (harmless: attention is order-invariant); MambaVision's init for every variant (its `_init_weights` also
re-initialises dt_proj, so all variants start alike); tokens trunc-normal(0.02) and exempt from weight decay.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..layers.aux_tokens import AuxTokens, swap_aux_tokens_
from ..layers.scan_mixers import ScanMixer, SeriesScanMixer
from ._checkpoint import create_with_file_hooks
from .mambavision import (
    Block,
    Downsample,
    MambaVision,
    MambaVisionStage,
    _cfg,
    checkpoint_filter_fn,
    run_token_blocks,
    window_partition,
    window_reverse,
)

__all__ = ["SFMamba", "SFMambaBlock", "SFMambaStage"]

SCANS = {"uni": ("row",), "parallel": ("row", "row_rev"), "cross": ("row", "row_rev", "col", "col_rev"), "series": ()}
AUX_DISCARDS = ("stage_exit", "before_attention")

# ----------------------------------------------------------------------------------------------------- blocks


def make_mixer(dim: int, scan: str, window_size: int, num_aux: int, fold: int | None) -> nn.Module:
    """The Mamba mixer of one block for a `scan` variant (MambaVision's d_state 8, conv 3, expand 1)."""
    kwargs = dict(d_state=8, d_conv=3, window_size=window_size, num_aux=num_aux, fold=fold)
    if scan == "series":
        return SeriesScanMixer(dim, expand=1, **kwargs)
    return ScanMixer(dim, expand=1, directions=SCANS[scan], **kwargs)


class SFMambaBlock(Block):
    """MambaVision's Mamba block with a scan-variant mixer; swaps the aux tokens after it and/or flips the order.

    Args:
        swap_aux: swap rows 0 and L-1 of the output in place (the sequence carries aux tokens).
        flip: reverse the token order of the output (Adventurer), a copy.
        Others as `Block`; the mixer comes from `make_mixer`.
    """

    def __init__(self, dim: int, num_heads: int, mixer: nn.Module, swap_aux: bool, flip: bool, **block_kwargs):
        super().__init__(dim, num_heads, use_attention=False, mixer=mixer, **block_kwargs)
        self.swap_aux = swap_aux
        self.flip = flip

    def forward(self, x: Tensor) -> Tensor:
        return self._after(super().forward(x))

    def forward_chained(
        self, x: Tensor, normed: Tensor | None, next_norm: nn.Module | None
    ) -> tuple[Tensor, Tensor | None]:
        x, normed = super().forward_chained(x, normed, next_norm)  # normed is per token: swapped/flipped alike
        return self._after(x), (self._after(normed) if normed is not None else None)

    def _after(self, x: Tensor) -> Tensor:
        if self.swap_aux:
            x = swap_aux_tokens_(x)
        return x.flip(1) if self.flip else x


# ------------------------------------------------------------------------------------------------------ stage


class SFMambaStage(nn.Module):
    """A hybrid stage: downsample, window partition (+ aux tokens), Mamba blocks, attention blocks, and back.

    Args as `MambaVisionStage` (conv=False) plus the model options of the module docstring.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        in_dim: int | None = None,
        drop_path: float | Sequence[float] = 0.0,
        aux_tokens: bool = True,
        aux_init: str = "learnable",
        aux_discard: str = "stage_exit",
        scan: str = "uni",
        flip: bool = False,
        attention: bool = True,
        fold: int | None = None,
        **block_kwargs,
    ):
        super().__init__()
        self.window_size = window_size
        self.grad_checkpointing = False
        self.downsample = nn.Identity() if in_dim is None else Downsample(in_dim, dim)
        self.aux = AuxTokens(dim, aux_init) if aux_tokens else None
        self.aux_discard = aux_discard
        num_aux = 2 if aux_tokens else 0
        self.num_mamba = (depth + 1) // 2 if attention else depth  # odd depth: depth // 2 + 1, as MambaVision
        self.flip_back = flip and (self.num_mamba - 1) % 2 == 1  # flips happen between Mamba blocks only
        dpr = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        blocks = []
        for i in range(depth):
            if i < self.num_mamba:
                mixer = make_mixer(dim, scan, window_size, num_aux, fold)
                flip_here = flip and i < self.num_mamba - 1
                # a flip already brings the tail first; swapping too would undo that for the aux tokens
                swap_here = aux_tokens and not flip_here
                blocks.append(
                    SFMambaBlock(dim, num_heads, mixer, swap_here, flip_here, drop_path=dpr[i], **block_kwargs)
                )
            else:
                blocks.append(Block(dim, num_heads, use_attention=True, drop_path=dpr[i], **block_kwargs))
        self.blocks = nn.Sequential(*blocks)

    def _run(self, blocks: nn.Sequential, x: Tensor) -> Tensor:
        return run_token_blocks(blocks, x, self.grad_checkpointing)

    def _drop_aux(self, x: Tensor) -> Tensor:
        return x[:, 1:-1] if self.aux is not None else x

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        _, _, h, w = x.shape
        ws = self.window_size
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        # [W, ws * ws (+ 2), C]: with aux tokens the partition is written into a buffer with the two end rows
        seq = self.aux.attach(x, ws) if self.aux is not None else window_partition(x, ws)
        seq = self._run(self.blocks[: self.num_mamba], seq)
        if self.flip_back:
            seq = seq.flip(1)
        if self.aux_discard == "before_attention":
            seq = self._drop_aux(seq)
        if self.num_mamba < len(self.blocks):
            seq = self._run(self.blocks[self.num_mamba :], seq)
        if self.aux_discard == "stage_exit":
            seq = self._drop_aux(seq)
        x = window_reverse(seq, ws, hp, wp)
        if pad_b or pad_r:
            x = x[:, :, :h, :w].contiguous()
        return x


# ------------------------------------------------------------------------------------------------------ model


class SFMamba(MambaVision):
    """SF-Mamba: MambaVision's hierarchy with aux-token swapping, unidirectional scans and batch folding.

    Args:
        aux_tokens, aux_init, aux_discard, scan, flip, attention, fold: see the module docstring.
        Others as `MambaVision`.
    """

    def __init__(
        self,
        *args,
        aux_tokens: bool = True,
        aux_init: str = "learnable",
        aux_discard: str = "stage_exit",
        scan: str = "uni",
        flip: bool = False,
        attention: bool = True,
        fold: int | None = None,
        **kwargs,
    ):
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {tuple(SCANS)}, got {scan!r}")
        if aux_discard not in AUX_DISCARDS:
            raise ValueError(f"aux_discard must be one of {AUX_DISCARDS}, got {aux_discard!r}")
        for name, flag in (("aux_tokens", aux_tokens), ("flip", flip), ("attention", attention)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        # read by `_make_stage` during MambaVision.__init__ (a plain attribute; set before nn.Module.__init__)
        self._sf_options = dict(
            aux_tokens=aux_tokens, aux_init=aux_init, aux_discard=aux_discard, scan=scan, flip=flip,
            attention=attention, fold=fold,
        )  # fmt: skip
        super().__init__(*args, **kwargs)

    def _make_stage(self, **stage_kwargs) -> nn.Module:
        if stage_kwargs["conv"]:
            return MambaVisionStage(**stage_kwargs)
        stage_kwargs.pop("conv")
        stage_kwargs.pop("layer_scale_conv")
        return SFMambaStage(**stage_kwargs, **self._sf_options)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        matcher = super().group_matcher(coarse)
        if not coarse:
            matcher["blocks"] = [(r"^levels\.(\d+)\.aux", (0,)), *matcher["blocks"]]
        return matcher


# ---------------------------------------------------------------------------------------------------- create


def _create_sf_mamba(variant: str, pretrained: bool = False, **kwargs) -> SFMamba:
    build = partial(
        build_model_with_cfg,
        SFMamba,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,  # our own state dicts / safetensors; no official weights exist
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
    )
    return create_with_file_hooks(build, pretrained, kwargs)


default_cfgs = generate_default_cfgs(
    {
        "sf_mamba_tiny.untrained": _cfg(license="apache-2.0"),
        "sf_mamba_small.untrained": _cfg(license="apache-2.0"),
        "sf_mamba_base.untrained": _cfg(license="apache-2.0"),
        "sf_mamba_large.untrained": _cfg(license="apache-2.0"),
        "sf_mamba_nano.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license="apache-2.0"),
    }
)


@register_model
def sf_mamba_tiny(pretrained: bool = False, **kwargs) -> SFMamba:
    args = dict(dim=80, in_dim=32, depths=(1, 3, 8, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_sf_mamba("sf_mamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def sf_mamba_small(pretrained: bool = False, **kwargs) -> SFMamba:
    args = dict(dim=96, in_dim=64, depths=(3, 3, 7, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_sf_mamba("sf_mamba_small", pretrained, **dict(args, **kwargs))


@register_model
def sf_mamba_base(pretrained: bool = False, **kwargs) -> SFMamba:
    args = dict(dim=128, in_dim=64, depths=(3, 3, 10, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.3, layer_scale=1e-5)
    return _create_sf_mamba("sf_mamba_base", pretrained, **dict(args, **kwargs))


@register_model
def sf_mamba_large(pretrained: bool = False, **kwargs) -> SFMamba:
    args = dict(
        dim=196, in_dim=64, depths=(3, 3, 10, 5), num_heads=(4, 8, 16, 32), drop_path_rate=0.3, layer_scale=1e-5
    )
    return _create_sf_mamba("sf_mamba_large", pretrained, **dict(args, **kwargs))


@register_model
def sf_mamba_nano(pretrained: bool = False, **kwargs) -> SFMamba:
    """CPU-sized SF-Mamba for small images, the shapes of `mambavision_nano`: at 64 px the hybrid stage maps are 4x4
    and 2x2, one window each (windows 4 and 2), so the scans see 16 + 2 and 4 + 2 tokens."""
    args = dict(
        dim=32, in_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 4, 8), window_size=(8, 8, 4, 2), drop_path_rate=0.1
    )
    return _create_sf_mamba("sf_mamba_nano", pretrained, **dict(args, **kwargs))
