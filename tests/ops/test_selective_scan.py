"""Selective scan: the naive reference against a float64 loop, the Triton kernels against the reference.

The Triton kernels run on CPU tensors through the Triton interpreter, which is slow: shapes stay small (few channel
blocks, few chunks) but cover what matters for the tiling: partial chunks (L = 1, 7, 33, 49, 51, 196, 198, 3136),
partial channel blocks (D = 12, 20, 24), partial state blocks (N = 5), grouped B/C, both layouts, three dtypes.
Low-precision kernel runs are compared with the fp32 reference run on the same (rounded) inputs, so the tolerance only
has to absorb the rounding of the outputs.
"""

from __future__ import annotations

import os

# Triton chooses between interpreted and compiled when a function is decorated: for chunk.py's kernels at its import,
# for Triton's own `tl` helpers (tl.zeros, ...) when triton is first imported -- which torch._dynamo does too. So this
# must run before anything imports triton; tests/conftest.py is the place that guarantees it for a whole-suite run.
os.environ["TRITON_INTERPRET"] = "1"

import contextlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from unittest import mock  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

from sfmamba.ops import selective_scan, selective_scan_naive  # noqa: E402
from sfmamba.ops.selective_scan import chunk  # noqa: E402
from sfmamba.testing import FillRecorder, assert_close, relative_error, run_without_interpreter  # noqa: E402
from sfmamba.utils._config import SCAN_BC_SUM_ENV, SCAN_BWD_ENV, SCAN_FWD_ENV, set_kernel_backend  # noqa: E402

LAYOUTS = ("BDL", "BLD")
# "triton-2pass": the Triton forward with L split into chunks of 7 steps (summary pass + main pass), as on a GPU that
# a short sequence would leave idle; on CPU the launcher otherwise scans the whole row in one chunk
KERNELS = ("naive", "triton", "triton-2pass")
# the naive path in both layouts, each Triton variant in one (the shape x layout grids run both kernels in both): the
# interpreter is what makes the suite long
KERNEL_LAYOUTS = [("naive", "BDL"), ("naive", "BLD"), ("triton", "BDL"), ("triton-2pass", "BLD")]
FORCED_CHUNK_LEN = {"naive": None, "triton": None, "triton-2pass": 7}
# and the backward in spans of 2 chunks (summary pass + combine across spans, several chunks walked per program);
# on CPU the launcher otherwise gives each program a whole row
FORCED_BWD_SPAN = {"naive": None, "triton": None, "triton-2pass": 2}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# relative error ||out - ref|| / ||ref|| allowed for (forward, gradients), kernel vs fp32 reference on the same inputs
TOLERANCE = {torch.float32: (1e-5, 5e-5), torch.float16: (3e-3, 1e-2), torch.bfloat16: (2e-2, 5e-2)}
SEQ_INPUTS = ("u", "delta", "z")  # [B, D, L] / [B, L, D], in u's dtype
PARAMS = ("A", "D", "delta_bias", "initial_state")  # always fp32


# ---------------------------------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def backend(kernel: str):
    """Force one kernel and check that the dispatch really took it (a silent fallback would pass every comparison)."""
    triton = kernel.startswith("triton")
    if triton and INTERPRETER_PROBLEM:
        pytest.fail(INTERPRETER_PROBLEM)
    set_kernel_backend("triton" if triton else kernel)
    try:
        with (
            mock.patch.object(chunk, "forced_chunk_len", FORCED_CHUNK_LEN[kernel]),
            mock.patch.object(chunk, "forced_bwd_span", FORCED_BWD_SPAN[kernel]),
            mock.patch.object(chunk, "selective_scan_triton", wraps=chunk.selective_scan_triton) as spy,
        ):
            yield
        assert spy.called == triton, f"kernel {kernel} but the Triton path ran: {spy.called}"
    finally:
        set_kernel_backend(None)


def vector_bc_where_rows_fit(x, nstate: int, layout: str) -> bool:
    """`chunk.vector_bc` as on the GPU (which switches it off off the GPU): B/C by vector loads where rows fit."""
    return chunk.rows_fit_vectors(chunk._bc_strides(x, layout), x.element_size(), x.data_ptr(), nstate)


def scan(kernel: str, *args, **kwargs):
    with backend(kernel):
        return selective_scan(*args, **kwargs)


@contextlib.contextmanager
def forced_configs(kernel, configs: list[triton.Config]):
    """An autotuned scan kernel tuning over `configs` only, with no pick cached from before or kept after."""
    with mock.patch.object(kernel, "configs", configs):
        kernel.cache.clear()
        try:
            yield kernel
        finally:
            kernel.cache.clear()


def loop_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
    seq_len=None, cu_seqlens=None, initial_state=None, layout="BDL",
):  # fmt: skip
    """SPEC section 1 in float64, one step at a time; differentiable. Returns (out in u's layout, last states)."""
    if layout == "BDL":
        u, delta = u.transpose(1, 2), delta.transpose(1, 2)
        z = None if z is None else z.transpose(1, 2)
        B = B.transpose(1, 2).unsqueeze(2) if B.dim() == 3 else B.permute(0, 3, 1, 2)
        C = C.transpose(1, 2).unsqueeze(2) if C.dim() == 3 else C.permute(0, 3, 1, 2)
    else:
        B = B.unsqueeze(2) if B.dim() == 3 else B
        C = C.unsqueeze(2) if C.dim() == 3 else C
    batch, length, dim = u.shape  # B, C: [batch, L, G, N]
    nstate = A.shape[1]
    group_of = torch.arange(dim) // (dim // B.shape[2])  # channel d reads B/C of group d // (D/G)
    bounds = cu_seqlens.tolist() if cu_seqlens is not None else list(range(0, length + 1, seq_len or length))
    A64 = A.double()
    outs, lasts = [], []
    for b in range(batch):
        rows = []
        for k in range(len(bounds) - 1):
            segment = b * (len(bounds) - 1) + k
            h = torch.zeros(dim, nstate, dtype=torch.float64)
            if initial_state is not None:
                h = initial_state[segment].double()
            for t in range(bounds[k], bounds[k + 1]):
                x = u[b, t].double()
                dt = delta[b, t].double()
                if delta_bias is not None:
                    dt = dt + delta_bias.double()
                if delta_softplus:
                    dt = torch.log1p(torch.exp(dt))
                h = torch.exp(dt[:, None] * A64) * h + dt[:, None] * B[b, t].double()[group_of] * x[:, None]
                y = (C[b, t].double()[group_of] * h).sum(-1)
                if D is not None:
                    y = y + D.double() * x
                if z is not None:
                    zt = z[b, t].double()
                    y = y * zt * torch.sigmoid(zt)
                rows.append(y)
            lasts.append(h)
        outs.append(torch.stack(rows))
    out = torch.stack(outs)
    return (out.transpose(1, 2) if layout == "BDL" else out), torch.stack(lasts)


def make_inputs(
    batch: int, length: int, dim: int, nstate: int, groups: int = 1, layout: str = "BDL", *,
    D: bool = True, z: bool = True, delta_bias: bool = True, softplus: bool = True, segments: int | None = None,
    grouped: bool | None = None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """fp32 inputs of a stable scan. `segments`: number of initial states (None: no initial_state)."""
    seq = (batch, dim, length) if layout == "BDL" else (batch, length, dim)
    grouped = groups > 1 if grouped is None else grouped
    if layout == "BDL":
        bc = (batch, groups, nstate, length) if grouped else (batch, nstate, length)
    else:
        bc = (batch, length, groups, nstate) if grouped else (batch, length, nstate)
    t = {"u": torch.randn(seq)}
    # softplus(-1 + 0.5 n) ~ 0.1 .. 0.8; without softplus the raw step must already be positive
    t["delta"] = torch.randn(seq) * 0.5 - 1.0 if softplus else torch.rand(seq) * 0.2 + 0.02
    t["A"] = -torch.exp(torch.randn(dim, nstate) * 0.5)
    t["B"], t["C"] = torch.randn(bc), torch.randn(bc)
    if D:
        t["D"] = torch.randn(dim)
    if z:
        t["z"] = torch.randn(seq)
    if delta_bias:
        t["delta_bias"] = torch.randn(dim) * 0.3 if softplus else torch.rand(dim) * 0.05
    if segments:
        t["initial_state"] = torch.randn(segments, dim, nstate)
    return t


def cast(inputs: dict, dtype: torch.dtype, bc_dtype: torch.dtype | None = None, requires_grad: bool = True) -> dict:
    """Fresh leaves: sequence tensors in `dtype`, B/C in `bc_dtype` (default `dtype`), parameters in fp32."""
    out = {}
    for name, x in inputs.items():
        target = torch.float32 if name in PARAMS else (bc_dtype or dtype) if name in ("B", "C") else dtype
        out[name] = x.detach().to(target).clone().requires_grad_(requires_grad)
    return out


def upcast(inputs: dict, requires_grad: bool = True) -> dict:
    """The fp32 reference's leaves: the same (already rounded) values."""
    return {name: x.detach().float().clone().requires_grad_(requires_grad) for name, x in inputs.items()}


def grads(outputs, inputs: dict, upstream) -> dict:
    got = torch.autograd.grad(outputs, list(inputs.values()), upstream)
    return dict(zip(inputs, got))


def compare_with_reference(
    inputs: dict,
    dtype: torch.dtype,
    flags: dict,
    *,
    backward: bool,
    bc_dtype=None,
    return_last_state: bool = True,
    kernel: str = "triton",
) -> dict[str, float]:
    """Triton in `dtype` vs the naive reference in fp32 on the same values: output, last states, every gradient.

    Each result is held to the tolerance of its own dtype: the last states and the gradients of A, D, delta_bias and
    initial_state are fp32 even in a bf16 call, and computed from the same values, so they must agree to fp32 rounding.
    """
    k_in = cast(inputs, dtype, bc_dtype, requires_grad=backward)
    r_in = upcast(k_in, requires_grad=backward)
    if return_last_state:
        out, last = scan(kernel, **k_in, **flags, return_last_state=True)
        ref, ref_last = scan("naive", **r_in, **flags, return_last_state=True)
        assert last.dtype == torch.float32 and last.shape == ref_last.shape
        assert_close("last_state", ref_last, last, TOLERANCE[last.dtype][0])
        outputs, ref_outputs = (out, last), (ref, ref_last)
    else:
        out, ref = scan(kernel, **k_in, **flags), scan("naive", **r_in, **flags)
        assert isinstance(out, torch.Tensor), "without return_last_state the result is a single tensor"
        outputs, ref_outputs = (out,), (ref,)
    assert out.dtype == dtype and out.shape == k_in["u"].shape
    assert_close("out", ref, out, TOLERANCE[out.dtype][0])
    errors = {f"out{i}": relative_error(r, o) for i, (r, o) in enumerate(zip(ref_outputs, outputs))}
    if not backward:
        return errors
    upstream = [torch.randn_like(o) for o in outputs]  # random upstream grads, in each output's dtype
    got = grads(outputs, k_in, upstream)
    want = grads(ref_outputs, r_in, [g.float() for g in upstream])
    for name in k_in:
        assert got[name].dtype == k_in[name].dtype, f"d{name}: dtype {got[name].dtype} != {k_in[name].dtype}"
        errors[f"d{name}"] = relative_error(want[name], got[name])
        assert_close(f"d{name}", want[name], got[name], TOLERANCE[got[name].dtype][1])
    return errors


def shape_id(batch, length, dim, nstate, groups, layout, dtype) -> str:
    return f"B{batch}-L{length}-D{dim}-N{nstate}-G{groups}-{layout}-{DTYPE_NAMES[dtype]}"


def _interpreter_problem() -> str | None:
    """Why Triton launches on CPU tensors cannot work in this process, or None."""
    fn, wrappers = chunk.selective_scan_fwd_kernel, []
    while fn is not None and len(wrappers) < 8:
        wrappers.append(type(fn).__name__)
        fn = getattr(fn, "fn", None)
    if "InterpretedFunction" not in wrappers:
        return f"chunk.py was imported before TRITON_INTERPRET=1 (kernel wrappers: {wrappers})"
    if type(tl.zeros).__name__ != "InterpretedFunction":
        return "triton was imported (e.g. through torch._dynamo) before TRITON_INTERPRET=1: set it in tests/conftest.py"
    return None


INTERPRETER_PROBLEM = _interpreter_problem()
slow = pytest.mark.skipif(os.environ.get("SFMAMBA_SLOW_TESTS") != "1", reason="slow: set SFMAMBA_SLOW_TESTS=1")


def test_kernels_are_interpreted():
    assert INTERPRETER_PROBLEM is None, INTERPRETER_PROBLEM


# ---------------------------------------------------------------------------------------------------------------------
# 1. the reference against the formula


REFERENCE_CASES = [
    # batch, L, D, N, G, layout, kwargs
    (2, 9, 6, 3, 1, "BDL", {}),
    (2, 9, 8, 4, 2, "BLD", {}),
    (1, 11, 8, 2, 4, "BDL", {"D": False, "z": False}),
    (2, 7, 4, 5, 1, "BLD", {"softplus": False, "delta_bias": False}),
    (2, 12, 6, 3, 2, "BDL", {"seq_len": 4}),
    (1, 10, 4, 3, 1, "BLD", {"cu_seqlens": [0, 1, 4, 9, 10]}),
]


@pytest.mark.parametrize(
    "batch, length, dim, nstate, groups, layout, options",
    [pytest.param(*case, id=f"B{case[0]}-L{case[1]}-D{case[2]}-N{case[3]}-G{case[4]}-{case[5]}-{i}")
     for i, case in enumerate(REFERENCE_CASES)],
)  # fmt: skip
def test_naive_matches_float64_loop(batch, length, dim, nstate, groups, layout, options):
    torch.manual_seed(42)
    options = dict(options)
    seq_len = options.pop("seq_len", None)
    cu = options.pop("cu_seqlens", None)
    cu = None if cu is None else torch.tensor(cu)
    softplus = options.get("softplus", True)
    nseg = len(cu) - 1 if cu is not None else batch * (length // (seq_len or length))
    inputs = make_inputs(batch, length, dim, nstate, groups, layout, segments=nseg, **options)
    leaves = cast(inputs, torch.float32)
    leaves64 = {name: x.detach().double().requires_grad_() for name, x in leaves.items()}
    kw = {"delta_softplus": softplus, "seq_len": seq_len, "cu_seqlens": cu, "layout": layout}
    out, last = selective_scan_naive(**leaves, **kw, return_last_state=True)
    want, want_last = loop_reference(**leaves64, **kw)
    assert out.dtype == torch.float32 and out.shape == leaves["u"].shape
    assert_close("out", want, out, 1e-5)
    assert_close("last_state", want_last, last, 1e-5)
    dout, dlast = torch.randn_like(out), torch.randn_like(last)
    got = grads((out, last), leaves, (dout, dlast))
    ref = grads((want, want_last), leaves64, (dout.double(), dlast.double()))
    for name in leaves:
        assert_close(f"d{name}", ref[name], got[name], 1e-5)


def test_naive_long_sequence_matches_float64_loop():
    """L = 3136 (56^2): no drift of the fp32 recurrence over a long image row."""
    torch.manual_seed(42)
    inputs = make_inputs(1, 3136, 3, 1, layout="BLD")
    kw = {"delta_softplus": True, "layout": "BLD"}
    out, last = selective_scan_naive(**inputs, **kw, return_last_state=True)
    want, want_last = loop_reference(**inputs, **kw)
    assert_close("out", want, out, 1e-5)
    assert_close("last_state", want_last, last, 1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Triton vs the reference


SHAPES = [
    # batch, L, D, N, G -- programs per call = batch * G * ceil(D / G / 16), chunks = ceil(L / 32)
    (2, 1, 8, 8, 1),
    (1, 7, 12, 16, 1),
    (2, 33, 20, 1, 1),
    (2, 49, 24, 8, 2),
    (1, 51, 24, 8, 4),
    (1, 196, 8, 16, 1),
    (1, 198, 16, 8, 2),
    (2, 198, 48, 1, 1),
]


def _forward_grid():
    """Every shape in every dtype; fp32 in both layouts, fp16 and bf16 in one layout each, alternating by shape."""
    for i, shape in enumerate(SHAPES):
        for layout in LAYOUTS:
            yield pytest.param(*shape, layout, torch.float32, id=shape_id(*shape, layout, torch.float32))
        for dtype, layout in zip((torch.float16, torch.bfloat16), LAYOUTS[::-1] if i % 2 else LAYOUTS):
            yield pytest.param(*shape, layout, dtype, id=shape_id(*shape, layout, dtype))


@pytest.mark.parametrize("batch, length, dim, nstate, groups, layout, dtype", list(_forward_grid()))
def test_chunk_forward(batch, length, dim, nstate, groups, layout, dtype):
    """The shape x dtype grid (x layout in fp32), forward only (output and last states), every option on."""
    torch.manual_seed(42)
    inputs = make_inputs(batch, length, dim, nstate, groups, layout, segments=batch)
    compare_with_reference(inputs, dtype, {"delta_softplus": True, "layout": layout}, backward=False)


GRAD_CASES = [
    (2, 1, 8, 8, 1, "BLD", torch.float32),
    (1, 7, 12, 16, 1, "BDL", torch.float32),
    (2, 33, 20, 1, 1, "BLD", torch.float32),
    (2, 49, 24, 8, 2, "BLD", torch.float32),
    (1, 51, 24, 8, 4, "BLD", torch.float32),
    (1, 196, 8, 16, 1, "BDL", torch.float32),
    (1, 198, 16, 8, 2, "BLD", torch.float32),
    (2, 49, 24, 8, 2, "BLD", torch.float16),
    (1, 51, 24, 8, 4, "BDL", torch.float16),
    (2, 33, 20, 1, 1, "BDL", torch.bfloat16),
    (1, 198, 16, 8, 2, "BDL", torch.bfloat16),
]


@pytest.mark.parametrize(
    "batch, length, dim, nstate, groups, layout, dtype", [pytest.param(*c, id=shape_id(*c)) for c in GRAD_CASES]
)
def test_chunk_backward(batch, length, dim, nstate, groups, layout, dtype):
    """Gradients of u, delta, A, B, C, D, z, delta_bias, initial_state under random upstream grads on out and last."""
    torch.manual_seed(42)
    inputs = make_inputs(batch, length, dim, nstate, groups, layout, segments=batch)
    errors = compare_with_reference(inputs, dtype, {"delta_softplus": True, "layout": layout}, backward=True)
    assert set(errors) >= {f"d{n}" for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")}


def test_chunk_long_sequence_forward(monkeypatch):
    """L = 3136 = 56^2 (stage-1 rows of a 224 px image), N = 1: forward and last state of the step kernel (`auto`
    would take the tiled one for 8 channels; test_selective_scan_fwd_kernels.py covers that)."""
    monkeypatch.setenv(SCAN_FWD_ENV, "step")
    torch.manual_seed(42)
    inputs = make_inputs(1, 3136, 8, 1, layout="BLD", segments=1)
    compare_with_reference(inputs, torch.float32, {"delta_softplus": True, "layout": "BLD"}, backward=False)


@slow
@pytest.mark.parametrize(
    "layout, dtype, kernel",
    [pytest.param("BLD", torch.float32, "triton", id="BLD-fp32"),
     pytest.param("BDL", torch.bfloat16, "triton-2pass", id="BDL-bf16-2pass")],
)  # fmt: skip
def test_chunk_long_sequence_backward(layout, dtype, kernel):
    """L = 3136 forward and backward (one to three minutes each in the interpreter)."""
    torch.manual_seed(42)
    inputs = make_inputs(1, 3136, 8, 1, layout=layout, segments=1)
    compare_with_reference(inputs, dtype, {"delta_softplus": True, "layout": layout}, backward=True, kernel=kernel)


@pytest.mark.parametrize("prefetch", [0, 2, 8])
@pytest.mark.parametrize("layout, kernel", [("BDL", "triton"), ("BLD", "triton-2pass")])
def test_chunk_prefetch_depths(layout, kernel, prefetch):
    """The loop variants the interpreter's one config (PREFETCH 1, BRANCHLESS 0, TILES 1: the GPU's) does not reach:
    loads issued in the step that uses them (PREFETCH 0, forward and backward) and a ring of two or eight steps ahead
    (forward; the backward has 0 and 1; eight is longer than the 7-step chunks of the two-pass run, so the ring reaches
    past its chunk from the start; with two, the forward's L1 hints four steps ahead, AHEAD, a no-op here but for
    their addresses); the backward's steps past the row's end masked (BRANCHLESS 1, with PREFETCH 0 and
    8; L = 23 leaves 7 of the last 8-step chunk) or behind a branch (with PREFETCH 2); its chunk states as one tensor
    (TILES 0, with PREFETCH 0 and 2) or a tuple of tiles (with PREFETCH 8); initial states (with PREFETCH 0; they make
    every backward BRANCHLESS): forward, last states, every gradient."""
    torch.manual_seed(42)
    inputs = make_inputs(2, 23, 20, 8, 2, layout, segments=2 if prefetch == 0 else None)
    kernels = (chunk.selective_scan_fwd_kernel, chunk.selective_scan_bwd_kernel)
    branchless, tiles = int(prefetch != 2), int(prefetch == 8)
    configs = [
        [triton.Config({"BLOCK_D": 16, "PREFETCH": prefetch, "AHEAD": 4 * int(prefetch == 2)}, num_warps=1)],
        [
            triton.Config(
                {"BLOCK_D": 16, "PREFETCH": min(prefetch, 1), "BRANCHLESS": branchless, "TILES": tiles}, num_warps=1
            )
        ],
    ]
    with forced_configs(kernels[0], configs[0]), forced_configs(kernels[1], configs[1]):
        compare_with_reference(inputs, torch.float32, {"delta_softplus": True, "layout": layout}, backward=True,
                               kernel=kernel)  # fmt: skip
        assert [k.best_config.kwargs["PREFETCH"] for k in kernels] == [prefetch, min(prefetch, 1)]
        assert (kernels[1].best_config.kwargs["BRANCHLESS"], kernels[1].best_config.kwargs["TILES"]) == (
            branchless,
            tiles,
        )


STRIDE_CASES = {  # name: (tensors taken from twice-wider ones, dout too, (L, BC, Z) bound in the forward, (L, BC,
    # Z, DOUT) in the backward: D = 20 and N = 8 where shared, 0 where not)
    "contiguous": ((), False, (20, 8, 20), (20, 8, 20, 20)),
    "u and B": (("u", "B"), False, (0, 0, 20), (0, 0, 20, 20)),
    "delta": (("delta",), False, (0, 8, 20), (0, 8, 20, 20)),
    "C": (("C",), False, (20, 0, 20), (20, 0, 20, 20)),
    "z": (("z",), False, (20, 8, 40), (20, 8, 40, 20)),  # z alone: still bound, at its own stride
    "dout": ((), True, (20, 8, 20), (20, 8, 20, 40)),  # a concat's gradient is a view of a wider one
}


@pytest.mark.parametrize("case", list(STRIDE_CASES))
def test_step_kernels_bind_shared_step_strides(case, monkeypatch):
    """The forward and the backward bind the step strides at compile time: L_STRIDE where the sequence tensors (u,
    delta and out / du) share one, BC_L_STRIDE where B and C do, Z_L_STRIDE and DOUT_L_STRIDE each its own; a tensor
    taken from a twice-wider one leaves its group's stride read at run time. Output and every gradient against the
    reference in each case (binding a stride that is not shared would read the wrong steps)."""
    widened, wide_dout, fwd_strides, bwd_strides = STRIDE_CASES[case]
    torch.manual_seed(14)
    dim, nstate = 20, 8
    fresh = make_inputs(2, 23, dim, nstate, 1, "BLD", segments=None)
    width = {name: fresh[name].shape[-1] for name in widened}
    leaves = {k: (torch.cat([v, v], -1) if k in width else v).clone().requires_grad_() for k, v in fresh.items()}
    k_in = {k: v[..., : width[k]] if k in width else v for k, v in leaves.items()}
    r_in = upcast(fresh)
    seen = []
    launch = chunk._launch_kernel

    def spy(kernel, grid, *args, **flags):
        if kernel in (chunk.selective_scan_fwd_kernel, chunk.selective_scan_bwd_kernel) and not flags["SUMMARY"]:
            names = ("L_STRIDE", "BC_L_STRIDE", "Z_L_STRIDE", "DOUT_L_STRIDE")
            seen.append(tuple(flags[name] for name in names if name in flags))
        return launch(kernel, grid, *args, **flags)

    monkeypatch.setattr(chunk, "_launch_kernel", spy)
    monkeypatch.setitem(chunk.FWD_BOUND_STRIDES, torch.float32, chunk.STEP_STRIDES)  # whatever the default
    flags = {"delta_softplus": True, "layout": "BLD"}
    out, ref = scan("triton", **k_in, **flags), scan("naive", **r_in, **flags)
    assert_close("out", ref, out, TOLERANCE[torch.float32][0])
    upstream = torch.randn_like(ref)
    dout = torch.cat([upstream, upstream], -1)[..., :dim] if wide_dout else upstream
    got, want = grads(out, leaves, dout), grads(ref, r_in, upstream)
    for name in leaves:
        grad = got[name][..., : width[name]] if name in width else got[name]
        assert_close(f"d{name}", want[name], grad, TOLERANCE[torch.float32][1])
        if name in width:
            assert torch.all(got[name][..., width[name] :] == 0), f"d{name}: the unused half got a gradient"
    assert seen == [fwd_strides, bwd_strides]  # the training forward, then the backward


@pytest.mark.parametrize("dtype, atomic", [(torch.float32, True), (torch.bfloat16, False)])
def test_default_strides_and_bc_sums_follow_the_dtype(dtype, atomic, monkeypatch):
    """By default both step kernels bind their step strides in every dtype (the fp32 forward since session 29, with
    the SPLIT configs capped at 168 registers), and the backward adds its dB/dC sums by atomics for fp32 inputs only
    (SFMAMBA_SCAN_BC_SUM=auto). Output and gradients against the reference."""
    torch.manual_seed(15)
    inputs = make_inputs(2, 9, 20, 8, 1, "BLD", segments=None)
    config = triton.Config({"BLOCK_D": 8, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": 0, "TILES": 1}, num_warps=1)
    for name in (SCAN_BC_SUM_ENV, SCAN_BWD_ENV, SCAN_FWD_ENV):  # the defaults
        monkeypatch.delenv(name, raising=False)
    seen = {}
    launch = chunk._launch_kernel

    def spy(kernel, grid, *args, **flags):
        if kernel in (chunk.selective_scan_fwd_kernel, chunk.selective_scan_bwd_kernel) and not flags["SUMMARY"]:
            seen["fwd" if kernel is chunk.selective_scan_fwd_kernel else "bwd"] = (
                flags["L_STRIDE"], flags["BC_L_STRIDE"], flags.get("ATOMIC_BC")
            )  # fmt: skip
        return launch(kernel, grid, *args, **flags)

    monkeypatch.setattr(chunk, "_launch_kernel", spy)
    with forced_configs(chunk.selective_scan_bwd_kernel, [config]):
        compare_with_reference(inputs, dtype, {"delta_softplus": True, "layout": "BLD"}, backward=True)
    assert seen["fwd"] == (20, 8, None)
    assert seen["bwd"] == (20, 8, atomic)


ATOMIC_CASES = {  # name: (configs the autotuner times, N, layout, kernel, segments, emulated lane shuffles)
    "rows-split": ([{"BLOCK_D": 16, "ROWS": 1, "SPLIT": 2}], 8, "BLD", "triton", None, False),
    "rows-split-lanes": ([{"BLOCK_D": 16, "ROWS": 1, "SPLIT": 2}], 8, "BLD", "triton", None, True),  # the GPU's sums
    "rows": ([{"BLOCK_D": 8, "ROWS": 1}], 4, "BDL", "triton-2pass", None, False),
    "tiles": ([{"BLOCK_D": 8, "TILES": 1}], 8, "BLD", "triton", 2, False),  # initial states
    "tensor": ([{"BLOCK_D": 8, "TILES": 0}], 16, "BLD", "triton-2pass", None, False),
    "tuned": ([{"BLOCK_D": 8, "TILES": 1}, {"BLOCK_D": 16, "ROWS": 1}], 8, "BLD", "triton", None, False),
}


@pytest.mark.parametrize("case", list(ATOMIC_CASES))
def test_backward_atomic_bc_sums(case, monkeypatch):
    """SFMAMBA_SCAN_BC_SUM=atomic: the channel blocks add their dB/dC sums into one zeroed block by atomics, so the
    partial sums read one block: every layout of the states (ROWS also with the GPU's butterfly-shuffle sums,
    emulated), whole rows and two passes, initial states; and a launch that tunes two configs, whose timing runs add
    into the sums too (the autotuner zeroes them after its last). Forward, last states and every gradient against the
    reference; two groups of 20 channels, in blocks of 8 or 16 (2-3 blocks adding into each group's sums)."""
    configs, nstate, layout, kernel, segments, lanes = ATOMIC_CASES[case]
    torch.manual_seed(11)
    inputs = make_inputs(2, 23, 40, nstate, 2, layout, segments=segments)
    kernel_fn = chunk.selective_scan_bwd_kernel
    base = {"PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": 0}
    forced = [triton.Config({**base, **c}, num_warps=1) for c in configs]
    monkeypatch.setenv(SCAN_BC_SUM_ENV, "atomic")
    timed = []

    def run_as_timed(self, *args, config, **meta):  # a timing run (no GPU here): its atomics add into the sums
        self.fn.run(*args, **meta, **config.all_kwargs())
        timed.append(config)
        return [2.0 - forced.index(config)] * 3  # the last config is the fastest

    monkeypatch.setattr(Autotuner, "_bench", run_as_timed)
    monkeypatch.setattr(chunk, "EMULATE_LANE_SHUFFLES", triton.language.constexpr(lanes))
    summed = mock.patch.object(chunk, "sum_partials", wraps=chunk.sum_partials)
    with summed as spy, forced_configs(kernel_fn, forced):
        compare_with_reference(inputs, torch.float32, {"delta_softplus": True, "layout": layout}, backward=True,
                               kernel=kernel)  # fmt: skip
        assert kernel_fn.best_config == forced[-1]
    assert len(timed) == (len(forced) if len(forced) > 1 else 0)
    part, n_parts = spy.call_args.args[:2]
    assert n_parts == 1 and part.shape[1] == 1


@pytest.mark.parametrize("bwd_kernel", ["step", "tiled"])
def test_backward_refuses_a_bc_sum_typo(bwd_kernel, monkeypatch):
    """A misspelt SFMAMBA_SCAN_BC_SUM fails the backward with either backward kernel (the tiled one takes no atomic
    sums, but the setting is read first)."""
    monkeypatch.setenv(SCAN_BC_SUM_ENV, "atomics")
    monkeypatch.setenv(SCAN_BWD_ENV, bwd_kernel)
    inputs = cast(make_inputs(1, 5, 4, 2, 1, "BLD", segments=None), torch.float32)
    out = scan("triton", **inputs, delta_softplus=True, layout="BLD")
    with pytest.raises(ValueError, match=r"SFMAMBA_SCAN_BC_SUM must be one of \('auto', 'partials', 'atomic'\)"):
        out.sum().backward()


def test_backward_atomic_bc_sums_yield_to_deterministic_algorithms(monkeypatch):
    """Under torch.use_deterministic_algorithms(True) the backward keeps its ordered partial sums, atomic asked or
    not, and the gradients match the reference."""
    torch.manual_seed(12)
    inputs = make_inputs(2, 23, 20, 8, 1, "BLD", segments=None)
    config = triton.Config({"BLOCK_D": 8, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": 0, "TILES": 1}, num_warps=1)
    monkeypatch.setenv(SCAN_BC_SUM_ENV, "atomic")
    was = torch.are_deterministic_algorithms_enabled()
    summed = mock.patch.object(chunk, "sum_partials", wraps=chunk.sum_partials)
    try:
        torch.use_deterministic_algorithms(True)
        with summed as spy, forced_configs(chunk.selective_scan_bwd_kernel, [config]):
            compare_with_reference(inputs, torch.float32, {"delta_softplus": True, "layout": "BLD"}, backward=True,
                                   kernel="triton")  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(was)
    assert spy.call_args.args[1] == 3  # 20 channels in blocks of 8, each its own partials


@pytest.mark.parametrize(
    "nstate, layout, kernel, segments, branchless, lane_sums, split, keep_dt",
    [
        (8, "BLD", "triton", None, 0, False, 1, 0),
        (8, "BDL", "triton", 2, 1, False, 1, 0),
        (4, "BLD", "triton-2pass", 2, 0, False, 1, 0),
        (8, "BLD", "triton", 2, 0, True, 1, 0),
        (1, "BDL", "triton-2pass", None, 1, True, 1, 0),
        (16, "BLD", "triton", None, 0, True, 1, 0),
        (8, "BLD", "triton", 2, 0, False, 2, 0),
        (8, "BDL", "triton-2pass", None, 1, True, 2, 0),
        (3, "BLD", "triton", 2, 0, True, 2, 0),
        (2, "BLD", "triton-2pass", None, 0, True, 2, 0),
        (8, "BLD", "triton", 2, 0, True, 4, 0),
        (4, "BDL", "triton-2pass", None, 0, False, 4, 0),
        (8, "BLD", "triton", 2, 0, True, 2, 1),
        (4, "BDL", "triton-2pass", None, 1, False, 1, 1),
        (3, "BLD", "triton", None, 0, False, 2, 1),
    ],
)
def test_backward_rows(nstate, layout, kernel, segments, branchless, lane_sums, split, keep_dt):
    """The backward's experimental ROWS layout (every state a tuple of N [BLOCK_D] rows; not among the autotuned
    configs until timed on a GPU): whole rows and two passes (spans), steps past the row's end behind a branch or
    masked (BRANCHLESS), initial states, N = 1, 4, 8 and 16: forward, last states, every gradient. The channel sums of
    dB and dC take tl.sum, or (`lane_sums`, 32 lanes per program, 20 channels of them real) the GPU's transposing
    butterfly shuffles with each shuffle emulated by Triton ops (the interpreter runs no inline PTX; the PTX itself
    is built by test_step_backward_compiles_for_sm90). `split` 2 or 4: that many lanes per channel (16 or 8 channels per
    program), each holding a share of the states (N = 2, 3, 4, 8; N = 3 leaves the odd lane one real state of two).
    `keep_dt`: the forward sweep keeps each step's dt for the backward sweep (KEEP_DT), with and without softplus
    (here in fp32 and with a gate: a single forced config is never pruned); those rows also carry each chunk's
    checkpoint from the chunk after it (CKPT_AHEAD), over whole rows and spans."""
    torch.manual_seed(7)
    inputs = make_inputs(2, 23, 20, nstate, 2, layout, segments=segments)
    kernel_fn = chunk.selective_scan_bwd_kernel
    lanes = 32 if lane_sums or split > 1 else 16
    config = {"BLOCK_D": lanes // split, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": branchless, "ROWS": 1}
    if split > 1:
        config["SPLIT"] = split
    if keep_dt:
        config.update(KEEP_DT=1, CKPT_AHEAD=1)
    emulate = mock.patch.object(chunk, "EMULATE_LANE_SHUFFLES", triton.language.constexpr(lane_sums))
    for softplus in (True, False) if keep_dt else (True,):
        if not softplus:  # a raw step that is already positive
            inputs = make_inputs(2, 23, 20, nstate, 2, layout, segments=segments, softplus=False)
        with emulate, forced_configs(kernel_fn, [triton.Config(config, num_warps=1)]):
            compare_with_reference(inputs, torch.float32, {"delta_softplus": softplus, "layout": layout},
                                   backward=True, kernel=kernel)  # fmt: skip
            assert kernel_fn.best_config.kwargs.get("KEEP_DT", 0) == keep_dt
        assert kernel_fn.best_config.kwargs["ROWS"] == 1
        assert kernel_fn.best_config.kwargs.get("SPLIT", 1) == split


@pytest.mark.parametrize(
    "nstate, split, kernel, branchless",
    [(8, 2, "triton", 0), (8, 2, "triton-2pass", 1), (4, 2, "triton-2pass", 0), (3, 1, "triton", 1)],
)
def test_backward_rows_two_step_input_ring(nstate, split, kernel, branchless):
    """INPUT_RING 2 (the ROWS backward loading each step's inputs two steps ahead; the default for fp32's 4-step
    chunks) with the default config's KEEP_DT and CKPT_AHEAD: fp32 4-step chunks at N = 8 (6 per row), 16-step chunks
    at N = 3-4, whole rows and spans, steps past the row's end behind branches or masked, segments: every gradient
    against the reference."""
    torch.manual_seed(7)
    inputs = make_inputs(2, 23, 20, nstate, 2, "BLD", segments=2)
    config = {"BLOCK_D": 32 // split, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": branchless, "ROWS": 1,
              "SPLIT": split, "KEEP_DT": 1, "CKPT_AHEAD": 1, "INPUT_RING": 2}  # fmt: skip
    kernel_fn = chunk.selective_scan_bwd_kernel
    with forced_configs(kernel_fn, [triton.Config(config, num_warps=1)]):
        compare_with_reference(inputs, torch.float32, {"delta_softplus": True, "layout": "BLD"}, backward=True,
                               kernel=kernel)  # fmt: skip
        assert kernel_fn.best_config.kwargs["INPUT_RING"] == 2


@pytest.mark.parametrize(
    "nstate, split, kernel, branchless, lane_sums",
    [
        (8, 2, "triton-2pass", 1, True),
        (3, 2, "triton", 1, False),
        (4, 4, "triton-2pass", 0, True),
        (2, 1, "triton", 1, True),
    ],
)
def test_backward_rows_sums_dc_with_db(nstate, split, kernel, branchless, lane_sums):
    """BC_TOGETHER (the ROWS backward's backward sweep sums dC with dB in one transposing reduction of twice the rows)
    with the default config's KEEP_DT and CKPT_AHEAD: whole rows and spans, steps past the row's end behind branches
    or masked, segments, SPLIT 1, 2 and 4, odd N, the sums by emulated lane shuffles or tl.sum: every gradient against
    the reference."""
    torch.manual_seed(5)
    inputs = make_inputs(2, 23, 20, nstate, 2, "BLD", segments=2)
    config = {"BLOCK_D": 32 // split, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": branchless, "ROWS": 1,
              "SPLIT": split, "KEEP_DT": 1, "CKPT_AHEAD": 1, "BC_TOGETHER": 1}  # fmt: skip
    kernel_fn = chunk.selective_scan_bwd_kernel
    emulate = mock.patch.object(chunk, "EMULATE_LANE_SHUFFLES", triton.language.constexpr(lane_sums))
    with emulate, forced_configs(kernel_fn, [triton.Config(config, num_warps=1)]):
        compare_with_reference(inputs, torch.float32, {"delta_softplus": True, "layout": "BLD"}, backward=True,
                               kernel=kernel)  # fmt: skip
        assert kernel_fn.best_config.kwargs["BC_TOGETHER"] == 1


def test_forced_checkpoint_chunk_keeps_every_gradient(monkeypatch):
    """`chunk.forced_bwd_chunk` (a sweep's knob: 4-step chunks at N = 8 in bf16, where bwd_chunk_for gives 8): the
    training forward checkpoints every 4 steps (5 states for 19 steps, not 3), and the backward's 4-step chunks give
    the reference's output and gradients."""
    monkeypatch.setattr(chunk, "forced_bwd_chunk", 4)
    original, saved = chunk.selective_scan_fwd, []

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        saved.append(tuple(result[2].shape))
        return result

    monkeypatch.setattr(chunk, "selective_scan_fwd", recording)
    torch.manual_seed(3)
    inputs = make_inputs(2, 19, 21, 8, 1, "BLD")
    compare_with_reference(inputs, torch.bfloat16, {"delta_softplus": True, "layout": "BLD"}, backward=True)
    assert saved == [(2, 5, 8, 21)]  # (batch, checkpoints, N, D)


def test_backward_keeps_dt_for_16_bit_inputs_without_a_gate():
    """KEEP_DT (timed on an H100, session 30: bf16 fwd+bwd 3-4 us faster, fp32 7-16 us slower) runs where the inputs
    are 16-bit and no gate is given; elsewhere the autotuner's pruning runs its config without it (a copy: the config
    itself keeps the flag). Then a bf16 launch through the op with it: every gradient against the reference."""
    config = triton.Config({"BLOCK_D": 16, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": 0, "ROWS": 1, "SPLIT": 2,
                            "KEEP_DT": 1}, num_warps=1)  # fmt: skip
    tiles = triton.Config({"BLOCK_D": 32, "TILES": 1}, num_warps=1)

    def kept(dtype: torch.dtype, **flags) -> list[int]:
        args = {"NSTATE": 8, "u_ptr": torch.empty(0, dtype=dtype)}
        return [c.kwargs.get("KEEP_DT", 0) for c in chunk.prune_bwd_configs([config, tiles], args, **flags)]

    assert kept(torch.bfloat16, HAS_Z=False) == kept(torch.float16, HAS_Z=False) == [1]  # N = 8: SPLIT ROWS alone
    assert kept(torch.float32, HAS_Z=False) == kept(torch.bfloat16, HAS_Z=True) == [0]
    assert kept(torch.float32, HAS_Z=False, CHUNK=4) == [1] and kept(torch.float32, HAS_Z=True, CHUNK=4) == [0]
    assert config.kwargs["KEEP_DT"] == 1
    inputs = make_inputs(2, 21, 20, 8, 1, "BLD", z=False)
    kernel_fn = chunk.selective_scan_bwd_kernel
    with forced_configs(kernel_fn, [config]):
        compare_with_reference(inputs, torch.bfloat16, {"delta_softplus": True, "layout": "BLD"}, backward=True)
        assert kernel_fn.best_config.kwargs["KEEP_DT"] == 1


def test_backward_rings_two_steps_for_fp32_four_step_chunks():
    """INPUT_RING 2 (timed on an H100, session 37: fp32 4-step chunks 3-7 us faster, bf16 5-18 us slower) runs for
    fp32 inputs in 4-step chunks without a gate; elsewhere the pruning runs its config with the one-step ring (a copy:
    the config keeps the flag)."""
    config = triton.Config({"BLOCK_D": 16, "ROWS": 1, "SPLIT": 2, "KEEP_DT": 1, "INPUT_RING": 2}, num_warps=1)

    def ring(dtype: torch.dtype, **flags) -> int:
        args = {"NSTATE": 8, "u_ptr": torch.empty(0, dtype=dtype)}
        (pruned,) = chunk.prune_bwd_configs([config], args, **flags)
        return pruned.kwargs["INPUT_RING"]

    assert ring(torch.float32, HAS_Z=False, CHUNK=4) == 2
    assert ring(torch.float32, HAS_Z=True, CHUNK=4) == ring(torch.float32, HAS_Z=False, CHUNK=8) == 1
    assert ring(torch.bfloat16, HAS_Z=False, CHUNK=8) == ring(torch.bfloat16, HAS_Z=False, CHUNK=4) == 1
    assert ring(torch.float16, HAS_Z=False, CHUNK=4) == 1
    assert config.kwargs["INPUT_RING"] == 2


def test_backward_split_needs_two_states():
    """The ROWS backward's SPLIT configs give each lane a row of the states: the autotuner drops them at N = 1,
    and a list of only those runs them unsplit on the same 32 lanes (never nothing to time)."""
    split = triton.Config({"BLOCK_D": 16, "ROWS": 1, "SPLIT": 2}, num_warps=1)
    rows = triton.Config({"BLOCK_D": 32, "ROWS": 1}, num_warps=1)
    assert chunk.prune_bwd_configs([split, rows], {"NSTATE": 1}) == [rows]
    assert chunk.prune_bwd_configs([split, rows], {"NSTATE": 4}) == [split, rows]
    (unsplit,) = chunk.prune_bwd_configs([split], {"NSTATE": 1})
    assert unsplit.kwargs == {"BLOCK_D": 32, "ROWS": 1, "SPLIT": 1} and split.kwargs["SPLIT"] == 2
    quarter = triton.Config({"BLOCK_D": 8, "ROWS": 1, "SPLIT": 4}, num_warps=1)  # a row per lane from N = 3 on
    assert chunk.prune_bwd_configs([quarter, split, rows], {"NSTATE": 2}) == [split, rows]
    assert chunk.prune_bwd_configs([quarter, rows], {"NSTATE": 3}) == [quarter, rows]


def test_backward_runs_split_rows_alone_at_n8():
    """At the models' N = 8 the SPLIT ROWS configs won every H100 timing through the op, and the autotuner, timing
    the kernel alone, once picked TILES for 27 % more time: where a SPLIT ROWS config is left, only those run (and a
    single config skips the timing runs); elsewhere, and where ROWS is pruned (initial states), the others stay."""
    split = triton.Config({"BLOCK_D": 16, "ROWS": 1, "SPLIT": 2}, num_warps=1)
    rows = triton.Config({"BLOCK_D": 32, "ROWS": 1}, num_warps=1)
    tiles = triton.Config({"BLOCK_D": 32, "TILES": 1}, num_warps=1)
    for nstate in (5, 8):
        assert chunk.prune_bwd_configs([rows, split, tiles], {"NSTATE": nstate}) == [split]
    assert chunk.prune_bwd_configs([rows, split, tiles], {"NSTATE": 4}) == [rows, split, tiles]
    assert chunk.prune_bwd_configs([rows, split, tiles], {"NSTATE": 8, "HAS_H0": True}) == [tiles]
    assert chunk.prune_bwd_configs([rows, tiles], {"NSTATE": 8}) == [rows, tiles]


def test_backward_keeps_rows_out_of_initial_state_launches():
    """ROWS takes ~10 minutes to build with an initial state and does not fit the registers above N = 8: the autotuner
    prunes it there (unless nothing else is left), and tunes launches with and without initial states apart, so
    neither inherits the other's pick."""
    tiles = triton.Config({"BLOCK_D": 32, "TILES": 1}, num_warps=1)
    rows = triton.Config({"BLOCK_D": 32, "ROWS": 1}, num_warps=1)
    assert chunk.prune_bwd_configs([tiles, rows], {"HAS_H0": True}) == [tiles]
    assert chunk.prune_bwd_configs([tiles, rows], {}, HAS_H0=True) == [tiles]
    assert chunk.prune_bwd_configs([tiles, rows], {"HAS_H0": False}) == [tiles, rows]
    assert chunk.prune_bwd_configs([tiles, rows], {"HAS_H0": False, "NSTATE": 16}) == [tiles]  # N > 8: registers
    assert chunk.prune_bwd_configs([tiles, rows], {"HAS_H0": False, "NSTATE": 8}) == [tiles, rows]
    assert chunk.prune_bwd_configs([rows], {"HAS_H0": True}) == [rows]
    assert "HAS_H0" in chunk.selective_scan_bwd_kernel.keys


def test_backward_builds_the_state_tensor_only_above_n8():
    """TILES 0 (one [CHUNK, N, BD] state tensor) lost or tied to TILES 1 wherever both unroll the chunk (N <= 8): it is
    pruned there, kept above N = 8 (its rolled loop is that case's only layout besides spilling TILES 1)."""
    tiles, tensor = (triton.Config({"BLOCK_D": 32, "TILES": t}, num_warps=1) for t in (1, 0))
    default = triton.Config({"BLOCK_D": 32}, num_warps=1)  # TILES defaults to 0 in the kernel
    rows = triton.Config({"BLOCK_D": 32, "ROWS": 1}, num_warps=1)
    for nstate in (1, 4, 8):
        assert chunk.prune_bwd_configs([rows, tiles, tensor, default], {"NSTATE": nstate}) == [rows, tiles]
        assert chunk.prune_bwd_configs([tiles, tensor], {"NSTATE": nstate, "HAS_H0": True}) == [tiles]
    assert chunk.prune_bwd_configs([rows, tiles, tensor], {"NSTATE": 16}) == [tiles, tensor]
    assert chunk.prune_bwd_configs([tensor], {"NSTATE": 8}) == [tensor]  # never none
    kept = chunk.prune_bwd_configs(chunk._bwd_configs(), {"NSTATE": 8, "HAS_H0": False})
    assert kept and all(c.kwargs.get("ROWS") or c.kwargs.get("TILES") for c in kept)


@pytest.mark.parametrize("nstate", [1, 8, 16])
def test_forward_keeps_deep_rings_to_small_states(nstate):
    """The GPU forward's rings deeper than 2 steps hold PREFETCH steps of B_t/C_t per thread: the autotuner times them
    up to N = 8 only (at N = 16 they spill and take minutes to build; the SPLIT ones are unchecked there), drops SPLIT
    at N = 1, times the STREAM config (a SPLIT one) with fp32 inputs only, and always keeps something to time."""
    with mock.patch.object(chunk, "triton_interpret", lambda: False):
        configs = chunk._fwd_configs()
    assert any(c.kwargs["PREFETCH"] == 8 for c in configs)
    assert any(c.kwargs.get("SPLIT", 1) == 2 for c in configs)
    (stream,) = [c for c in configs if c.kwargs.get("STREAM")]
    assert stream.kwargs["STREAM"] == 1 and stream.kwargs["SPLIT"] == 2 and stream.maxnreg == 168
    fp32, bf16 = torch.empty(0), torch.empty(0, dtype=torch.bfloat16)
    assert chunk.prune_fwd_configs(configs, {"NSTATE": nstate, "u_ptr": bf16}) == [
        c for c in chunk.prune_fwd_configs(configs, {"NSTATE": nstate, "u_ptr": fp32}) if c is not stream
    ]
    kept = chunk.prune_fwd_configs(configs, {"NSTATE": nstate, "u_ptr": fp32})
    split = [c for c in configs if c.kwargs.get("SPLIT", 1) > 1]
    if nstate == 1:  # a lane of a split channel needs a state of its own
        assert kept == [c for c in configs if c not in split]
    elif nstate <= 8:
        assert kept == configs
    else:
        assert kept and all(c.kwargs["PREFETCH"] <= 2 for c in kept)
        assert any(c.kwargs["UNROLL"] > 1 for c in kept)
    assert chunk.prune_fwd_configs(configs, {"u_ptr": fp32}, NSTATE=nstate) == kept
    assert chunk.prune_fwd_configs(configs[:1], {"NSTATE": 16}) == configs[:1]  # never nothing to time
    assert chunk.prune_fwd_configs([stream], {"NSTATE": 8, "u_ptr": bf16}) == [stream]
    assert chunk.selective_scan_fwd_kernel.early_config_prune is chunk.prune_fwd_configs


@pytest.mark.parametrize(
    "nstate, layout, kernel, segments, seq_len, dtype, split",
    [
        (8, "BLD", "triton", None, None, torch.float32, 2),
        (4, "BDL", "triton-2pass", 2, None, torch.float32, 2),  # initial states; chunks of 7 steps
        (3, "BLD", "triton-2pass", None, 6, torch.float32, 2),  # N not a power of two; periodic resets
        (16, "BLD", "triton", None, None, torch.bfloat16, 2),
        (8, "BDL", "triton-2pass", 2, None, torch.float32, 4),
        (3, "BLD", "triton", None, 6, torch.bfloat16, 4),  # the fourth lane of a channel holds no state
    ],
)
def test_forward_split_lanes(nstate, layout, kernel, segments, seq_len, dtype, split):
    """The forward with two or four lanes per channel (SPLIT 2: BLOCK_D 16 channels on 32 lanes, each lane half the
    states; SPLIT 4: 8 channels, a quarter each; y's shares summed by lane shuffles, emulated by Triton ops in the
    interpreter): whole rows and two passes, initial and last states, resets, N = 3, 4, 8, 16, bf16; forward, and
    every gradient through its checkpoints."""
    torch.manual_seed(3)
    inputs = make_inputs(2, 24, 20, nstate, 2, layout, segments=segments)
    kernel_fn = chunk.selective_scan_fwd_kernel
    config = triton.Config({"BLOCK_D": 32 // split, "PREFETCH": 2, "UNROLL": 2, "SPLIT": split}, num_warps=1)
    flags = {"delta_softplus": True, "layout": layout, **({"seq_len": seq_len} if seq_len else {})}
    with forced_configs(kernel_fn, [config]):
        compare_with_reference(inputs, dtype, flags, backward=True, kernel=kernel)
        assert kernel_fn.best_config.kwargs["SPLIT"] == split


def test_forward_split_needs_two_states():
    """SPLIT configs give each lane a row of the states on one warp: the autotuner drops them at N = 1 and with
    more warps, and a list of only those runs them unsplit on the same lanes (never nothing to time). Above N = 8 the
    deep SPLIT rings go as the others do (unchecked on the GPU there)."""
    split = triton.Config({"BLOCK_D": 16, "PREFETCH": 8, "UNROLL": 8, "SPLIT": 2}, num_warps=1)
    shallow = triton.Config({"BLOCK_D": 16, "PREFETCH": 2, "UNROLL": 4, "SPLIT": 2}, num_warps=1)
    whole = triton.Config({"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}, num_warps=1)
    two_warps = triton.Config({"BLOCK_D": 32, "PREFETCH": 2, "UNROLL": 4, "SPLIT": 2}, num_warps=2)
    assert chunk.prune_fwd_configs([split, whole], {"NSTATE": 1}) == [whole]
    assert chunk.prune_fwd_configs([split, whole], {"NSTATE": 2}) == [split, whole]
    assert chunk.prune_fwd_configs([split, shallow, whole, two_warps], {"NSTATE": 16}) == [shallow]
    assert [chunk.fwd_config_kept(c, 16) for c in (split, shallow, whole, two_warps)] == [False, True, False, False]
    assert [chunk.fwd_config_kept(c, 1) for c in (split, shallow, whole)] == [False, False, True]
    quarter = triton.Config({"BLOCK_D": 8, "PREFETCH": 8, "UNROLL": 8, "SPLIT": 4}, num_warps=1)
    assert chunk.prune_fwd_configs([quarter, split, whole], {"NSTATE": 2}) == [split, whole]
    assert chunk.prune_fwd_configs([quarter, whole], {"NSTATE": 4}) == [quarter, whole]
    (unsplit,) = chunk.prune_fwd_configs([split], {"NSTATE": 1})
    assert unsplit.kwargs == {**split.kwargs, "BLOCK_D": 32, "SPLIT": 1} and unsplit.num_warps == 1
    assert split.kwargs["SPLIT"] == 2 and split.kwargs["BLOCK_D"] == 16  # the original is left as it was


def test_forward_split_refuses_one_state():
    """A SPLIT config forced at N = 1 (one config skips the autotuner's pruning) fails to build instead of scanning
    without a state."""
    inputs = make_inputs(1, 8, 20, 1, 1, "BLD")
    config = triton.Config({"BLOCK_D": 16, "PREFETCH": 2, "UNROLL": 1, "SPLIT": 2}, num_warps=1)
    with forced_configs(chunk.selective_scan_fwd_kernel, [config]), pytest.raises(Exception, match="needs N >= SPLIT"):
        scan("triton", **cast(inputs, torch.float32, requires_grad=False), delta_softplus=True, layout="BLD")


@pytest.mark.parametrize(
    "dtype, nstate, split",
    [(torch.bfloat16, 8, 1), (torch.bfloat16, 8, 2), (torch.float16, 8, 2), (torch.float32, 4, 2),
     (torch.float32, 8, 1), (torch.bfloat16, 16, 2), (torch.bfloat16, 8, 4), (torch.float32, 8, 4)],
)  # fmt: skip
def test_forward_vector_bc_loads(monkeypatch, dtype, nstate, split):
    """The GPU's B_t/C_t vector loads (VECTOR_BC: 16-byte words, or 8-byte shares under SPLIT; decoded from bf16,
    fp16 or fp32 words), with the interpreter reading the same words one by one: chunks of 7 steps with a 4-step ring,
    so the ring reaches past every chunk (those loads predicated off), grouped B/C; output, last states and every
    gradient."""
    torch.manual_seed(5)
    launches: list[int] = []
    real_launch = chunk._launch_kernel

    def spy(kernel, grid, *args, **flags):
        launches.append(flags.get("VECTOR_BC", -1))
        return real_launch(kernel, grid, *args, **flags)

    monkeypatch.setattr(chunk, "_launch_kernel", spy)
    monkeypatch.setattr(chunk, "vector_bc", vector_bc_where_rows_fit)
    inputs = make_inputs(2, 17, 20, nstate, 2, "BLD", segments=None)
    config = triton.Config({"BLOCK_D": 32 // split, "PREFETCH": 4, "UNROLL": 2, "SPLIT": split}, num_warps=1)
    with forced_configs(chunk.selective_scan_fwd_kernel, [config]):
        compare_with_reference(inputs, dtype, {"delta_softplus": True, "layout": "BLD"}, backward=True,
                               bc_dtype=dtype, kernel="triton-2pass")  # fmt: skip
    assert launches and 1 in launches, launches  # the forward launches took the vector loads


@pytest.mark.parametrize("chunk_len, summary", [(12, False), (24, False), (16, True)])
@pytest.mark.parametrize("initial", [False, True])
def test_chunks_at_segment_starts_skip_the_summary(monkeypatch, chunk_len, summary, initial):
    """Chunks that each start a segment (periodic resets every 12 steps, chunks of 12 or 24) run the main pass alone,
    with no summary pass or combine: the reset at a chunk's first step replaces the incoming state (the initial
    state's segment's, where given). Chunks of 16 still take the summary pass. Output, initial and last states, and
    every gradient."""
    torch.manual_seed(7)
    summaries: list[bool] = []
    real_launch = chunk._launch_kernel

    def spy(kernel, grid, *args, **flags):
        if kernel is chunk.selective_scan_fwd_kernel:
            summaries.append(flags["SUMMARY"])
        return real_launch(kernel, grid, *args, **flags)

    monkeypatch.setattr(chunk, "_launch_kernel", spy)
    inputs = make_inputs(2, 48, 20, 4, 1, "BLD", segments=8 if initial else None)
    flags = {"delta_softplus": True, "layout": "BLD", "seq_len": 12}
    with mock.patch.dict(FORCED_CHUNK_LEN, {"triton-2pass": chunk_len}):
        compare_with_reference(inputs, torch.float32, flags, backward=True, return_last_state=True,
                               kernel="triton-2pass")  # fmt: skip
    assert summaries and any(summaries) == summary, summaries


@pytest.mark.parametrize("chunk_len", [5, 16])
@pytest.mark.parametrize("layout, reset", [("BDL", None), ("BLD", None), ("BDL", "seq_len"), ("BLD", "cu_seqlens")])
def test_chunk_two_pass_forward(chunk_len, layout, reset):
    """The forward's chunk-parallel path (summary pass, then main pass) for chunks shorter than, equal to and crossing
    segments, with initial and last states, and the backward from its checkpoints."""
    torch.manual_seed(42)
    batch, length = (1, 37) if reset == "cu_seqlens" else (2, 36)
    flags = {"delta_softplus": True, "layout": layout}
    segments = batch
    if reset == "seq_len":
        flags["seq_len"], segments = 12, batch * 3
    if reset == "cu_seqlens":
        flags["cu_seqlens"] = torch.tensor([0, 1, 6, 20, 21, 37])
        segments = 5
    inputs = make_inputs(batch, length, 20, 4, 2, layout, segments=segments)
    with mock.patch.dict(FORCED_CHUNK_LEN, {"triton-2pass": chunk_len}):
        compare_with_reference(inputs, torch.float32, flags, backward=True, kernel="triton-2pass")


@pytest.mark.parametrize(
    "chunk_len, nstate, dtype, block_lens, blocks",  # whole rows, chunks of 2 checkpoint blocks, chunks across
    # blocks, 16-step checkpoints stored per step unless their length is among the block lengths, N = 16's 4 steps
    # stored per step (above CKPT_BLOCK_MAX_NSTATE), fp32's 4-step blocks at N = 8 (whole rows and chunks of 2)
    [
        (None, 8, torch.bfloat16, (8,), True),
        (16, 8, torch.bfloat16, (8,), True),
        (7, 8, torch.bfloat16, (8,), False),
        (None, 4, torch.bfloat16, (8,), False),
        (None, 4, torch.bfloat16, (4, 8, 16), True),
        (None, 16, torch.bfloat16, (4, 8, 16), False),
        (None, 8, torch.float32, (4, 8, 16), True),
        (8, 8, torch.float32, (4, 8, 16), True),
    ],
)
@pytest.mark.parametrize("prefetch, unroll", [(4, 2), (8, 8)])
def test_training_forward_checkpoint_blocks(monkeypatch, chunk_len, nstate, dtype, block_lens, blocks, prefetch,
                                             unroll):  # fmt: skip
    """The training forward walks whole checkpoint blocks (CKPT_BLOCKS) where its chunks start at multiples of
    ckpt_len (8 at N = 8 in 16 bits, 4 in fp32) and ckpt_len is in CKPT_BLOCK_LENS (up to N = 8), then the row's last
    steps, with B_t/C_t by vector loads whose ring reaches past the row; chunks that start inside a block, and other
    checkpoint lengths, store checkpoints step by step. Output, last states and every gradient, which the backward
    computes from those checkpoints; periodic resets across blocks."""
    torch.manual_seed(11)
    monkeypatch.setattr(chunk, "CKPT_BLOCK_LENS", block_lens)
    launches: list[bool] = []
    real_launch = chunk._launch_kernel

    def spy(kernel, grid, *args, **flags):
        if flags.get("STORE_CKPT") and not flags.get("SUMMARY"):
            launches.append(flags.get("CKPT_BLOCKS"))
        return real_launch(kernel, grid, *args, **flags)

    monkeypatch.setattr(chunk, "_launch_kernel", spy)
    monkeypatch.setattr(chunk, "vector_bc", vector_bc_where_rows_fit)
    inputs = make_inputs(2, 36, 20, nstate, 2, "BLD", segments=6)  # (N = 8) 4 blocks and 4 steps; segments of 12
    config = triton.Config({"BLOCK_D": 32, "PREFETCH": prefetch, "UNROLL": unroll}, num_warps=1)
    flags = {"delta_softplus": True, "layout": "BLD", "seq_len": 12}
    with (
        forced_configs(chunk.selective_scan_fwd_kernel, [config]),
        mock.patch.dict(FORCED_CHUNK_LEN, {"triton-2pass": chunk_len}),
    ):
        compare_with_reference(inputs, dtype, flags, backward=True, kernel="triton-2pass")
    assert launches == [blocks]


@pytest.mark.parametrize("chunk_len, ahead, split, nstate", [(None, 32, 1, 8), (20, 8, 1, 8), (None, 16, 2, 8),
                                                              (None, 16, 2, 4)])  # fmt: skip
def test_forward_with_l2_hints_walks_blocks(chunk_len, ahead, split, nstate):
    """L2_AHEAD: the forward walks blocks of 8 steps, each hinting L2 (a no-op in the interpreter) `ahead` steps on,
    then the row's last steps; inference and training (checkpoint blocks: 16 steps at N = 4), whole rows and chunks
    of 20 (blocks, then 4 steps), with periodic resets, a gate and the vector B/C loads, and on two lanes per channel
    (the default config): output, last states and every gradient."""
    torch.manual_seed(13)
    assert chunk.walks_ckpt_blocks(4, chunk.bwd_chunk_for(4, torch.float32))
    inputs = make_inputs(2, 44, 20, nstate, 1, "BLD", segments=None)
    ring = {"PREFETCH": 8, "UNROLL": 8} if split > 1 else {"PREFETCH": 4, "UNROLL": 4}
    config = triton.Config({"BLOCK_D": 32 // split, **ring, "SPLIT": split, "L2_AHEAD": ahead}, num_warps=1)
    flags = {"delta_softplus": True, "layout": "BLD", "seq_len": 11}
    with (
        forced_configs(chunk.selective_scan_fwd_kernel, [config]),
        mock.patch.dict(FORCED_CHUNK_LEN, {"triton-2pass": chunk_len}),
        mock.patch.object(chunk, "vector_bc", vector_bc_where_rows_fit),
    ):
        compare_with_reference(inputs, torch.bfloat16, flags, backward=True, return_last_state=True,
                               kernel="triton-2pass")  # fmt: skip


@pytest.mark.parametrize("chunk_len, l2_ahead, split, prefetch, stream, dtype", [
    (None, 16, 2, 16, 1, torch.float32), (20, 0, 1, 4, 2, torch.bfloat16), (None, 16, 2, 8, 2, torch.float32),
])  # fmt: skip
def test_forward_streams_its_once_read_tensors(chunk_len, l2_ahead, split, prefetch, stream, dtype):
    """STREAM's cache hints on u, delta, z and y (1: evict first; 2: .cg loads, .cs stores), on a 16-step SPLIT ring
    with the L2 walk and training checkpoints, on chunks of 20 with their summary pass, and on the default ring:
    output, last states and every gradient, with periodic resets, a gate and the vector B/C loads."""
    torch.manual_seed(17)
    inputs = make_inputs(2, 45, 20, 8, 1, "BLD", segments=None)
    config = triton.Config({"BLOCK_D": 32 // split, "PREFETCH": prefetch, "UNROLL": min(prefetch, 8), "SPLIT": split,
                            "L2_AHEAD": l2_ahead, "STREAM": stream}, num_warps=1)  # fmt: skip
    flags = {"delta_softplus": True, "layout": "BLD", "seq_len": 15}
    with (
        forced_configs(chunk.selective_scan_fwd_kernel, [config]),
        mock.patch.dict(FORCED_CHUNK_LEN, {"triton-2pass": chunk_len}),
        mock.patch.object(chunk, "vector_bc", vector_bc_where_rows_fit),
    ):
        compare_with_reference(inputs, dtype, flags, backward=True, return_last_state=True, kernel="triton-2pass")
        assert chunk.selective_scan_fwd_kernel.best_config.kwargs["STREAM"] == stream


def test_training_chunks_start_at_checkpoint_blocks(monkeypatch):
    """For a GPU (132 SMs), the planner splits a training forward's rows into chunks of whole checkpoint blocks."""
    monkeypatch.setattr(chunk, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    for length in (49, 196, 3136):
        for align in (1, 4, 8, 16):
            chunk_len, nchunks = chunk.plan_chunks(2, 1, 160, length, cuda, "step", align)
            assert nchunks > 1 and chunk_len % align == 0 and (nchunks - 1) * chunk_len < length <= nchunks * chunk_len


# ---------------------------------------------------------------------------------------------------------------------
# 3. options


OPTION_SETS = [
    # softplus, D, z, delta_bias, return_last_state
    (False, False, False, False, False),
    (True, False, False, False, True),
    (False, True, False, False, False),
    (False, False, True, False, True),
    (False, False, False, True, False),
    (True, True, False, True, True),
    (True, False, True, True, False),
    (False, True, True, False, True),
]
OPTION_NAMES = ("softplus", "D", "z", "bias", "last")


@pytest.mark.parametrize(
    "softplus, has_D, has_z, has_bias, last",
    [pytest.param(*o, id="-".join(n for n, on in zip(OPTION_NAMES, o) if on) or "plain") for o in OPTION_SETS],
)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunk_options(softplus, has_D, has_z, has_bias, last, layout):
    """Each optional input present or absent, softplus on or off, with or without the last state; no initial state."""
    torch.manual_seed(42)
    inputs = make_inputs(2, 33, 12, 4, 1, layout, D=has_D, z=has_z, delta_bias=has_bias, softplus=softplus)
    flags = {"delta_softplus": softplus, "layout": layout}
    compare_with_reference(inputs, torch.float32, flags, backward=True, return_last_state=last)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunk_fp32_bc_with_bf16_u(layout):
    """B/C may stay fp32 while u is bf16 (x_proj under autocast keeps them fp32); their grads stay fp32."""
    torch.manual_seed(42)
    inputs = make_inputs(2, 40, 16, 8, 2, layout, segments=2)
    flags = {"delta_softplus": True, "layout": layout}
    compare_with_reference(inputs, torch.bfloat16, flags, backward=True, bc_dtype=torch.float32)


@pytest.mark.parametrize("grouped", [False, True], ids=["BC-3d", "BC-4d-G1"])
def test_chunk_single_group_forms_agree(grouped):
    """An explicit G = 1 group axis on B/C is accepted and means the same as the 3-D form."""
    torch.manual_seed(42)
    inputs = make_inputs(1, 20, 8, 4, 1, "BLD", grouped=grouped)
    compare_with_reference(inputs, torch.float32, {"delta_softplus": True, "layout": "BLD"}, backward=True)


@pytest.mark.parametrize("kernel", KERNELS)
def test_noncontiguous_inputs(kernel):
    """Views straight out of a (B, L, D) projection scanned as "BDL", strided B/C, transposed A and initial state."""
    torch.manual_seed(42)
    batch, length, dim, nstate = 2, 37, 12, 4
    proj = torch.randn(batch, length, 3 * dim)  # u | delta | z side by side, as one Linear would give them
    bc = torch.randn(batch, length, 2 * nstate + 3)
    values = {
        "u": proj[..., :dim].transpose(1, 2),
        "delta": (proj[..., dim : 2 * dim] * 0.5 - 1.0).transpose(1, 2),
        "z": proj[..., 2 * dim :].transpose(1, 2),
        "A": -torch.exp(torch.randn(nstate, dim) * 0.5).t(),
        "B": bc[..., 1 : 1 + nstate].transpose(1, 2),
        "C": bc[..., 2 + nstate : 2 + 2 * nstate].transpose(1, 2),
        "D": torch.randn(dim),
        "delta_bias": torch.randn(dim) * 0.3,
        "initial_state": torch.randn(dim, batch, nstate).transpose(0, 1),
    }
    strided = {name: x.detach().requires_grad_() for name, x in values.items()}  # leaves, still views' strides
    assert not any(strided[n].is_contiguous() for n in ("u", "delta", "z", "A", "B", "C", "initial_state"))
    dense = {name: x.detach().contiguous().requires_grad_() for name, x in values.items()}
    flags = {"delta_softplus": True, "return_last_state": True}
    out, last = scan(kernel, **strided, **flags)
    ref, ref_last = scan("naive", **dense, **flags)
    assert_close("out", ref, out, 1e-5)
    assert_close("last_state", ref_last, last, 1e-5)
    dout, dlast = torch.randn_like(out), torch.randn_like(last)
    got, want = grads((out, last), strided, (dout, dlast)), grads((ref, ref_last), dense, (dout, dlast))
    for name in strided:
        assert_close(f"d{name}", want[name], got[name], 5e-5)


@pytest.mark.parametrize("name", ["D", "delta_bias", "cu_seqlens"])
def test_chunk_noncontiguous_small_arguments(name):
    """A column of a table of per-channel weights, or strided offsets: same results."""
    torch.manual_seed(42)
    cu = torch.tensor([0, 3, 7, 12], dtype=torch.int32)
    dense = cast(make_inputs(1, 12, 8, 4, layout="BLD", z=False, segments=3), torch.float32)
    strided, strided_cu = dict(dense), cu
    if name == "cu_seqlens":
        strided_cu = torch.stack([cu, cu + 100], 1)[:, 0]
        assert not strided_cu.is_contiguous()
    else:
        x = dense[name].detach()
        strided[name] = torch.stack([x, torch.full_like(x, 7.0)], -1)[..., 0].requires_grad_()
        assert not strided[name].is_contiguous()
    flags = {"delta_softplus": True, "layout": "BLD", "return_last_state": True}
    out, last = scan("triton", **strided, **flags, cu_seqlens=strided_cu)
    ref, ref_last = scan("naive", **dense, **flags, cu_seqlens=cu)
    assert_close("out", ref, out, 1e-5)
    assert_close("last_state", ref_last, last, 1e-5)
    dout, dlast = torch.randn_like(out), torch.randn_like(last)
    got, want = grads((out, last), strided, (dout, dlast)), grads((ref, ref_last), dense, (dout, dlast))
    for name in strided:
        assert_close(f"d{name}", want[name], got[name], 5e-5)


# ---------------------------------------------------------------------------------------------------------------------
# 4. folding: seq_len resets == separate images


def fold(x: torch.Tensor, groups_of: int, layout: str) -> torch.Tensor:
    """(k*B2, ..., T) -> (B2, ..., k*T) for "BDL"; (k*B2, T, ...) -> (B2, k*T, ...) for "BLD" (a pure view)."""
    if layout == "BLD":
        return x.view(x.shape[0] // groups_of, groups_of * x.shape[1], *x.shape[2:])
    b, *rest, t = x.shape
    return x.view(b // groups_of, groups_of, *rest, t).movedim(1, -2).reshape(b // groups_of, *rest, groups_of * t)


def unfold(y: torch.Tensor, groups_of: int, layout: str) -> torch.Tensor:
    if layout == "BLD":
        return y.reshape(y.shape[0] * groups_of, y.shape[1] // groups_of, *y.shape[2:])
    b, d, length = y.shape
    return y.view(b, d, groups_of, length // groups_of).movedim(2, 1).reshape(b * groups_of, d, length // groups_of)


@pytest.mark.parametrize("kernel, layout", KERNEL_LAYOUTS)
def test_folded_batch_equals_separate_images(kernel, layout):
    """seq_len=T on (B2, k*T): outputs, last states and all grads equal k*B2 separate calls on one image each."""
    torch.manual_seed(42)
    b2, k, length, dim, nstate, groups = 2, 3, 17, 12, 4, 2
    leaves = cast(make_inputs(b2 * k, length, dim, nstate, groups, layout, segments=b2 * k), torch.float32)
    flags = {"delta_softplus": True, "layout": layout, "return_last_state": True}
    outs, lasts = [], []
    for i in range(b2 * k):
        one = {n: x[i : i + 1] if n not in ("A", "D", "delta_bias") else x for n, x in leaves.items()}
        out, last = scan(kernel, **one, **flags)
        outs.append(out)
        lasts.append(last)
    sep_out, sep_last = torch.cat(outs), torch.cat(lasts)
    folded = {n: fold(x, k, layout) if n in ("u", "delta", "z", "B", "C") else x for n, x in leaves.items()}
    if layout == "BLD":  # folding costs nothing in this layout
        assert all(folded[n]._base is leaves[n] for n in ("u", "delta", "z", "B", "C"))
    out, last = scan(kernel, **folded, **flags, seq_len=length)
    assert out.shape == folded["u"].shape and last.shape == sep_last.shape
    assert_close("out", sep_out, unfold(out, k, layout), 1e-5)
    assert_close("last_state", sep_last, last, 1e-5)
    dout, dlast = torch.randn_like(sep_out), torch.randn_like(sep_last)
    want = grads((sep_out, sep_last), leaves, (dout, dlast))
    got = grads((out, last), leaves, (fold(dout, k, layout), dlast))
    for name in leaves:
        assert_close(f"d{name}", want[name], got[name], 2e-5)


# ---------------------------------------------------------------------------------------------------------------------
# 5. cu_seqlens: packed segments == separate calls


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "index_dtype, layout, groups",
    [pytest.param(torch.int32, "BDL", 1, id="int32-BDL"), pytest.param(torch.int64, "BLD", 2, id="int64-BLD-G2")],
)
def test_varlen_equals_separate_segments(kernel, index_dtype, layout, groups):
    torch.manual_seed(42)
    lengths = [1, 5, 1, 26, 2, 13, 1]  # length-1 segments first, last and inside; one spans a chunk boundary
    total, dim, nstate = sum(lengths), 8, 4
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=index_dtype)
    leaves = cast(make_inputs(1, total, dim, nstate, groups, layout, segments=len(lengths)), torch.float32)
    time_dim = {"BDL": {"u": 2, "delta": 2, "z": 2, "B": -1, "C": -1}, "BLD": dict.fromkeys(SEQ_INPUTS + ("B", "C"), 1)}
    flags = {"delta_softplus": True, "layout": layout, "return_last_state": True}
    outs, lasts = [], []
    for j, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        piece = {
            n: x.narrow(time_dim[layout][n], start, end - start) for n, x in leaves.items() if n in time_dim[layout]
        }
        piece.update({n: leaves[n] for n in ("A", "D", "delta_bias")})
        out, last = scan(kernel, **piece, **flags, initial_state=leaves["initial_state"][j : j + 1])
        outs.append(out)
        lasts.append(last)
    sep_out, sep_last = torch.cat(outs, dim=time_dim[layout]["u"]), torch.cat(lasts)
    out, last = scan(kernel, **leaves, **flags, cu_seqlens=cu)
    assert last.shape == (len(lengths), dim, nstate)
    assert_close("out", sep_out, out, 1e-5)
    assert_close("last_state", sep_last, last, 1e-5)
    dout, dlast = torch.randn_like(out), torch.randn_like(last)
    want = grads((sep_out, sep_last), leaves, (dout, dlast))
    got = grads((out, last), leaves, (dout, dlast))
    for name in leaves:
        assert_close(f"d{name}", want[name], got[name], 2e-5)


# ---------------------------------------------------------------------------------------------------------------------
# 6. state chaining


@pytest.mark.parametrize("kernel, layout", KERNEL_LAYOUTS)
def test_state_chaining(kernel, layout):
    """Scanning [0, L) == scanning [0, L1) then [L1, L) from the first call's last state, grads included."""
    split = {"BDL": 20, "BLD": 35}[layout]
    torch.manual_seed(42)
    batch, length, dim, nstate = 2, 51, 12, 4
    leaves = cast(make_inputs(batch, length, dim, nstate, 2, layout, segments=batch), torch.float32)
    time_dim = {n: (2 if n in SEQ_INPUTS else -1) if layout == "BDL" else 1 for n in SEQ_INPUTS + ("B", "C")}
    flags = {"delta_softplus": True, "layout": layout, "return_last_state": True}
    out, last = scan(kernel, **leaves, **flags)

    def part(start, stop):
        return {n: x.narrow(time_dim[n], start, stop - start) if n in time_dim else x for n, x in leaves.items()}

    first = part(0, split)
    out1, mid = scan(kernel, **first, **flags)
    second = {**part(split, length), "initial_state": mid}
    out2, chained_last = scan(kernel, **second, **flags)
    chained = torch.cat([out1, out2], dim=time_dim["u"])
    assert_close("out", out, chained, 1e-5)
    assert_close("last_state", last, chained_last, 1e-5)
    dout, dlast = torch.randn_like(out), torch.randn_like(last)
    want = grads((out, last), leaves, (dout, dlast))
    got = grads((chained, chained_last), leaves, (dout, dlast))
    for name in leaves:
        assert_close(f"d{name}", want[name], got[name], 2e-5)


# ---------------------------------------------------------------------------------------------------------------------
# 7. no unwritten elements


@pytest.mark.parametrize("layout, kernel", [("BDL", "triton"), ("BLD", "triton-2pass")])
def test_chunk_partial_tiles_leave_no_nan(layout, kernel):
    """D = 20 (a partial channel block), N = 5 (a partial state block), L = 33 (a one-step last chunk), seq_len=11:
    finite everywhere, and equal to the reference, forward and every gradient.

    conftest fills every tensor sfmamba allocates with NaN, so a tile element a kernel forgets to store shows here.
    The upstream gradient comes from .sum(), i.e. stride-0 expanded tensors.
    """
    torch.manual_seed(42)
    inputs = make_inputs(2, 33, 20, 5, 1, layout, segments=6)
    leaves = cast(inputs, torch.float32)
    out, last = scan(kernel, **leaves, delta_softplus=True, return_last_state=True, seq_len=11, layout=layout)
    (out.sum() + last.sum()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    for name, x in leaves.items():
        assert x.grad is not None and torch.isfinite(x.grad).all(), f"d{name} has non-finite values"
    ref_leaves = cast(inputs, torch.float32)
    ref, ref_last = scan("naive", **ref_leaves, delta_softplus=True, return_last_state=True, seq_len=11, layout=layout)
    (ref.sum() + ref_last.sum()).backward()
    assert_close("out", ref, out, 1e-5)
    assert_close("last_state", ref_last, last, 1e-5)
    for name, x in leaves.items():  # the masked state lanes' gradients are values, not only finite
        assert_close(f"d{name}", ref_leaves[name].grad, x.grad, TOLERANCE[torch.float32][1])


# ---------------------------------------------------------------------------------------------------------------------
# 8. bad inputs


def _valid(batch=2, length=12, layout="BDL"):
    torch.manual_seed(0)
    return make_inputs(batch, length, 8, 4, 1, layout, segments=None)


def _meta(x):
    return x.to("meta")


def _with_inf(A):
    A = A.clone()
    A[1, 2] = float("inf")
    return A


def _with_nan(A):
    A = A.clone()
    A[0, 0] = float("nan")
    return A


BAD_INPUTS = [
    # id, change to a valid call (batch 2, D 8, L 12, N 4, "BDL"), argument the message must name
    ("u-2d", lambda t: {"u": t["u"][0]}, "u"),
    ("u-int", lambda t: {"u": t["u"].long()}, "u"),
    ("u-empty", lambda t: {k: (v[..., :0] if k in ("u", "delta", "z", "B", "C") else v) for k, v in t.items()}, "u"),
    ("delta-shape", lambda t: {"delta": t["delta"][..., :-1]}, "delta"),
    ("delta-dtype", lambda t: {"delta": t["delta"].half()}, "delta"),
    ("delta-device", lambda t: {"delta": _meta(t["delta"])}, "delta"),
    ("A-1d", lambda t: {"A": t["A"][:, 0]}, "A"),
    ("A-shape", lambda t: {"A": t["A"][:-1]}, "A"),
    ("A-fp16", lambda t: {"A": t["A"].half()}, "A"),
    ("A-bf16", lambda t: {"A": t["A"].bfloat16()}, "A"),
    ("A-device", lambda t: {"A": _meta(t["A"])}, "A"),
    ("A-inf", lambda t: {"A": _with_inf(t["A"])}, "A"),
    ("A-nan", lambda t: {"A": _with_nan(t["A"])}, "A"),
    ("B-shape", lambda t: {"B": t["B"][..., :-1]}, "B"),
    ("B-batch", lambda t: {"B": t["B"][:1]}, "B"),
    ("B-2d", lambda t: {"B": t["B"][0]}, "B"),
    ("B-fp64", lambda t: {"B": t["B"].double()}, "B"),
    ("B-bf16-with-fp32-u", lambda t: {"B": t["B"].bfloat16(), "C": t["C"].bfloat16()}, "B"),
    ("B-device", lambda t: {"B": _meta(t["B"])}, "B"),
    ("B-groups-not-dividing-D", lambda t: {"B": torch.randn(2, 3, 4, 12), "C": torch.randn(2, 3, 4, 12)}, "B"),
    ("C-shape", lambda t: {"C": t["C"][:, :-1]}, "C"),
    ("C-grouped-B-not", lambda t: {"C": torch.randn(2, 2, 4, 12)}, "C"),
    ("C-fp16", lambda t: {"C": t["C"].half()}, "C"),
    ("D-shape", lambda t: {"D": t["D"][:-1]}, "D"),
    ("D-fp16", lambda t: {"D": t["D"].half()}, "D"),
    ("D-device", lambda t: {"D": _meta(t["D"])}, "D"),
    ("z-shape", lambda t: {"z": t["z"].transpose(1, 2)}, "z"),
    ("z-dtype", lambda t: {"z": t["z"].bfloat16()}, "z"),
    ("z-device", lambda t: {"z": _meta(t["z"])}, "z"),
    ("delta_bias-shape", lambda t: {"delta_bias": t["delta_bias"][None]}, "delta_bias"),
    ("delta_bias-fp16", lambda t: {"delta_bias": t["delta_bias"].half()}, "delta_bias"),
    ("delta_softplus-int", lambda t: {"delta_softplus": 1}, "delta_softplus"),
    ("return_last_state-str", lambda t: {"return_last_state": "yes"}, "return_last_state"),
    ("seq_len-not-dividing", lambda t: {"seq_len": 5}, "seq_len"),
    ("seq_len-zero", lambda t: {"seq_len": 0}, "seq_len"),
    ("seq_len-negative", lambda t: {"seq_len": -4}, "seq_len"),
    ("seq_len-bool", lambda t: {"seq_len": True}, "seq_len"),
    ("seq_len-float", lambda t: {"seq_len": 4.0}, "seq_len"),
    ("seq_len-longer-than-L", lambda t: {"seq_len": 24}, "seq_len"),
    ("initial_state-segments", lambda t: {"initial_state": torch.randn(1, 8, 4)}, "initial_state"),
    ("initial_state-seq_len", lambda t: {"seq_len": 4, "initial_state": torch.randn(2, 8, 4)}, "initial_state"),
    ("initial_state-N", lambda t: {"initial_state": torch.randn(2, 8, 3)}, "initial_state"),
    ("initial_state-fp16", lambda t: {"initial_state": torch.randn(2, 8, 4).half()}, "initial_state"),
    ("layout-unknown", lambda t: {"layout": "BLC"}, "layout"),
    ("layout-lowercase", lambda t: {"layout": "bdl"}, "layout"),
    ("layout-BLD-on-BDL-tensors", lambda t: {"layout": "BLD"}, "A"),
]
ONE_ROW = [  # with a batch of one row, L = 12
    ("seq_len-and-cu_seqlens", {"seq_len": 4, "cu_seqlens": torch.tensor([0, 4, 12])}, "seq_len"),
    ("cu_seqlens-non-monotonic", {"cu_seqlens": torch.tensor([0, 7, 3, 12])}, "cu_seqlens"),
    ("cu_seqlens-repeated", {"cu_seqlens": torch.tensor([0, 5, 5, 12])}, "cu_seqlens"),
    ("cu_seqlens-not-from-0", {"cu_seqlens": torch.tensor([1, 5, 12])}, "cu_seqlens"),
    ("cu_seqlens-not-to-L", {"cu_seqlens": torch.tensor([0, 5, 11])}, "cu_seqlens"),
    ("cu_seqlens-past-L", {"cu_seqlens": torch.tensor([0, 5, 13])}, "cu_seqlens"),
    ("cu_seqlens-float", {"cu_seqlens": torch.tensor([0.0, 5.0, 12.0])}, "cu_seqlens"),
    ("cu_seqlens-int16", {"cu_seqlens": torch.tensor([0, 5, 12], dtype=torch.int16)}, "cu_seqlens"),
    ("cu_seqlens-2d", {"cu_seqlens": torch.tensor([[0, 5, 12]])}, "cu_seqlens"),
    ("cu_seqlens-one-offset", {"cu_seqlens": torch.tensor([0])}, "cu_seqlens"),
    ("cu_seqlens-device", {"cu_seqlens": torch.tensor([0, 5, 12], device="meta")}, "cu_seqlens"),
    ("cu_seqlens-initial_state", {"cu_seqlens": torch.tensor([0, 5, 12]), "initial_state": torch.randn(1, 8, 4)},
     "initial_state"),
]  # fmt: skip


@pytest.mark.parametrize("change, name", [pytest.param(c, n, id=i) for i, c, n in BAD_INPUTS])
def test_bad_inputs_raise_value_error(change, name, monkeypatch):
    monkeypatch.setenv("SFMAMBA_VALUE_CHECKS", "1")
    kwargs = {**_valid(), "delta_softplus": True}
    kwargs.update(change(kwargs))
    with pytest.raises(ValueError, match=rf"\b{name} must"), backend("naive"):
        selective_scan(**kwargs)


def test_messages_say_what_went_wrong(monkeypatch):
    """u in the other layout is named as such (A's shape is where it shows), a numpy int is not taken for an int that
    fails to divide L, and a dtype appears once in the expected list."""
    monkeypatch.setenv("SFMAMBA_VALUE_CHECKS", "1")
    with pytest.raises(ValueError, match=r"layout='BLD' reads u \(2, 8, 12\) as D=12 \(is u BDL\?\)"), backend("naive"):
        selective_scan(**_valid(), layout="BLD")
    with pytest.raises(ValueError, match=r"seq_len must be a Python int, got int64 4"), backend("naive"):
        selective_scan(**_valid(), seq_len=np.int64(4))
    half_b = {**_valid(), "B": _valid()["B"].half()}
    with pytest.raises(ValueError, match=r"B must be of dtype torch\.float32, got"), backend("naive"):
        selective_scan(**half_b)


@pytest.mark.parametrize("extra, name", [pytest.param(e, n, id=i) for i, e, n in ONE_ROW])
def test_bad_segment_arguments_raise_value_error(extra, name, monkeypatch):
    monkeypatch.setenv("SFMAMBA_VALUE_CHECKS", "1")
    with pytest.raises(ValueError, match=rf"\b{name} must"), backend("naive"):
        selective_scan(**_valid(batch=1), **extra)


def test_cu_seqlens_needs_one_row():
    with pytest.raises(ValueError, match=r"\bcu_seqlens must"), backend("naive"):
        selective_scan(**_valid(batch=2), cu_seqlens=torch.tensor([0, 5, 12]))


@pytest.mark.parametrize("kernel", KERNELS)
def test_valid_edge_arguments_are_accepted(kernel):
    """The checks do not over-reach: seq_len == L, a single cu_seqlens segment, int64 offsets on one row."""
    torch.manual_seed(42)
    inputs = cast(make_inputs(1, 12, 8, 4, layout="BLD"), torch.float32, requires_grad=False)
    plain = scan(kernel, **inputs, layout="BLD")
    torch.testing.assert_close(scan(kernel, **inputs, layout="BLD", seq_len=12), plain)
    torch.testing.assert_close(scan(kernel, **inputs, layout="BLD", cu_seqlens=torch.tensor([0, 12])), plain)


# ---------------------------------------------------------------------------------------------------------------------
# 9. torch.compile


@pytest.mark.parametrize("op_name", ["fwd", "bwd"])
def test_custom_ops_opcheck(op_name):
    """torch.library.opcheck (schema, fake vs real outputs, autograd registration, AOT dispatch) on the ops that
    torch.compile traces, with every optional input and periodic resets."""
    torch.manual_seed(42)
    t = cast(make_inputs(2, 20, 8, 4, 2, "BLD", segments=4), torch.float32)
    fwd_args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], t["initial_state"], None,
                True, 10, "BLD", True, True)  # fmt: skip
    if op_name == "fwd":
        torch.library.opcheck(torch.ops.sfmamba.selective_scan_fwd.default, fwd_args)
        return
    with torch.no_grad():
        out, last, ckpt = torch.ops.sfmamba.selective_scan_fwd(*fwd_args)
    plain = {name: x.detach() for name, x in t.items()}
    bwd_args = (torch.randn_like(out), torch.randn_like(last), plain["u"], plain["delta"], plain["A"], plain["B"],
                plain["C"], plain["D"], plain["z"], plain["delta_bias"], plain["initial_state"], None, ckpt, True, 10,
                "BLD")  # fmt: skip
    torch.library.opcheck(torch.ops.sfmamba.selective_scan_bwd.default, bwd_args)


@pytest.mark.parametrize("path", ["eager", "op"])
@pytest.mark.parametrize("use", ["out", "last", "both"])
def test_backward_fills_no_zero_gradients(path, use):
    """Autograd passes no zero-filled gradient for outputs the loss did not use (the checkpoints every time: a 16 MB
    memset per backward at (128, 160, 196, 8)); the gradients match the reference whichever outputs were used."""
    torch.manual_seed(0)
    base = make_inputs(2, 20, 8, 4, 1, "BLD", segments=8)  # last: 256 values, checkpoints: 128
    t = cast(base, torch.float32)
    fn = chunk.SelectiveScanFunction.apply if path == "eager" else torch.ops.sfmamba.selective_scan_fwd
    out, last, ckpt = fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
                         t["initial_state"], None, True, 5, "BLD", True, True)  # fmt: skip
    loss = {"out": out.square().sum(), "last": last.square().sum()}
    loss = sum(loss.values()) if use == "both" else loss[use]
    unrecorded = FillRecorder.unrecorded(chunk.selective_scan_bwd)  # the op path's kernels run outside modes anyway
    with mock.patch.object(chunk, "selective_scan_bwd", unrecorded), FillRecorder() as recorder:
        grads = torch.autograd.grad(loss, list(t.values()), allow_unused=True)
    assert ckpt.numel() > 0 and ckpt.numel() not in recorder.sizes, recorder.sizes
    r = cast(base, torch.float32)
    ref_out, ref_last = loop_reference(r["u"], r["delta"], r["A"], r["B"], r["C"], r["D"], r["z"], r["delta_bias"],
                                       True, seq_len=5, initial_state=r["initial_state"], layout="BLD")  # fmt: skip
    ref = {"out": ref_out.square().sum(), "last": ref_last.square().sum()}
    ref = sum(ref.values()) if use == "both" else ref[use]
    expected = torch.autograd.grad(ref, list(r.values()), allow_unused=True)
    for name, grad, want in zip(t, grads, expected):
        if want is None:  # C, D and z do not reach the last state: zero gradients (or none)
            assert grad is None or not grad.any(), name
        else:
            assert relative_error(grad, want) < 1e-4, name


def test_torch_compile_fullgraph_matches_eager():
    """The Triton path traces into one graph (custom op + fake) and gives eager's forward and backward."""
    torch.manual_seed(42)
    leaves = cast(make_inputs(2, 20, 8, 4, 2, "BLD", segments=2, z=False), torch.float32)

    def block(u, delta, A, B, C, D, delta_bias, initial_state):
        y, last = selective_scan(
            torch.tanh(u), delta, A, B, C, D, None, delta_bias, True, True, initial_state=initial_state, layout="BLD"
        )
        return y * 2.0, last.sum(-1)

    traced = []

    def inductor_recording_ops(gm, example_inputs):
        traced.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)

    if INTERPRETER_PROBLEM:
        pytest.fail(INTERPRETER_PROBLEM)
    torch._dynamo.reset()
    set_kernel_backend("triton")  # no spy here: dynamo would have to trace through the mock
    try:
        # the on-disk caches key on the graph, not on the op's fake implementation: a graph compiled against an older
        # chunk.py would be replayed with stale output shapes
        with (
            torch._inductor.config.patch(fx_graph_cache=False, fx_graph_remote_cache=False),
            torch._functorch.config.patch(enable_autograd_cache=False),
        ):
            compiled = torch.compile(block, backend=inductor_recording_ops, fullgraph=True)
            out, last = compiled(**leaves)
    finally:
        set_kernel_backend(None)
    assert any("sfmamba.selective_scan_fwd" in target for target in traced), traced
    with backend("triton"):
        ref, ref_last = block(**leaves)
    assert_close("out", ref, out, 1e-5)
    assert_close("last_state", ref_last, last, 1e-5)
    upstream = (torch.randn_like(out), torch.randn_like(last))
    got, want = grads((out, last), leaves, upstream), grads((ref, ref_last), leaves, upstream)
    for name in leaves:
        assert_close(f"d{name}", want[name], got[name], 1e-5)


def test_value_checks_on_a_gpu_do_not_sync(monkeypatch):
    """Off the CPU a value check is queued as an asynchronous device assertion with the message, never `.item()`."""
    from sfmamba.ops import _checks

    monkeypatch.setenv("SFMAMBA_VALUE_CHECKS", "1")
    ok = torch.tensor(True, device="meta")  # stands in for a CUDA tensor: reading its value would raise
    with mock.patch.object(torch, "_assert_async") as queued:
        _checks.check_value("selective_scan", "A", ok, "finite everywhere", lambda: "non-finite values")
    queued.assert_called_once()
    assert queued.call_args.args[1] == "selective_scan: A must be finite everywhere"


SM90_COMPILE_HEADER = """
import torch
import triton
from sfmamba.ops.selective_scan import chunk
from sfmamba.testing import compile_for_sm90, scan_pointer_type

common = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, PREFETCH=1)
infer, train = dict(HAS_Z=False, HAS_H0=False), dict(HAS_Z=True, HAS_H0=True)
"""
STEP_FWD_SM90_COMPILE = (
    SM90_COMPILE_HEADER
    + """
for summary, reset, extra, dtype, unroll, ring in ((False, 0, infer, "bf16", 1, 1), (True, 1, train, "fp32", 2, 2),
                                                   (False, 2, train, "fp16", 4, 4), (False, 0, infer, "bf16", 4, 4)):
    flags = dict(common, **extra, RESET=reset, STORE_LAST=extra is train, STORE_CKPT=extra is train,
                 SUMMARY=summary, BLOCK_D=32, BLOCK_N=8, UNROLL=unroll, PREFETCH=ring)
    compiled = compile_for_sm90(chunk.selective_scan_fwd_kernel, flags, 1, scan_pointer_type(dtype))
    loops = compiled.asm["ttgir"].count("scf.for")
    print("fwd", "cubin" if compiled.asm.get("cubin") else "no cubin", summary, reset, unroll, f"loops={loops}")
for dtype in ("bf16", "fp16", "fp32"):  # B_t/C_t by 16-byte loads
    flags = dict(common, **infer, RESET=0, STORE_LAST=False, STORE_CKPT=False, SUMMARY=False, BLOCK_D=64, BLOCK_N=8,
                 UNROLL=1, PREFETCH=1, VECTOR_BC=1)
    compiled = compile_for_sm90(chunk.selective_scan_fwd_kernel, flags, 1, scan_pointer_type(dtype))
    print("vec", "cubin" if compiled.asm.get("cubin") else "no cubin", dtype,
          f"loads={compiled.asm['ptx'].count('ld.global.nc.v4.b32')}")
for dtype, nstate, extra, split in (("bf16", 8, infer, 2), ("fp32", 8, train, 2), ("bf16", 16, train, 2),
                                    ("bf16", 8, infer, 4)):  # two or four lanes per channel
    flags = dict(common, **extra, RESET=1, STORE_LAST=extra is train, STORE_CKPT=extra is train, SUMMARY=False,
                 BLOCK_D=32 // split, BLOCK_N=nstate, UNROLL=1, PREFETCH=1, VECTOR_BC=1, SPLIT=split)
    compiled = compile_for_sm90(chunk.selective_scan_fwd_kernel, flags, 1, scan_pointer_type(dtype))
    ptx = compiled.asm["ptx"]
    print("split", "cubin" if compiled.asm.get("cubin") else "no cubin", dtype, nstate, split,
          ptx.count("ld.global.nc.b32"), ptx.count("ld.global.nc.v2.b32"), ptx.count("ld.global.nc.v4.b32"),
          ptx.count("shfl.sync.bfly"), compiled.asm["ttgir"].count("ttg.convert_layout"))
"""
)
STEP_BWD_SM90_COMPILE = (
    SM90_COMPILE_HEADER
    + """
for nstate, summary, reset, extra in ((8, False, 0, infer), (8, False, 1, train), (1, False, 2, train),
                                      (8, True, 1, infer)):
    block_n, steps = triton.next_power_of_2(nstate), chunk.bwd_chunk_for(nstate, torch.bfloat16)
    flags = dict(common, **extra, RESET=reset, HAS_DLAST=extra is train, SUMMARY=summary, CHUNK=steps, BLOCK_D=32,
                 BLOCK_N=block_n, UNROLL=steps, NEXT_TO_L1=int(extra is train), BRANCHLESS=int(extra is train),
                 TILES=int(reset != 1))
    if PART == "rows" and reset == 1 and not summary:  # the same flags in the ROWS layout: channel sums by shuffles
        rows = compile_for_sm90(chunk.selective_scan_bwd_kernel, dict(flags, TILES=0, ROWS=1, VECTOR_BC=1), 1,
                                scan_pointer_type("bf16"))
        print("rows", "cubin" if rows.asm.get("cubin") else "no cubin", rows.asm["ptx"].count("shfl.sync.bfly"),
              rows.asm["ttgir"].count("ttg.convert_layout"))
        # the GPU's SPLIT config: two lanes per channel, the next chunk hinted by one instruction per tensor
        split_flags = dict(flags, TILES=0, ROWS=1, VECTOR_BC=1, HAS_H0=False, BRANCHLESS=0, BLOCK_D=16, SPLIT=2,
                           NEXT_TO_L1=2)
        split = compile_for_sm90(chunk.selective_scan_bwd_kernel, split_flags, 1, scan_pointer_type("bf16"))
        print("rows-split", "cubin" if split.asm.get("cubin") else "no cubin",
              split.asm["ptx"].count("shfl.sync.bfly"), split.asm["ptx"].count("ld.global.nc.v2.b32"),
              split.asm["ttgir"].count("ttg.convert_layout"), split.asm["ptx"].count("prefetch.global.L1"))
    if PART == "chunks":
        compiled = compile_for_sm90(chunk.selective_scan_bwd_kernel, flags, 1, scan_pointer_type("bf16"))
        loops, hints = compiled.asm["ttgir"].count("scf.for"), compiled.asm["ptx"].count("prefetch.global.L1")
        print("bwd", "cubin" if compiled.asm.get("cubin") else "no cubin", summary, reset, nstate, f"hints={hints}",
              f"loops={loops}")
"""
)


def test_step_forward_compiles_for_sm90():
    """The interpreter never compiles: build the step forward (main, summary and training flag sets, step loop unrolled
    1-4 times; B_t/C_t by 16-byte inline-PTX loads in bf16, fp16 and fp32; two or four lanes per channel, SPLIT, with
    4-, 8- or 16-byte loads of each lane's share) for an H100 with Triton's bundled ptxas. (The forward's and the
    backward's builds run as two tests, so that the two test workers share them.)"""
    result = run_without_interpreter(STEP_FWD_SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 11 and all(" cubin " in f" {line} " for line in lines), result.stdout
    # SPLIT: each lane's share of B_t/C_t by one 4-byte (SPLIT 4, N = 8 bf16), 8-byte (SPLIT 2, N = 8 bf16) or
    # 16-byte load per step (the ring's first and the loop's), y's shares by log2(SPLIT) shuffles per step, and no
    # layout conversions
    assert [line.split()[2:] for line in lines if line.startswith("split")] == [
        ["bf16", "8", "2", "0", "4", "0", "1", "0"],
        ["fp32", "8", "2", "0", "0", "4", "1", "0"],
        ["bf16", "16", "2", "0", "0", "4", "1", "0"],
        ["bf16", "8", "4", "4", "0", "0", "2", "0"],
    ], result.stdout
    # VECTOR_BC: one 16-byte load per step for each of B_t and C_t (N = 8 halves), two in fp32; the ring's first load
    # and the loop's: 4 (8 in fp32)
    vector = [line.split() for line in lines if line.startswith("vec")]
    assert [(fields[2], fields[3]) for fields in vector] == [
        ("bf16", "loads=4"),
        ("fp16", "loads=4"),
        ("fp32", "loads=8"),
    ], result.stdout
    # UNROLL > 1 unrolls the forward's step loop (its trip count is dynamic: an unrolled loop plus a remainder loop)
    forward = [line.split() for line in lines if line.startswith("fwd")]
    assert [(fields[-2], fields[-1]) for fields in forward] == [
        ("1", "loops=1"),
        ("2", "loops=2"),
        ("4", "loops=2"),
        ("4", "loops=2"),
    ], result.stdout


@pytest.mark.parametrize("part", ["chunks", "rows"])
def test_step_backward_compiles_for_sm90(part):
    """Build the step backward for an H100 with Triton's bundled ptxas (two tests, the chunk layouts and ROWS, so that
    the two test workers share ~200 s of builds). `chunks`: the main pass has one loop, over its span's chunks, each
    chunk fully unrolled for N = 8 and N = 1 (bwd_chunk_for <= MAX_UNROLL: the stored states are then indexed
    statically, no selects), and the summary pass keeps its step loop; with NEXT_TO_L1 the main pass hints each of
    the next chunk's steps into L1 (u, delta, dout, z, B, C: 6 per step). `rows`: ROWS' channel sums by shuffles and
    no layout conversions; then the GPU's SPLIT config (two lanes per channel, NEXT_TO_L1 2: the next chunk hinted by 6
    hints, one per tensor, each lane at one of the chunk's steps)."""
    result = run_without_interpreter(f"PART = {part!r}\n" + STEP_BWD_SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert len(lines) == {"chunks": 4, "rows": 2}[part], result.stdout
    assert all(" cubin " in f" {line} " for line in lines), result.stdout
    if part == "chunks":
        assert [line.split()[-1] for line in lines] == ["loops=1"] * 4, result.stdout
        hints = [line.split()[-2] for line in lines]
        assert hints == ["hints=0", "hints=48", "hints=96", "hints=0"], result.stdout  # CHUNK 8, 8, 16 (N = 1), summary
        assert all(chunk.bwd_chunk_for(n, dtype) <= chunk.MAX_UNROLL for n in (1, 2, 4, 8, 16, 64) for dtype in DTYPES)
        return
    # ROWS, N = 8, a chunk of 8 steps: 9 shuffles per channel sum (dC in the forward sweep, dB in the backward one)
    assert [line.split()[2:] for line in lines if line.startswith("rows ")] == [["144", "0"]], result.stdout
    # ROWS with two lanes per channel (SPLIT), 4 states each: 5 shuffles per channel sum over the 16 channels, and one
    # per step for each of y's, ddt's and du's halves: 13 per step, 104 per chunk; each lane's share of B_t/C_t by
    # 8-byte loads; with NEXT_TO_L1 2 the next chunk hinted by 6 hints, one per tensor
    split = [line.split()[2:] for line in lines if line.startswith("rows-split")]
    assert len(split) == 1 and split[0][0] == "104" and int(split[0][1]) >= 16 and split[0][2:] == ["0", "6"], (
        result.stdout
    )


def test_backward_defaults_on_the_gpu(monkeypatch):
    """The GPU's backward configs (timed on an H100, session 26): every one hints the next chunk into L1 by one
    instruction per tensor (NEXT_TO_L1 2), and ROWS with two lanes per channel runs capped at 168 registers (12 one-warp
    programs per SM: L = 196's 1280 in one wave) and loads each chunk's checkpoint a chunk ahead (CKPT_AHEAD, session
    36) and its inputs two steps ahead (INPUT_RING 2, session 37); the cap is pruned with SPLIT where N < 2, with
    ROWS above N = 8 and where an initial state is given."""
    monkeypatch.setattr(chunk, "triton_interpret", lambda: False)
    configs = chunk._bwd_configs()
    assert all(c.kwargs["NEXT_TO_L1"] == 2 and c.num_warps == 1 for c in configs)
    (split,) = [c for c in configs if c.kwargs.get("SPLIT", 1) > 1]
    assert (
        split.kwargs["SPLIT"] == 2 and split.kwargs["BLOCK_D"] == 16 and split.kwargs["ROWS"] and split.maxnreg == 168
    )
    assert all(c.maxnreg is None for c in configs if c is not split)
    assert split.kwargs["KEEP_DT"] == 1  # (pruned to 16-bit inputs without a gate: test_backward_keeps_dt_...)
    assert split.kwargs["CKPT_AHEAD"] == 1 and split.kwargs["INPUT_RING"] == 2  # (pruned: test_backward_rings_...)
    bf16 = torch.empty(0, dtype=torch.bfloat16)

    def splits(args: dict) -> list[int]:  # (the pruning may return a copy of the config, with flags turned off)
        return [c.kwargs.get("SPLIT", 1) for c in chunk.prune_bwd_configs(configs, {**args, "u_ptr": bf16})]

    assert splits({"NSTATE": 8, "HAS_H0": False}) == [2]
    for args in ({"NSTATE": 1}, {"NSTATE": 16}, {"NSTATE": 8, "HAS_H0": True}):
        assert 2 not in splits(args), args


SPLIT_CAP_SM90 = """
import os, re, subprocess, tempfile
from pathlib import Path
from unittest import mock
import torch
import triton
from sfmamba.ops.selective_scan import chunk
from sfmamba.testing import compile_for_sm90, jit_function, scan_pointer_type

with mock.patch.object(chunk, "triton_interpret", lambda: False):
    (default,) = [c for c in chunk._bwd_configs() if c.kwargs.get("SPLIT", 1) > 1]
# as the autotuner launches it with a gate (HAS_Z below): pruned
(split,) = chunk.prune_bwd_configs([default], {"NSTATE": 8, "u_ptr": torch.empty(0, dtype=torch.bfloat16)}, HAS_Z=True)
names = jit_function(chunk.selective_scan_bwd_kernel).arg_names
flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_H0=False, RESET=0, HAS_DLAST=False,
             SUMMARY=False, CHUNK=8, BLOCK_N=8, UNROLL=8, VECTOR_BC=1, L_STRIDE=160, BC_L_STRIDE=8, Z_L_STRIDE=320,
             DOUT_L_STRIDE=320, **split.kwargs)  # (strides bound as a model's launch binds them)
divisible = [n for n in names if n.endswith("_ptr")]
ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def build(changes: dict, dtype: str, cap: int | None) -> tuple[str, str]:  # sm_90 PTX, and ptxas' registers
    ptx = compile_for_sm90(chunk.selective_scan_bwd_kernel, {**flags, **changes}, 1, scan_pointer_type(dtype),
                           divisible, maxnreg=cap).asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        arch = "sm_90a" if ".target sm_90a" in ptx else "sm_90"
        report = subprocess.run([ptxas, f"-arch={arch}", "-v", f.name, "-o", os.devnull], capture_output=True,
                                text=True).stderr
    return ptx, re.search(r"Used (\\d+) registers", report).group(1)


for cap, atomic in ((None, 0), (split.maxnreg, 0), (split.maxnreg, 1)):
    ptx, registers = build({"ATOMIC_BC": atomic}, "bf16", cap)
    print(cap, atomic, registers, len(re.findall(r"(?:atom|red)\\.global\\S*\\.add\\.f32", ptx)))
# fp32 inputs without a gate, as the models launch it: 4-step chunks, KEEP_DT and INPUT_RING 2 kept
(fp32,) = chunk.prune_bwd_configs([default], {"NSTATE": 8, "u_ptr": torch.empty(0)}, HAS_Z=False, CHUNK=4)
_, registers = build({**fp32.kwargs, "HAS_Z": False, "CHUNK": 4, "UNROLL": 4, "ATOMIC_BC": 0}, "fp32", fp32.maxnreg)
print(fp32.maxnreg, fp32.kwargs["KEEP_DT"], fp32.kwargs["INPUT_RING"], registers)
"""


def test_backward_split_config_builds_under_its_register_cap():
    """The SPLIT backward config's `maxnreg` reaches ptxas: built for sm_90 it uses at most 168 registers, where the
    same kernel uncapped takes more (the cap is what fits 12 programs per SM). With ATOMIC_BC it stays under the cap
    and adds its dB/dC sums by one fp32 atomic per lane-row and step: 2 x 8 in a chunk of 8 steps (none without).
    fp32 inputs without a gate (4-step chunks, KEEP_DT, INPUT_RING 2) build under the cap too."""
    result = run_without_interpreter(SPLIT_CAP_SM90)
    assert result.returncode == 0, result.stderr[-4000:]
    (uncapped, _, free, adds), (cap, _, capped, capped_adds), (_, _, atomic, atomic_adds), fp32 = (
        line.split() for line in result.stdout.splitlines()
    )
    assert uncapped == "None" and cap == "168" and int(capped) <= 168 < int(free), result.stdout
    assert int(atomic) <= 168 and (adds, capped_adds, atomic_adds) == ("0", "0", "16"), result.stdout
    assert fp32[:3] == ["168", "1", "2"] and int(fp32[3]) <= 168, result.stdout


SASS_LOOP_COUNTS = Path(__file__).resolve().parents[2] / "benchmarks/ops/experiments/sass_loop_counts.py"
# sass_loop_counts.py's forward cases that the test below compares, and the GPU's deep rings (the inference SPLIT ring
# with L2 hints, the training forward's): 11 of its 34 (each a ~3 s build on 2 cores)
STATIC_FWD_CASES = ["step fwd", "step fwd BD128", "step fwd P2 BD128", "step fwd summary P2 BD128",
                    "step fwd BD64 P4 U4", "step fwd vec BD64 P4 U4", "step fwd vec BD32 P4 U4 A16",
                    "step fwd vec BD32 P8 U8", "step fwd vec split BD16 P8 U8", "step fwd vec BD16 P8 U8 L2A32 split",
                    "step fwd vec train blocks BD16 P8 U8 split"]  # fmt: skip


def test_static_loop_counts_of_step_forward(tmp_path):
    """benchmarks/ops/experiments/sass_loop_counts.py builds the step forward for sm_90 and counts its main loop's SASS
    instructions: no variant spills or converts layouts; the inference loops walk their pointers (no per-load address
    arithmetic: LEA); B_t/C_t by 16-byte loads save a tenth; four channels per thread (BLOCK_D 128 on one warp) issue
    fewer instructions per channel-step than one (per-warp loads of B_t/C_t and addresses amortised); loading two steps
    ahead (PREFETCH 2) costs at most a quarter more than one step ahead; two lanes per channel (SPLIT) take one
    shuffle per step and at most three quarters of the instructions per warp-step of one channel per lane. Each main
    loop's fixed stalls (read from the instructions' control bits) come to 1-3 cycles per instruction."""
    out = tmp_path / "counts.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TOPN": "40"}
    command = [sys.executable, str(SASS_LOOP_COUNTS), "--names", *STATIC_FWD_CASES, "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    every = json.loads(out.read_text())["rows"]
    rows = {}  # each case's main loop: its first (the unrolled loop before its remainder loop)
    for row in every:
        rows.setdefault(row["kernel"], row)
    assert set(rows) == set(STATIC_FWD_CASES), set(rows)
    assert all(row["spill_bytes"] == 0 for row in every), every
    # the state as a tuple of 1-D rows leaves Triton no layout to convert between (the [N, BLOCK_D] tile needed 17)
    assert all(row["layout_conversions"] == 0 for row in every), every
    # (the training forward's checkpoint stores, the L1 hints of AHEAD configs and the L2 hints of L2_AHEAD ones, one
    # per block of 8 steps, keep t-based addresses)
    addresses = {
        name: row["top_opcodes"].get("LEA", 0)
        for name, row in rows.items()
        if not ({"train", "A16"} & set(name.split()) or "L2A" in name)
    }
    assert all(count <= 1 for count in addresses.values()), addresses
    per_step = {name: row["instructions_per_channel_step"] for name, row in rows.items()}
    assert per_step["step fwd BD128"] < 0.8 * per_step["step fwd"]
    assert per_step["step fwd P2 BD128"] < 1.25 * per_step["step fwd BD128"]
    assert per_step["step fwd vec BD64 P4 U4"] < 0.9 * per_step["step fwd BD64 P4 U4"], per_step
    split, whole = rows["step fwd vec split BD16 P8 U8"], rows["step fwd vec BD32 P8 U8"]
    assert split["top_opcodes"].get("SHFL") == split["steps_per_loop"] == 8, split
    assert split["loop_instructions"] < 0.75 * whole["loop_instructions"], (split, whole)
    stalls = {name: row["loop_stall_cycles"] / row["loop_instructions"] for name, row in rows.items()}
    assert all(1.0 <= ratio <= 3.0 for ratio in stalls.values()), stalls


def test_static_loop_counts_rejects_an_unknown_case_name(tmp_path):
    """`sass_loop_counts.py --names` takes exact case names: one that names no case is an error, not an empty table."""
    out = tmp_path / "x.json"
    command = [sys.executable, str(SASS_LOOP_COUNTS), "--names", "step fwd", "step fwd BD999", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--names: no case is named ['step fwd BD999']" in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "strides, element_size, address, nstate, expected",
    [
        ((196 * 8, 0, 1, 8), 2, 4096, 8, True),  # (batch, L, N) bf16, N = 8: one 16-byte word per step
        ((196 * 16, 0, 1, 16), 4, 4096, 16, True),  # fp32 N = 16: four words
        ((196 * 16, 8, 1, 16), 2, 4096, 8, True),  # grouped (batch, L, G, N)
        ((196 * 36, 0, 1, 36), 2, 4096 + 40, 8, False),  # B sliced from a (.., dt_rank 20 + 2N) projection
        ((196 * 8, 0, 1, 8), 2, 4096 + 2, 8, False),  # misaligned start
        ((196 * 8, 0, 196, 1), 2, 4096, 8, False),  # the N values of a step strided (BDL not yet copied)
        ((196 * 4, 0, 1, 4), 2, 4096, 4, False),  # 8 bytes per step
        ((196 * 6, 0, 1, 6), 4, 4096, 6, False),  # N not a power of two
        ((196 * 8 + 1, 0, 1, 8), 4, 4096, 8, False),  # batch stride off the 16-byte grid
    ],
)
def test_rows_fit_vectors(strides, element_size, address, nstate, expected):
    """The step forward reads B_t/C_t by 16-byte loads only where every step's N values fill whole aligned words."""
    assert chunk.rows_fit_vectors(strides, element_size, address, nstate) is expected


def test_vector_bc_is_off_off_the_gpu():
    """The interpreter (and any CPU tensor) reads B_t/C_t by scalar loads: the 16-byte loads are inline PTX."""
    B = torch.randn(2, 196, 8).to(torch.bfloat16)
    assert chunk.rows_fit_vectors(B.stride()[:1] + (0,) + B.stride()[:0:-1], 2, 4096, 8)
    assert not chunk.vector_bc(B, 8, "BLD")


@triton.jit
def _state_vector_kernel(ptr, out_ptr, valid, COUNT: tl.constexpr):
    values = chunk._state_vector(ptr, valid != 0, COUNT)
    for i in tl.static_range(COUNT):
        tl.store(out_ptr + i, values[i])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_vector_loads_read_nan_where_predicated_off(dtype):
    """The interpreter's stand-in for the B/C vector loads reads the values where `valid`, and NaN where not: the GPU
    leaves those registers undefined, so a kernel must never compute with them (a masked step's 0 x B_t gave NaN in
    bf16 on an H100 while zeros here passed, session 24)."""
    values = torch.randn(8).to(dtype)
    for valid in (1, 0):
        out = torch.zeros(8)
        _state_vector_kernel[(1,)](values, out, valid, COUNT=8)
        if valid:
            torch.testing.assert_close(out, values.float(), rtol=0, atol=0)
        else:
            assert out.isnan().all(), out


@pytest.mark.parametrize("grouped", [False, True])
def test_bdl_reaches_the_kernels_with_channels_adjacent(monkeypatch, grouped):
    """mamba_ssm's (batch, D, L) layout keeps L contiguous, so one step's channels are L apart: uncoalesced loads in
    every step (H200: 15.2 vs 0.66 ms at VMamba's (128, 384, 3136, 1)). The launchers copy u, delta, z and dout so
    their channels are adjacent, B/C so a step's N values are, and hand back contiguous (batch, D, L) results: every
    sequence tensor the forward and backward kernels receive has channel stride 1, B/C state stride 1, and the
    results equal the reference."""
    torch.manual_seed(3)
    batch, length, dim, nstate = 2, 21, 12, 4
    launched: list[torch.Tensor] = []

    real_launch = chunk._launch_kernel

    def spy(kernel, grid, *args, **flags):
        launched.extend(a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 3)
        return real_launch(kernel, grid, *args, **flags)

    monkeypatch.setattr(chunk, "_launch_kernel", spy)
    inputs = make_inputs(batch, length, dim, nstate, 2 if grouped else 1, "BDL", segments=None, grouped=grouped)
    compare_with_reference(inputs, torch.float32, {"delta_softplus": True}, backward=True)
    sequences = [t for t in launched if t.shape == (batch, dim, length)]
    states = [t for t in launched if t.shape == inputs["B"].shape]
    assert len(sequences) >= 8 and len(states) >= 4  # u, delta, z, out / dout, du, ddelta, dz; B, C per launch
    assert all(t.stride(1) == 1 for t in sequences), [t.stride() for t in sequences]
    assert all(t.stride(-2) == 1 for t in states), [t.stride() for t in states]
    out = selective_scan(**cast(inputs, torch.float32, requires_grad=False), delta_softplus=True)
    assert out.is_contiguous() and out.shape == (batch, dim, length)
