"""VMeanba's SS2D fast path (ops/vmeanba/cross.py): each Triton kernel (channel means, directional scans, merged
output) against its reference, the references against step loops, and the whole path against
cross_scan -> mean_selective_scan -> cross_merge.

The Triton kernels run on CPU tensors through the interpreter (small shapes: odd position counts and maps, channel
counts that are not a multiple of the block, N in {1, 4, 16}, dt ranks 1 and 6, bf16 and fp32).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from sfmamba.layers.ss2d import SS2D  # noqa: E402
from sfmamba.ops import cross_merge, cross_scan  # noqa: E402
from sfmamba.ops.vmeanba import mean_selective_scan  # noqa: E402
from sfmamba.ops.vmeanba.cross import (  # noqa: E402
    cross_mean_inputs_naive,
    cross_mean_inputs_triton,
    directional_scan,
    directional_scan_naive,
    directional_scan_triton,
    linear_recurrence,
    merged_output_naive,
    merged_output_triton,
    vmeanba_cross_merged,
)
from sfmamba.testing import assert_close, randomise_scan_parameters, run_without_interpreter  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402


@pytest.mark.parametrize(("positions", "dim", "rank", "nstate"), [(1, 5, 1, 1), (37, 40, 6, 4), (70, 96, 3, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_mean_kernel_matches_reference(positions, dim, rank, nstate, dtype):
    torch.manual_seed(positions)
    k = 4
    x = torch.randn(positions, dim).to(dtype)
    dts = torch.randn(positions, k, rank).to(dtype)
    weight, bias = torch.randn(k, dim, rank) * 0.5, torch.randn(k, dim) * 0.3 - 1.0
    A = -torch.exp(torch.randn(k * dim, nstate) * 0.5)
    want = cross_mean_inputs_naive(x, dts, weight, bias, A)
    got = cross_mean_inputs_triton(x, dts, weight, bias, A)  # outputs NaN-poisoned by conftest: all written
    for name, g, w in zip(("decay", "dtu"), got, want, strict=True):
        assert g.dtype == torch.float32
        assert_close(name, w, g, 1e-5)


def test_channel_mean_kernel_softplus_branches():
    # steps past both softplus thresholds (z > 20: dt = z; z < -15: dt = exp(z)) and between them
    torch.manual_seed(2)
    k, positions, dim, rank, nstate = 4, 19, 24, 2, 2
    x, dts = torch.randn(positions, dim), torch.randn(positions, k, rank) * 12
    weight, bias = torch.randn(k, dim, rank), torch.randn(k, dim) * 4
    A = -torch.exp(torch.randn(k * dim, nstate) * 0.5) * 0.05  # keeps exp(dt * A) away from 0 at dt ~ 40
    z = torch.einsum("pkr,kdr->pkd", dts, weight) + bias
    assert (z > 20).any() and (z < -15).any() and ((z > -15) & (z < 20)).any()
    want = cross_mean_inputs_naive(x, dts, weight, bias, A)
    got = cross_mean_inputs_triton(x, dts, weight, bias, A)
    for name, g, w in zip(("decay", "dtu"), got, want, strict=True):
        assert_close(name, w, g, 1e-5)


CHANNEL_MEAN_SM90_COMPILE = """
from sfmamba.ops.vmeanba import cross
from sfmamba.testing import compile_for_sm90

for dtype, dot_fp32 in (("bf16", False), ("fp16", False), ("fp32", True)):
    types = dict(x_ptr=dtype, dts_ptr=dtype, w_ptr=dtype, bias_ptr="fp32", A_ptr="fp32", decay_ptr="fp32",
                 dtu_ptr="fp32")
    for rank_block in (16, 64):
        flags = dict(K=4, BLOCK_P=32, BLOCK_D=32, BLOCK_N=1, BLOCK_R=rank_block, DOT_FP32=dot_fp32)
        compiled = compile_for_sm90(cross.cross_mean_inputs_kernel, flags, 4, lambda name: "*" + types[name])
        ptx = compiled.asm["ptx"]
        print(dtype, rank_block, "cubin" if compiled.asm.get("cubin") else "no-cubin",
              "mma" if "mma.sync" in ptx or "wgmma" in ptx else "fma")
"""


def test_channel_mean_kernel_compiles_for_sm90():
    """The interpreter never compiles, and its bf16 tl.dot is wrong (the tests above take the fp32 product there):
    build the channel-mean kernel for an H100 with Triton's bundled ptxas for bf16/fp16/fp32 inputs and ranks up to
    64, and check that the 16-bit inputs project on tensor cores (mma) and fp32 stays exact (FMA, no tf32)."""
    result = run_without_interpreter(CHANNEL_MEAN_SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 6 and all(" cubin " in line for line in lines), result.stdout
    assert [line.split()[-1] for line in lines] == ["mma"] * 4 + ["fma"] * 2, result.stdout


@pytest.mark.parametrize("length", [1, 2, 7, 49, 70])
def test_doubling_recurrence_matches_a_step_loop(length):
    torch.manual_seed(length)
    a, b = torch.rand(3, length, 2, dtype=torch.float64), torch.randn(3, length, 2, dtype=torch.float64)
    h, states = torch.zeros(3, 2, dtype=torch.float64), []
    for t in range(length):
        h = a[:, t] * h + b[:, t]
        states.append(h)
    torch.testing.assert_close(linear_recurrence(a, b), torch.stack(states, 1))


def _scan_orders(height: int, width: int) -> list[list[int]]:
    """Map positions (h * W + w) in the order each direction visits them: rows, columns, both reversed."""
    rows = [h * width + w for h in range(height) for w in range(width)]
    cols = [h * width + w for w in range(width) for h in range(height)]
    return [rows, cols, rows[::-1], cols[::-1]]


def _scan_inputs(batch, height, width, rank, nstate, dtype):
    """decay, dtu (fp32, map order) and a proj [B, H, W, K, R + 2N] that is a strided view (like x_proj's split)."""
    k = 4
    decay = torch.rand(batch, height, width, k, nstate) * 0.5 + 0.45
    dtu = torch.randn(batch, height, width, k)
    wide = torch.randn(batch, height, width, k, rank + 2 * nstate + 3).to(dtype)
    return decay, dtu, wide[..., 1 : rank + 2 * nstate + 1]  # not contiguous: the kernel must follow the strides


@pytest.mark.parametrize(("height", "width"), [(5, 7), (7, 3), (1, 9)])
def test_directional_scan_reference_is_a_step_loop_per_direction(height, width):
    torch.manual_seed(height + width)
    rank, nstate = 2, 3
    decay, dtu, proj = _scan_inputs(2, height, width, rank, nstate, torch.float64)
    decay, dtu = decay.double(), dtu.double()
    B, C = proj[..., rank : rank + nstate], proj[..., rank + nstate :]
    want = torch.zeros(2, height * width, 4, dtype=torch.float64)
    for k, order in enumerate(_scan_orders(height, width)):
        h = torch.zeros(2, nstate, dtype=torch.float64)
        for pos in order:
            i, j = divmod(pos, width)
            h = decay[:, i, j, k] * h + dtu[:, i, j, k, None] * B[:, i, j, k]
            want[:, pos, k] = (h * C[:, i, j, k]).sum(-1)
    got = directional_scan_naive(decay, dtu, proj, rank)
    torch.testing.assert_close(got.double(), want.view(2, height, width, 4), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("height", "width", "rank", "nstate"), [(5, 7, 6, 1), (7, 3, 3, 4), (1, 9, 1, 2), (6, 6, 2, 1)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_directional_scan_kernel_matches_reference(height, width, rank, nstate, dtype):
    torch.manual_seed(height * width + nstate)
    decay, dtu, proj = _scan_inputs(2, height, width, rank, nstate, dtype)
    want = directional_scan_naive(decay, dtu, proj, rank)
    got = directional_scan_triton(decay, dtu, proj, rank)  # y NaN-poisoned by conftest: every (position, k) written
    assert got.dtype == torch.float32
    assert_close("directional scan", want, got, 1e-5)


def test_directional_scan_rejects_other_direction_counts():
    decay, dtu, proj = _scan_inputs(1, 3, 4, 2, 1, torch.float32)
    with pytest.raises(ValueError, match="decay must be"):
        directional_scan(decay[..., :3, :], dtu[..., :3], proj[..., :3, :], 2)
    with pytest.raises(ValueError, match="proj must be"):
        directional_scan(decay, dtu, proj, 3)


@pytest.mark.parametrize(("positions", "dim", "directions"), [(1, 5, 4), (37, 40, 4), (35, 130, 4), (9, 7, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_output_kernel_matches_reference(positions, dim, directions, dtype):
    torch.manual_seed(positions + dim)
    y, skip = torch.randn(positions, directions), torch.randn(dim)
    x = torch.randn(positions, dim + 2).to(dtype)[:, 1:-1]  # a strided row view
    want = merged_output_naive(y, x, skip)
    got = merged_output_triton(y, x, skip)  # NaN-poisoned output
    assert got.dtype == dtype and got.shape == x.shape
    by_hand = y.sum(-1, keepdim=True) + x.float() * skip
    assert_close("merged output vs by hand", by_hand, want.float(), 1e-5 if dtype == torch.float32 else 1e-2)
    if dtype == torch.float32:
        assert_close("merged output", want, got, 1e-6)
    else:  # fp32 math, one rounding to bf16: at most one bf16 step apart (the direction sum's order may differ)
        step = want.float().abs() * 2**-7 + 1e-30
        assert ((got.float() - want.float()).abs() <= step).all()


def _ss2d(dim: int, nstate: int) -> SS2D:
    block = randomise_scan_parameters(SS2D(dim, d_state=nstate)).eval()  # away from the init, so every term matters
    block.vmeanba = True
    return block


@pytest.mark.parametrize("backend", ["naive", "triton"])
@pytest.mark.parametrize(
    ("height", "width", "dim", "nstate"), [(5, 7, 16, 1), (4, 4, 24, 4), (1, 9, 8, 2), (7, 3, 40, 1)]
)
def test_fast_path_equals_the_generic_vmeanba_block(backend, height, width, dim, nstate):
    torch.manual_seed(height * width)
    block, x = _ss2d(dim, nstate), torch.randn(2, height, width, dim)
    set_kernel_backend(backend)
    try:
        with torch.no_grad():
            block.vmeanba_fast_path = False
            generic = block(x)
            block.vmeanba_fast_path = True
            fast = block(x)
    finally:
        set_kernel_backend(None)
    assert_close("fast path", generic, fast, 1e-5)


def _generic_merged(block: SS2D, x: Tensor) -> Tensor:
    """What SS2D's generic VMeanba path feeds its out_norm: cross_scan -> mean_selective_scan -> cross_merge, fp32."""
    batch, height, width, dim = x.shape
    k, r, n = 4, block.dt_rank, block.d_state
    xs = cross_scan(x.float(), layout="BHWC", scan_layout="BLD").view(batch, height * width, k * dim)
    x_proj, dt_proj = (w.float() for w in block._projection_weights())
    dts, Bs, Cs = F.linear(xs, x_proj).split((k * r, k * n, k * n), dim=-1)
    y = mean_selective_scan(
        xs, F.linear(dts, dt_proj), -torch.exp(block.A_logs.float()), Bs.unflatten(-1, (k, n)),
        Cs.unflatten(-1, (k, n)), block.Ds.float(), None, block.dt_projs_bias.reshape(-1).float(), True, layout="BLD",
    )  # fmt: skip
    return cross_merge(y.view(batch, height * width, k, dim), height, width, scan_layout="BLD", layout="BHWC")


@pytest.mark.parametrize("backend", ["naive", "triton"])
@pytest.mark.parametrize(("height", "width", "nstate", "dtype"), [(5, 7, 1, torch.float32), (7, 3, 4, torch.bfloat16)])
def test_merged_output_equals_the_cross_merged_mean_scan(backend, height, width, nstate, dtype):
    # before out_norm: the scan term is visible here (SS2D's LayerNorm removes it, see the test below)
    torch.manual_seed(height + nstate)
    block, x = _ss2d(24, nstate), torch.randn(2, height, width, 24)
    A = -torch.exp(block.A_logs.float())
    with torch.no_grad():
        set_kernel_backend("naive")
        want = _generic_merged(block, x.to(dtype))
        set_kernel_backend(backend)
        try:
            got = vmeanba_cross_merged(
                x.to(dtype), block.x_proj_weight.to(dtype), block.dt_projs_weight.to(dtype),
                block.dt_projs_bias.to(dtype), A, block.Ds,
            )  # fmt: skip
        finally:
            set_kernel_backend(None)
    assert got.dtype == dtype
    scan_term = want - x.to(dtype).float() * block.Ds.detach().view(4, 24).sum(0)
    assert scan_term.norm() > 0.03 * want.norm()  # the reduced scans matter: a wrong scan cannot hide in the skip
    assert_close("merged", want, got.float(), 1e-5 if dtype == torch.float32 else 2e-2)


def test_layer_norm_removes_the_scan_term_of_a_converted_block():
    # the broadcast scan output is the same in every channel of a position, so SS2D's out_norm (a LayerNorm over the
    # channels) subtracts it: a converted block's output depends on x * sum_k D_k only
    torch.manual_seed(4)
    block, x = _ss2d(16, 2), torch.randn(2, 5, 7, 16)
    A = -torch.exp(block.A_logs.float())
    with torch.no_grad():
        merged = vmeanba_cross_merged(x, block.x_proj_weight, block.dt_projs_weight, block.dt_projs_bias, A, block.Ds)
        skip_only = x * block.Ds.view(4, 16).sum(0)
        assert (merged - skip_only).norm() > 0.1 * merged.norm()
        assert_close("LayerNorm", block.out_norm(skip_only), block.out_norm(merged), 1e-5)


@pytest.mark.parametrize("backend", ["naive", "triton"])
def test_fast_path_in_bf16_is_close_to_the_fp32_generic_block(backend):
    torch.manual_seed(3)
    block, x = _ss2d(24, 1), torch.randn(2, 5, 7, 24)
    set_kernel_backend(backend)
    try:
        with torch.no_grad():
            block.vmeanba_fast_path = False
            reference = block(x)  # fp32
            block.vmeanba_fast_path = True
            fast = block.to(torch.bfloat16)(x.to(torch.bfloat16))
    finally:
        set_kernel_backend(None)
    assert fast.dtype == torch.bfloat16
    assert_close("bf16 fast path", reference, fast.float(), 3e-2)


def test_fast_path_is_the_cross_merge_of_the_mean_scan():
    torch.manual_seed(0)
    block = _ss2d(12, 2)
    x = torch.randn(1, 3, 5, block.d_inner)
    A = -torch.exp(block.A_logs.float())
    with torch.no_grad():
        merged = vmeanba_cross_merged(x, block.x_proj_weight, block.dt_projs_weight, block.dt_projs_bias, A, block.Ds)
        # by hand: each direction's channels averaged, scanned, broadcast, skip added, directions summed
        k, r, n, d = 4, block.dt_rank, block.d_state, block.d_inner
        seqs = [x.reshape(15, d), x.transpose(1, 2).reshape(15, d)]
        seqs += [seqs[0].flip(0), seqs[1].flip(0)]
        ys = []
        for j, seq in enumerate(seqs):
            dts, B, C = (seq @ block.x_proj_weight[j].T).split((r, n, n), dim=-1)
            dt = torch.nn.functional.softplus(dts @ block.dt_projs_weight[j].T + block.dt_projs_bias[j])  # [L, D]
            Aj, Dj = A.view(k, d, n)[j], block.Ds.view(k, d)[j]
            h, out = torch.zeros(n), []
            for t in range(15):
                h = torch.exp(dt[t, :, None] * Aj).mean(0) * h + (dt[t] * seq[t]).mean() * B[t]
                out.append((h * C[t]).sum() + Dj * seq[t])
            ys.append(torch.stack(out))
        by_hand = ys[0] + ys[2].flip(0)
        by_hand = by_hand.view(3, 5, d) + (ys[1] + ys[3].flip(0)).view(5, 3, d).transpose(0, 1)
    assert_close("merged", by_hand, merged[0], 1e-5)


def test_gradients_take_the_generic_path():
    torch.manual_seed(1)
    block = _ss2d(8, 1)
    block.train()
    x = torch.randn(1, 3, 4, 8, requires_grad=True)
    block(x).sum().backward()  # the fast path has no backward: a gradient must route through mean_selective_scan
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert block.dt_projs_weight.grad is not None and block.dt_projs_weight.grad.abs().sum() > 0


def test_block_profile_script_smoke_run(tmp_path, monkeypatch):
    script = Path(__file__).resolve().parents[2] / "benchmarks/ops/experiments/vmeanba_block_profile.py"
    spec = importlib.util.spec_from_file_location("vmeanba_block_profile", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    out = tmp_path / "profile.json"
    module.main(["--smoke", "--no-profile", "--stage", "1", "--samples", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    (row,) = record["results"]
    assert set(row["modes_us"]) == {"off", "generic", "fast", "skip_only"}
    assert row["rel_errors"]["fast_path"] < 3e-2 and row["rel_errors"]["directional_scan_fp32"] < 1e-4
    assert row["skip_only_vs_fast_rel_error"] < 3e-2
    assert {"fast: directional_scan", "fast: merged_output", "generic: mean_selective_scan"} <= set(row["pieces_us"])
    assert all(t["median"] > 0 for t in row["pieces_us"].values())
