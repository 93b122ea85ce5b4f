"""`sfmamba.export`: torch.export programs and ONNX files of the models, checked against eager; the Triton custom ops
inside a program; atomic writes; argument errors. Every registered model's export: tests/models/test_models.py."""

from __future__ import annotations

import collections

import pytest
import timm
import torch

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba import export
from sfmamba.utils._config import kernel_backend

IMG = 32


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=5).eval()


def _sfmamba_ops(program: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function" and "sfmamba" in str(n.target)}


@pytest.mark.parametrize("name", ["sf_mamba_nano", "mambavision_nano", "vmamba_v2_nano"])
def test_onnx_file_matches_eager_at_another_batch(name, tmp_path):
    import onnx

    model = _model(name)
    program = export.export_onnx(model, torch.randn(2, 3, IMG, IMG))
    path = export.save_onnx(program, tmp_path / f"{name}.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input0"] and [o.name for o in graph.output] == ["output0"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, IMG, IMG]  # a named, symbolic batch
    assert export.check_onnx(path, model, torch.randn(2, 3, IMG, IMG)) < 1e-5  # run by onnxruntime at batch 3


def test_onnx_static_batch_fixes_the_input_shape():
    model = _model("sf_mamba_nano")
    example = torch.randn(1, 3, IMG, IMG)
    program = export.export_onnx(model, example, dynamic_batch=False)
    dims = program.model_proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, IMG, IMG]
    assert export.check_onnx(program, model, example, dynamic_batch=False) < 1e-5


def test_program_keeps_the_triton_kernels_as_custom_ops(triton_backend, tmp_path):
    """With the Triton kernels on (the interpreter here, CUDA in use), the program calls them as sfmamba:: ops, whose
    fake implementations carry the symbolic batch; saved and loaded, it still gives the eager output."""
    model = _model("sf_mamba_nano")
    program = export.export_program(model, torch.randn(2, 3, IMG, IMG))
    assert {"sfmamba.selective_scan_fwd.default", "sfmamba.depthwise_conv1d_fwd.default"} <= _sfmamba_ops(program)
    loaded = export.load_program(export.save_program(program, tmp_path / "m.pt2"))
    x = torch.randn(3, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_naive_kernels_give_a_program_of_aten_ops(triton_backend):
    model = _model("vmamba_v2_nano")
    program = export.export_program(model, torch.randn(1, 3, IMG, IMG), kernels="naive")  # traced at batch 2
    assert not _sfmamba_ops(program)
    assert kernel_backend() == "triton"  # the forced choice ends with the export
    counts = collections.Counter(str(n.target) for n in program.graph.nodes)
    assert counts["aten.addcmul.default"] > 0  # the reference scan's recurrence
    with export.kernels_forced("naive"):  # the same reference eagerly
        assert export.check_program(program, model, torch.randn(1, 3, IMG, IMG)) < 1e-6


def test_a_model_with_a_dict_output_is_checked_tensor_by_tensor():
    """UperNet returns {"out", "aux"}: the check compares both; a non-finite output is an infinite difference."""
    from sfmamba.dense import UperNet

    torch.manual_seed(0)
    model = UperNet("mambavision_nano", num_classes=3, channels=16, aux_channels=8).eval()
    example = torch.randn(1, 3, IMG, IMG)
    program = export.export_program(model, example)
    assert export.check_program(program, model, example) < 1e-5
    nan_out = {"out": torch.full((2, 3), float("nan")), "aux": torch.zeros(2, 3)}
    assert export._relative_difference(nan_out, {"out": torch.zeros(2, 3), "aux": torch.zeros(2, 3)}) == float("inf")


def test_a_batch_of_one_is_traced_at_two_and_checked_at_three():
    example = torch.zeros(1, 3, 8, 8)
    assert export._traced_example(example, True).shape[0] == 2
    assert export._fresh_input(example, True).shape[0] == 3 and export._fresh_input(example, False).shape[0] == 1


def test_static_batch_program_rejects_another_batch():
    model = _model("mambavision_nano")
    program = export.export_program(model, torch.randn(2, 3, IMG, IMG), dynamic_batch=False)
    assert export.check_program(program, model, torch.randn(2, 3, IMG, IMG), dynamic_batch=False) < 1e-5
    with pytest.raises(Exception, match="shape|size|dimension"):
        program.module()(torch.randn(3, 3, IMG, IMG))


def test_save_program_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "m.pt2"
    path.write_bytes(b"old program")
    program = export.export_program(_model("mambavision_nano"), torch.randn(2, 3, IMG, IMG))

    def fail_midway(program, f):
        f.write(b"half a program")
        raise OSError("disk full")

    monkeypatch.setattr(torch.export, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        export.save_program(program, path)
    assert path.read_bytes() == b"old program" and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]


def test_bad_arguments_are_named():
    model = _model("mambavision_nano")
    with pytest.raises(ValueError, match=r"example must be a 4-D image batch .*got torch.Size\(\[3, 32, 32\]\)"):
        export.export_program(model, torch.randn(3, IMG, IMG))
    with pytest.raises(ValueError, match="kernels must be one of .* got 'cuda'"):
        export.export_program(model, torch.randn(2, 3, IMG, IMG), kernels="cuda")
    with pytest.raises(ValueError, match="example must be float32 .* got torch.bfloat16"):
        export.export_onnx(model, torch.randn(2, 3, IMG, IMG, dtype=torch.bfloat16))
    with pytest.raises(FileNotFoundError, match="load_program: no such file"):
        export.load_program("/nonexistent/m.pt2")


@pytest.mark.parametrize("name, layer", [("sf_mamba_nano", "ScanMixer"), ("vmamba_v2_nano", "SS2D")])
def test_torchscript_tracing_is_refused_with_the_way_out(name, layer):
    """torch.jit.trace (the TorchScript ONNX exporter's tracer) makes sizes tensors; these layers need them as ints:
    a clear error that names torch.export, not a failure deep inside an op (or a file that breaks at another batch)."""
    model = _model(name)
    with pytest.raises(RuntimeError, match=rf"{layer} .* cannot be traced by torch.jit.trace.*torch.export"):
        torch.jit.trace(model, torch.randn(2, 3, IMG, IMG), check_trace=False)
