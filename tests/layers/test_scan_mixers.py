"""Scan-order mixers: grouped projections, direction orders, the grouped multi-direction scan against a plain
per-direction reference, batch folding, and the VMeanba switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sfmamba.ops.vmeanba
from sfmamba.layers import GroupedLinear, MambaVisionMixer, ScanMixer, SeriesScanMixer
from sfmamba.layers.scan_mixers import direction_order
from sfmamba.ops import selective_scan_naive
from sfmamba.testing import assert_close, autograd_node_names, randomise_scan_parameters
from sfmamba.utils._config import graph_train_kernels, set_kernel_backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # Triton on CPU: the conftest's interpreter


def _assert_gradients_close(module: torch.nn.Module, grads, ref_grads, ratio: float) -> None:
    """Each gradient (the input's, then every parameter's) within `ratio` of the reference's largest entry, relative
    only: the scan's parameter gradients are ~1e-6, below any absolute tolerance that would fit the others."""
    names = ["input", *(n for n, _ in module.named_parameters())]
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        assert_close(name, r, g, ratio, atol=0)


def test_grouped_linear_is_block_diagonal():
    torch.manual_seed(0)
    layer = GroupedLinear(6, 9, groups=3)
    assert layer.weight.shape == (9, 2) and layer.bias.shape == (9,)
    dense = torch.block_diag(*layer.weight.view(3, 3, 2))  # [9, 6]
    x = torch.randn(4, 5, 6)
    torch.testing.assert_close(layer(x), F.linear(x, dense, layer.bias))
    single = GroupedLinear(6, 9, groups=1, bias=False)
    assert [n for n, _ in single.named_parameters()] == ["weight"] and single.weight.shape == (9, 6)
    with pytest.raises(ValueError, match="groups"):
        GroupedLinear(6, 8, groups=3)


def test_direction_orders():
    ws = 3
    row = direction_order("row", ws, 2)
    assert row.tolist() == list(range(11))
    assert direction_order("row_rev", ws, 2).tolist() == list(range(10, -1, -1))
    col = direction_order("col", ws, 2)
    assert col.tolist() == [0, 1, 4, 7, 2, 5, 8, 3, 6, 9, 10]  # head, tokens column by column, tail
    assert direction_order("col_rev", ws, 2).tolist() == col.flip(0).tolist()
    assert direction_order("col", ws, 0).tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    with pytest.raises(ValueError, match="direction"):
        direction_order("diag", ws, 2)


def test_unidirectional_mixer_is_the_mambavision_mixer():
    torch.manual_seed(0)
    mixer = ScanMixer(32, window_size=3, num_aux=2)
    reference = MambaVisionMixer(32, d_state=8, d_conv=3, expand=1)
    assert [(n, p.shape) for n, p in mixer.named_parameters()] == [
        (n, p.shape) for n, p in reference.named_parameters()
    ]
    reference.load_state_dict(mixer.state_dict())
    x = torch.randn(4, 11, 32)
    torch.testing.assert_close(mixer(x), reference(x))


def _reference_multi_direction(m: ScanMixer, x: torch.Tensor) -> torch.Tensor:
    """Each direction on its own: reorder its channel group, conv, its x_proj / dt_proj slice, scan, restore."""
    k, c, r, n = len(m.directions), m.d_half // len(m.directions), m.dt_rank, m.d_state
    u, z = m.in_proj(x).chunk(2, dim=-1)
    z = F.silu(F.conv1d(z.transpose(1, 2), m.conv1d_z.weight, padding="same", groups=m.d_half)).transpose(1, 2)
    w_x = m.x_proj.weight.view(k, r + 2 * n, c)
    w_dt, b_dt = m.dt_proj.weight.view(k, c, r), m.dt_proj.bias.view(k, c)
    A = -torch.exp(m.A_log).view(k, c, n)
    outs = []
    for i, direction in enumerate(m.directions):
        order = direction_order(direction, m.window_size, m.num_aux)
        sl = slice(i * c, (i + 1) * c)
        ui = u[:, order, sl].transpose(1, 2)  # [W, c, L]
        ui = F.silu(F.conv1d(ui, m.conv1d_x.weight[sl], padding="same", groups=c))
        dt, B, C = (ui.transpose(1, 2) @ w_x[i].t()).split((r, n, n), dim=-1)
        dt = (dt @ w_dt[i].t() + b_dt[i]).transpose(1, 2)
        y = selective_scan_naive(
            ui, dt, A[i], B.transpose(1, 2), C.transpose(1, 2), m.D[sl], None, b_dt[i], True
        )  # fmt: skip
        outs.append(y.transpose(1, 2)[:, order.argsort()])
    return m.out_proj(torch.cat((*outs, z), dim=-1))


@pytest.mark.parametrize("num_aux", [0, 2])
@pytest.mark.parametrize("directions", [("row_rev",), ("row", "row_rev"), ("row", "row_rev", "col", "col_rev")])
def test_multi_direction_mixer_matches_per_direction_reference(directions, num_aux):
    torch.manual_seed(0)
    m = ScanMixer(32, window_size=3, num_aux=num_aux, directions=directions)
    x = torch.randn(3, 9 + num_aux, 32, requires_grad=True)
    out, ref = m(x), _reference_multi_direction(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, *m.parameters()])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *m.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def _parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_variants_have_the_parameters_of_the_unidirectional_mixer():
    uni = _parameter_count(ScanMixer(160, window_size=7))
    for directions in (("row", "row_rev"), ("row", "row_rev", "col", "col_rev")):
        assert _parameter_count(ScanMixer(160, window_size=7, directions=directions)) == uni
    assert _parameter_count(SeriesScanMixer(160, window_size=7)) == uni


@pytest.mark.parametrize("directions", [("row",), ("row", "row_rev", "col", "col_rev")])
@pytest.mark.parametrize("backend", ["naive", "triton"])
def test_folded_equals_unfolded(directions, backend):
    """fold=3 packs 3 window sequences per scan row; the conv and the scan reset at the boundaries."""
    torch.manual_seed(0)
    m = randomise_scan_parameters(ScanMixer(16, window_size=2, num_aux=2, directions=directions, fold=1)).to(DEVICE)
    x = torch.randn(6, 6, 16, device=DEVICE, requires_grad=True)
    ref = m(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *m.parameters()])
    m.fold = 3
    set_kernel_backend(backend)
    try:
        out = m(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *m.parameters()])
    finally:
        set_kernel_backend(None)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    _assert_gradients_close(m, grads, ref_grads, 1e-4)


def test_fold_planner_is_asked(monkeypatch):
    calls = []

    def plan(batch, dim, length, d_state, dtype, device):
        calls.append((batch, dim, length, d_state, dtype))
        return 2

    torch.manual_seed(0)
    m = ScanMixer(16, window_size=2, num_aux=2, fold=1)
    x = torch.randn(4, 6, 16)
    ref = m(x)
    monkeypatch.setattr("sfmamba.layers.scan_mixers.plan_fold", plan)
    m.fold = None
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    assert calls == [(4, 8, 6, 8, torch.float32)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="directions"):
        ScanMixer(16, directions=("row", "row"))
    with pytest.raises(ValueError, match="directions must divide"):
        ScanMixer(12, directions=("row", "row_rev", "col", "col_rev"))
    with pytest.raises(ValueError, match="fold"):
        ScanMixer(16, fold=0)
    m = ScanMixer(16, window_size=2, num_aux=2, fold=4)
    with pytest.raises(ValueError, match="fold=4"):
        m(torch.randn(6, 6, 16))
    with pytest.raises(ValueError, match="6 tokens"):
        m(torch.randn(4, 4, 16))


@pytest.mark.parametrize("mixer_cls", [MambaVisionMixer, ScanMixer])
def test_vmeanba_switch_calls_the_mean_scan(monkeypatch, mixer_cls):
    calls = []
    real = sfmamba.ops.vmeanba.mean_selective_scan

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sfmamba.ops.vmeanba, "mean_selective_scan", recording)
    torch.manual_seed(0)
    m = mixer_cls(16, d_state=8, d_conv=3, expand=1) if mixer_cls is MambaVisionMixer else ScanMixer(16, window_size=2)
    assert m.vmeanba is False
    x = torch.randn(2, 6, 16)
    full = m(x)
    assert not calls
    m.vmeanba = True
    mean = m(x)
    assert calls == [dict(seq_len=None, layout="BLD")]
    assert torch.isfinite(mean).all() and not torch.allclose(mean, full)


@pytest.mark.parametrize("mixer_cls", [MambaVisionMixer, ScanMixer])
def test_training_mixer_concats_with_the_kernel(mixer_cls):
    """With Triton, the mixer's cat(y, z) and the backward of its conv-output split run `ops.concat` (PyTorch's cat of
    a strided half was 3-10x off bandwidth); the gradients equal the reference path's."""
    torch.manual_seed(0)
    kwargs = dict(window_size=2, num_aux=2) if mixer_cls is ScanMixer else {}
    m = randomise_scan_parameters(mixer_cls(16, **kwargs)).to(DEVICE)
    x = torch.randn(3, 6, 16, device=DEVICE, requires_grad=True)
    ref = m(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *m.parameters()])
    set_kernel_backend("triton")
    try:
        with graph_train_kernels():
            out = m(x)
            names = autograd_node_names(out)
            grads = torch.autograd.grad(out.square().sum(), [x, *m.parameters()])
    finally:
        set_kernel_backend(None)
    assert {"ConcatLastFunctionBackward", "SplitLastFunctionBackward"} <= names
    assert "SplitBackward0" not in names  # (a CatBackward0 remains: the two convs' weights, side by side)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    _assert_gradients_close(m, grads, ref_grads, 1e-4)


@pytest.mark.parametrize("directions", [None, ("row", "row_rev")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_x_proj_rows_padded_for_vector_loads(monkeypatch, dtype, directions):
    """Where the scan runs in Triton, B and C reach it as rows the forward reads by 16-byte loads (x_proj runs with
    zero rows after each direction's dt rows: R = 2 -> 8); outputs and every gradient equal the unpadded
    projection's; the parameters and the state dict keep their shapes. None: MambaVisionMixer; else a ScanMixer
    with a grouped x_proj."""
    from sfmamba.layers import mamba_mixer
    from sfmamba.ops.selective_scan.chunk import _bc_strides, rows_fit_vectors

    seen = []

    def recording(u, dt, A, B, C, *args, **kwargs):
        seen.append(all(rows_fit_vectors(_bc_strides(t, "BLD"), t.element_size(), t.data_ptr(), 8) for t in (B, C)))
        return real(u, dt, A, B, C, *args, **kwargs)

    real = mamba_mixer.selective_scan
    monkeypatch.setattr(mamba_mixer, "selective_scan", recording)
    torch.manual_seed(0)
    if directions is None:
        m = MambaVisionMixer(32, d_state=8)  # dt_rank 2: rows of 18 values, B at value 2
        weight_shape = (18, 32)
    else:
        m = ScanMixer(32, d_state=8, window_size=2, directions=directions)
        weight_shape = (2 * 18, 8)  # two directions' blocks of x_proj rows
    m = randomise_scan_parameters(m).to(DEVICE, dtype)
    x = torch.randn(2, m.seq_len if directions else 7, 32, device=DEVICE, dtype=dtype, requires_grad=True)
    ref = m(x)
    ref_grads = torch.autograd.grad(ref.float().square().sum(), [x, *m.parameters()])
    assert m.dt_pad == 6 and seen == [False]
    set_kernel_backend("triton")
    try:
        out = m(x)
        grads = torch.autograd.grad(out.float().square().sum(), [x, *m.parameters()])
        with torch.no_grad():
            again = m(x)
    finally:
        set_kernel_backend(None)
    assert seen == [False, True, True]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    _assert_gradients_close(m, grads, ref_grads, 1e-4 if dtype == torch.float32 else 5e-2)  # bf16: both paths round
    assert m.x_proj.weight.shape == weight_shape and m.state_dict()["x_proj.weight"].shape == weight_shape


def test_x_proj_padding_respects_hooks_and_state_sizes():
    """No padding where it cannot help (N not a multiple of 4, R already a multiple of 8) and none past a hook on
    x_proj (it must see the call)."""
    assert MambaVisionMixer(32, d_state=6).dt_pad == 0
    assert MambaVisionMixer(128, d_state=8).dt_pad == 0  # R = 8
    m = MambaVisionMixer(32, d_state=8)
    calls = []
    m.x_proj.register_forward_hook(lambda *_: calls.append(1))
    set_kernel_backend("triton")
    try:
        with torch.no_grad():
            m(torch.randn(1, 5, 32))
    finally:
        set_kernel_backend(None)
    assert calls == [1]
