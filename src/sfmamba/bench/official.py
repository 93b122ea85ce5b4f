"""The official MambaVision code (the `mambavision` wheel, installed with `pip install --no-deps`) as a baseline.

The official model file imports `mamba_ssm.ops.selective_scan_interface.selective_scan_fn` at import time. This
module answers that import with the scan the caller picks:
- `"mamba_ssm"`: mamba_ssm's CUDA kernel, from an installed `mamba_ssm` if it imports, else from the benchmark shim
  `mamba_baseline` (`.bench_deps/`, built by `bash .bench_deps/build_on_device.sh`, on `PYTHONPATH`), whose
  `mamba_selective_scan_fn` is mamba_ssm's autograd function over the compiled `selective_scan_cuda`;
- `"sfmamba"`: our `selective_scan_fn` (the drop-in claim, and the only choice without a CUDA build).
When no real `mamba_ssm` is installed, a stand-in `mamba_ssm` package is registered in `sys.modules` for that import;
the scan is then bound to the official module's global, so the latest `official_model` call decides it.

Names: `official:mamba_vision_T` etc.; `OFFICIAL_MODELS` lists the ones known here.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable

from torch import nn

__all__ = ["OFFICIAL_PREFIX", "OFFICIAL_MODELS", "SCAN_CHOICES", "OfficialUnavailable", "official_model", "match"]

OFFICIAL_PREFIX = "official:"
OFFICIAL_MODELS = ("mamba_vision_T", "mamba_vision_T2", "mamba_vision_S", "mamba_vision_B", "mamba_vision_L")
SCAN_CHOICES = ("mamba_ssm", "sfmamba")
_MODULE = "mambavision.models.mamba_vision"


class OfficialUnavailable(RuntimeError):
    """The official baseline cannot run here (wheel or scan kernel missing); the message says what to install."""


def match(pattern: str) -> list[str]:
    """Official model names (without the prefix) matching a name or a shell wildcard."""
    return [name for name in OFFICIAL_MODELS if fnmatch.fnmatchcase(name, pattern)]


def _mamba_ssm_scan() -> Callable:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        if not getattr(sys.modules["mamba_ssm"], "__sfmamba_stand_in__", False):
            return selective_scan_fn
    except ImportError:
        pass
    try:
        import mamba_baseline
    except ImportError as err:
        raise OfficialUnavailable(
            "--official-scan mamba_ssm needs mamba_ssm installed or the .bench_deps shim: run "
            "`bash .bench_deps/build_on_device.sh` and put `.bench_deps/ext:.bench_deps` on PYTHONPATH "
            f"({err}); or use --official-scan sfmamba"
        ) from err
    return mamba_baseline.mamba_selective_scan_fn


def _scan(choice: str) -> Callable:
    if choice not in SCAN_CHOICES:
        raise ValueError(f"scan must be one of {SCAN_CHOICES}, got {choice!r}")
    if choice == "mamba_ssm":
        return _mamba_ssm_scan()
    from ..ops import selective_scan_fn

    return selective_scan_fn


def _register_stand_in(scan: Callable) -> None:
    """`mamba_ssm.ops.selective_scan_interface.selective_scan_fn` = `scan`, unless a real mamba_ssm is importable."""
    existing = sys.modules.get("mamba_ssm")
    if existing is not None and not getattr(existing, "__sfmamba_stand_in__", False):
        return
    if existing is None and importlib.util.find_spec("mamba_ssm") is not None:
        return
    packages = {}
    for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"):
        module = types.ModuleType(name)
        module.__sfmamba_stand_in__ = True
        module.__path__ = []  # a package, so the dotted import resolves through sys.modules
        packages[name] = module
    packages["mamba_ssm"].ops = packages["mamba_ssm.ops"]
    packages["mamba_ssm.ops"].selective_scan_interface = packages["mamba_ssm.ops.selective_scan_interface"]
    packages["mamba_ssm.ops.selective_scan_interface"].selective_scan_fn = scan
    sys.modules.update(packages)


def official_model(name: str, scan: str = "mamba_ssm", **kwargs) -> nn.Module:
    """Build the official model `name` (e.g. "mamba_vision_T" or "official:mamba_vision_T") with `scan`'s kernel."""
    name = name.removeprefix(OFFICIAL_PREFIX)
    if name not in OFFICIAL_MODELS:
        raise ValueError(f"official model must be one of {OFFICIAL_MODELS}, got {name!r}")
    scan_fn = _scan(scan)
    _register_stand_in(scan_fn)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # it imports timm.models.layers / .registry
            module = importlib.import_module(_MODULE)
    except ImportError as err:
        raise OfficialUnavailable(
            f"the official MambaVision code does not import ({err}); install it with "
            "`pip install --no-deps mambavision` (or the wheel under .bench_deps/wheels/)"
        ) from err
    module.selective_scan_fn = scan_fn  # the module bound the name at import time; rebind to this call's choice
    return getattr(module, name)(**kwargs)
