"""Export a model for deployment: a `torch.export` program (.pt2) or an ONNX file, checked against the eager model.

The model comes as in `sfmamba eval` (a `sfmamba train` checkpoint names its model, classes and image size), or from a
`train-seg` / `train-det` weights file: UperNet whole (default size: its crop), or a detector's `DetectionNetwork`
(backbone, pyramid and dense head on the normalised, padded batch; default size: its max_size rounded up to 32,
square, which every resized image fits; --img-size a multiple of 32), since torch.export cannot trace torchvision's
box decoding and NMS (data-dependent sizes). The batch dimension stays dynamic unless --static-batch; the image size
is fixed (--img-size). Before the file is put in place, the exported model runs on a fresh random batch one image
larger than the traced one and its output is compared with the eager model's: where max |exported - eager| / max(1,
max |eager|) exceeds --tolerance (or an output is not finite), nothing is written and the command fails.

.pt2 on CUDA keeps the Triton kernels as `sfmamba::` custom ops (load with `sfmamba.export.load_program`, or `import
sfmamba` before `torch.export.load`); --kernels naive traces the PyTorch references instead (ATen ops only). ONNX
always traces the references, in float32, through PyTorch's torch.export-based exporter (`pip install
'sfmamba[export]'` for onnx, onnxscript and onnxruntime).

examples:
  sfmamba export --checkpoint output/fmnist/best.safetensors --output fmnist.pt2
  sfmamba export --checkpoint output/fmnist/best.safetensors --output fmnist.onnx
  sfmamba export --model mambavision_tiny --pretrained --device cuda --dtype bfloat16 --output mambavision_tiny.pt2
  sfmamba export --checkpoint output/ade/best.safetensors --output upernet.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import UsageError, device_arg, positive_float, positive_int
from .train import ParseModelKwargs

HELP = "export a model to a torch.export program (.pt2) or ONNX, checked against the eager model"
FORMATS = {".pt2": "pt2", ".onnx": "onnx"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("model")
    what.add_argument("--checkpoint", default=None,
                      help="a `sfmamba train` .safetensors, or any timm checkpoint with --model")  # fmt: skip
    what.add_argument("--model", default=None, help="timm model name (default: the checkpoint's)")
    what.add_argument("--model-kwargs", nargs="*", default={}, action=ParseModelKwargs, metavar="KEY=VALUE")
    what.add_argument("--pretrained", action="store_true", help="timm's pretrained weights for --model")
    what.add_argument("--num-classes", type=positive_int, default=None,
                      help="classifier size for --model (default: the checkpoint's, else the model's)")  # fmt: skip
    shape = parser.add_argument_group("input")
    shape.add_argument("--img-size", type=positive_int, default=None,
                       help="image height and width (default: the checkpoint's, else the model's; a detector: its "
                            "max_size rounded up to 32)")  # fmt: skip
    shape.add_argument("-b", "--batch-size", type=positive_int, default=2, help="traced batch (default: 2)")
    shape.add_argument("--static-batch", action="store_true", help="fix the batch size instead of keeping it dynamic")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, required=True, help="a .pt2 or .onnx file")
    out.add_argument("--format", choices=sorted(set(FORMATS.values())), default=None,
                     help="default: from the --output suffix")  # fmt: skip
    out.add_argument("--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's)")
    run = parser.add_argument_group("run")
    run.add_argument("--device", type=device_arg, default=None, help="cuda or cpu (default: cpu; ONNX: cpu only)")
    run.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="model and input dtype (.pt2 only)")
    run.add_argument("--kernels", choices=("auto", "triton", "naive"), default=None,
                     help="the ops' implementation while tracing (default: SFMAMBA_KERNEL, i.e. auto)")  # fmt: skip
    run.add_argument("--tolerance", type=positive_float, default=None,
                     help="largest relative difference to eager accepted (default: 1e-4 float32, 5e-2 bfloat16, "
                          "1e-2 float16)")  # fmt: skip
    run.add_argument("--no-check", action="store_true", help="write without comparing to the eager model")


def _format(args: argparse.Namespace) -> str:
    by_suffix = FORMATS.get(args.output.suffix)
    if args.format is None and by_suffix is None:
        raise UsageError(f"--output must end in .pt2 or .onnx (or pass --format), got {args.output}")
    fmt = args.format or by_suffix
    if fmt == "onnx":
        if args.dtype != "float32":
            raise UsageError(f"--dtype must be float32 for ONNX, got {args.dtype}")
        if args.device not in (None, "cpu"):
            raise UsageError(f"--device must be cpu for ONNX (it traces the PyTorch references), got {args.device}")
        if args.kernels not in (None, "naive"):
            raise UsageError(f"--kernels must be naive for ONNX (ONNX has no Triton ops), got {args.kernels}")
    elif args.opset is not None:
        raise UsageError("--opset applies to ONNX only")
    return fmt


def _input_size(args: argparse.Namespace, model: torch.nn.Module, metadata: dict) -> tuple[int, int]:
    """(channels, image size): `in_chans` from --model-kwargs or the checkpoint's model kwargs (timm leaves the
    pretrained cfg's input size at 3 channels), else the model's default; the size from --img-size, the checkpoint, or
    the model's default."""
    channels, *size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    kwargs = {**metadata.get("model_kwargs", {}), **args.model_kwargs}
    img_size = args.img_size or metadata.get("img_size") or size[-1]
    return int(kwargs.get("in_chans", channels)), int(img_size)


def _classifier(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple[int, int], str]:
    from .eval import build_model

    model, metadata = build_model(args, args.num_classes)
    if args.num_classes is not None and metadata.get("num_classes", args.num_classes) != args.num_classes:
        raise UsageError(f"--num-classes {args.num_classes} conflicts with the checkpoint's {metadata['num_classes']}")
    return model, _input_size(args, model, metadata), ""


def _dense_task(args: argparse.Namespace) -> str | None:
    """The task ("segmentation" or "detection") of a train-seg / train-det weights file, else None."""
    from ..dense.checkpoint import DENSE_TASKS
    from ..train.checkpoint import read_metadata

    if not (args.checkpoint and args.checkpoint.endswith(".safetensors") and Path(args.checkpoint).is_file()):
        return None
    task = read_metadata(args.checkpoint).get("task")
    return task if task in DENSE_TASKS else None


def _dense_model(args: argparse.Namespace, task: str) -> tuple[torch.nn.Module, tuple[int, int], str]:
    """A train-seg file's UperNet whole; a train-det file's `DetectionNetwork` (backbone, pyramid and dense head on
    the transform's normalised, padded batch: torch.export cannot trace torchvision's box decoding and NMS). Default
    size: the crop for UperNet, the detector's `max_size` rounded up to a multiple of 32 for a detector (every
    resized image fits that square)."""
    from ..dense import DetectionNetwork, model_from_checkpoint

    given = [flag for flag, value in (("--model", args.model), ("--pretrained", args.pretrained),
                                      ("--num-classes", args.num_classes), ("--model-kwargs", args.model_kwargs))
             if value]  # fmt: skip
    if given:
        raise UsageError(f"{', '.join(given)}: a train-seg / train-det checkpoint names its model itself; drop them")
    if task == "detection" and args.img_size is not None and args.img_size % 32:  # (the pyramid's strides: anchors)
        raise UsageError(f"--img-size must be a multiple of 32 for a detector (its batches are padded so), got "
                         f"{args.img_size}")  # fmt: skip
    model, metadata = model_from_checkpoint(args.checkpoint, task)
    channels = int(metadata["extra"].get("in_chans", 3))
    if task == "segmentation":
        return model, (channels, args.img_size or metadata["crop"]), " (UperNet)"
    default_size = -(-metadata["max_size"] // 32) * 32
    part = f" ({metadata['detector']}: the network before box decoding and NMS)"
    return DetectionNetwork(model), (channels, args.img_size or default_size), part


def run(args: argparse.Namespace) -> int:
    from .. import export

    fmt = _format(args)
    if fmt == "onnx" and export.missing_onnx_packages():
        raise UsageError(
            f"ONNX export needs {', '.join(export.missing_onnx_packages())}: pip install 'sfmamba[export]'"
        )
    try:
        task = _dense_task(args)
        model, (channels, img_size), part = _dense_model(args, task) if task else _classifier(args)
    except ValueError as err:  # CheckpointError
        raise UsageError(str(err)) from err
    device = torch.device(args.device or "cpu") if fmt == "pt2" else torch.device("cpu")
    dtype = DTYPES[args.dtype]
    model = model.to(device=device, dtype=dtype).eval()
    example = torch.randn(args.batch_size, channels, img_size, img_size, device=device, dtype=dtype)
    dynamic = not args.static_batch
    tolerance = args.tolerance or DEFAULT_TOLERANCE[dtype]
    name = args.checkpoint or args.model
    if fmt == "pt2":
        program = export.export_program(model, example, dynamic_batch=dynamic, kernels=args.kernels)
        difference = None if args.no_check else export.check_program(program, model, example, dynamic_batch=dynamic)
        save = export.save_program
    else:
        program = export.export_onnx(model, example, dynamic_batch=dynamic, opset=args.opset)
        difference = None if args.no_check else export.check_onnx(program, model, example, dynamic_batch=dynamic)
        save = export.save_onnx
    batch = "dynamic batch" if dynamic else f"batch {example.shape[0]}"
    checked = "not checked" if difference is None else f"max relative difference to eager {difference:.2e}"
    if difference is not None and not difference <= tolerance:  # (inf: an output was not finite)
        print(f"{name}: the exported model differs from eager by {difference:.2e} > --tolerance {tolerance:g}; "
              f"{args.output} not written")  # fmt: skip
        return 1
    save(program, args.output)
    size_mb = args.output.stat().st_size / 2**20
    print(f"{name}{part} -> {args.output} ({fmt}, {size_mb:.1f} MB, {img_size} px, {batch}, {args.dtype}, "
          f"{device.type}); {checked}")  # fmt: skip
    return 0
