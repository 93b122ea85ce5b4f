"""SF-Mamba: the model options and the defining property of every ablation variant (SPEC section 3)."""

from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch
import torch.utils.flop_counter

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba.layers import ScanMixer
from sfmamba.models.sf_mamba import SFMambaStage


def test_nano_models_run_on_small_grey_images():
    torch.manual_seed(0)
    for name in ("sf_mamba_nano", "mambavision_nano"):
        model = timm.create_model(name, num_classes=10, in_chans=1)
        for side in (28, 32, 64):
            out = model(torch.randn(2, 1, side, side))
            assert out.shape == (2, 10) and torch.isfinite(out).all()


def _stage(depth: int, **options) -> SFMambaStage:
    torch.manual_seed(0)
    return SFMambaStage(dim=16, depth=depth, num_heads=2, window_size=4, attention=False, **options).eval()


def _first_depends_on_last(stage: torch.nn.Module) -> bool:
    """Is the gradient of the first patch token's output w.r.t. the last patch of the window nonzero?"""
    x = torch.randn(1, 16, 4, 4, requires_grad=True)
    out = stage(x)
    (grad,) = torch.autograd.grad(out[0, :, 0, 0].sum(), x)
    return bool(grad[0, :, -1, -1].abs().sum() > 0)


@pytest.mark.parametrize(
    "options, blocks, expected",
    [
        pytest.param(dict(aux_tokens=True), 1, False, id="aux-1-block"),
        pytest.param(dict(aux_tokens=True), 2, True, id="aux-2-blocks"),
        pytest.param(dict(aux_tokens=False), 2, False, id="no-aux-2-blocks"),
        pytest.param(dict(aux_tokens=False, scan="parallel"), 1, True, id="parallel-1-block"),
        pytest.param(dict(aux_tokens=False, scan="series"), 1, True, id="series-1-block"),
        pytest.param(dict(aux_tokens=False, scan="cross"), 1, True, id="cross-1-block"),
        pytest.param(dict(aux_tokens=False, flip=True), 1, False, id="flip-1-block"),
        pytest.param(dict(aux_tokens=False, flip=True), 2, True, id="flip-2-blocks"),
        pytest.param(dict(aux_tokens=True, flip=True), 2, True, id="aux-flip-2-blocks"),
    ],
)
def test_future_to_past_information_flow(options, blocks, expected):
    assert _first_depends_on_last(_stage(blocks, **options)) is expected


VARIANTS = {
    "sf_mamba": {},
    "no_aux": dict(aux_tokens=False),
    "mean_init": dict(aux_init="mean"),
    "before_attention": dict(aux_discard="before_attention"),
    "parallel": dict(aux_tokens=False, scan="parallel"),
    "series": dict(aux_tokens=False, scan="series"),
    "cross": dict(aux_tokens=False, scan="cross"),
    "flip": dict(aux_tokens=False, flip=True),
    "no_attention": dict(attention=False),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_and_runs_under_autocast(variant):
    torch.manual_seed(0)
    model = timm.create_model("sf_mamba_nano", num_classes=5, drop_path_rate=0.0, **VARIANTS[variant])
    x = torch.randn(2, 3, 40, 40)  # stage maps 10, 5, 3, 2: stage 3 pads 3x3 to its 4x4 window
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    model.eval()
    with torch.no_grad():
        ref = model(x)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                low = model(x)
            assert low.dtype == dtype and torch.isfinite(low).all()
            assert (low.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3


@pytest.mark.parametrize("name", ["sf_mamba_nano", "sf_mamba_tiny"])
def test_scan_variants_match_parameters(name):
    """Bidirectional and cross scans split the scanned channels between directions: parameters stay those of the
    unidirectional model (SPEC section 3 asks for a match; ours is exact)."""
    counts = {}
    for scan in ("uni", "parallel", "series", "cross"):
        with torch.device("meta"):
            model = timm.create_model(name, scan=scan)
        counts[scan] = sum(p.numel() for p in model.parameters())
    assert len(set(counts.values())) == 1, counts


def _linear_flops(stage: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        stage(x)
    return counter.get_total_flops()


def test_scan_variants_match_macs():
    """The projections' MACs (what FlopCounterMode counts: matmuls and convs) are the same for every scan."""
    flops = {}
    x = torch.randn(2, 32, 7, 7)
    for scan in ("uni", "parallel", "series", "cross"):
        stage = SFMambaStage(dim=32, depth=2, num_heads=2, window_size=7, aux_tokens=False, scan=scan)
        flops[scan] = _linear_flops(stage.eval(), x)
    assert max(flops.values()) <= 1.01 * min(flops.values()), flops


def test_folded_model_equals_unfolded():
    torch.manual_seed(0)
    model = timm.create_model("sf_mamba_nano", fold=1, drop_path_rate=0.0)
    x = torch.randn(4, 3, 64, 64, requires_grad=True)
    ref = model(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *model.parameters()])
    for m in model.modules():
        if hasattr(m, "fold"):
            m.fold = 4  # 4 window sequences per scan row in both hybrid stages
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def _block_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen = {}
    hooks = [
        m.register_forward_pre_hook(lambda _, args, name=name: seen.__setitem__(name, args[0].detach().clone()))
        for name, m in model.named_modules()
        if name.startswith("levels.2.blocks.")
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_aux_tokens_in_the_sequences():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    # stage 3 of the nano model: 4x4 map, one window; block 0 Mamba, block 1 attention
    default = _block_inputs(timm.create_model("sf_mamba_nano").eval(), x)
    assert default["levels.2.blocks.0"].shape[1] == default["levels.2.blocks.1"].shape[1] == 18
    early = _block_inputs(timm.create_model("sf_mamba_nano", aux_discard="before_attention").eval(), x)
    assert early["levels.2.blocks.0"].shape[1] == 18 and early["levels.2.blocks.1"].shape[1] == 16
    plain = _block_inputs(timm.create_model("sf_mamba_nano", aux_tokens=False).eval(), x)
    assert plain["levels.2.blocks.0"].shape[1] == plain["levels.2.blocks.1"].shape[1] == 16
    mean_model = timm.create_model("sf_mamba_nano", aux_init="mean").eval()
    assert not [n for n, _ in mean_model.named_parameters() if ".aux." in n]
    seq = _block_inputs(mean_model, x)["levels.2.blocks.0"]
    torch.testing.assert_close(seq[:, 0], seq[:, 1:-1].mean(1))
    torch.testing.assert_close(seq[:, -1], seq[:, 1:-1].mean(1))


def test_swap_after_each_mamba_block():
    """The sequence entering Mamba block 1 has the tail of block 0's output first."""
    torch.manual_seed(0)
    model = timm.create_model("sf_mamba_nano", attention=False).eval()
    x = torch.randn(1, 3, 64, 64)
    stage = model.levels[2]
    outputs = {}
    hook = stage.blocks[0].mlp.register_forward_hook(lambda _, __, out: outputs.__setitem__("mlp", out.detach()))
    seen = _block_inputs(model, x)
    hook.remove()
    block0 = stage.blocks[0]
    with torch.no_grad():
        inp = seen["levels.2.blocks.0"]
        unswapped = inp + block0.mixer(block0.norm1(inp))
        unswapped = unswapped + outputs["mlp"]
    nxt = seen["levels.2.blocks.1"]
    torch.testing.assert_close(nxt[:, 0], unswapped[:, -1])
    torch.testing.assert_close(nxt[:, -1], unswapped[:, 0])
    torch.testing.assert_close(nxt[:, 1:-1], unswapped[:, 1:-1])


def test_attention_off_uses_mamba_blocks_only():
    model = timm.create_model("sf_mamba_nano", attention=False)
    for stage in model.levels[2:]:
        assert all(isinstance(b.mixer, ScanMixer) for b in stage.blocks)
    default = timm.create_model("sf_mamba_nano")
    assert [type(b.mixer).__name__ for b in default.levels[3].blocks] == ["ScanMixer", "Attention"]


def test_bad_options():
    for kwargs, word in [
        (dict(scan="spiral"), "scan"), (dict(aux_discard="never"), "aux_discard"), (dict(aux_init="zeros"), "aux_init"),
        (dict(flip=1), "flip"), (dict(fold=0), "fold"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=word):
            timm.create_model("sf_mamba_nano", **kwargs)


def test_checkpoint_round_trip_through_timm(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("sf_mamba_nano").eval()
    path = tmp_path / "sf_mamba_nano.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    loaded = timm.create_model("sf_mamba_nano", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_compiles_without_graph_breaks():
    """The in-place swap and the fold views trace into one graph (aot_eager: no C++ compiler on CI)."""
    torch.manual_seed(0)
    model = timm.create_model("sf_mamba_nano", aux_discard="before_attention").eval()
    x = torch.randn(2, 3, 48, 48)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_compiles_with_a_dynamic_batch():
    """A symbolic batch size (dynamic shapes, or dynamo's recompile after a batch change) cannot go through the fold
    table: compiled mixers scan unfolded unless `fold` is set, in one graph."""
    torch.manual_seed(0)
    model = timm.create_model("sf_mamba_nano").eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        for batch in (2, 3):
            x = torch.randn(batch, 3, 48, 48)
            torch.testing.assert_close(compiled(x), model(x))
