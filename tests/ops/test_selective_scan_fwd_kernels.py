"""The alternative forward kernels against the fp32 reference: tiled (`SFMAMBA_SCAN_FWD=tiled`, tiled.py).

Same template and helpers as test_selective_scan.py (inputs, reference comparison with per-dtype tolerances, forced
kernel dispatch, NaN-poisoned outputs from conftest), with the environment switched to one of the kernels and the
step forward made to fail if it runs. The interpreter's tiled tile is BLOCK_L = 8 steps x BLOCK_D = 16 channels, so
the shapes cover partial step blocks (L = 1, 7, 49, 51, 70), partial channel blocks (D = 12, 20, 24), N = 1..16,
grouped B/C, both layouts; chunk splits that fall inside a step block; segment starts inside blocks. A further
forward kernel is tested by adding it to KERNELS.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (see test_selective_scan.py)

from unittest import mock  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
from test_selective_scan import (  # noqa: E402
    FORCED_CHUNK_LEN,
    compare_with_reference,
    make_inputs,
    shape_id,
)

from sfmamba.ops import selective_scan  # noqa: E402
from sfmamba.ops.selective_scan import chunk, tiled  # noqa: E402
from sfmamba.testing import run_without_interpreter  # noqa: E402
from sfmamba.utils._config import SCAN_FWD_ENV, scan_fwd_kernel  # noqa: E402

KERNELS = {"tiled": tiled.selective_scan_fwd_tiled_kernel}


@pytest.fixture(params=sorted(KERNELS))
def kernel_name(request) -> str:
    return request.param


class LaunchSpy:
    """Records the forward kernels `chunk._launch_kernel` starts; with `guard` on, the step forward raises."""

    def __init__(self, kernel, real_launch):
        self.kernel, self.real_launch = kernel, real_launch
        self.called, self.call_count, self.guard = False, 0, True

    def __call__(self, kernel, grid, *args, **flags):
        if kernel is chunk.selective_scan_fwd_kernel and self.guard:
            raise AssertionError("the step forward kernel ran under the alternative forward's setting")
        if kernel is self.kernel:
            self.called, self.call_count = True, self.call_count + 1
        return self.real_launch(kernel, grid, *args, **flags)


@pytest.fixture
def alt_forward(monkeypatch, kernel_name):
    """Every scan in these tests runs the chosen forward kernel: the step forward fails if launched, and the chosen
    one must have been launched by the end of each test that scans. (Launches go through `chunk._launch_kernel`,
    which replays the autotuner's pick after a key's first launch, so the spy sits there, not on `Autotuner.run`.)"""
    monkeypatch.setenv(SCAN_FWD_ENV, kernel_name)
    monkeypatch.setenv("SFMAMBA_KERNEL", "triton")
    spy = LaunchSpy(KERNELS[kernel_name], chunk._launch_kernel)
    monkeypatch.setattr(chunk, "_launch_kernel", spy)
    yield spy


# ---------------------------------------------------------------------------------------------------------------------
# forward: shapes x layouts x dtypes


SHAPES = [
    # batch, L, D, N, G
    (2, 1, 8, 8, 1),
    (1, 7, 12, 16, 1),
    (2, 49, 24, 8, 2),
    (1, 51, 24, 4, 4),
    (1, 70, 20, 1, 1),
    (3, 9, 10, 8, 1),
    (2, 5, 7, 2, 1),
    # narrow groups: the tiled kernel's channel block is the group's width (1, 2, 4) and its step blocks are longer
    (2, 37, 4, 1, 4),
    (1, 40, 6, 2, 3),
    (2, 33, 8, 4, 2),
]


def _forward_grid():
    """fp32 in both layouts; bf16 in one layout per shape, alternating."""
    for i, shape in enumerate(SHAPES):
        for layout in ("BDL", "BLD"):
            yield pytest.param(*shape, layout, torch.float32, id=shape_id(*shape, layout, torch.float32))
        layout = "BLD" if i % 2 else "BDL"
        yield pytest.param(*shape, layout, torch.bfloat16, id=shape_id(*shape, layout, torch.bfloat16))


@pytest.mark.parametrize("batch, length, dim, nstate, groups, layout, dtype", list(_forward_grid()))
def test_alt_forward(alt_forward, kernel_name, batch, length, dim, nstate, groups, layout, dtype):
    """Output and last states with every option on (D, z, delta_bias, softplus, initial_state)."""
    torch.manual_seed(42)
    inputs = make_inputs(batch, length, dim, nstate, groups, layout, segments=batch)
    compare_with_reference(inputs, dtype, {"delta_softplus": True, "layout": layout}, backward=False)
    assert alt_forward.called
    if kernel_name == "tiled":  # the interpreter's channel block: the group's width when narrow, else 16
        width = dim // groups
        want = triton.next_power_of_2(width) if width < 16 else 16
        assert tiled.selective_scan_fwd_tiled_kernel.best_config.kwargs["BLOCK_D"] == want


OPTION_SETS = [
    # layout, softplus, D, z, delta_bias, return_last_state
    ("BLD", False, False, False, False, False),
    ("BDL", True, False, False, True, True),
    ("BLD", False, True, True, False, True),
    ("BDL", False, False, True, True, False),
]


@pytest.mark.parametrize(
    "layout, softplus, has_D, has_z, has_bias, last",
    [pytest.param(*o, id="-".join(str(v) for v in o)) for o in OPTION_SETS],
)
def test_alt_options(alt_forward, layout, softplus, has_D, has_z, has_bias, last):
    """Each optional input present or absent, softplus on or off, with or without the last state."""
    torch.manual_seed(42)
    inputs = make_inputs(2, 23, 12, 4, 1, layout, D=has_D, z=has_z, delta_bias=has_bias, softplus=softplus)
    flags = {"delta_softplus": softplus, "layout": layout}
    compare_with_reference(inputs, torch.float32, flags, backward=False, return_last_state=last)
    assert alt_forward.called


# ---------------------------------------------------------------------------------------------------------------------
# resets and the two-pass chunking


RESET_CASES = [
    # layout, reset, chunk length forced (None: one chunk per row)
    ("BDL", "seq_len", None),
    ("BLD", "cu_seqlens", None),
    ("BLD", None, 5),
    ("BDL", "seq_len", 5),
    ("BLD", "cu_seqlens", 16),
]


def _reset_flags(layout: str, reset: str | None) -> tuple[int, int, dict, int]:
    """(batch, L, flags, number of segments) of a row with resets inside and across step blocks."""
    flags = {"delta_softplus": True, "layout": layout}
    if reset == "cu_seqlens":
        flags["cu_seqlens"] = torch.tensor([0, 1, 6, 20, 21, 37])
        return 1, 37, flags, 5
    if reset == "seq_len":
        flags["seq_len"] = 12
        return 2, 36, flags, 6
    return 2, 36, flags, 2


@pytest.mark.parametrize(
    "layout, reset, chunk_len", [pytest.param(*c, id=f"{c[0]}-{c[1]}-chunk{c[2]}") for c in RESET_CASES]
)
def test_alt_resets_and_chunks(alt_forward, layout, reset, chunk_len):
    """seq_len / cu_seqlens resets with initial and last states, in one chunk or split into chunks of 5 or 16 steps
    (summary pass + chunk_combine_kernel + main pass)."""
    torch.manual_seed(42)
    batch, length, flags, segments = _reset_flags(layout, reset)
    inputs = make_inputs(batch, length, 20, 4, 2, layout, segments=segments)
    kernel = "triton" if chunk_len is None else "triton-2pass"
    with mock.patch.dict(FORCED_CHUNK_LEN, {"triton-2pass": chunk_len}):
        compare_with_reference(inputs, torch.float32, flags, backward=False, kernel=kernel)
    assert alt_forward.call_count == (1 if chunk_len is None else 2)  # the summary pass is the same kernel


# ---------------------------------------------------------------------------------------------------------------------
# the backward after the alternative forward (its checkpoints)


def _forward_buffers(kind: str, inputs: dict, layout: str, monkeypatch) -> tuple[torch.Tensor, ...]:
    monkeypatch.setenv(SCAN_FWD_ENV, kind)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    args = [inputs.get(n) for n in names]
    return chunk.selective_scan_fwd(*args, None, True, None, layout, True, True)


def test_alt_checkpoints_equal_step_checkpoints(alt_forward, kernel_name, monkeypatch):
    """The states stored for the backward (every bwd_chunk_for(N) steps and at the row end) match the step
    kernel's, as do output and last states."""
    torch.manual_seed(42)
    inputs = make_inputs(2, 45, 20, 4, 2, "BLD", segments=2)
    alt_forward.guard = False  # the step kernel's buffers are the reference here
    want = _forward_buffers("step", inputs, "BLD", monkeypatch)
    alt_forward.guard = True
    got = _forward_buffers(kernel_name, inputs, "BLD", monkeypatch)
    assert alt_forward.called
    assert got[2].shape == want[2].shape == (2, triton.cdiv(45, chunk.bwd_chunk_for(4, torch.float32)), 4, 20)
    for name, w, g in zip(("out", "last_state", "checkpoints"), want, got):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    "layout, dtype, reset, chunk_len",
    [pytest.param("BLD", torch.float32, None, None, id="BLD-fp32"),
     pytest.param("BDL", torch.bfloat16, "cu_seqlens", 5, id="BDL-bf16-cu_seqlens-chunk5")],
)  # fmt: skip
def test_alt_forward_then_backward(alt_forward, layout, dtype, reset, chunk_len):
    """Every gradient (u, delta, A, B, C, D, z, delta_bias, initial_state) through the step backward, which
    recomputes from the alternative forward's checkpoints."""
    torch.manual_seed(42)
    batch, length, flags, segments = _reset_flags(layout, reset)
    inputs = make_inputs(batch, length, 20, 4, 2, layout, segments=segments)
    kernel = "triton" if chunk_len is None else "triton-2pass"
    with mock.patch.dict(FORCED_CHUNK_LEN, {"triton-2pass": chunk_len}):
        errors = compare_with_reference(inputs, dtype, flags, backward=True, kernel=kernel)
    assert set(errors) >= {f"d{n}" for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")}
    assert alt_forward.called


# ---------------------------------------------------------------------------------------------------------------------
# selection and configs


def test_scan_fwd_env_values(monkeypatch):
    monkeypatch.delenv(SCAN_FWD_ENV, raising=False)
    assert scan_fwd_kernel() == "auto"
    monkeypatch.setenv(SCAN_FWD_ENV, " Tiled ")
    assert scan_fwd_kernel() == "tiled"
    monkeypatch.setenv(SCAN_FWD_ENV, "STEP")
    assert scan_fwd_kernel() == "step"
    monkeypatch.setenv(SCAN_FWD_ENV, "tile")
    with pytest.raises(ValueError, match=SCAN_FWD_ENV):
        scan_fwd_kernel()


@pytest.mark.parametrize(
    "dim, groups, length, want",
    [(4, 4, 300, "tiled"), (2, 2, 256, "tiled"), (8, 4, 300, "step"), (4, 4, 255, "step"), (32, 1, 3136, "step"),
     (64, 2, 400, "step")],
)  # fmt: skip
def test_auto_forward_choice(monkeypatch, dim, groups, length, want):
    """`auto` takes the tiled kernel for one channel per group over NARROW_MIN_LENGTH steps or more (VMeanba's
    reduced scans, the width timed), the step kernel otherwise; an explicit setting wins."""
    monkeypatch.delenv(SCAN_FWD_ENV, raising=False)
    assert chunk.fwd_kernel_choice(dim // groups, length) == want
    for forced in ("step", "tiled"):
        monkeypatch.setenv(SCAN_FWD_ENV, forced)
        assert chunk.fwd_kernel_choice(dim // groups, length) == forced


@pytest.mark.parametrize("layout", ["BLD", "BDL"])
def test_auto_runs_tiled_on_reduced_scans_without_copies(monkeypatch, layout):
    """A VMeanba-style reduced scan (one channel per group, long rows) under `auto`: the tiled kernel runs, never the
    step one, on the caller's own tensors (no transposing copies in BDL: the tiles coalesce along L), and the
    output and last states equal the reference."""
    monkeypatch.delenv(SCAN_FWD_ENV, raising=False)
    monkeypatch.setenv("SFMAMBA_KERNEL", "triton")
    spy = LaunchSpy(tiled.selective_scan_fwd_tiled_kernel, chunk._launch_kernel)
    pointers: list[int] = []

    def recording(kernel, grid, *args, **flags):
        pointers.extend(a.data_ptr() for a in args if isinstance(a, torch.Tensor))
        return spy(kernel, grid, *args, **flags)

    monkeypatch.setattr(chunk, "_launch_kernel", recording)
    torch.manual_seed(42)
    inputs = make_inputs(2, 300, 4, 1, 4, layout, segments=2)
    compare_with_reference(inputs, torch.float32, {"delta_softplus": True, "layout": layout}, backward=False)
    assert spy.called
    pointers.clear()
    selective_scan(**{n: t.detach() for n, t in inputs.items()}, delta_softplus=True, layout=layout)
    caller = [inputs[n] for n in ("u", "delta", "z", "B", "C")]
    assert all(t.data_ptr() in pointers for t in caller), "a copy reached the kernel"


def test_plan_chunks_for_narrow_tiled_programs(monkeypatch):
    """The tiled kernel on narrow groups splits a row only until TILED_PROGRAMS_PER_SM programs per SM exist
    (VMamba-T stage 1's reduced scan: 512 rows of 3136 steps on 132 SMs -> 1 chunk; 8 images -> 5), the step kernel
    until TARGET_PROGRAMS_PER_SM do (512 one-warp programs -> 2 chunks)."""
    monkeypatch.setattr(chunk, "_sm_count", lambda device: 132)
    monkeypatch.setattr(chunk, "TILED_PROGRAMS_PER_SM", 1)
    gpu = torch.device("cuda")
    assert chunk.plan_chunks(128, 4, 1, 3136, gpu, "step") == (1568, 2)
    assert chunk.plan_chunks(128, 4, 1, 3136, gpu, "tiled") == (3136, 1)
    assert chunk.plan_chunks(8, 4, 1, 3136, gpu, "tiled") == (628, 5)
    assert chunk.plan_chunks(128, 4, 96, 3136, gpu, "tiled") == chunk.plan_chunks(128, 4, 96, 3136, gpu, "step")
    assert chunk.plan_chunks(128, 4, 1, 3136, torch.device("cpu"), "tiled") == (3136, 1)


def test_plan_chunks_for_step_rows(monkeypatch):
    """The step kernel splits a row only while the rows leave fewer than TARGET_PROGRAMS_PER_SM one-warp programs per
    SM: MambaVision-T's scans at batch 128 (640 and 1280 programs of 32 channels on 132 SMs) and VMamba's 3136-step
    rows (1536 programs) run one chunk per row, no summary pass; a batch of 8 still splits its rows, into chunks of
    at least 16 steps."""
    monkeypatch.setattr(chunk, "_sm_count", lambda device: 132)
    gpu = torch.device("cuda")
    assert chunk.plan_chunks(128, 1, 160, 196, gpu) == (196, 1)
    assert chunk.plan_chunks(128, 1, 320, 49, gpu) == (49, 1)
    assert chunk.plan_chunks(8, 1, 160, 196, gpu) == (17, 12)  # 40 programs: as many chunks as 16-step ones allow
    assert chunk.plan_chunks(128, 4, 96, 3136, gpu) == (3136, 1)
    assert chunk.plan_chunks(8, 4, 96, 3136, gpu) == (523, 6)  # 96 programs
    assert chunk.plan_chunks(33, 4, 128, 3136, gpu) == (3136, 1)  # 528 programs: exactly 4 per SM
    assert chunk.plan_chunks(33, 4, 120, 3136, gpu) == (3136, 1)  # the 4 channel blocks of 120 count too
    assert chunk.plan_chunks(32, 4, 128, 3136, gpu) == (1568, 2)  # 512 programs: 16 short
    assert chunk.plan_chunks(1, 1, 32, 40, gpu) == (20, 2)  # 1 program, but chunks of at least 16 steps
    monkeypatch.setattr(chunk, "TARGET_PROGRAMS_PER_SM", 16)  # the planner before 2026-12-03
    assert chunk.plan_chunks(128, 1, 160, 196, gpu) == (49, 4)


def test_plan_bwd_spans(monkeypatch):
    """The step backward walks whole rows (no summary pass, no combine) when the rows fill BWD_PROGRAMS_PER_SM
    programs per SM -- MambaVision-T's scans at batch 128 (25 and 7 chunks of 8 steps), VMamba's 3136-step rows at
    batch 128 (196 chunks of 16) -- splits them into spans when they do not (batch 8), each of at most MAX_CHUNK_LEN
    steps (VMamba at batch 8: 6 spans wanted, 13 of 16 chunks), and gives each program its whole row on CPU;
    `forced_bwd_span` overrides it, clipped to the row."""
    monkeypatch.setattr(chunk, "_sm_count", lambda device: 132)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert chunk.plan_bwd_spans(128, 1, 160, 25, 8, gpu) == (25, 1)
    assert chunk.plan_bwd_spans(128, 1, 320, 7, 8, gpu) == (7, 1)
    assert chunk.plan_bwd_spans(8, 1, 160, 25, 8, gpu) == (2, 13)  # 40 programs: 14 spans wanted, 13 of 2 chunks
    assert chunk.plan_bwd_spans(128, 4, 96, 196, 16, gpu) == (196, 1)
    assert chunk.plan_bwd_spans(8, 4, 96, 196, 16, gpu) == (16, 13)
    assert chunk.plan_bwd_spans(8, 1, 160, 25, 8, cpu) == (25, 1)
    monkeypatch.setattr(chunk, "forced_bwd_span", 40)
    assert chunk.plan_bwd_spans(128, 1, 160, 25, 8, gpu) == (25, 1)
    monkeypatch.setattr(chunk, "forced_bwd_span", 3)
    assert chunk.plan_bwd_spans(128, 1, 160, 25, 8, cpu) == (3, 9)


@pytest.mark.parametrize("nstate", [1, 4, 8, 16, 64])
def test_gpu_configs_pruned_to_registers(monkeypatch, nstate):
    """The GPU autotune list keeps only tiles whose [BLOCK_L, BLOCK_N, BLOCK_D] tensors fit the per-thread budget,
    never nothing; N = 1 keeps the largest tiles; wide groups get wide tiles only."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    configs = tiled._fwd_configs()
    assert len(configs) == 27 + 288
    kept = tiled._prune_configs(configs, {"Dg": 96, "NSTATE": nstate, "chunk_len": 196})
    assert kept and all(c.kwargs["BLOCK_D"] >= 32 and c.kwargs["BLOCK_L"] <= 32 for c in kept)
    if nstate <= 16:
        assert all(tiled._fits_registers(c, nstate) for c in kept)
    else:
        assert len(kept) == 1 and kept[0].kwargs == {"BLOCK_L": 8, "BLOCK_D": 32, "PREFETCH": 0}
    if nstate == 1:
        assert any(c.kwargs == {"BLOCK_L": 32, "BLOCK_D": 128, "PREFETCH": 0} for c in kept)
    if nstate == 8:
        assert not any(c.kwargs == {"BLOCK_L": 32, "BLOCK_D": 128, "PREFETCH": 0} for c in kept)


@pytest.mark.parametrize(
    "width, chunk_len, longest",
    [(1, 1568, 2048), (1, 200, 256), (3, 3136, 512), (16, 196, 128), (20, 200, 64)],
)
def test_gpu_configs_for_narrow_groups(monkeypatch, width, chunk_len, longest):
    """A narrow group gets its own width (rounded up to a power of two) as the channel block and step blocks no
    longer than its chunk needs (at least 128), each within the narrow family's register budget (sm_90 builds spill
    above 8 elements per thread): the longest block is what that budget leaves at 8 warps."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kept = tiled._prune_configs(tiled._fwd_configs(), {"Dg": width, "NSTATE": 1, "chunk_len": chunk_len})
    assert kept
    assert {c.kwargs["BLOCK_D"] for c in kept} == {triton.next_power_of_2(width)}
    assert max(c.kwargs["BLOCK_L"] for c in kept) == longest
    assert all(tiled._fits_registers(c, 1) for c in kept)
    per_thread = [c.kwargs["BLOCK_L"] * c.kwargs["BLOCK_D"] / (32 * c.num_warps) for c in kept]
    assert max(per_thread) <= tiled.NARROW_MAX_ELEMENTS_PER_THREAD


SM90_NARROW = """
import pathlib, subprocess, tempfile
import triton
from sfmamba.ops.selective_scan import tiled
from sfmamba.testing import compile_for_sm90, scan_pointer_type

TOOLS = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
flags = dict(HAS_D=True, HAS_Z=False, HAS_BIAS=True, SOFTPLUS=True, HAS_H0=False, RESET=0, STORE_LAST=False,
             STORE_CKPT=False)
# BLOCK_L, BLOCK_D, warps: the H200's picks for (128, 4, 3136, N=1, G=4) bf16 BLD / BDL, and the narrow budget's edges
for block_l, block_d, warps in ((512, 1, 4), (256, 1, 4), (2048, 1, 8), (64, 32, 8)):
    for dtype in ("bf16", "fp32"):
        for summary in (False, True):
            tile = dict(flags, SUMMARY=summary, BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_N=1, PREFETCH=1)
            kernel = compile_for_sm90(tiled.selective_scan_fwd_tiled_kernel, tile, warps, scan_pointer_type(dtype))
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(kernel.asm["cubin"])
                f.flush()
                usage = subprocess.run([TOOLS / "cuobjdump", "--dump-resource-usage", f.name], capture_output=True,
                                       text=True, check=True).stdout
            stack = int(usage.split("STACK:")[1].split()[0])
            print("built", block_l, block_d, dtype, summary, "stack", stack)
"""


def test_narrow_tiles_build_for_sm90_without_spills():
    """The narrow tiles with prefetch, built for an H100/H200 (Triton's bundled ptxas; no GPU): the measured picks and
    the register budget's largest tiles compile for both passes and keep everything in registers (no stack)."""
    result = run_without_interpreter(SM90_NARROW)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("built")]
    assert len(lines) == 16, result.stdout
    assert all(line.endswith("stack 0") for line in lines), result.stdout
