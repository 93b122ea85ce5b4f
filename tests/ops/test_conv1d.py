"""Depthwise conv1d with segment boundaries: Triton kernels against the PyTorch reference, the reference against
`F.conv1d`, folding and packing against per-segment calls, no leakage across boundaries, and argument errors.

Without CUDA the Triton kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set before any
kernel module is imported). The backend is forced per test through `set_kernel_backend`, not through the
environment, so the other test modules of the same worker keep their own dispatch.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools

import pytest
import torch.nn.functional as F

from sfmamba.ops import depthwise_conv1d
from sfmamba.ops.conv1d import depthwise_conv1d_naive
from sfmamba.testing import assert_close
from sfmamba.utils import set_kernel_backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# relative-RMSE bound of the kernel against the fp32 reference on the same (rounded) inputs: one rounding of the result
RATIO = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}


@pytest.fixture
def backend(request):
    """Force a kernel backend for one test, then hand control back to SFMAMBA_KERNEL."""
    set_kernel_backend(request.param)
    yield request.param
    set_kernel_backend(None)


BACKENDS = pytest.mark.parametrize("backend", ["naive", "triton"], indirect=True)


def make_x(batch: int, length: int, dim: int, layout: str, dtype=torch.float32, requires_grad=True) -> torch.Tensor:
    shape = (batch, dim, length) if layout == "BDL" else (batch, length, dim)
    return torch.randn(shape, device=DEVICE, dtype=dtype).requires_grad_(requires_grad)


def to_bdl(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "BDL" else x.transpose(1, 2)


def from_bdl(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "BDL" else x.transpose(1, 2)


def grads(out: torch.Tensor, inputs: tuple, dout: torch.Tensor) -> tuple:
    present = tuple(t for t in inputs if t is not None)
    return torch.autograd.grad(out, present, dout)


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels against the fp32 reference

SHAPES = [(2, 49, 40), (1, 51, 64), (2, 196, 40), (1, 198, 96), (2, 63, 17), (1, 102, 40)]
# segments for each shape, cycled: None, a seq_len dividing L, packed cu_seqlens (batch 1 only)
SEGMENTS = {49: [7], 51: [17], 196: [49], 198: [66], 63: [21], 102: [51]}
PACKED = [0, 5, 6, 30]  # + L at the end: segments of 5, 1, 24 and the rest


def _chunk_cases():
    cases = []
    combos = list(itertools.product((2, 3, 4), ("same", "causal"), ("BLD", "BDL"), (None, "silu")))
    for i, (K, padding, layout, act) in enumerate(combos):
        batch, length, dim = SHAPES[i % len(SHAPES)]
        seg = ("none", "seq_len", "cu_seqlens")[i % 3]
        if seg == "cu_seqlens" and batch != 1:
            seg = "seq_len"
        cases.append((batch, length, dim, K, padding, layout, act, "fp32", seg))
    for dtype, layout, act in itertools.product(("fp16", "bf16"), ("BLD", "BDL"), (None, "silu")):
        batch, length, dim = (1, 198, 96) if act else (2, 196, 40)
        cases.append((batch, length, dim, 3, "same", layout, act, dtype, "seq_len" if act else "none"))
    return [
        pytest.param(*case, id="B{}-L{}-D{}-K{}-{}".format(*case[:4], "-".join(map(str, case[4:])))) for case in cases
    ]


@pytest.mark.parametrize("batch,length,dim,K,padding,layout,activation,dtype,segments", _chunk_cases())
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
def test_chunk(backend, batch, length, dim, K, padding, layout, activation, dtype, segments):
    torch.manual_seed(42)
    dtype = DTYPES[dtype]
    seg_kw = {}
    if segments == "seq_len":
        seg_kw["seq_len"] = SEGMENTS[length][0]
    elif segments == "cu_seqlens":
        seg_kw["cu_seqlens"] = torch.tensor([*PACKED, length], device=DEVICE, dtype=torch.int32)
    # low-precision inputs get fp32 weights without activation and x.dtype weights with it: both are accepted
    pdtype = dtype if activation else torch.float32
    x = make_x(batch, length, dim, layout, dtype)
    w = torch.randn(dim, K, device=DEVICE, dtype=pdtype).requires_grad_()
    b = torch.randn(dim, device=DEVICE, dtype=pdtype).requires_grad_()
    kw = dict(padding=padding, activation=activation, layout=layout, **seg_kw)

    out = depthwise_conv1d(x, w, b, **kw)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    dout = torch.randn_like(out)
    dx, dw, db = grads(out, (x, w, b), dout)
    assert (dx.dtype, dw.dtype, db.dtype) == (dtype, pdtype, pdtype)

    # the truth: the reference in fp32 on the same rounded values
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
    ref = depthwise_conv1d_naive(x32, w32, b32, **kw)
    rdx, rdw, rdb = grads(ref, (x32, w32, b32), dout.float())
    ratio = RATIO[dtype]
    assert_close("out", ref, out, ratio)
    assert_close("dx", rdx, dx, ratio)
    assert_close("dweight", rdw, dw, ratio)
    assert_close("dbias", rdb, db, ratio)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("backend", ["triton"], indirect=True)
def test_chunk_no_bias_strided(backend, activation):
    """No bias, and x / dout as non-contiguous views: the kernels read through strides, nothing is copied."""
    torch.manual_seed(42)
    base = torch.randn(2, 56, 100, device=DEVICE)
    x = base[:, :, 3:53].transpose(1, 2).requires_grad_()  # [B, L=50, D=56] with strides (5600, 1, 100)
    w = torch.randn(56, 3, device=DEVICE, requires_grad=True)
    out = depthwise_conv1d(x, w, activation=activation, seq_len=25)
    dout = torch.randn(2, 56, 50, device=DEVICE).transpose(1, 2)
    dx, dw = grads(out, (x, w), dout)
    ref = depthwise_conv1d_naive(x, w, activation=activation, seq_len=25)
    rdx, rdw = grads(ref, (x, w), dout)
    for name, r, o in (("out", ref, out), ("dx", rdx, dx), ("dweight", rdw, dw)):
        assert_close(name, r, o, RATIO[torch.float32])


# ---------------------------------------------------------------------------------------------------------------
# The reference against PyTorch's own convolution, one segment at a time


def torch_conv(x_bdl: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, padding: str, activation) -> torch.Tensor:
    """PyTorch's grouped conv on one segment: `padding="same"` as such, causal as K-1 explicit zeros on the left."""
    dim, K = w.shape
    if padding == "causal":
        out = F.conv1d(F.pad(x_bdl, (K - 1, 0)), w.unsqueeze(1), b, groups=dim)
    else:
        out = F.conv1d(x_bdl, w.unsqueeze(1), b, padding="same", groups=dim)
    return F.silu(out) if activation == "silu" else out


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("seq_len", [None, 2, 3, 14])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("layout", ["BLD", "BDL"])
@pytest.mark.parametrize("padding", ["same", "causal"])
@pytest.mark.parametrize("K", [2, 3, 4])
def test_naive_matches_torch(K, padding, layout, activation, seq_len):
    torch.manual_seed(42)
    batch, length, dim = 2, 42, 24
    x = make_x(batch, length, dim, layout)
    w = torch.randn(dim, K, device=DEVICE, requires_grad=True)
    b = torch.randn(dim, device=DEVICE, requires_grad=True)
    out = depthwise_conv1d_naive(x, w, b, padding=padding, activation=activation, seq_len=seq_len, layout=layout)
    T = seq_len or length
    pieces = [torch_conv(p, w, b, padding, activation) for p in to_bdl(x, layout).split(T, dim=2)]
    ref = from_bdl(torch.cat(pieces, dim=2), layout)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    dout = torch.randn_like(out)
    for name, g, rg in zip(("dx", "dweight", "dbias"), grads(out, (x, w, b), dout), grads(ref, (x, w, b), dout)):
        torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# Folding and packing: identical to independent calls, and nothing crosses a boundary


def fold(x: torch.Tensor, per_row: int, layout: str) -> torch.Tensor:
    """(B, ...) images -> (B / per_row, ...) rows of `per_row` consecutive images."""
    batch = x.shape[0]
    if layout == "BLD":
        return x.reshape(batch // per_row, per_row * x.shape[1], x.shape[2])
    b1, dim, length = batch // per_row, x.shape[1], x.shape[2]
    return x.view(b1, per_row, dim, length).permute(0, 2, 1, 3).reshape(b1, dim, per_row * length)


@BACKENDS
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("layout", ["BLD", "BDL"])
def test_folded_equals_unfolded(backend, layout, activation):
    torch.manual_seed(42)
    images, T, dim, K = 4, 51, 40, 3
    x = make_x(images, T, dim, layout)
    w = torch.randn(dim, K, device=DEVICE, requires_grad=True)
    b = torch.randn(dim, device=DEVICE, requires_grad=True)
    kw = {"activation": activation, "layout": layout}
    unfolded = depthwise_conv1d(x, w, b, **kw)
    folded = depthwise_conv1d(fold(x, 2, layout), w, b, seq_len=T, **kw)
    torch.testing.assert_close(folded, fold(unfolded, 2, layout), rtol=1e-6, atol=1e-6)
    dout = torch.randn_like(unfolded)
    g_un = grads(unfolded, (x, w, b), dout)
    g_fold = grads(folded, (x, w, b), fold(dout, 2, layout))
    for name, gf, gu in zip(("dx", "dweight", "dbias"), g_fold, g_un):
        torch.testing.assert_close(gf, gu, rtol=1e-5, atol=1e-5, msg=name)


@BACKENDS
@pytest.mark.parametrize("padding", ["same", "causal"])
@pytest.mark.parametrize("layout", ["BLD", "BDL"])
def test_cu_seqlens_equals_per_segment(backend, layout, padding):
    torch.manual_seed(42)
    lengths, dim, K = [5, 1, 49, 2, 30], 24, 4
    x = make_x(1, sum(lengths), dim, layout)
    w = torch.randn(dim, K, device=DEVICE, requires_grad=True)
    b = torch.randn(dim, device=DEVICE, requires_grad=True)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], device=DEVICE, dtype=torch.int64)
    kw = {"padding": padding, "activation": "silu", "layout": layout}
    packed = depthwise_conv1d(x, w, b, cu_seqlens=cu, **kw)
    length_dim = 2 if layout == "BDL" else 1
    pieces = [depthwise_conv1d(p, w, b, **kw) for p in x.split(lengths, dim=length_dim)]
    separate = torch.cat(pieces, dim=length_dim)
    torch.testing.assert_close(packed, separate, rtol=1e-6, atol=1e-6)
    dout = torch.randn_like(packed)
    for name, gp, gs in zip(
        ("dx", "dweight", "dbias"), grads(packed, (x, w, b), dout), grads(separate, (x, w, b), dout)
    ):
        torch.testing.assert_close(gp, gs, rtol=1e-5, atol=1e-5, msg=name)


@BACKENDS
@pytest.mark.parametrize("segments", ["seq_len", "cu_seqlens"])
@pytest.mark.parametrize("layout", ["BLD", "BDL"])
def test_no_leakage_across_boundaries(backend, layout, segments):
    """Changing segment 2 changes neither segment 1 nor segment 3, forward or backward."""
    torch.manual_seed(42)
    T, dim, K = 49, 40, 4
    seg_kw = (
        {"seq_len": T} if segments == "seq_len" else {"cu_seqlens": torch.tensor([0, T, 2 * T, 3 * T], device=DEVICE)}
    )
    x = torch.randn(1, 3 * T, dim, device=DEVICE)  # [B, L, D]
    x2 = x.clone()
    x2[:, T : 2 * T] = torch.randn(1, T, dim, device=DEVICE) * 100
    w = torch.randn(dim, K, device=DEVICE)
    b = torch.randn(dim, device=DEVICE)

    def swap(t):  # [B, L, D] <-> the layout under test
        return t.transpose(1, 2) if layout == "BDL" else t

    def run(inp):
        return swap(depthwise_conv1d(swap(inp).contiguous(), w, b, layout=layout, **seg_kw))

    out, out2 = run(x), run(x2)
    assert torch.equal(out[:, :T], out2[:, :T])
    assert torch.equal(out[:, 2 * T :], out2[:, 2 * T :])
    assert not torch.equal(out[:, T : 2 * T], out2[:, T : 2 * T])

    xg = swap(x).contiguous().requires_grad_()
    y = swap(depthwise_conv1d(xg, w, b, layout=layout, **seg_kw))
    (dx,) = torch.autograd.grad(y[:, :T].sum() + y[:, 2 * T :].sum(), xg)
    assert (swap(dx)[:, T : 2 * T] == 0).all()
    assert (swap(dx)[:, :T] != 0).any() and (swap(dx)[:, 2 * T :] != 0).any()


# ---------------------------------------------------------------------------------------------------------------
# torch.compile and the torch.library registration


@pytest.mark.parametrize("backend", ["triton"], indirect=True)
def test_compile_fullgraph(backend):
    torch.manual_seed(42)
    x = make_x(2, 49, 40, "BLD")
    w = torch.randn(40, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(40, device=DEVICE, requires_grad=True)

    def fn(x, w, b):
        return depthwise_conv1d(x, w, b, activation="silu", seq_len=7)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out, ref = compiled(x, w, b), fn(x, w, b)
    torch.testing.assert_close(out, ref)
    dout = torch.randn_like(out)
    for g, rg in zip(grads(out, (x, w, b), dout), grads(ref, (x, w, b), dout)):
        torch.testing.assert_close(g, rg)


@pytest.mark.parametrize("with_bias", [True, False])
def test_opcheck(with_bias):
    from sfmamba.ops.conv1d import chunk  # noqa: F401  (registers the ops)

    x = torch.randn(1, 20, 8, device=DEVICE, requires_grad=True)
    w = torch.randn(8, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(8, device=DEVICE, requires_grad=True) if with_bias else None
    cu = torch.tensor([0, 3, 20], device=DEVICE, dtype=torch.int32)
    torch.library.opcheck(torch.ops.sfmamba.depthwise_conv1d_fwd.default, (x, w, b, cu, 0, 1, True, "BLD"))


# ---------------------------------------------------------------------------------------------------------------
# Argument errors


def _bad_cases():
    x = torch.randn(2, 12, 8, device=DEVICE)
    w = torch.randn(8, 3, device=DEVICE)
    x1 = x[:1]
    cu = torch.tensor([0, 5, 12], device=DEVICE)
    cases = {
        "x-2d": ({"x": x[0]}, "x must be a 3-D"),
        "x-int": ({"x": x.long()}, "x must be float32"),
        "x-empty": ({"x": x[:, :0]}, "x must be non-empty"),
        "weight-none": ({"weight": None}, "weight must be"),
        "weight-1d": ({"weight": w[:, 0]}, "weight must be a 2-D"),
        "weight-dim": ({"weight": w[:4]}, r"weight must be of shape \(D=8, K\)"),
        "weight-K1": ({"weight": w[:, :1]}, "kernel size K"),
        "weight-K5": ({"weight": torch.randn(8, 5, device=DEVICE)}, "kernel size K"),
        "weight-dtype": ({"weight": w.double()}, "weight must be of dtype"),
        "weight-fp16-for-fp32-x": ({"weight": w.half()}, "weight must be of dtype"),
        "bias-shape": ({"bias": torch.randn(4, device=DEVICE)}, r"bias must be of shape \(D=8,\)"),
        "bias-dtype": ({"bias": torch.randn(8, device=DEVICE, dtype=torch.float64)}, "bias must be of dtype"),
        "padding": ({"padding": "valid"}, "padding must be one of"),
        "activation": ({"activation": "gelu"}, "activation must be one of"),
        "layout": ({"layout": "LBD"}, "layout must be one of"),
        "seq_len-divides": ({"seq_len": 5}, "seq_len must be a positive int that divides L=12"),
        "seq_len-zero": ({"seq_len": 0}, "seq_len must be a positive int"),
        "seq_len-float": ({"seq_len": 6.0}, "seq_len must be a Python int, got float 6.0"),
        "both": ({"x": x1, "seq_len": 6, "cu_seqlens": cu}, "seq_len must be None when cu_seqlens"),
        "cu-batch": ({"cu_seqlens": cu}, "batch size with cu_seqlens"),
        "cu-2d": ({"x": x1, "cu_seqlens": cu[None]}, "cu_seqlens must be a 1-D"),
        "cu-float": ({"x": x1, "cu_seqlens": cu.float()}, "cu_seqlens must be int32 or int64"),
        "cu-end": ({"x": x1, "cu_seqlens": torch.tensor([0, 5, 11], device=DEVICE)}, "cu_seqlens must be strictly"),
        "cu-start": ({"x": x1, "cu_seqlens": torch.tensor([1, 5, 12], device=DEVICE)}, "cu_seqlens must be strictly"),
        "cu-order": (
            {"x": x1, "cu_seqlens": torch.tensor([0, 5, 5, 12], device=DEVICE)},
            "cu_seqlens must be strictly",
        ),
    }
    if torch.cuda.is_available():
        cases["weight-device"] = ({"weight": w.cpu()}, "weight must be on")
    else:
        cases["weight-device"] = ({"weight": w.to("meta")}, "weight must be on")
    return [pytest.param(kw, match, id=name) for name, (kw, match) in cases.items()]


@pytest.mark.parametrize("changes,match", _bad_cases())
def test_bad_inputs(changes, match):
    args = {"x": torch.randn(2, 12, 8, device=DEVICE), "weight": torch.randn(8, 3, device=DEVICE), "bias": None}
    args.update(changes)
    with pytest.raises(ValueError, match=match):
        depthwise_conv1d(**args)
