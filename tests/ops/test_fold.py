"""Batch folding: the planner's table precedence and fallbacks, and fold_scan == the unfolded selective_scan."""

from __future__ import annotations

import json
import os
import warnings
from types import SimpleNamespace

import pytest
import torch

from sfmamba.ops.selective_scan import fold as fold_mod
from sfmamba.ops.selective_scan import selective_scan
from sfmamba.ops.selective_scan.fold import (
    SHIPPED_TABLE_PATH,
    fold_scan,
    heuristic_fold,
    largest_divisor_at_most,
    plan_fold,
    update_fold_table,
    user_table_path,
)

CPU = torch.device("cpu")
GPU_NAME = "Fake GPU 80GB"


def entry(batch: int, fold: int, *, dtype: str = "bfloat16", length: int = 196, dim: int = 160, d_state: int = 8):
    return {"dtype": dtype, "batch": batch, "length": length, "dim": dim, "d_state": d_state, "fold": fold}


def write_table(path, entries, device=GPU_NAME) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "devices": {device: {"source": "test", "entries": entries}}}))


def plan(batch: int, dtype=torch.bfloat16, length: int = 196, dim: int = 160, d_state: int = 8) -> int:
    return plan_fold(batch, dim, length, d_state, dtype, CPU)


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """(user table path, shipped table path), both absent at first, for a CPU device named GPU_NAME."""
    monkeypatch.setenv("SFMAMBA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fold_mod, "SHIPPED_TABLE_PATH", tmp_path / "shipped.json")
    monkeypatch.setattr(fold_mod, "device_name", lambda device: GPU_NAME)
    return user_table_path(), tmp_path / "shipped.json"


def test_user_table_beats_shipped_beats_heuristic(tables):
    user, shipped = tables
    assert user == user.parent / "fold_table.json" and user.parent.name == "cache"
    write_table(user, [entry(128, 4)])
    write_table(shipped, [entry(128, 2)])
    assert plan(128) == 4
    user.unlink()
    assert plan(128) == 2
    shipped.unlink()
    assert plan(128) == 1  # heuristic on CPU


def test_user_nearest_batch_beats_shipped_exact(tables):
    user, shipped = tables
    write_table(user, [entry(64, 4)])
    write_table(shipped, [entry(128, 2)])
    assert plan(128) == 4


def test_exact_then_nearest_batch_with_divisor_reduction(tables):
    user, _ = tables
    write_table(user, [entry(64, 8), entry(256, 16), entry(96, 2)])
    assert plan(96) == 2  # exact key wins over the neighbours
    assert plan(100) == 2  # nearest is 96 -> f=2 divides 100
    assert plan(60) == 6  # nearest 64 -> f=8, reduced to the largest divisor of 60 not above 8
    assert plan(176) == 2  # 96 (80 away, f=2) vs 256 (80 away, f=16): a tie goes to the smaller batch
    assert plan(7) == 7  # 64 -> 8 -> largest divisor of 7 not above 8
    assert plan(1000) == 10  # 256 -> 16 -> 10
    assert plan(1000, dtype=torch.float32) == 1  # another dtype has no entry
    assert plan(64, dim=320) == 1  # another shape has no entry


def test_table_reloads_when_the_file_changes(tables):
    user, _ = tables
    write_table(user, [entry(128, 2)])
    assert plan(128) == 2
    update_fold_table(user, GPU_NAME, [entry(128, 8)], "test")  # os.replace: a new file
    assert plan(128) == 8
    write_table(user, [entry(128, 16)])  # rewritten in place
    assert plan(128) == 16


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"version": 99, "devices": {}}),
        json.dumps([1, 2]),
        json.dumps({"version": 1, "devices": {GPU_NAME: {"entries": [entry(128, 3)]}}}),  # 3 does not divide 128
        json.dumps({"version": 1, "devices": {GPU_NAME: {"entries": [{**entry(128, 2), "dtype": "int8"}]}}}),
        json.dumps({"version": 1, "devices": {GPU_NAME: {"entries": [{**entry(128, 2), "batch": "128"}]}}}),
        json.dumps({"version": 1, "devices": {GPU_NAME: {"entries": {}}}}),
    ],
    ids=["json", "version", "not-object", "fold", "dtype", "batch", "entries"],
)
def test_bad_user_table_warns_once_and_falls_back(tables, text):
    user, shipped = tables
    user.parent.mkdir(parents=True)
    user.write_text(text)
    write_table(shipped, [entry(128, 2)])
    with pytest.warns(RuntimeWarning, match=str(user)):
        assert plan(128) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan(128) == 2  # same file: no second warning


def test_cpu_without_tables_is_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SFMAMBA_CACHE_DIR", str(tmp_path))
    assert fold_mod.device_name(CPU) == "cpu"
    for batch in (1, 64, 128, 1024):
        assert plan_fold(batch, 160, 49, 8, torch.bfloat16, CPU) == 1


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("SFMAMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_table_path() == tmp_path / "xdg" / "sfmamba" / "fold_table.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_table_path() == tmp_path / "home" / ".cache" / "sfmamba" / "fold_table.json"
    monkeypatch.setenv("SFMAMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert user_table_path() == tmp_path / "mine" / "fold_table.json"


@pytest.mark.parametrize(
    "shape, fold", [((512, 320, 49), 1), ((256, 320, 49), 1), ((1024, 320, 16), 1), ((1024, 320, 8), 8)]
)
def test_unmeasured_gpu_asks_the_heuristic(tables, monkeypatch, shape, fold):
    """A GPU that neither table knows gets `heuristic_fold`'s answer for its SM count: rows of 16+ steps unfolded
    (folds 2-16 lost on the H100 at the first two, session 28; the old program-count heuristic folded the first
    three by 4, 2 and 8), shorter ones folded."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))
    batch, dim, length = shape
    for dtype in (torch.bfloat16, torch.float32):
        assert plan_fold(batch, dim, length, 8, dtype, torch.device("cuda")) == fold


def test_heuristic_fold():
    assert heuristic_fold(1024, 320, 8, sm_count=132) == 8  # 20 blocks: f=8 leaves 2560 programs, f=16 a 128-step row
    assert heuristic_fold(128, 320, 8, sm_count=132) == 2  # f=2: 1280 programs; f=4: 640 (< 8 per SM)
    assert heuristic_fold(128, 160, 8, sm_count=132) == 1  # f=2 would leave 640 programs for 1056 slots
    assert heuristic_fold(6, 4096, 4, sm_count=1) == 2  # only powers of two that divide the batch
    assert heuristic_fold(1024, 320, 16, sm_count=132) == 1  # 16 steps: measured lengths run unfolded
    assert heuristic_fold(512, 320, 49, sm_count=132) == 1  # lost on the H100 (fold 4: 122 us vs 71 unfolded)


def test_largest_divisor_at_most():
    assert [largest_divisor_at_most(12, cap) for cap in (1, 2, 5, 12, 40)] == [1, 2, 4, 12, 12]


def test_shipped_defaults_are_valid():
    """The shipped table parses, and on an H100 MambaVision-T's batch-128 scans run unfolded in both dtypes: folds 2
    and 4 lost everywhere in session 25 (fp32 (128, 160, 196, 8) fold 2, the table's pick until then, took 104.0 us
    forward against 38.9 unfolded)."""
    data = json.loads(SHIPPED_TABLE_PATH.read_text())
    index = fold_mod._parse_table(data)["NVIDIA H100 80GB HBM3"]
    assert data["devices"]["NVIDIA H100 80GB HBM3"]["source"]
    for dtype in ("bfloat16", "float32"):
        for length, dim in ((196, 160), (198, 160), (49, 320), (51, 320)):
            assert index[(dtype, length, dim, 8)] == {128: 1}, (dtype, length, dim)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_plan_fold_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="batch"):
        plan_fold(bad, 16, 16, 4, torch.float32, CPU)


# --- fold_scan ------------------------------------------------------------------------------------------------------


def scan_inputs(batch, dim, length, nstate, groups, layout, *, full=True, grad=False):
    torch.manual_seed(42)
    seq = (batch, length, dim) if layout == "BLD" else (batch, dim, length)
    if layout == "BLD":
        bc = (batch, length, nstate) if groups == 1 else (batch, length, groups, nstate)
    else:
        bc = (batch, nstate, length) if groups == 1 else (batch, groups, nstate, length)
    inputs = {
        "u": torch.randn(seq),
        "delta": torch.randn(seq) * 0.5,
        "A": -torch.rand(dim, nstate) - 0.1,
        "B": torch.randn(bc),
        "C": torch.randn(bc),
    }
    if full:
        inputs |= {"D": torch.randn(dim), "z": torch.randn(seq), "delta_bias": torch.randn(dim) * 0.1}
    for x in inputs.values():
        x.requires_grad_(grad)
    return inputs


@pytest.mark.parametrize("layout", ["BLD", "BDL"])
@pytest.mark.parametrize("fold", [1, 2, 3, 6])
@pytest.mark.parametrize("groups", [1, 2], ids=["G1", "G2"])
@pytest.mark.parametrize("full", [True, False], ids=["D-z-bias-softplus", "plain"])
def test_fold_scan_matches_unfolded(layout, fold, groups, full, monkeypatch):
    monkeypatch.setenv("SFMAMBA_KERNEL", "naive")
    inputs = scan_inputs(6, 8, 7, 3, groups, layout, full=full)
    init = torch.randn(6, 8, 3)
    ref, ref_last = selective_scan(
        **inputs, delta_softplus=full, return_last_state=True, initial_state=init, layout=layout
    )
    out, last = fold_scan(
        **inputs, delta_softplus=full, return_last_state=True, initial_state=init, fold=fold, layout=layout
    )
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(last, ref_last, rtol=1e-6, atol=1e-6)
    assert fold_scan(**inputs, delta_softplus=full, fold=fold, layout=layout).shape == ref.shape


@pytest.mark.parametrize("layout", ["BLD", "BDL"])
def test_fold_scan_with_inner_segments_and_grads(layout, monkeypatch):
    monkeypatch.setenv("SFMAMBA_KERNEL", "naive")
    inputs = scan_inputs(4, 8, 6, 2, 1, layout, grad=True)
    dout = torch.randn_like(inputs["u"])
    ref = selective_scan(**inputs, delta_softplus=True, seq_len=3, layout=layout)
    ref_grads = torch.autograd.grad(ref, list(inputs.values()), dout)
    out = fold_scan(**inputs, delta_softplus=True, seq_len=3, fold=2, layout=layout)
    grads = torch.autograd.grad(out, list(inputs.values()), dout)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for name, g, g_ref in zip(inputs, grads, ref_grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"d{name}: {m}")


def spy_on_scan(monkeypatch) -> list[dict]:
    calls = []

    def spy(u, delta, A, B, C, D=None, z=None, *args, **kwargs):
        calls.append({"u": u, "delta": delta, "B": B, "C": C, "z": z, **kwargs})
        return selective_scan(u, delta, A, B, C, D, z, *args, **kwargs)

    monkeypatch.setattr(fold_mod, "selective_scan", spy)
    return calls


@pytest.mark.parametrize("groups", [1, 2], ids=["G1", "G2"])
def test_bld_fold_is_a_view(groups, monkeypatch):
    calls = spy_on_scan(monkeypatch)
    inputs = scan_inputs(6, 8, 7, 3, groups, "BLD")
    out = fold_scan(**inputs, fold=3, layout="BLD")
    (call,) = calls
    assert call["u"].shape == (2, 21, 8) and call["seq_len"] == 7
    for name in ("u", "delta", "B", "C", "z"):
        assert call[name].data_ptr() == inputs[name].data_ptr(), f"{name} was copied"
        assert call[name]._base is not None, f"{name} is not a view"
    assert out.shape == inputs["u"].shape


def test_bdl_fold_copies(monkeypatch):
    calls = spy_on_scan(monkeypatch)
    inputs = scan_inputs(6, 8, 7, 3, 2, "BDL")
    fold_scan(**inputs, fold=2, layout="BDL")
    (call,) = calls
    assert call["u"].shape == (3, 8, 14) and call["B"].shape == (3, 2, 3, 14)
    assert call["u"].data_ptr() != inputs["u"].data_ptr()  # documented: a transpose copy


def test_fold_none_asks_the_planner(monkeypatch):
    calls = spy_on_scan(monkeypatch)
    asked = []
    monkeypatch.setattr(fold_mod, "plan_fold", lambda *args: asked.append(args) or 3)
    inputs = scan_inputs(6, 8, 7, 3, 1, "BLD", full=False)
    fold_scan(**inputs)
    assert asked == [(6, 8, 7, 3, torch.float32, CPU)]
    assert calls[0]["u"].shape == (2, 21, 8)


@pytest.mark.parametrize("fold", [4, 0, -2, 12, True, 2.0])
def test_fold_must_divide_batch(fold):
    inputs = scan_inputs(6, 8, 7, 3, 1, "BLD", full=False)
    with pytest.raises(ValueError, match="fold must be a positive int that divides the batch size 6"):
        fold_scan(**inputs, fold=fold)


def test_errors_name_the_unfolded_shapes():
    inputs = scan_inputs(6, 8, 7, 3, 1, "BLD", full=False)
    inputs["delta"] = inputs["delta"][:, :5]
    with pytest.raises(ValueError, match=r"delta must be of shape \(6, 7, 8\)"):
        fold_scan(**inputs, fold=2)
    with pytest.raises(ValueError, match="layout"):
        fold_scan(**scan_inputs(6, 8, 7, 3, 1, "BLD", full=False), fold=2, layout="LBD")


def test_update_fold_table_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "t" / "fold_table.json"
    update_fold_table(path, GPU_NAME, [entry(128, 2)], "first")
    update_fold_table(path, GPU_NAME, [entry(64, 4), entry(128, 8)], "second")
    data = json.loads(path.read_text())
    assert data["devices"][GPU_NAME]["source"] == "second"
    assert {(e["batch"], e["fold"]) for e in data["devices"][GPU_NAME]["entries"]} == {(64, 4), (128, 8)}
    assert os.listdir(path.parent) == ["fold_table.json"]
    assert path.stat().st_mode & 0o777 == 0o644

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fold_mod.os, "replace", broken_replace)
    before = path.read_text()
    with pytest.raises(OSError, match="disk full"):
        update_fold_table(path, GPU_NAME, [entry(32, 2)], "third")
    assert path.read_text() == before
    assert os.listdir(path.parent) == ["fold_table.json"]


def test_update_fold_table_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / "fold_table.json"
    path.write_text("{oops")
    with pytest.raises(ValueError, match="cannot update fold table"):
        update_fold_table(path, GPU_NAME, [entry(128, 2)], "x")
    assert path.read_text() == "{oops"
    with pytest.raises(ValueError, match="fold does not divide batch"):
        update_fold_table(tmp_path / "new.json", GPU_NAME, [entry(128, 3)], "x")
    assert not (tmp_path / "new.json").exists()


def test_planned_fold_compiles_without_graph_breaks(tables):
    user, _ = tables
    write_table(user, [entry(6, 3, dtype="float32", length=7, dim=8, d_state=3)])
    assert plan_fold(6, 8, 7, 3, torch.float32, CPU) == 3
    inputs = scan_inputs(6, 8, 7, 3, 1, "BLD", full=False)
    compiled = torch.compile(lambda **kw: fold_scan(**kw), fullgraph=True, backend="eager", dynamic=False)
    torch.testing.assert_close(compiled(**inputs), selective_scan(**inputs, layout="BLD"), rtol=1e-6, atol=1e-6)
