"""VMeanba scan: the naive reference against a float64 loop of SPEC section 4, against the full selective scan where
they must agree, and the Triton kernels against the reference (forward and every gradient).

The Triton kernels run on CPU tensors through the Triton interpreter: shapes stay small but cover partial time blocks
(odd L, L smaller and larger than one block), partial channel blocks, N in {1, 8}, grouped and shared B/C, both
layouts, fp32 and bf16, periodic resets.
"""

from __future__ import annotations

import os

# must run before anything imports triton (see tests/ops/test_selective_scan.py)
os.environ["TRITON_INTERPRET"] = "1"

import contextlib  # noqa: E402
from unittest import mock  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.ops import mean_selective_scan, selective_scan  # noqa: E402
from sfmamba.ops.vmeanba import mean_selective_scan_naive  # noqa: E402
from sfmamba.testing import assert_close  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

LAYOUTS = ("BDL", "BLD")
PARAMS = ("A", "D", "delta_bias")  # always fp32


def make_inputs(
    batch: int, length: int, dim: int, nstate: int, groups: int, layout: str, *, grouped: bool | None = None,
    D: bool = True, z: bool = True, delta_bias: bool = True,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """fp32 inputs of a stable scan (softplus steps ~0.1..0.8)."""
    seq = (batch, dim, length) if layout == "BDL" else (batch, length, dim)
    grouped = groups > 1 if grouped is None else grouped
    if layout == "BDL":
        bc = (batch, groups, nstate, length) if grouped else (batch, nstate, length)
    else:
        bc = (batch, length, groups, nstate) if grouped else (batch, length, nstate)
    t = {"u": torch.randn(seq), "delta": torch.randn(seq) * 0.5 - 1.0}
    t["A"] = -torch.exp(torch.randn(dim, nstate) * 0.5)
    t["B"], t["C"] = torch.randn(bc), torch.randn(bc)
    if D:
        t["D"] = torch.randn(dim)
    if z:
        t["z"] = torch.randn(seq)
    if delta_bias:
        t["delta_bias"] = torch.randn(dim) * 0.3
    return t


def loop_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *, seq_len=None,
                   layout="BDL"):  # fmt: skip
    """SPEC section 4 in float64, one (image, group, step) at a time; differentiable."""
    if layout == "BDL":
        u, delta = u.transpose(1, 2), delta.transpose(1, 2)
        z = None if z is None else z.transpose(1, 2)
        B = B.transpose(1, 2).unsqueeze(2) if B.dim() == 3 else B.permute(0, 3, 1, 2)
        C = C.transpose(1, 2).unsqueeze(2) if C.dim() == 3 else C.permute(0, 3, 1, 2)
    else:
        B = B.unsqueeze(2) if B.dim() == 3 else B
        C = C.unsqueeze(2) if C.dim() == 3 else C
    batch, length, dim = u.shape  # B, C: [batch, L, G, N]
    groups = B.shape[2]
    per_group = dim // groups
    period = seq_len or length
    outs = []
    for b in range(batch):
        rows = []
        hs = [None] * groups
        for t in range(length):
            dt = delta[b, t].double() + (0 if delta_bias is None else delta_bias.double())
            dt = torch.log1p(torch.exp(dt)) if delta_softplus else dt
            x = u[b, t].double()
            y_parts = []
            for g in range(groups):
                channels = slice(g * per_group, (g + 1) * per_group)
                a = torch.exp(dt[channels, None] * A[channels].double()).mean(0)  # [N]
                s = (dt[channels] * x[channels]).mean()
                inflow = B[b, t, g].double() * s
                hs[g] = inflow if t % period == 0 else a * hs[g] + inflow
                y_parts.append((C[b, t, g].double() * hs[g]).sum().expand(per_group))
            y = torch.cat(y_parts)
            if D is not None:
                y = y + D.double() * x
            if z is not None:
                y = y * z[b, t].double() * torch.sigmoid(z[b, t].double())
            rows.append(y)
        outs.append(torch.stack(rows))
    out = torch.stack(outs)
    return out.transpose(1, 2) if layout == "BDL" else out


@contextlib.contextmanager
def backend(kernel: str):
    """Force one kernel and check that the dispatch really took it (a silent fallback would pass every comparison)."""
    from sfmamba.ops.vmeanba import chunk

    set_kernel_backend(kernel)
    try:
        with mock.patch.object(chunk, "mean_selective_scan_triton", wraps=chunk.mean_selective_scan_triton) as spy:
            yield
        assert spy.called == (kernel == "triton"), f"kernel {kernel} but the Triton path ran: {spy.called}"
    finally:
        set_kernel_backend(None)


# ---------------------------------------------------------------------------------------------------------------------
# the reference


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("groups", "grouped", "seq_len"), [(1, False, None), (2, True, None), (4, True, 3)])
def test_naive_matches_float64_loop_and_gradients(layout, groups, grouped, seq_len):
    inputs = make_inputs(2, 9, 8, 3, groups, layout, grouped=grouped)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    flags = dict(delta_softplus=True, seq_len=seq_len, layout=layout)
    out = mean_selective_scan_naive(**leaves, **flags)
    ref = loop_reference(**{k: v.double() for k, v in leaves.items()}, **flags)
    assert out.dtype == torch.float32 and out.shape == inputs["u"].shape
    assert_close("out", ref, out, 1e-6)
    upstream = torch.randn_like(out)
    got = torch.autograd.grad(out, list(leaves.values()), upstream)
    want = torch.autograd.grad(ref, list(leaves.values()), upstream.double())
    for name, g, w in zip(leaves, got, want):
        assert_close(f"d{name}", w, g, 1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_channel_per_group_is_the_full_scan(layout):
    # with D/G = 1 the mean is over a single channel: VMeanba must reproduce the exact selective scan
    inputs = make_inputs(2, 11, 6, 4, 6, layout)
    flags = dict(delta_softplus=True, seq_len=None, layout=layout)
    assert_close("out", selective_scan(**inputs, **flags), mean_selective_scan(**inputs, **flags), 1e-5)


def test_identical_channels_give_the_mean_of_the_full_scan():
    # channels of a group with the same dt and A: the scan is linear in dt*u, so the mean of the full scan's outputs
    # equals the VMeanba output (without skip and gate)
    batch, dim, length, nstate, groups = 2, 8, 10, 3, 2
    delta = (torch.rand(batch, groups, 1, length) * 0.5 + 0.1).expand(batch, groups, dim // groups, length)
    delta = delta.reshape(batch, dim, length).contiguous()
    A = (-torch.rand(groups, 1, nstate) - 0.1).expand(groups, dim // groups, nstate).reshape(dim, nstate).contiguous()
    u = torch.randn(batch, dim, length)
    B, C = torch.randn(batch, groups, nstate, length), torch.randn(batch, groups, nstate, length)
    full = selective_scan(u, delta, A, B, C).view(batch, groups, dim // groups, length).mean(2, keepdim=True)
    mean = mean_selective_scan(u, delta, A, B, C).view(batch, groups, dim // groups, length)
    assert_close("out", full.expand_as(mean), mean, 1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(B=torch.randn(2, 4, 2, 7)), "mean_selective_scan: the number of groups of B"),
        (dict(A=torch.randn(6, 2, dtype=torch.float64)), "mean_selective_scan: A must be"),
        (dict(seq_len=4), "mean_selective_scan: seq_len must be a positive int that divides L=7"),
        (dict(layout="LBD"), "mean_selective_scan: layout must be one of"),
        (dict(z=torch.randn(2, 6, 8)), "mean_selective_scan: z must be of shape"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(change, message):
    args = dict(u=torch.randn(2, 6, 7), delta=torch.rand(2, 6, 7), A=-torch.rand(6, 2), B=torch.randn(2, 2, 7),
                C=torch.randn(2, 2, 7))  # fmt: skip
    args.update(change)
    with pytest.raises(ValueError, match=message):
        mean_selective_scan(**args)
