"""Pin the public surface: names exported by `sfmamba.ops` and the signature of the selective scan.

`selective_scan` is a drop-in for `mamba_ssm`'s `selective_scan_fn`: its positional order must never change.
"""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

import sfmamba
import sfmamba.ops

OPS_ALL = ["selective_scan", "selective_scan_fn", "selective_scan_naive"]
P = inspect.Parameter
SELECTIVE_SCAN_PARAMS = [
    # name, kind, default
    ("u", P.POSITIONAL_OR_KEYWORD, P.empty),
    ("delta", P.POSITIONAL_OR_KEYWORD, P.empty),
    ("A", P.POSITIONAL_OR_KEYWORD, P.empty),
    ("B", P.POSITIONAL_OR_KEYWORD, P.empty),
    ("C", P.POSITIONAL_OR_KEYWORD, P.empty),
    ("D", P.POSITIONAL_OR_KEYWORD, None),
    ("z", P.POSITIONAL_OR_KEYWORD, None),
    ("delta_bias", P.POSITIONAL_OR_KEYWORD, None),
    ("delta_softplus", P.POSITIONAL_OR_KEYWORD, False),
    ("return_last_state", P.POSITIONAL_OR_KEYWORD, False),
    ("seq_len", P.KEYWORD_ONLY, None),
    ("cu_seqlens", P.KEYWORD_ONLY, None),
    ("initial_state", P.KEYWORD_ONLY, None),
    ("layout", P.KEYWORD_ONLY, "BDL"),
]


def test_version():
    assert isinstance(sfmamba.__version__, str) and sfmamba.__version__.count(".") >= 2


def test_ops_exports():
    """Other ops add their names; the selective-scan ones stay, and every exported name exists."""
    assert set(OPS_ALL) <= set(sfmamba.ops.__all__)
    assert len(set(sfmamba.ops.__all__)) == len(sfmamba.ops.__all__)
    for name in sfmamba.ops.__all__:
        assert callable(getattr(sfmamba.ops, name)), name


def test_selective_scan_package_exports():
    package = importlib.import_module("sfmamba.ops.selective_scan")  # the subpackage, not the function
    assert inspect.ismodule(package)
    assert sorted(package.__all__) == sorted(OPS_ALL)
    for name in OPS_ALL:
        assert getattr(package, name) is getattr(sfmamba.ops, name), name


def test_selective_scan_fn_is_selective_scan():
    assert sfmamba.ops.selective_scan_fn is sfmamba.ops.selective_scan


def test_function_not_shadowed_by_its_subpackage():
    """`sfmamba.ops.selective_scan` names a subpackage and a function: importing submodules keeps the function."""
    interface = importlib.import_module("sfmamba.ops.selective_scan.interface")
    importlib.import_module("sfmamba.ops.selective_scan.naive")
    assert inspect.isfunction(sfmamba.ops.selective_scan)
    assert sfmamba.ops.selective_scan is interface.selective_scan


@pytest.mark.parametrize("name", ["selective_scan", "selective_scan_naive"])
def test_selective_scan_signature(name):
    params = list(inspect.signature(getattr(sfmamba.ops, name)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in params] == SELECTIVE_SCAN_PARAMS


def test_selective_scan_has_docstring_with_example():
    doc = inspect.getdoc(sfmamba.ops.selective_scan)
    assert doc and "Examples::" in doc
    for name, _, _ in SELECTIVE_SCAN_PARAMS:  # an Args entry such as "u (Tensor): ..." or "B, C (Tensor): ..."
        assert re.search(rf"^\s+(\w+, )*{name}(, \w+)* \(", doc, re.MULTILINE), f"{name} is not documented"
