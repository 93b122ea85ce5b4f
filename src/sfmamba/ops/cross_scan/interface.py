"""Public cross-scan and cross-merge: argument checks, dispatch between the Triton kernels and the reference."""

from __future__ import annotations

from torch import Tensor

from ...utils._config import use_triton
from .._checks import FLOAT_DTYPES, describe, fail
from .naive import DIRECTIONS, cross_merge_naive, cross_scan_naive

MAP_LAYOUTS = ("BHWC", "BCHW")
SCAN_LAYOUTS = ("BLD", "BDL")


def _check_layouts(op: str, layout: object, scan_layout: object) -> None:
    if not isinstance(layout, str) or layout not in MAP_LAYOUTS:
        fail(op, "layout", f"one of {MAP_LAYOUTS}", repr(layout))
    if not isinstance(scan_layout, str) or scan_layout not in SCAN_LAYOUTS:
        fail(op, "scan_layout", f"one of {SCAN_LAYOUTS}", repr(scan_layout))


def _check_float_4d(op: str, name: str, x: object, dims: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        fail(op, name, f"a 4-D tensor {dims}", getattr(x, "shape", type(x)))
    if x.dtype not in FLOAT_DTYPES:
        fail(op, name, "float32, float16 or bfloat16", describe(x))
    if x.numel() == 0:
        fail(op, name, "non-empty in every dimension", tuple(x.shape))


def cross_scan(x: Tensor, *, layout: str = "BHWC", scan_layout: str = "BLD") -> Tensor:
    r"""VMamba's cross-scan: the four scan sequences of an image feature map, in one pass and one output tensor.

    For a map of H x W positions (L = H * W) and scan position l, the four directions read::

        out[l, 0] = x[l // W, l % W]           (row-major)
        out[l, 1] = x[l % H, l // H]           (column-major)
        out[l, 2] = out[L - 1 - l, 0]          (row-major, reversed)
        out[l, 3] = out[L - 1 - l, 1]          (column-major, reversed)

    With `scan_layout="BLD"` the result [B, L, 4, C] viewed as [B, L, 4 * C] is the input of
    `selective_scan(..., layout="BLD")` with B/C grouped per direction (G = 4). The backward is `cross_merge`.

    Args:
        x (Tensor): [B, H, W, C] (`layout="BHWC"`) or [B, C, H, W] (`layout="BCHW"`), any strides (a
            channels-last NCHW tensor is read in place), float32/float16/bfloat16.
        layout (str): "BHWC" or "BCHW". Default: "BHWC".
        scan_layout (str): "BLD" for a [B, L, 4, C] result, "BDL" for [B, 4, C, L] (mamba_ssm's (B, K*C, L)
            after a view). Default: "BLD".

    Returns:
        out ([B, L, 4, C] or [B, 4, C, L]), contiguous, in x's dtype.

    Examples::
        >>> x = torch.arange(6.0).view(1, 2, 3, 1)  # H = 2, W = 3, one channel
        >>> cross_scan(x)[0, :, :, 0].t()
        tensor([[0., 1., 2., 3., 4., 5.],
                [0., 3., 1., 4., 2., 5.],
                [5., 4., 3., 2., 1., 0.],
                [5., 2., 4., 1., 3., 0.]])
    """
    _check_layouts("cross_scan", layout, scan_layout)
    _check_float_4d("cross_scan", "x", x, "[B, H, W, C]" if layout == "BHWC" else "[B, C, H, W]")
    if use_triton(x.device):
        from .chunk import cross_scan_triton

        return cross_scan_triton(x, layout, scan_layout)
    return cross_scan_naive(x, layout=layout, scan_layout=scan_layout)


def check_cross_merge_inputs(y: object, height: object, width: object, scan_layout: str, layout: str) -> None:
    _check_layouts("cross_merge", layout, scan_layout)
    _check_float_4d("cross_merge", "y", y, "[B, L, 4, C]" if scan_layout == "BLD" else "[B, 4, C, L]")
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            fail("cross_merge", name, "a positive int", repr(size))
    length, directions = (y.shape[3], y.shape[1]) if scan_layout == "BDL" else (y.shape[1], y.shape[2])
    if directions != DIRECTIONS:
        fail("cross_merge", "the direction dimension of y", f"of size {DIRECTIONS}", tuple(y.shape))
    if length != height * width:
        fail("cross_merge", "the length L of y", f"height * width = {height * width}", length)


def cross_merge(y: Tensor, height: int, width: int, *, scan_layout: str = "BLD", layout: str = "BHWC") -> Tensor:
    r"""VMamba's cross-merge: the sum of the four direction sequences back on the H x W map (cross-scan's adjoint).

    For every position (h, w), with p = h * W + w, q = w * H + h and L = H * W::

        out[h, w] = y[p, 0] + y[q, 1] + y[L - 1 - p, 2] + y[L - 1 - q, 3]

    Accumulates in fp32. The backward is `cross_scan`.

    Args:
        y (Tensor): [B, L, 4, C] (`scan_layout="BLD"`, e.g. a `selective_scan(..., layout="BLD")` output viewed as
            (B, L, 4, C)) or [B, 4, C, L] (`scan_layout="BDL"`), any strides, float32/float16/bfloat16.
        height, width (int): the map size, height * width = L.
        scan_layout (str): "BLD" or "BDL". Default: "BLD".
        layout (str): "BHWC" for a [B, H, W, C] result, "BCHW" for [B, C, H, W]. Default: "BHWC".

    Returns:
        out ([B, H, W, C] or [B, C, H, W]), contiguous, in y's dtype.

    Examples::
        >>> x = torch.randn(2, 5, 7, 16)
        >>> torch.allclose(cross_merge(cross_scan(x), 5, 7), 4 * x)
        True
    """
    check_cross_merge_inputs(y, height, width, scan_layout, layout)
    if use_triton(y.device):
        from .chunk import cross_merge_triton

        return cross_merge_triton(y, height, width, scan_layout, layout)
    return cross_merge_naive(y, height, width, scan_layout=scan_layout, layout=layout)
