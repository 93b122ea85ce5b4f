"""The experimental tiled backward kernel (`SFMAMBA_SCAN_BWD=tiled`, tiled_bwd.py) against the fp32 reference.

Same template and helpers as test_selective_scan.py (inputs, reference autograd with per-dtype tolerances, forced
kernel dispatch, NaN-poisoned outputs from conftest), with the environment switched to the tiled backward and the step
backward made to fail if it runs. The interpreter's tile is BLOCK_L = 4 steps x BLOCK_D = 16 channels and the backward
chunk is bwd_chunk_for(N) = min(16, 64 / N) steps, so N = 16 has one block per chunk, N = 8 two, N = 4 and N = 1 four
(the forward sweep that keeps each block's entering state); L = 1, 7, 23, 49, 51, 70 give partial blocks and chunks,
and every L > bwd_chunk_for(N) runs the summary pass + chunk_combine_kernel. Each case runs after the step or the
tiled forward.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (see test_selective_scan.py)

import functools  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from unittest import mock  # noqa: E402

import pytest  # noqa: E402
import test_selective_scan as step_tests  # noqa: E402
import torch  # noqa: E402
from test_selective_scan import (  # noqa: E402
    FORCED_CHUNK_LEN,
    compare_with_reference,
    make_inputs,
    shape_id,
)

from sfmamba.ops.selective_scan import chunk, tiled, tiled_bwd  # noqa: E402
from sfmamba.testing import run_without_interpreter  # noqa: E402
from sfmamba.utils._config import SCAN_BWD_ENV, SCAN_FWD_ENV, scan_bwd_kernel  # noqa: E402

ALL_GRADS = {f"d{n}" for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")}


@pytest.fixture(autouse=True)
def tiled_backward(monkeypatch):
    """Every scan in these tests runs the tiled backward: the step backward fails if launched. Yields a spy on the
    tiled backward's launches."""
    monkeypatch.setenv(SCAN_BWD_ENV, "tiled")
    monkeypatch.setenv("SFMAMBA_KERNEL", "triton")
    kernel = tiled_bwd.selective_scan_bwd_tiled_kernel
    step_ran = AssertionError("the step backward kernel ran under SFMAMBA_SCAN_BWD=tiled")
    with (
        mock.patch.object(chunk.selective_scan_bwd_kernel, "run", side_effect=step_ran),
        mock.patch.object(kernel, "run", wraps=kernel.run) as spy,
    ):
        yield spy


def _use_forward(kind: str, monkeypatch) -> mock._patch:
    """Select the forward kernel; the other forward fails if launched."""
    monkeypatch.setenv(SCAN_FWD_ENV, kind)
    other = chunk.selective_scan_fwd_kernel if kind == "tiled" else tiled.selective_scan_fwd_tiled_kernel
    return mock.patch.object(other, "run", side_effect=AssertionError(f"not the {kind} forward"))


def _launches(length: int, nstate: int, dtype: torch.dtype) -> int:
    """Tiled backward launches of one backward: the summary pass too when the row spans several chunks."""
    return 2 if length > chunk.bwd_chunk_for(nstate, dtype) else 1


# ---------------------------------------------------------------------------------------------------------------------
# gradients: shapes x layouts x dtypes x forward kernels


GRAD_CASES = [
    # batch, L, D, N, G, layout, dtype, forward
    (2, 1, 8, 8, 1, "BLD", torch.float32, "step"),
    (1, 7, 12, 16, 1, "BDL", torch.float32, "tiled"),
    (2, 49, 24, 8, 2, "BLD", torch.float32, "step"),
    (1, 51, 24, 4, 4, "BDL", torch.float32, "tiled"),
    (1, 70, 20, 1, 1, "BLD", torch.float32, "tiled"),
    (1, 49, 20, 16, 2, "BDL", torch.float32, "step"),
    (1, 51, 12, 4, 1, "BLD", torch.bfloat16, "step"),
    (1, 49, 24, 8, 2, "BDL", torch.bfloat16, "tiled"),
    (1, 70, 20, 1, 1, "BDL", torch.bfloat16, "step"),
    (2, 23, 20, 4, 1, "BLD", torch.float16, "tiled"),
]


@pytest.mark.parametrize(
    "batch, length, dim, nstate, groups, layout, dtype, forward",
    [pytest.param(*c, id=f"{shape_id(*c[:7])}-{c[7]}fwd") for c in GRAD_CASES],
)
def test_tiled_backward(tiled_backward, monkeypatch, batch, length, dim, nstate, groups, layout, dtype, forward):
    """Every gradient (u, delta, A, B, C, D, z, delta_bias, initial_state) with every option on, under random upstream
    gradients on the output and the last states."""
    torch.manual_seed(42)
    inputs = make_inputs(batch, length, dim, nstate, groups, layout, segments=batch)
    with _use_forward(forward, monkeypatch):
        errors = compare_with_reference(inputs, dtype, {"delta_softplus": True, "layout": layout}, backward=True)
    assert set(errors) >= ALL_GRADS
    assert tiled_backward.call_count == _launches(length, nstate, dtype)


OPTION_SETS = [
    # layout, softplus, D, z, delta_bias, return_last_state
    ("BLD", False, False, False, False, False),
    ("BDL", True, False, True, True, False),
    ("BLD", False, True, False, True, True),
]


@pytest.mark.parametrize(
    "layout, softplus, has_D, has_z, has_bias, last",
    [pytest.param(*o, id="-".join(str(v) for v in o)) for o in OPTION_SETS],
)
def test_tiled_backward_options(tiled_backward, layout, softplus, has_D, has_z, has_bias, last):
    """Each optional input present or absent, softplus on or off, with or without the last state's gradient."""
    torch.manual_seed(42)
    inputs = make_inputs(2, 23, 12, 4, 1, layout, D=has_D, z=has_z, delta_bias=has_bias, softplus=softplus)
    flags = {"delta_softplus": softplus, "layout": layout}
    errors = compare_with_reference(inputs, torch.float32, flags, backward=True, return_last_state=last)
    wanted = {"du", "ddelta", "dA", "dB", "dC"} | {f"d{n}" for n, on in (("D", has_D), ("z", has_z)) if on}
    assert set(errors) >= wanted | ({"ddelta_bias"} if has_bias else set())
    assert tiled_backward.called


# ---------------------------------------------------------------------------------------------------------------------
# resets and the two-pass chunking (forward chunks forced short as well)


RESET_CASES = [
    # layout, reset, forward chunk length forced (None: one chunk per row), forward kernel
    ("BDL", "seq_len", None, "step"),
    ("BLD", "cu_seqlens", None, "tiled"),
    ("BLD", "seq_len", 5, "tiled"),
    ("BDL", "cu_seqlens", 16, "step"),
]


def _reset_flags(layout: str, reset: str) -> tuple[int, int, dict, int]:
    """(batch, L, flags, number of segments) of a row with resets inside and across blocks and chunks."""
    flags = {"delta_softplus": True, "layout": layout}
    if reset == "cu_seqlens":
        flags["cu_seqlens"] = torch.tensor([0, 1, 6, 20, 21, 37])
        return 1, 37, flags, 5
    flags["seq_len"] = 12
    return 2, 36, flags, 6


@pytest.mark.parametrize(
    "layout, reset, chunk_len, forward",
    [pytest.param(*c, id=f"{c[0]}-{c[1]}-fwdchunk{c[2]}-{c[3]}fwd") for c in RESET_CASES],
)
def test_tiled_backward_resets_and_chunks(tiled_backward, monkeypatch, layout, reset, chunk_len, forward):
    """seq_len / cu_seqlens resets with initial and last states (segments starting and ending inside step blocks and
    backward chunks of 16 steps), after a forward in one chunk or split into chunks of 5 or 16 steps."""
    torch.manual_seed(42)
    batch, length, flags, segments = _reset_flags(layout, reset)
    inputs = make_inputs(batch, length, 20, 4, 2, layout, segments=segments)
    kernel = "triton" if chunk_len is None else "triton-2pass"
    with _use_forward(forward, monkeypatch), mock.patch.dict(FORCED_CHUNK_LEN, {"triton-2pass": chunk_len}):
        errors = compare_with_reference(inputs, torch.float32, flags, backward=True, kernel=kernel)
    assert set(errors) >= ALL_GRADS
    assert tiled_backward.call_count == 2  # summary pass + main pass: 36-37 steps span three 16-step chunks


def test_tiled_backward_noncontiguous_inputs(tiled_backward):
    """test_selective_scan's strided case (views out of one projection scanned as BDL, strided B/C, transposed A and
    initial state) through the tiled backward."""
    step_tests.test_noncontiguous_inputs("triton")
    assert tiled_backward.call_count == 2


def test_tiled_backward_equals_step_backward(tiled_backward, monkeypatch):
    """Both backward kernels, from the same forward checkpoints, agree to fp32 rounding on every gradient."""
    torch.manual_seed(42)
    inputs = make_inputs(1, 45, 20, 8, 2, "BLD", segments=1)
    leaves = {name: x.clone().requires_grad_(True) for name, x in inputs.items()}
    upstream = torch.randn(1, 45, 20)

    def gradients(kind: str) -> tuple[torch.Tensor, ...]:
        monkeypatch.setenv(SCAN_BWD_ENV, kind)
        out = chunk.selective_scan_triton(**leaves, delta_softplus=True, return_last_state=False, seq_len=None,
                                          cu_seqlens=None, layout="BLD")  # fmt: skip
        return torch.autograd.grad(out, list(leaves.values()), upstream)

    tiled_grads = gradients("tiled")
    step = chunk.selective_scan_bwd_kernel
    with mock.patch.object(step, "run", functools.partial(type(step).run, step)):  # lift the fixture's guard
        step_grads = gradients("step")
    for name, t, s in zip(leaves, tiled_grads, step_grads):
        torch.testing.assert_close(t, s, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"d{name}: {m}")
    assert tiled_backward.call_count == 2


# ---------------------------------------------------------------------------------------------------------------------
# selection, configs, GPU compilation


def test_scan_bwd_env_values(monkeypatch):
    monkeypatch.delenv(SCAN_BWD_ENV)
    assert scan_bwd_kernel() == "step"
    assert chunk._bwd_kernel() is chunk.selective_scan_bwd_kernel
    monkeypatch.setenv(SCAN_BWD_ENV, " Tiled ")
    assert scan_bwd_kernel() == "tiled"
    assert chunk._bwd_kernel() is tiled_bwd.selective_scan_bwd_tiled_kernel
    monkeypatch.setenv(SCAN_BWD_ENV, "tile")
    with pytest.raises(ValueError, match=SCAN_BWD_ENV):
        scan_bwd_kernel()


@pytest.mark.parametrize("nstate", [1, 4, 8, 16, 64])
def test_gpu_configs_pruned_to_registers_and_chunk(monkeypatch, nstate):
    """The GPU autotune list keeps only blocks inside one backward chunk whose [BLOCK_L, BLOCK_N, BLOCK_D] tensors
    fit the per-thread budget, never nothing."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    configs = tiled_bwd._bwd_configs()
    assert len(configs) == 40
    assert min(c.kwargs["BLOCK_D"] for c in configs) >= min(c.kwargs["BLOCK_D"] for c in chunk._bwd_configs())
    for dtype in (torch.bfloat16, torch.float32):
        chunk_len = chunk.bwd_chunk_for(nstate, dtype)
        kept = tiled_bwd._prune_configs(configs, {"NSTATE": nstate}, CHUNK=chunk_len)
        assert kept and all(c.kwargs["BLOCK_L"] <= chunk_len for c in kept)
        if nstate <= 16:
            assert all(tiled_bwd._fits_registers(c, nstate, chunk_len) for c in kept)
            assert any(c.kwargs["BLOCK_L"] == chunk_len for c in kept)  # one block per chunk is always a candidate
        else:
            assert len(kept) == 1 and kept[0].kwargs == {"BLOCK_L": 4, "BLOCK_D": 32}


SM90_COMPILE = """
from sfmamba.ops.selective_scan import tiled_bwd
from sfmamba.testing import compile_for_sm90, scan_pointer_type

flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_H0=True, HAS_DLAST=True)
# CHUNK, BLOCK_L, BLOCK_D, BLOCK_N, dtype, RESET, warps: four blocks per chunk with varlen resets; one block per chunk
cases = ((16, 4, 32, 4, "bf16", 2, 2), (64, 64, 64, 1, "fp32", 1, 4))
for chunk, block_l, block_d, block_n, dtype, reset, warps in cases:
    for summary in (True, False):
        tile = dict(flags, RESET=reset, SUMMARY=summary, CHUNK=chunk, BLOCK_L=block_l, BLOCK_D=block_d,
                    BLOCK_N=block_n)
        compiled = compile_for_sm90(tiled_bwd.selective_scan_bwd_tiled_kernel, tile, warps, scan_pointer_type(dtype))
        print("cubin" if compiled.asm.get("cubin") else "no cubin", block_l, dtype)
"""


def test_kernels_compile_for_sm90():
    """The interpreter never compiles: build both passes of the tiled backward for an H100 (PTX and cubin through
    Triton's bundled ptxas; no GPU needed) so a construct the GPU compiler rejects fails here."""
    result = run_without_interpreter(SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("cubin ") == 4 and "no cubin" not in result.stdout, result.stdout


def test_interpreter_tile_is_smaller_than_the_chunks():
    """The interpreter config runs several blocks per backward chunk for N = 1, 4, 8 (the entering-state sweep; fp32's
    4-step chunks at N = 8 take one) and one for N = 16."""
    (config,) = tiled_bwd._bwd_configs()
    block_l = config.kwargs["BLOCK_L"]
    assert block_l < chunk.bwd_chunk_for(8, torch.bfloat16) and block_l == chunk.bwd_chunk_for(16, torch.bfloat16)


def test_backward_benchmark_smoke_runs_on_the_cpu(tmp_path):
    """`scan_tiled_vs_step.py --backward --smoke` checks and times every (forward, backward) kernel pair under the
    interpreter and writes its JSON (the GPU command of the same script is the measurement)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks/ops/experiments/scan_tiled_vs_step.py"
    out = tmp_path / "result.json"
    env = dict(os.environ, TRITON_INTERPRET="1", SFMAMBA_KERNEL="triton")
    command = [sys.executable, str(script), "--smoke", "--backward", "--dtypes", "fp32", "--layouts", "BLD"]
    result = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    pairs = {f"fwd:{f}+bwd:{b}" for f in ("step", "tiled") for b in ("step", "tiled")}
    assert {row["kernel"] for row in rows} == pairs and len(rows) == 4
    assert json.loads(out.read_text())["complete"]
    assert all(row["mode"] == "fwd+bwd" and row["rel_err"] < 1e-4 and row["host_interpreted"] > 0 for row in rows)
    for row in rows:  # the backward's config is the second; the tiled one has BLOCK_L
        assert ("BLOCK_L" in row["config"].split(" | ")[1]) == row["kernel"].endswith("bwd:tiled"), row
