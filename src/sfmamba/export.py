"""Export a model for deployment: a `torch.export` program (`.pt2`) or an ONNX file, each checked against eager.

- `export_program(model, example)`: `torch.export.export` of the model in eval mode, batch dimension dynamic by
  default. The ops' kernels are chosen as in eager (`kernels=None`): on CUDA the program calls the Triton kernels as
  `sfmamba::` custom ops (their fake implementations give the shapes), so loading it needs `import sfmamba`
  (`load_program` does that); `kernels="naive"` traces the ops' PyTorch references instead, a program of ATen ops
  only that runs wherever PyTorch does.
- `export_onnx(model, example)`: the same program through PyTorch's torch.export-based ONNX exporter
  (`torch.onnx.export(..., dynamo=True)`, needs `onnx` and `onnxscript`: `pip install 'sfmamba[export]'`), always
  with the PyTorch references: ONNX has no Triton ops. The TorchScript exporter (`dynamo=False`, timm's
  `onnx_export` default) traces with `torch.jit.trace`, whose sizes are tensors where SF-Mamba's fold planning and
  VMamba's cross-merge need ints: those layers refuse it with an error naming this way out (MambaVision traces).
  With timm: `timm.utils.onnx.onnx_export(..., use_dynamo=True)`.
- `save_program` / `load_program` / `save_onnx`: the files, written atomically; `kernels_forced` (from
  `sfmamba.utils._config`): the ops' implementation for a block of code.
- `check_program` / `check_onnx`: the largest difference to the eager model, max |exported - eager| / max(1, max
  |eager|) over every output tensor (inf where one is not finite), on a fresh input whose batch differs from the
  traced one (so a dynamic batch is exercised).

Command line: `sfmamba export` (`sfmamba.cli.export`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from .utils._config import kernels_forced
from .utils.files import atomic_write

__all__ = [
    "check_onnx", "check_program", "export_onnx", "export_program", "kernels_forced", "load_program", "save_onnx",
    "save_program",
]  # fmt: skip

ONNX_PACKAGES = ("onnx", "onnxscript")


def _traced_example(example: Tensor, dynamic_batch: bool) -> Tensor:
    """torch.export specialises a dimension of size 1: trace a dynamic batch with at least two images."""
    if not isinstance(example, Tensor) or example.dim() != 4:
        raise ValueError(f"example must be a 4-D image batch (batch, channels, height, width), got "
                         f"{getattr(example, 'shape', type(example))}")  # fmt: skip
    return torch.cat([example, example]) if dynamic_batch and example.shape[0] == 1 else example


def _batch_dims(dynamic_batch: bool) -> tuple[dict[int, object]] | None:
    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


def export_program(
    model: nn.Module, example: Tensor, *, dynamic_batch: bool = True, kernels: str | None = None
) -> torch.export.ExportedProgram:
    """`torch.export.export(model.eval(), (example,))` (the model is left in eval mode), the batch dimension dynamic
    unless `dynamic_batch=False`; `kernels` forces the ops' implementation while tracing (None: as configured)."""
    example = _traced_example(example, dynamic_batch)
    model.eval()
    with kernels_forced(kernels), torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=_batch_dims(dynamic_batch))


def save_program(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Write `program` to `path` (a `.pt2` file) atomically: a crash never leaves half a file behind."""
    path = Path(path)
    atomic_write(path, lambda temp: _save_program_to(program, temp))
    return path


def _save_program_to(program: torch.export.ExportedProgram, temp: str) -> None:
    with open(temp, "wb") as f:  # a file object: torch.export.save warns about a path not ending in .pt2
        torch.export.save(program, f)


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """`torch.export.load`, with sfmamba's custom ops registered first (a program exported with the Triton kernels
    calls them by name)."""
    from . import ops  # noqa: F401  (registers the sfmamba:: ops)

    if not Path(path).is_file():
        raise FileNotFoundError(f"load_program: no such file {path}")
    return torch.export.load(str(path))


def missing_onnx_packages() -> list[str]:
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def export_onnx(
    model: nn.Module, example: Tensor, *, dynamic_batch: bool = True, opset: int | None = None
) -> torch.onnx.ONNXProgram:
    """The ONNX program of `model` (left in eval mode), traced with the ops' PyTorch references; its input is named
    `input0` and its output `output0` (timm's names), with a dynamic `batch` axis unless `dynamic_batch=False`. Write
    it with `save_onnx`."""
    missing = missing_onnx_packages()
    if missing:
        raise RuntimeError(f"export_onnx needs {', '.join(missing)}: pip install 'sfmamba[export]'")
    example = _traced_example(example, dynamic_batch)
    if example.dtype != torch.float32:
        raise ValueError(f"export_onnx: example must be float32 (export a float32 model), got {example.dtype}")
    model.eval()
    with kernels_forced("naive"), torch.no_grad():
        return torch.onnx.export(
            model, (example,), dynamo=True, input_names=["input0"], output_names=["output0"], opset_version=opset,
            dynamic_shapes=_batch_dims(dynamic_batch), verbose=False,
        )  # fmt: skip


def save_onnx(onnx_program: torch.onnx.ONNXProgram, path: str | Path) -> Path:
    """Write `onnx_program` to `path` atomically, weights inside the file (models under protobuf's 2 GB)."""
    path = Path(path)
    atomic_write(path, lambda temp: onnx_program.save(temp, external_data=False))
    return path


def _fresh_input(example: Tensor, dynamic_batch: bool) -> Tensor:
    """A new random input like `example`; for a dynamic batch, one image more than the traced batch (a batch of 1 is
    traced at 2 and checked at 3)."""
    traced = _traced_example(example, dynamic_batch).shape[0]
    batch = traced + 1 if dynamic_batch else traced
    return torch.randn((batch, *example.shape[1:]), device=example.device, dtype=example.dtype)


def _relative_difference(out: object, ref: object) -> float:
    """max |out - ref| / max(1, max |ref|) over every tensor of the two outputs (a tensor, or a dict/tuple of them,
    e.g. UperNet's); inf where an output is not finite or the structures differ."""
    outs, out_spec = pytree.tree_flatten(out)
    refs, ref_spec = pytree.tree_flatten(ref)
    if out_spec != ref_spec or any(o.shape != r.shape for o, r in zip(outs, refs)):
        raise RuntimeError(f"the exported model returned {_shapes(out)}, eager {_shapes(ref)}")
    worst = 0.0
    for o, r in zip(outs, refs):
        o, r = o.detach().double().cpu(), r.detach().double().cpu()
        if not (torch.isfinite(o).all() and torch.isfinite(r).all()):
            return float("inf")
        worst = max(worst, float((o - r).abs().max() / r.abs().max().clamp_min(1.0)))
    return worst


def _shapes(output: object) -> object:
    return pytree.tree_map(lambda t: tuple(t.shape) if isinstance(t, Tensor) else t, output)


def check_program(
    program: torch.export.ExportedProgram, model: nn.Module, example: Tensor, *, dynamic_batch: bool = True
) -> float:
    """max |exported - eager| / max(1, max |eager|) over the output tensors (inf where one is not finite) on a fresh
    input like `example`, one image more than the traced batch for a program exported with a dynamic batch."""
    x = _fresh_input(example, dynamic_batch)
    with torch.no_grad():
        return _relative_difference(program.module()(x), model.eval()(x))


def check_onnx(
    onnx_program: torch.onnx.ONNXProgram | str | Path, model: nn.Module, example: Tensor, *, dynamic_batch: bool = True
) -> float:
    """`check_program` for an ONNX program or file, run by onnxruntime on the CPU (needs onnxruntime)."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise RuntimeError("check_onnx needs onnxruntime: pip install 'sfmamba[export]'")
    import onnxruntime

    is_file = isinstance(onnx_program, (str, Path))
    source = str(onnx_program) if is_file else onnx_program.model_proto.SerializeToString()
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    x = _fresh_input(example, dynamic_batch)
    outs = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})
    with torch.no_grad():
        ref = model.eval()(x)
    refs, spec = pytree.tree_flatten(ref)
    if len(outs) != len(refs):
        raise RuntimeError(f"the ONNX model returned {len(outs)} outputs, eager {len(refs)}")
    return _relative_difference(pytree.tree_unflatten([torch.from_numpy(o) for o in outs], spec), ref)
