"""VMamba v2 specifics: parameter counts of the official configurations, the channels-last SS2D against the official
channel-first computation (forward and gradients, naive and Triton ops) and its torch.compile graph, loading
official-layout checkpoints through timm's `pretrained_cfg_overlay=dict(file=...)`, the VMeanba switch, odd sizes.
"""

from __future__ import annotations

import contextlib
import re
import sys
import types

import pytest
import timm
import torch
import torch.nn.functional as F

import sfmamba.models  # noqa: F401  (registers the models)
import sfmamba.ops.vmeanba
from sfmamba.layers.ss2d import SS2D
from sfmamba.models.vmamba import VMamba, checkpoint_filter_fn
from sfmamba.ops import selective_scan_naive
from sfmamba.utils._config import set_kernel_backend


@contextlib.contextmanager
def backend(name: str):
    set_kernel_backend(name)
    try:
        yield
    finally:
        set_kernel_backend(None)


@pytest.mark.parametrize("name, millions", [("vmamba_v2_tiny", 30), ("vmamba_v2_small", 49), ("vmamba_v2_base", 87)])
def test_parameter_counts_match_the_official_models(name, millions):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) < 0.5


def test_official_configuration():
    model = timm.create_model("vmamba_v2_tiny", pretrained=False)
    op = model.layers[2].blocks[0].op
    assert (op.d_state, op.d_inner, op.dt_rank) == (1, 384, 24)
    assert op.conv2d.bias is None and op.conv2d.kernel_size == (3, 3) and op.in_proj.bias is None
    assert [len(s.blocks) for s in model.layers] == [2, 2, 8, 2]
    assert [f["num_chs"] for f in model.feature_info] == [96, 192, 384, 768]
    assert model.layers[3].blocks[1].drop_path.drop_prob == pytest.approx(0.2)
    assert model.layers[0].blocks[0].mlp.fc1.out_features == 4 * 96


# ------------------------------------------------------------------------------------------------------- SS2D


def _official_ss2d_forward(p: dict[str, torch.Tensor], x_nchw: torch.Tensor) -> torch.Tensor:
    """The official `forward_type="v05_noz"`, channel-first SS2D, step by step, from its parameters under their
    official names: [B, C, H, W] -> [B, C, H, W]."""
    b, _, h, w = x_nchw.shape
    (k, n), (d, r), length = p["A_logs"].shape, p["dt_projs_weight"].shape[1:], h * w
    n_dirs = 4
    assert k == n_dirs * d
    x = F.conv2d(x_nchw, p["in_proj.weight"].view(d, -1, 1, 1))  # Linear2d
    x = F.silu(F.conv2d(x, p["conv2d.weight"], p.get("conv2d.bias"), padding=1, groups=d))
    xs = x.new_empty(b, n_dirs, d, length)
    xs[:, 0] = x.flatten(2)
    xs[:, 1] = x.transpose(2, 3).flatten(2)
    xs[:, 2:4] = xs[:, 0:2].flip(-1)
    x_dbl = F.conv1d(xs.view(b, -1, length), p["x_proj_weight"].reshape(-1, d, 1), groups=n_dirs)
    dts, Bs, Cs = torch.split(x_dbl.view(b, n_dirs, -1, length), [r, n, n], dim=2)
    dts = F.conv1d(dts.contiguous().view(b, -1, length), p["dt_projs_weight"].reshape(k, -1, 1), groups=n_dirs)
    A = -torch.exp(p["A_logs"].float())
    ys = selective_scan_naive(
        xs.view(b, -1, length), dts, A, Bs.contiguous(), Cs.contiguous(), p["Ds"].float(), None,
        p["dt_projs_bias"].reshape(-1).float(), True,
    ).view(b, n_dirs, d, length)  # fmt: skip
    ys = ys[:, 0:2] + ys[:, 2:4].flip(-1)
    y = ys[:, 0] + ys[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, length)
    y = F.layer_norm(y.transpose(1, 2), (d,), p["out_norm.weight"], p["out_norm.bias"]).transpose(1, 2)
    return F.conv2d(y.reshape(b, d, h, w), p["out_proj.weight"].view(-1, d, 1, 1))


def _official_vssm_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depths: list[int]) -> torch.Tensor:
    """The official channel-first VSSM (`norm_layer="ln2d"`, patch embed v2, downsample v3) from an official state
    dict: stem, blocks with pre-norm residuals, a downsample at the end of every stage but the last, classifier."""

    def ln2d(t, name):
        c = t.shape[1]
        return F.layer_norm(t.permute(0, 2, 3, 1), (c,), sd[f"{name}.weight"], sd[f"{name}.bias"]).permute(0, 3, 1, 2)

    def linear2d(t, name):
        weight = sd[f"{name}.weight"]
        return F.conv2d(t, weight.view(weight.shape[0], -1, 1, 1), sd.get(f"{name}.bias"))

    x = F.conv2d(x, sd["patch_embed.0.weight"], sd["patch_embed.0.bias"], stride=2, padding=1)
    x = F.gelu(ln2d(x, "patch_embed.2"))
    x = ln2d(F.conv2d(x, sd["patch_embed.5.weight"], sd["patch_embed.5.bias"], stride=2, padding=1), "patch_embed.7")
    for i, depth in enumerate(depths):
        for j in range(depth):
            block = f"layers.{i}.blocks.{j}"
            op = {k.removeprefix(f"{block}.op."): v for k, v in sd.items() if k.startswith(f"{block}.op.")}
            x = x + _official_ss2d_forward(op, ln2d(x, f"{block}.norm"))
            x = x + linear2d(F.gelu(linear2d(ln2d(x, f"{block}.norm2"), f"{block}.mlp.fc1")), f"{block}.mlp.fc2")
        if i < len(depths) - 1:
            down = f"layers.{i}.downsample"
            x = F.conv2d(x, sd[f"{down}.1.weight"], sd[f"{down}.1.bias"], stride=2, padding=1)
            x = ln2d(x, f"{down}.3")
    x = ln2d(x, "classifier.norm").mean((2, 3))
    return F.linear(x, sd["classifier.head.weight"], sd["classifier.head.bias"])


@pytest.mark.parametrize("kernel", ["naive", "triton"])
def test_ss2d_matches_official_computation(kernel):
    """A non-square map (5 x 7) so any mixed-up transpose or direction shows; forward and every gradient."""
    torch.manual_seed(0)
    m = SS2D(d_model=16, d_state=2, ssm_ratio=1.0)
    assert [name for name, _ in m.named_parameters()] == [
        "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds", "in_proj.weight", "conv2d.weight",
        "out_norm.weight", "out_norm.bias", "out_proj.weight",
    ]  # fmt: skip
    with torch.no_grad():
        m.A_logs.uniform_(-1.0, 1.0)  # distinct decays per direction and state
        m.Ds.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 5, 7, requires_grad=True)
    with backend(kernel):
        out = m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    ref = _official_ss2d_forward(dict(m.named_parameters()), x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    params = [x, *m.parameters()]
    grads = torch.autograd.grad(out.square().sum(), params)
    ref_grads = torch.autograd.grad(ref.square().sum(), params)
    for (name, _), g, r in zip([("x", None), *m.named_parameters()], grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=lambda s, name=name: f"d{name}: {s}")


def test_vmeanba_switch_calls_mean_selective_scan_with_the_scan_arguments(monkeypatch):
    torch.manual_seed(0)
    m = SS2D(d_model=8)
    x = torch.randn(1, 3, 4, 8)
    calls = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] = (args, kwargs)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(sfmamba.layers.ss2d, "selective_scan", spy("full", sfmamba.layers.ss2d.selective_scan))
    monkeypatch.setattr(
        sfmamba.ops.vmeanba, "mean_selective_scan", spy("mean", sfmamba.ops.vmeanba.mean_selective_scan)
    )
    full = m(x)
    m.vmeanba = True
    mean = m(x)
    assert set(calls) == {"full", "mean"}
    for a, b in zip(calls["full"][0], calls["mean"][0]):
        assert a is b or (isinstance(a, torch.Tensor) and torch.equal(a, b)) or a == b
    assert calls["full"][1] == calls["mean"][1] == {"layout": "BLD"}
    u, _, _, B = calls["mean"][0][:4]
    assert u.shape == (1, 12, 4 * 8) and B.shape == (1, 12, 4, 1)  # 4 directions of 8 channels, one B per direction
    assert mean.shape == full.shape and torch.isfinite(mean).all() and not torch.allclose(mean, full)


# ------------------------------------------------------------------------------------------------- checkpoints


def _to_official(key: str) -> str:
    """Our key -> the official VMamba v2 key (the reverse of `checkpoint_filter_fn`'s renaming)."""
    for pattern, repl in (
        (r"^patch_embed\.conv1\.", "patch_embed.0."),
        (r"^patch_embed\.norm1\.", "patch_embed.2."),
        (r"^patch_embed\.conv2\.", "patch_embed.5."),
        (r"^patch_embed\.norm2\.", "patch_embed.7."),
        (r"^norm\.", "classifier.norm."),
        (r"^head\.", "classifier.head."),
    ):
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    m = re.match(r"^layers\.(\d+)\.downsample\.(conv|norm)\.(.*)$", key)
    if m:
        return f"layers.{int(m.group(1)) - 1}.downsample.{1 if m.group(2) == 'conv' else 3}.{m.group(3)}"
    return key


# One block and one downsample as the official code names them (SS2Dv2 / VSSBlock / Mlp / _make_downsample_v3).
OFFICIAL_BLOCK_KEYS = {
    "norm.weight", "norm.bias", "op.x_proj_weight", "op.dt_projs_weight", "op.dt_projs_bias", "op.A_logs",
    "op.Ds", "op.in_proj.weight", "op.conv2d.weight", "op.out_norm.weight", "op.out_norm.bias",
    "op.out_proj.weight", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
    "mlp.fc2.bias",
}  # fmt: skip
OFFICIAL_OTHER_KEYS = {
    *(f"patch_embed.{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias")),
    *(f"layers.{i}.downsample.{j}.{p}" for i in range(3) for j in (1, 3) for p in ("weight", "bias")),
    "classifier.norm.weight", "classifier.norm.bias", "classifier.head.weight", "classifier.head.bias",
}  # fmt: skip


def _official_state(model: VMamba) -> dict[str, torch.Tensor]:
    state = {_to_official(k): v.clone() for k, v in model.state_dict().items()}
    for key in [k for k in state if k.endswith(("in_proj.weight", "out_proj.weight"))]:
        state[key] = state[key][:, :, None, None]  # some official files hold Linear2d weights as 1x1 convs
    return state


def test_official_key_names():
    model = timm.create_model("vmamba_v2_nano")
    official = set(_official_state(model))
    blocks = {k for k in official if re.match(r"^layers\.\d+\.blocks\.", k)}
    assert {re.sub(r"^layers\.\d+\.blocks\.\d+\.", "", k) for k in blocks} == OFFICIAL_BLOCK_KEYS
    assert len(blocks) == len(OFFICIAL_BLOCK_KEYS) * 5  # depths (1, 1, 2, 1)
    assert official - blocks == OFFICIAL_OTHER_KEYS


def _save_like_official_training(path, model: VMamba, monkeypatch) -> None:
    """A file shaped like the official `save_checkpoint_ema`: weights, EMA weights (perturbed here, so loading them
    by mistake shows), optimizer state, and the training config pickled as a `yacs.config.CfgNode`."""
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):  # what pickle records: the class yacs.config.CfgNode, dict items, attribute state
        def __init__(self, items):
            super().__init__(items)
            self.__dict__["__immutable__"] = True

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    yacs_config.CfgNode = CfgNode
    state = _official_state(model)
    ema = {k: v + 0.1 if v.is_floating_point() else v for k, v in state.items()}
    config = CfgNode({"MODEL": CfgNode({"TYPE": "vssm", "NAME": "vssm1_tiny_0230s"}), "OUTPUT": "/out"})
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "yacs", yacs)
        m.setitem(sys.modules, "yacs.config", yacs_config)
        torch.save({"model": state, "model_ema": ema, "optimizer": {"state": {}}, "epoch": 1, "config": config}, path)


@pytest.mark.parametrize("num_classes", [10, 5, 0])
def test_official_checkpoint_loads_through_timm(tmp_path, num_classes, monkeypatch):
    torch.manual_seed(0)
    source = timm.create_model("vmamba_v2_nano", num_classes=10).eval()
    path = tmp_path / "vssm_nano_ckpt_epoch_1.pth"
    _save_like_official_training(path, source, monkeypatch)
    assert "yacs.config" not in sys.modules
    model = timm.create_model(
        "vmamba_v2_nano", pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        if num_classes == 10:
            torch.testing.assert_close(model(x), source(x))
        else:  # another classifier: everything else is loaded
            torch.testing.assert_close(model.forward_features(x), source.forward_features(x))
    assert model.pretrained_cfg["file"] == str(path)


def test_model_matches_official_computation_on_official_weights():
    """The whole model against the official channel-first network run from the official-layout state dict: stem,
    block order, downsample placement, norms and classifier; a non-square image with odd stage maps."""
    torch.manual_seed(0)
    model = timm.create_model("vmamba_v2_nano", num_classes=5).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SS2D):
                m.A_logs.uniform_(-1.0, 1.0)
                m.Ds.uniform_(0.5, 1.5)
            if isinstance(m, torch.nn.LayerNorm):  # non-trivial affine parameters
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 36, 52)
    with torch.no_grad():
        ref = _official_vssm_forward(_official_state(model), x, depths=[1, 1, 2, 1])
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)


def test_checkpoint_mismatch_is_a_clear_error():
    model = timm.create_model("vmamba_v2_nano")
    state = _official_state(model)
    del state["layers.1.blocks.0.op.A_logs"]
    state["layers.0.blocks.0.op.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as err:
        checkpoint_filter_fn({"model": state}, model)
    message = str(err.value)
    assert "missing keys (1): layers.1.blocks.0.op.A_logs" in message
    assert "unexpected keys (1): layers.0.blocks.0.op.extra" in message
    with torch.device("meta"):
        tiny = timm.create_model("vmamba_v2_tiny")
    with pytest.raises(RuntimeError, match=r"wrong shapes .*patch_embed\.conv1\.weight: file \(16, 3, 3, 3\) vs model"):
        checkpoint_filter_fn(_official_state(model), tiny)


# ------------------------------------------------------------------------------------------------------- model


def test_any_resolution_and_channels_last_views():
    torch.manual_seed(0)
    model = timm.create_model("vmamba_v2_nano", num_classes=3).eval()
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        out = model(x)
        final, inters = model.forward_intermediates(x)
        nhwc = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    assert [tuple(t.shape[2:]) for t in inters] == [(10, 13), (5, 7), (3, 4), (2, 2)]
    for t, u in zip(inters, nhwc):
        assert t.is_contiguous(memory_format=torch.channels_last)  # an NCHW view of the NHWC map: no copy
        torch.testing.assert_close(t.permute(0, 2, 3, 1), u)


def test_ss2d_compiles_to_one_graph():
    """torch.compile(fullgraph=True) traces the whole mixer with the Triton ops (custom ops with fakes and autograd)."""
    torch.manual_seed(0)
    m = SS2D(d_model=8)
    x = torch.randn(1, 3, 5, 8, requires_grad=True)
    traced = []

    def recording_backend(gm, example_inputs):
        traced.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        keep = lambda g, _: make_boxed_func(g)  # noqa: E731  (run the traced graphs as they are)
        return aot_autograd(fw_compiler=keep, bw_compiler=keep)(gm, example_inputs)

    torch._dynamo.reset()
    with backend("triton"):
        out = torch.compile(m, backend=recording_backend, fullgraph=True)(x)
        ref = m(x)
    for op in ("cross_scan", "selective_scan_fwd", "cross_merge"):
        assert any(f"sfmamba.{op}" in t for t in traced), (op, traced)
    torch.testing.assert_close(out, ref)
    dout = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, dout)[0], torch.autograd.grad(ref, x, dout)[0])
