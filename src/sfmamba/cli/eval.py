"""Evaluate a checkpoint of `sfmamba train` or any timm model: top-1/top-5, loss, throughput, per-class accuracy.

A checkpoint's metadata names its model, classes, input size and dataset, so `--checkpoint run/best.safetensors`
is enough for a Fashion-MNIST run. Other files (timm/official .pth, .pth.tar, .safetensors) load into --model
through timm's load_checkpoint.

examples:
  sfmamba eval --checkpoint output/fmnist/best.safetensors --per-class --confusion-matrix cm.png
  sfmamba eval --model resnet18 --pretrained --dataset folder --data-dir /data/imagenet --img-size 224
  sfmamba eval --model mambavision_nano --checkpoint weights.pth --img-size 32 --results-file eval.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from pathlib import Path

import torch

from . import UsageError, device_arg, non_negative_int, positive_int, pretrained_error, resolve_device
from .train import ParseModelKwargs

HELP = "evaluate a checkpoint or a timm model: top-1/top-5, loss, img/s, per-class accuracy, confusion matrix"
_logger = logging.getLogger(__name__)
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("model")
    what.add_argument(
        "--checkpoint",
        default=None,
        help="weights file (a `sfmamba train` .safetensors, or any timm checkpoint with --model)",
    )
    what.add_argument("--model", default=None, help="timm model name (default: the checkpoint's)")
    what.add_argument("--model-kwargs", nargs="*", default={}, action=ParseModelKwargs, metavar="KEY=VALUE")
    what.add_argument("--pretrained", action="store_true", help="timm's pretrained weights for --model")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=("fashion_mnist", "folder"),
        default=None,
        help="default: the checkpoint's, else fashion_mnist",
    )
    data.add_argument("--data-dir", default=None, help="dataset location (fashion_mnist: the Debian package's)")
    data.add_argument("--split", default="val", help="val (Fashion-MNIST: the test set) or train (default: val)")
    data.add_argument("--img-size", type=positive_int, default=None, help="default: the checkpoint's, else the model's")
    data.add_argument("-b", "--batch-size", type=positive_int, default=256)
    data.add_argument("-j", "--workers", type=non_negative_int, default=2)
    run = parser.add_argument_group("run")
    run.add_argument("--device", type=device_arg, default=None, help="cuda or cpu (default: cuda if available)")
    run.add_argument("--amp", action="store_true", help="autocast")
    run.add_argument("--amp-dtype", choices=tuple(AMP_DTYPES), default="bfloat16")
    run.add_argument("--channels-last", action="store_true")
    out = parser.add_argument_group("output")
    out.add_argument("--per-class", action="store_true", help="print the accuracy of every class")
    out.add_argument("--confusion-matrix", type=Path, default=None, metavar="PNG", help="write a confusion-matrix plot")
    out.add_argument("--results-file", type=Path, default=None, help="write the metrics as JSON")


def build_model(args: argparse.Namespace, num_classes: int) -> tuple[torch.nn.Module, dict[str, object]]:
    """(model, checkpoint metadata) from --checkpoint and/or --model."""
    import timm
    from timm.models import load_checkpoint

    from ..train.checkpoint import model_from_checkpoint, read_metadata

    if args.checkpoint and Path(args.checkpoint).is_dir():
        raise UsageError(f"--checkpoint {args.checkpoint} is a folder: pass a file in it (e.g. its best.safetensors)")
    metadata = read_metadata(args.checkpoint) if args.checkpoint and args.checkpoint.endswith(".safetensors") else {}
    if metadata and not args.model:
        return model_from_checkpoint(args.checkpoint, **args.model_kwargs)
    if not args.model:
        raise UsageError("name a model with --model (or give a --checkpoint written by `sfmamba train`)")
    if not timm.is_model(args.model):
        raise UsageError(f"--model {args.model!r} is not registered with timm")
    classes = metadata.get("num_classes", None if args.pretrained else num_classes)
    kwargs = {**args.model_kwargs, **({"num_classes": classes} if classes is not None else {})}
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    except OSError as err:  # (urllib's URLError, huggingface_hub's connection errors)
        if not args.pretrained:
            raise
        raise pretrained_error(args.model, err) from err
    if args.checkpoint:
        if not Path(args.checkpoint).is_file():
            raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
        load_checkpoint(model, args.checkpoint, strict=True)
    return model.eval(), metadata


def run(args: argparse.Namespace) -> int:
    from ..data import build_transform, create_dataset, create_loader
    from ..eval import evaluate, plot_confusion_matrix

    if args.confusion_matrix and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--confusion-matrix needs matplotlib: pip install 'sfmamba[bench]' (or matplotlib)")
    try:
        metadata_dataset = _checkpoint_dataset(args.checkpoint)
        dataset_name = args.dataset or metadata_dataset or "fashion_mnist"
        probe = create_dataset(dataset_name, args.data_dir, args.split)
        model, metadata = build_model(args, len(probe.classes))
    except ValueError as err:  # DatasetError, CheckpointError
        raise UsageError(str(err)) from err
    num_classes = getattr(model, "num_classes", None)
    if num_classes != len(probe.classes):
        raise UsageError(f"the model predicts {num_classes} classes but {dataset_name} has {len(probe.classes)}")
    device = resolve_device(args.device)
    img_size = (
        args.img_size
        if args.img_size is not None
        else metadata.get("img_size") or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    )
    probe.transform = build_transform(dataset_name, int(img_size), training=False)
    loader = create_loader(
        probe, args.batch_size, training=False, workers=args.workers, pin_memory=device.type == "cuda"
    )
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = AMP_DTYPES[args.amp_dtype] if args.amp else None
    result = evaluate(model, loader, len(probe.classes), device, amp_dtype, args.channels_last)
    name = args.checkpoint or args.model
    print(
        f"{name} on {dataset_name}/{args.split} ({result['count']} images, {img_size} px, {device.type}): "
        f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
        f"{result['img_per_sec']:.0f} img/s"
    )
    if args.per_class:
        for cls, acc in zip(probe.classes, result["per_class_top1"]):
            print(f"  {cls:>20s}  " + (f"{acc:6.2f}%" if acc is not None else "     - (no images)"))
    if args.results_file:
        from ..utils.files import atomic_write_text

        record = dict(
            checkpoint=args.checkpoint,
            model=args.model or metadata.get("model"),
            dataset=dataset_name,
            split=args.split,
            img_size=img_size,
            device=str(device),
            classes=list(probe.classes),
            **result,
        )
        atomic_write_text(args.results_file, json.dumps(record, indent=2) + "\n")
    if args.confusion_matrix:
        plot_confusion_matrix(result["confusion"], probe.classes, args.confusion_matrix, f"{name} ({args.split})")
        _logger.info("confusion matrix: %s", args.confusion_matrix)
    return 0


def _checkpoint_dataset(checkpoint: str | None) -> str | None:
    """The dataset a `sfmamba train` weights file names (None for another file); a dense model's file is refused."""
    if not checkpoint or not checkpoint.endswith(".safetensors"):
        return None
    from ..train.checkpoint import read_metadata, refuse_dense_weights

    metadata = read_metadata(checkpoint)
    refuse_dense_weights(checkpoint, metadata)
    return metadata.get("dataset")
