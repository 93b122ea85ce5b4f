"""The scan backward's partial-sum kernel (ops/selective_scan/partials.py) against torch sums, in the interpreter,
with outputs NaN-poisoned by conftest: dB/dC from the first `n_parts` of more channel blocks, written in B's and C's
own forms (both layouts, shared and grouped) and dtypes; dA transposed into A's (D, N) form, dD and dbias, each
present or absent; all from one launch (row blocks of dB/dC, then column blocks of dA/dD/dbias); and the kernel
built for sm_90."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (see test_selective_scan.py)

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.ops.selective_scan import partials  # noqa: E402
from sfmamba.ops.selective_scan.partials import sum_partials  # noqa: E402
from sfmamba.testing import run_without_interpreter  # noqa: E402


@pytest.mark.parametrize("layout", ["BLD", "BDL"])
@pytest.mark.parametrize("groups", [None, 3])
@pytest.mark.parametrize("at_once", [16, 2], ids=["parts-at-once", "parts-in-steps"])
def test_sum_bc_partials(layout, groups, at_once, monkeypatch):
    """Parts loaded all at once, and BLOCK_P at a time with the last step partly masked (3 used of 5 blocks)."""
    monkeypatch.setattr(partials, "MAX_PARTS_AT_ONCE", at_once)
    torch.manual_seed(0)
    batch, length, nstate, blocks, used = 2, 7, 5, 5, 3
    g = groups or 1
    part = torch.randn(2, blocks, batch, g, length, nstate)
    expected = part[:, :used].sum(1)  # [2, batch, G, L, N]
    if layout == "BLD":
        expected = expected.permute(0, 1, 3, 2, 4)  # [2, batch, L, G, N]
        shape = (batch, length, g, nstate) if groups else (batch, length, nstate)
    else:
        expected = expected.transpose(-1, -2)  # [2, batch, G, N, L]
        shape = (batch, g, nstate, length) if groups else (batch, nstate, length)
    B = torch.empty(shape, dtype=torch.bfloat16)
    C = torch.empty(shape, dtype=torch.float32).transpose(-1, -2).contiguous().transpose(-1, -2)  # not contiguous
    dA_part = torch.randn(batch, 1, nstate, 3)
    dB, dC, dA, dD, dbias = sum_partials(part, used, B, C, length, g, layout, dA_part, None, None)
    torch.testing.assert_close(dA, dA_part.sum((0, 1)).t())
    assert dD.numel() == dbias.numel() == 0
    assert dB.dtype == torch.bfloat16 and dC.dtype == torch.float32
    assert dB.shape == dC.shape == shape and dB.is_contiguous() and dC.is_contiguous()
    torch.testing.assert_close(dB, expected[0].reshape(shape).to(torch.bfloat16))
    torch.testing.assert_close(dC, expected[1].reshape(shape))


@pytest.mark.parametrize("has_d, has_bias", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("length", [1, 40], ids=["few-bc-blocks", "more-bc-blocks"])
def test_sum_param_partials(has_d, has_bias, length):
    torch.manual_seed(0)
    batch, spans, nstate, dim = 3, 2, 4, 37  # dim * nstate spans several column blocks; rows not a block multiple
    dA_part = torch.randn(batch, spans, nstate, dim)
    dD_part = torch.randn(batch, spans, dim) if has_d else None
    dbias_part = torch.randn(batch, spans, dim) if has_bias else None
    part = torch.randn(2, 2, batch, 1, length, nstate)
    B = torch.empty(batch, length, nstate)
    dB, dC, dA, dD, dbias = sum_partials(part, 2, B, B, length, 1, "BLD", dA_part, dD_part, dbias_part)
    torch.testing.assert_close(dB, part[0].sum(0).reshape(B.shape))
    torch.testing.assert_close(dC, part[1].sum(0).reshape(B.shape))
    torch.testing.assert_close(dA, dA_part.sum((0, 1)).t())
    assert dA.is_contiguous() and dA.shape == (dim, nstate)
    for got, part in ((dD, dD_part), (dbias, dbias_part)):
        if part is None:
            assert got.numel() == 0
        else:
            torch.testing.assert_close(got, part.sum((0, 1)))


PARTIALS_SM90_COMPILE = """
from sfmamba.ops.selective_scan import partials
from sfmamba.testing import compile_for_sm90

pointer = lambda name: "*bf16" if name in ("dB_ptr", "dC_ptr") else "*fp32"
flags = dict(NSTATE=8, HAS_D=True, HAS_BIAS=False, BLOCK_P=8, BLOCK_R=64, BLOCK_N=8, PARAM_ROWS=128, BLOCK_W=32)
for divisible in ([], ["part_ptr", "dB_ptr", "rows"]):
    compiled = compile_for_sm90(partials.partials_kernel, flags, 4, pointer, divisible)
    print(bool(compiled.asm.get("cubin")), compiled.asm["ttgir"].count("tt.divisibility = 16"))
"""


def test_partials_kernels_compile_for_sm90():
    """The interpreter never compiles: the kernel builds for an H100 with Triton's ptxas, and `compile_for_sm90`'s
    `divisible_by_16` marks exactly the named arguments as a GPU launch does (none without it)."""
    result = run_without_interpreter(PARTIALS_SM90_COMPILE)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["True", "0", "True", "3"], result.stdout
