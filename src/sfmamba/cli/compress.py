"""Training-free compression of a trained model: VMeanba on the K least harmful Mamba blocks, optionally combined
with L1 unstructured pruning (the VMeanba paper's Table 1).

Steps: load the model (a `sfmamba train` checkpoint names its model; other files need --model), prune if asked
(--prune 0.4), score every convertible block by the calibration-accuracy drop when only it runs VMeanba, convert the
--k lowest, report the evaluation accuracy before and after, and write a safetensors checkpoint whose metadata records
the converted blocks (`vmeanba_blocks`) and the pruning. `sfmamba.compress.vmeanba.load_compressed(FILE)` (or
`timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=FILE))` plus the builders' metadata hook)
rebuilds it. --report DIR also measures accuracy and latency versus K (JSON, markdown table, PNG).

examples:
  sfmamba compress vmeanba --checkpoint output/fmnist/best.safetensors --k 2 --output vmeanba_k2.safetensors
  sfmamba compress vmeanba --checkpoint best.safetensors --k 4 --prune 0.4 --prune-layers linear \\
      --output k4_pruned.safetensors --report reports/vmeanba
  sfmamba compress vmeanba --model vmamba_v2_tiny --checkpoint official.pth --dataset folder --data /data/imagenet \\
      --k 4 --output vmamba_t_k4.safetensors
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from . import UsageError, device_arg, resolve_device

HELP = "training-free compression: VMeanba block selection (+ optional L1 pruning) -> compressed checkpoint"
_logger = logging.getLogger(__name__)
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", choices=("vmeanba",), help="compression method")
    what = parser.add_argument_group("model")
    what.add_argument(
        "--checkpoint", required=True, help="weights (a `sfmamba train` .safetensors, or any file --model loads)"
    )
    what.add_argument("--model", default=None, help="timm model name (default: the checkpoint's)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=("fashion_mnist", "folder"), default=None,
                      help="default: the checkpoint's, else fashion_mnist")  # fmt: skip
    data.add_argument("--data", "--data-dir", dest="data", default=None,
                      help="dataset location (fashion_mnist: the Debian package's by default)")  # fmt: skip
    data.add_argument("--calib-split", default="train", help="split the blocks are scored on (default: train)")
    data.add_argument("--calib-samples", type=int, default=2000,
                      help="random calibration images from --calib-split (seed 0; default 2000)")  # fmt: skip
    data.add_argument("--eval-split", default="val", help="split the accuracy is reported on (default: val)")
    data.add_argument("--max-eval-batches", type=int, default=None, help="evaluate on the first N batches only")
    data.add_argument("--img-size", type=int, default=None, help="default: the checkpoint's, else the model's")
    data.add_argument("-b", "--batch-size", type=int, default=128)
    data.add_argument("-j", "--workers", type=int, default=2)
    method = parser.add_argument_group("VMeanba and pruning")
    method.add_argument("--k", type=int, required=True, help="number of blocks to convert to VMeanba")
    method.add_argument("--prune", type=float, default=None, metavar="FRACTION",
                        help="also prune this fraction of each chosen layer's weight (L1, e.g. 0.4)")  # fmt: skip
    method.add_argument("--prune-layers", nargs="+", choices=("linear", "conv2d"), default=["linear", "conv2d"],
                        help="layer types to prune (default: both)")  # fmt: skip
    method.add_argument("--prune-exclude", nargs="*", default=[], metavar="MODULE",
                        help="module names left dense (e.g. head)")  # fmt: skip
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, required=True, help="compressed checkpoint (.safetensors)")
    out.add_argument("--report", type=Path, default=None, metavar="DIR",
                     help="also write accuracy and latency versus K (JSON, markdown, PNG) here")  # fmt: skip
    out.add_argument("--k-step", type=int, default=1, help="K step of the report (default 1)")
    out.add_argument("--latency-iters", type=int, default=20, help="timed forward passes per K in the report")
    run = parser.add_argument_group("run")
    run.add_argument("--device", type=device_arg, default=None, help="cuda or cpu (default: cuda if available)")
    run.add_argument("--amp", action="store_true", help="autocast for the report's latency")
    run.add_argument("--amp-dtype", choices=tuple(AMP_DTYPES), default="bfloat16")


def _check_args(args: argparse.Namespace) -> None:
    if args.output.suffix != ".safetensors":
        raise UsageError(f"--output must end in .safetensors, got {args.output}")
    if args.k < 0:
        raise UsageError(f"--k must be >= 0, got {args.k}")
    if args.prune is not None and not 0.0 < args.prune < 1.0:
        raise UsageError(f"--prune must be a fraction in (0, 1), got {args.prune}")
    for name in ("calib_samples", "batch_size", "k_step", "latency_iters", "max_eval_batches"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file")


def load_model(checkpoint: str, model_name: str | None, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, the checkpoint's training metadata or {})."""
    import timm

    from ..train.checkpoint import model_from_checkpoint, read_metadata

    metadata = read_metadata(checkpoint) if checkpoint.endswith(".safetensors") else {}
    if metadata.get("model") and model_name in (None, metadata["model"]):
        return model_from_checkpoint(checkpoint)
    if not model_name:
        raise UsageError("name the model with --model (the checkpoint records none)")
    if not timm.is_model(model_name):
        raise UsageError(f"--model {model_name!r} is not registered with timm")
    overlay = dict(file=checkpoint, num_classes=num_classes)
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=num_classes)
    return model.eval(), metadata


def _loaders(args, dataset_name: str, img_size: int, device: torch.device):
    from ..data import build_transform, create_dataset, create_loader

    transform = build_transform(dataset_name, img_size, training=False)
    calib = create_dataset(dataset_name, args.data, args.calib_split, transform)
    if args.calib_samples < len(calib):
        order = torch.randperm(len(calib), generator=torch.Generator().manual_seed(0))[: args.calib_samples]
        calib = torch.utils.data.Subset(calib, sorted(order.tolist()))
    evaluation = create_dataset(dataset_name, args.data, args.eval_split, transform)
    pin = device.type == "cuda"

    def make(dataset):
        return create_loader(dataset, args.batch_size, training=False, workers=args.workers, pin_memory=pin)

    return make(calib), make(evaluation), evaluation.classes


def run(args: argparse.Namespace) -> int:
    from ..compress import prune_l1
    from ..compress import vmeanba as V
    from ..data import create_dataset

    _check_args(args)
    device = resolve_device(args.device)
    try:
        from ..train.checkpoint import read_metadata

        source_meta = read_metadata(args.checkpoint) if args.checkpoint.endswith(".safetensors") else {}
        dataset_name = args.dataset or source_meta.get("dataset") or "fashion_mnist"
        classes = create_dataset(dataset_name, args.data, args.eval_split).classes
        model, source_meta = load_model(args.checkpoint, args.model, len(classes))
    except ValueError as err:  # DatasetError, CheckpointError
        raise UsageError(str(err)) from err
    if getattr(model, "num_classes", len(classes)) != len(classes):
        raise UsageError(f"the model predicts {model.num_classes} classes but {dataset_name} has {len(classes)}")
    blocks_available = V.find_blocks(model)
    if not blocks_available:
        raise UsageError(f"{type(model).__name__} has no blocks built from sfmamba's scan layers to convert")
    if args.k > len(blocks_available):
        raise UsageError(f"--k {args.k} exceeds the {len(blocks_available)} convertible blocks")
    img_size = args.img_size or source_meta.get("img_size") or int(model.pretrained_cfg.get("input_size")[-1])
    calib_loader, eval_loader, _ = _loaders(args, dataset_name, int(img_size), device)
    model = model.to(device)

    max_eval = args.max_eval_batches
    original = V.evaluate_accuracy(model, eval_loader, device=device, max_batches=max_eval)
    print(f"original: top-1 {original:.2f}% on {dataset_name}/{args.eval_split}")
    pruning = None
    if args.prune is not None:
        pruning = prune_l1(model, args.prune, args.prune_layers, exclude=args.prune_exclude)
        pruned = V.evaluate_accuracy(model, eval_loader, device=device, max_batches=max_eval)
        pruning["top1_after"] = pruned
        print(f"pruned {args.prune:.0%} of {'/'.join(args.prune_layers)} weights "
              f"(sparsity {pruning['sparsity']:.3f}): top-1 {pruned:.2f}%")  # fmt: skip
    calib_base, scores = V.score_blocks(model, calib_loader, device=device)
    ranking = V.rank_blocks(scores)
    chosen = ranking[: args.k]
    V.apply(model, chosen)
    compressed = V.evaluate_accuracy(model, eval_loader, device=device, max_batches=max_eval)
    print(f"calibration top-1 {calib_base:.2f}% on {len(calib_loader.dataset)} {args.calib_split} images; "
          "accuracy drop when only one block runs VMeanba:")  # fmt: skip
    for name in ranking:
        print(f"  {'*' if name in chosen else ' '} {name:40s} {scores[name]:+.2f}")
    print(f"VMeanba on K={args.k} blocks: top-1 {compressed:.2f}% (original {original:.2f}%)")

    metadata = {
        **source_meta,
        "model": args.model or source_meta.get("model"),
        "num_classes": len(classes),
        "img_size": int(img_size),
        "dataset": dataset_name,
        "vmeanba_k": args.k,
        "vmeanba_scores": scores,
        "vmeanba_calibration": dict(split=args.calib_split, images=len(calib_loader.dataset), top1=calib_base),
        "pruning": pruning,
        "top1": dict(original=original, compressed=compressed, split=args.eval_split),
    }
    metadata.setdefault("model_kwargs", {})
    V.save_compressed(args.output, model.cpu(), metadata)
    print(f"wrote {args.output} (vmeanba_blocks: {chosen})")

    if args.report is not None:
        model = model.to(device)
        images = next(iter(eval_loader))[0].to(device)
        amp_dtype = AMP_DTYPES[args.amp_dtype] if args.amp else None
        record = V.accuracy_latency_report(
            model, ranking, eval_loader, images, args.report, ks=V.k_steps(len(ranking), args.k_step), scores=scores,
            device=device, max_batches=max_eval, amp_dtype=amp_dtype, iters=args.latency_iters,
            title=f"VMeanba on {metadata['model']} ({dataset_name})",
        )  # fmt: skip
        print(V.report_table(record["rows"]), end="")
        print(f"report: {args.report}/vmeanba_report.{{json,md,png}}")
    return 0
