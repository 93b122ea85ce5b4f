"""VMeanba's SS2D fast path (ops/vmeanba/cross.py): the channel-mean kernel against its reference, the doubling
recurrence against a step loop, and the whole path against cross_scan -> mean_selective_scan -> cross_merge.

The Triton kernel runs on CPU tensors through the interpreter (small shapes: odd position counts, channel counts
that are not a multiple of the block, N in {1, 4, 16}, dt ranks 1 and 6).
"""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.layers.ss2d import SS2D  # noqa: E402
from sfmamba.ops.vmeanba.cross import (  # noqa: E402
    cross_mean_inputs_naive,
    cross_mean_inputs_triton,
    linear_recurrence,
    vmeanba_cross_merged,
)
from sfmamba.testing import assert_close  # noqa: E402
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


@pytest.mark.parametrize("length", [1, 2, 7, 49, 70])
def test_doubling_recurrence_matches_a_step_loop(length):
    torch.manual_seed(length)
    a, b = torch.rand(3, length, 2, dtype=torch.float64), torch.randn(3, length, 2, dtype=torch.float64)
    h, states = torch.zeros(3, 2, dtype=torch.float64), []
    for t in range(length):
        h = a[:, t] * h + b[:, t]
        states.append(h)
    torch.testing.assert_close(linear_recurrence(a, b), torch.stack(states, 1))


def _ss2d(dim: int, nstate: int) -> SS2D:
    block = SS2D(dim, d_state=nstate).eval()
    with torch.no_grad():  # away from the init's A = -(1..N), D = 1, so every term matters
        block.A_logs.normal_(0, 0.5)
        block.Ds.normal_()
    block.vmeanba = True
    return block


@pytest.mark.parametrize("backend", ["naive", "triton"])
@pytest.mark.parametrize(("height", "width", "dim", "nstate"), [(5, 7, 16, 1), (4, 4, 24, 4), (1, 9, 8, 2)])
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
