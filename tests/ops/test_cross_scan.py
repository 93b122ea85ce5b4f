"""Cross-scan / cross-merge: the naive reference against the index formula, the Triton kernels against the reference
(forward and gradients, odd map sizes, both map and sequence layouts, strided inputs, three dtypes), the adjoint
identity, argument errors, and the torch.library ops (opcheck, torch.compile fullgraph).

Without CUDA the kernels run on CPU tensors under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 and
NaN-poisons every `torch.empty*` made by sfmamba, so an output element a kernel leaves unwritten fails the test).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (tests/conftest.py does the same for a full run)

import contextlib  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from sfmamba.ops import cross_merge, cross_scan  # noqa: E402
from sfmamba.ops.cross_scan import cross_merge_naive, cross_scan_naive  # noqa: E402
from sfmamba.utils._config import set_kernel_backend  # noqa: E402

SIZES = [(7, 9), (14, 14), (1, 5), (5, 1), (3, 2)]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@contextlib.contextmanager
def backend(name: str):
    set_kernel_backend(name)
    try:
        yield
    finally:
        set_kernel_backend(None)


def make_map(batch: int, height: int, width: int, channels: int, layout: str, dtype=torch.float32) -> torch.Tensor:
    shape = (batch, height, width, channels) if layout == "BHWC" else (batch, channels, height, width)
    return torch.randn(shape, dtype=dtype).requires_grad_(True)


def scan_by_formula(x_bhwc: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] -> [B, L, 4, C] straight from the index formula, one position at a time."""
    batch, height, width, channels = x_bhwc.shape
    length = height * width
    out = torch.zeros(batch, length, 4, channels, dtype=x_bhwc.dtype)
    for pos in range(length):
        out[:, pos, 0] = x_bhwc[:, pos // width, pos % width]
        out[:, pos, 1] = x_bhwc[:, pos % height, pos // height]
    out[:, :, 2] = out[:, :, 0].flip(1)
    out[:, :, 3] = out[:, :, 1].flip(1)
    return out


def to_bld(y: torch.Tensor, scan_layout: str) -> torch.Tensor:
    return y.permute(0, 3, 1, 2) if scan_layout == "BDL" else y


def to_bhwc(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if layout == "BCHW" else x


# ---------------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("layout", ["BHWC", "BCHW"])
@pytest.mark.parametrize("scan_layout", ["BLD", "BDL"])
@pytest.mark.parametrize("height, width", [(7, 9), (1, 5), (4, 4)])
def test_naive_matches_formula(height, width, layout, scan_layout):
    torch.manual_seed(0)
    x = make_map(2, height, width, 3, layout).detach()
    ys = cross_scan_naive(x, layout=layout, scan_layout=scan_layout)
    torch.testing.assert_close(to_bld(ys, scan_layout), scan_by_formula(to_bhwc(x, layout)), rtol=0, atol=0)
    # the merge is the scan's adjoint: <scan(x), y> == <x, merge(y)>
    y = torch.randn_like(ys)
    merged = cross_merge_naive(y, height, width, scan_layout=scan_layout, layout=layout)
    torch.testing.assert_close((ys * y).sum(), (x * merged).sum(), rtol=1e-5, atol=1e-5)


def test_docstring_example():
    x = torch.arange(6.0).view(1, 2, 3, 1)
    expected = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]])
    torch.testing.assert_close(cross_scan(x)[0, :, :, 0].t(), expected.float())


# ----------------------------------------------------------------------------------------------- Triton kernels


def _cases():
    cases = []
    combos = [(lay, sl) for lay in ("BHWC", "BCHW") for sl in ("BLD", "BDL")]
    for i, (height, width) in enumerate(SIZES):
        for j, (layout, scan_layout) in enumerate(combos):
            dtype = ("fp32", "bf16", "fp16")[(i + j) % 3]
            cases.append(
                pytest.param(
                    height, width, layout, scan_layout, dtype, id=f"{height}x{width}-{layout}-{scan_layout}-{dtype}"
                )
            )
    return cases


@pytest.mark.parametrize("height, width, layout, scan_layout, dtype", _cases())
def test_triton_matches_naive(height, width, layout, scan_layout, dtype):
    """Forward of both ops and the gradient of both (each op's backward is the other's kernel); exact in every dtype
    for the scan (a copy), to one rounding for the merge (fp32 accumulation)."""
    torch.manual_seed(42)
    channels = 40  # two channel blocks of the interpreter's config, the second one partial
    x = make_map(2, height, width, channels, layout, DTYPES[dtype])
    with backend("naive"):
        ref = cross_scan(x, layout=layout, scan_layout=scan_layout)
    with backend("triton"):
        out = cross_scan(x, layout=layout, scan_layout=scan_layout)
    assert out.is_contiguous() and out.dtype == x.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)

    dy = torch.randn_like(ref)
    (dx,) = torch.autograd.grad(out, x, dy)
    # autograd through the naive ops sums the four directions in x's dtype; the kernel sums in fp32 and rounds once
    dx_ref = cross_merge_naive(dy.float(), height, width, scan_layout=scan_layout, layout=layout).to(x.dtype)
    torch.testing.assert_close(dx, dx_ref)
    (dx_autograd,) = torch.autograd.grad(ref, x, dy)
    low = dtype != "fp32"
    torch.testing.assert_close(dx.float(), dx_autograd.float(), rtol=0.02 if low else 0, atol=0.02 if low else 1e-6)

    y = dy.detach().requires_grad_(True)
    with backend("naive"):
        merged_ref = cross_merge(y, height, width, scan_layout=scan_layout, layout=layout)
    with backend("triton"):
        merged = cross_merge(y, height, width, scan_layout=scan_layout, layout=layout)
    assert merged.shape == x.shape and merged.dtype == y.dtype and merged.is_contiguous()
    torch.testing.assert_close(merged, merged_ref)
    dout = torch.randn_like(merged)
    (dy_ref,) = torch.autograd.grad(merged_ref, y, dout)
    (dy_got,) = torch.autograd.grad(merged, y, dout)
    torch.testing.assert_close(dy_got, dy_ref, rtol=0, atol=0)


def test_triton_reads_strided_inputs_in_place():
    """A channels-last NCHW map, a channel slice of a wider map, and a sequence slice of a wider buffer."""
    torch.manual_seed(1)
    base = torch.randn(2, 7, 9, 70)
    sliced = base[..., 3:43]  # [2, 7, 9, 40], channel stride 1, not contiguous
    nchw_cl = torch.randn(2, 40, 7, 9).contiguous(memory_format=torch.channels_last)
    with backend("triton"):
        torch.testing.assert_close(cross_scan(sliced), cross_scan_naive(sliced), rtol=0, atol=0)
        out = cross_scan(nchw_cl, layout="BCHW")
        torch.testing.assert_close(out, cross_scan_naive(nchw_cl, layout="BCHW"), rtol=0, atol=0)
        wide = torch.randn(2, 63, 4, 50)[..., 5:45]
        torch.testing.assert_close(cross_merge(wide, 7, 9), cross_merge_naive(wide, 7, 9))


def test_merge_of_scan_is_four_times_the_map():
    x = torch.randn(3, 5, 6, 8)
    with backend("triton"):
        torch.testing.assert_close(cross_merge(cross_scan(x), 5, 6), 4 * x)


# ------------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cross_scan(torch.randn(2, 3, 4)), "x must be a 4-D tensor"),
        (lambda: cross_scan(torch.randn(1, 2, 2, 3), layout="NHWC"), "layout must be one of"),
        (lambda: cross_scan(torch.randn(1, 2, 2, 3), scan_layout="BL"), "scan_layout must be one of"),
        (lambda: cross_scan(torch.zeros(1, 2, 2, 3, dtype=torch.int32)), "x must be float32"),
        (lambda: cross_scan(torch.randn(1, 0, 2, 3)), "x must be non-empty"),
        (lambda: cross_merge(torch.randn(1, 6, 4, 3), 2, 4), re.escape("the length L of y must be height * width = 8")),
        (lambda: cross_merge(torch.randn(1, 6, 2, 3), 2, 3), "the direction dimension of y must be of size 4"),
        (lambda: cross_merge(torch.randn(1, 6, 4, 3), 2.0, 3), "height must be a positive int"),
        (lambda: cross_merge(torch.randn(1, 6, 4, 3), 2, 0), "width must be a positive int"),
        (lambda: cross_merge(torch.randn(1, 6, 4, 3), 2, 3, layout="HW"), "layout must be one of"),
    ],
)
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------------------ torch.compile


def test_custom_ops_opcheck():
    import sfmamba.ops.cross_scan.chunk  # noqa: F401  (registers the ops; the public functions import it lazily)

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.sfmamba.cross_scan.default, (x, "BHWC", "BLD"))
    y = torch.randn(2, 4, 8, 15, requires_grad=True)
    torch.library.opcheck(torch.ops.sfmamba.cross_merge.default, (y, 3, 5, "BDL", "BCHW"))


def test_torch_compile_fullgraph_matches_eager():
    """Both ops trace into one graph (custom ops with fake and autograd), forward and backward equal eager."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 8, requires_grad=True)

    def block(x):
        ys = cross_scan(torch.tanh(x))
        return cross_merge(ys * torch.arange(4.0).view(1, 1, 4, 1), 5, 7)

    traced = []

    def recording_backend(gm, example_inputs):
        traced.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        keep = lambda g, _: make_boxed_func(g)  # noqa: E731  (run the traced graphs as they are)
        return aot_autograd(fw_compiler=keep, bw_compiler=keep)(gm, example_inputs)

    torch._dynamo.reset()
    with backend("triton"):
        out = torch.compile(block, backend=recording_backend, fullgraph=True)(x)
        ref = block(x)
    assert any("sfmamba.cross_scan" in t for t in traced) and any("sfmamba.cross_merge" in t for t in traced), traced
    torch.testing.assert_close(out, ref)
    dout = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, dout)[0], torch.autograd.grad(ref, x, dout)[0])
